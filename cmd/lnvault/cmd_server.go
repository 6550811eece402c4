package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/scb"
	"github.com/lnvault/lnvault/server"
	"github.com/lnvault/lnvault/tlskey"
	"github.com/lnvault/lnvault/wire"
	"github.com/spf13/cobra"
)

// serverTLS reads --tls-key and --authorized-keys: the TLS configuration
// (nil without --tls-key) and whether it authenticates clients.
func serverTLS(cmd *cobra.Command, log *slog.Logger) (*tls.Config, bool, error) {
	keyFile, _ := cmd.Flags().GetString("tls-key")
	authFile, _ := cmd.Flags().GetString("authorized-keys")
	if keyFile == "" {
		if authFile != "" {
			return nil, false, errors.New("--authorized-keys needs --tls-key: client keys are checked in the TLS handshake")
		}
		return nil, false, nil
	}
	k, created, err := tlskey.LoadOrCreate(keyFile)
	if err != nil {
		return nil, false, err
	}
	if created {
		log.Info("created the server's TLS key", "file", keyFile)
	}
	log.Info("the server's key pin: clients connect with socket:HOST:PORT?pin="+k.Pin, "pin", k.Pin)
	if authFile == "" {
		return tlskey.ServerConfig(k, nil), false, nil
	}
	auth, err := tlskey.ReadAuthorized(authFile)
	if err != nil {
		return nil, false, err
	}
	log.Info("admitting only authorized client keys", "file", authFile, "keys", len(auth))
	return tlskey.ServerConfig(k, func(pin string) bool { _, ok := auth[pin]; return ok }), true, nil
}

func appendOnlyFlag(cmd *cobra.Command) bool {
	v, _ := cmd.Flags().GetBool("append-only")
	return v
}

// newServerCmd is `lnvault server`.
func newServerCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "server BACKEND_URL ADDR | server --store URL --tenants FILE --tls-key KEY ADDR",
		Short: "Serve a backup to remote nodes over the socket: protocol",
		Long: `Serve the backup at BACKEND_URL (e.g. file:///var/backups/node.dbak) to remote
nodes using the socket: backend (socket:HOST:PORT), or the reference Python
backup plugin.

ADDR is IPv4:PORT, [IPv6]:PORT or HOSTNAME:PORT. Without --tls-key the
protocol has no authentication or encryption, as the reference's: the
server binds to loopback unless --allow-unauthenticated is given; reach it
through an SSH tunnel, a VPN or a Tor onion service.

With --tls-key FILE (created when missing) the server speaks TLS 1.3 on ADDR
with that long-lived key and logs its pin, which clients put in their URL
(socket:HOST:PORT?pin=sha256:...). With --authorized-keys FILE (one client
key pin per line, as lnvault init prints it) it admits only those clients,
refusing any other during the handshake, and may listen beyond loopback.
--legacy-listen ADDR2 serves the plaintext protocol beside it, for
reference clients (loopback unless --allow-unauthenticated).

With --store URL (file:///dir/, dir:///dir/ or s3://bucket/prefix) and
--tenants FILE instead of BACKEND_URL it keeps a backup for each tenant
(lnvault server tenant add), at URL/<name>, served only to the node with
the tenant's client key; it reads FILE again on SIGHUP.

One connection at a time may write the backup; others may restore or read its
metadata. SIGTERM or SIGINT stops the server after in-flight changes are
acknowledged and stored.`,
		Example: `  lnvault server file:///var/backups/node.dbak 127.0.0.1:8700
  lnvault server --create --metrics-addr 127.0.0.1:9700 file:///srv/node.dbak [::1]:8700`,
		Args: cobra.RangeArgs(1, 2),
		RunE: runServer,
	}
	c.AddCommand(newTenantCmd())
	f := c.Flags()
	f.String("metrics-addr", "", "serve Prometheus metrics on this address (e.g. 127.0.0.1:9700)")
	f.Bool("allow-unauthenticated", false, "allow listening beyond loopback (the protocol has no authentication)")
	f.Uint32("max-packet", wire.DefaultMaxPacket, "largest packet payload accepted, in bytes")
	f.Int64("max-change", wire.DefaultMaxChange, "largest decompressed transaction accepted, in bytes")
	f.Int64("max-snapshot", wire.DefaultMaxSnapshot, "largest decompressed snapshot accepted, in bytes")
	f.String("tmpdir", "", "directory for incoming snapshots (default: the system's temp directory)")
	f.Bool("create", false, "create an empty backup at BACKEND_URL if there is none")
	f.String("tls-key", "", "speak TLS 1.3 with this long-lived Ed25519 key (created when missing; its pin is logged for clients' pin=)")
	f.String("authorized-keys", "", "with --tls-key: admit only the client keys whose pins this file lists")
	f.Bool("append-only", false, "clients may append and rewind their last change, never delete, compact or rebase their history (the operator compacts)")
	f.String("store", "", "serve the tenants of --tenants, each its own backup under this URL (file:///dir/, dir:///dir/, s3://bucket/prefix)")
	f.String("tenants", "", "with --store: the tenants file (lnvault server tenant add)")
	f.String("legacy-listen", "", "with --tls-key: also serve the plaintext protocol on this address, for reference clients")
	f.String("scb", "", "keep the static channel backups lnvault clients send here (default for a file: backup: BACKEND_PATH.scb/; \"none\" to refuse them)")
	addReplicateFlags(c)
	return c
}

func runServer(cmd *cobra.Command, args []string) error {
	ctx := cmd.Context()
	f := cmd.Flags()
	if store, _ := f.GetString("store"); store != "" {
		if len(args) != 1 {
			return errors.New("with --store the server keeps one backup per tenant: give only ADDR, not a BACKEND_URL")
		}
		// Say so rather than ignore what a multi-tenant server does not do.
		for _, name := range []string{"create", "scb", "metrics-addr", "authorized-keys", "legacy-listen", "allow-unauthenticated", "replicate"} {
			if f.Changed(name) {
				return fmt.Errorf("--%s does not apply with --store: tenants' backups are created at their first connection, admitted by the tenants file, over TLS only, without SCBs, metrics or replicas yet", name)
			}
		}
		if logLevel.Level() > slog.LevelInfo {
			logLevel.Set(slog.LevelInfo)
		}
		maxPacket, _ := f.GetUint32("max-packet")
		maxChange, _ := f.GetInt64("max-change")
		maxSnap, _ := f.GetInt64("max-snapshot")
		tmpdir, _ := f.GetString("tmpdir")
		appendOnly, _ := f.GetBool("append-only")
		return runHub(ctx, cmd, args[0], server.Config{
			Limits:     wire.Limits{MaxPacket: maxPacket, MaxChange: maxChange, MaxSnapshot: maxSnap, TempDir: tmpdir},
			Logger:     slog.Default().With("component", "server"),
			AppendOnly: appendOnly,
		})
	}
	if len(args) != 2 {
		return errors.New("lnvault server needs BACKEND_URL and ADDR (or --store URL --tenants FILE --tls-key KEY and ADDR)")
	}
	backendURL, addr := args[0], args[1]
	metricsAddr, _ := f.GetString("metrics-addr")
	allow, _ := f.GetBool("allow-unauthenticated")
	maxPacket, _ := f.GetUint32("max-packet")
	maxChange, _ := f.GetInt64("max-change")
	maxSnap, _ := f.GetInt64("max-snapshot")
	tmpdir, _ := f.GetString("tmpdir")
	create, _ := f.GetBool("create")
	if maxPacket < 64 {
		return fmt.Errorf("--max-packet %d is too small to carry any change", maxPacket)
	}
	log := slog.Default().With("component", "server")
	// The server's own lifecycle (listening, writers, refusals) is worth
	// seeing without -v.
	if logLevel.Level() > slog.LevelInfo {
		logLevel.Set(slog.LevelInfo)
	}

	tc, authenticated, err := serverTLS(cmd, log)
	if err != nil {
		return err
	}
	legacy, _ := f.GetString("legacy-listen")
	if legacy != "" && tc == nil {
		return errors.New("--legacy-listen is the plaintext listener beside a TLS one: give --tls-key too (without it ADDR is plaintext already)")
	}

	// Check the addresses before touching the backup.
	lo, err := server.IsLoopback(addr)
	if err != nil {
		return err
	}
	if !lo && !allow && !authenticated {
		return fmt.Errorf("refusing to listen on %s: the backup protocol has no authentication without --tls-key and --authorized-keys; bind to 127.0.0.1 or [::1] and use an SSH tunnel, a VPN or a Tor onion service, or pass --allow-unauthenticated", addr)
	}
	if legacy != "" {
		if llo, err := server.IsLoopback(legacy); err != nil {
			return fmt.Errorf("--legacy-listen: %w", err)
		} else if !llo && !allow {
			return fmt.Errorf("refusing the plaintext --legacy-listen %s beyond loopback: it has no authentication; bind it to 127.0.0.1, or pass --allow-unauthenticated", legacy)
		}
	}

	opts := lnvault.OpenOptions{Logger: log}
	b, err := lnvault.Open(ctx, backendURL, opts)
	if errors.Is(err, lnvault.ErrNotFound) && create {
		opts.Create = true
		b, err = lnvault.Open(ctx, backendURL, opts)
	}
	if err != nil {
		if errors.Is(err, lnvault.ErrNotFound) {
			return fmt.Errorf("%w (create it with lnvault init, or pass --create)", err)
		}
		return err
	}
	// --replicate wraps the backend so every change is also shipped.
	nb, err := withReplicas(cmd, b)
	if err != nil {
		b.Close()
		return err
	}
	b = nb
	m := b.Metadata()
	log.Info("serving backup", "url", backendURL, "version", m.Version, "version_count", m.VersionCount)

	// Static channel backups (a protocol extension reference clients never
	// see): next to a file backup unless told otherwise.
	scbURL, _ := f.GetString("scb")
	if scbURL == "" && lnvault.Scheme(backendURL) == "file" {
		scbURL = backendURL
	}
	var scbStore scb.Store
	if scbURL != "" && scbURL != "none" {
		if scbStore, err = scb.OpenStore(ctx, scbURL, scb.StoreOptions{Logger: log}); err != nil {
			b.Close()
			return fmt.Errorf("--scb: %w", err)
		}
		defer scbStore.Close()
		log.Info("keeping static channel backups", "store", scbStore.String())
	}

	srv := server.New(server.Config{
		Limits:               wire.Limits{MaxPacket: maxPacket, MaxChange: maxChange, MaxSnapshot: maxSnap, TempDir: tmpdir},
		AllowUnauthenticated: allow,
		AppendOnly:           appendOnlyFlag(cmd),
		Logger:               log,
		SCB:                  scbStore,
	}, b)
	if err := registerReplicaMetrics(b, srv.Registry()); err != nil {
		b.Close()
		return fmt.Errorf("registering metrics: %w", err)
	}

	if metricsAddr != "" {
		ln, err := net.Listen("tcp", metricsAddr)
		if err != nil {
			b.Close()
			return fmt.Errorf("--metrics-addr %s: %w", metricsAddr, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", srv.MetricsHandler())
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go hs.Serve(ln)
		defer hs.Close()
		log.Info("metrics listening", "addr", ln.Addr().String())
	}

	var serveErr error
	if tc == nil {
		serveErr = srv.ListenAndServe(ctx, addr)
	} else {
		if legacy != "" {
			go func() {
				if err := srv.ListenAndServe(ctx, legacy); err != nil {
					log.Error("the plaintext legacy listener stopped", "addr", legacy, "err", err)
				}
			}()
		}
		serveErr = srv.ListenAndServeTLS(ctx, addr, tc, authenticated)
	}
	// Serve returns after in-flight appends are acknowledged; only then is
	// the backend closed.
	closeErr := b.Close()
	if serveErr != nil {
		return errors.Join(serveErr, closeErr)
	}
	if closeErr != nil {
		return fmt.Errorf("closing the backup: %w", closeErr)
	}
	log.Info("server stopped", "version", b.Metadata().Version)
	return nil
}
