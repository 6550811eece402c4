package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path"
	"syscall"
	"text/tabwriter"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/durable"
	"github.com/lnvault/lnvault/server"
	"github.com/lnvault/lnvault/tlskey"
	"github.com/spf13/cobra"
)

// tenantsFile is the file `lnvault server --tenants` reads and the tenant
// commands edit.
type tenantsFile struct {
	Tenants []server.Tenant `json:"tenants"`
}

func readTenants(p string) (tenantsFile, error) {
	var tf tenantsFile
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return tf, nil
	}
	if err != nil {
		return tf, fmt.Errorf("reading tenants: %w", err)
	}
	if err := json.Unmarshal(data, &tf); err != nil {
		return tf, fmt.Errorf("%s is not a tenants file (JSON {\"tenants\": [...]}): %w", p, err)
	}
	return tf, nil
}

func writeTenants(p string, tf tenantsFile) error {
	data, err := json.MarshalIndent(tf, "", "  ")
	if err != nil {
		return err
	}
	return durable.WriteFile(p, append(data, '\n'), 0o600)
}

// editTenant changes tenant name in the --tenants file with fn and writes
// the file back.
func editTenant(cmd *cobra.Command, name string, fn func(*server.Tenant) error) error {
	p, _ := cmd.Flags().GetString("tenants")
	tf, err := readTenants(p)
	if err != nil {
		return err
	}
	for i := range tf.Tenants {
		if tf.Tenants[i].Name == name {
			if err := fn(&tf.Tenants[i]); err != nil {
				return err
			}
			return writeTenants(p, tf)
		}
	}
	return fmt.Errorf("no tenant %s in %s", name, p)
}

// newTenantCmd is `lnvault server tenant`.
func newTenantCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "tenant",
		Short: "Manage the nodes a multi-tenant server keeps backups for (--tenants FILE)",
		Long: `A server started with --store URL --tenants FILE --tls-key KEY serves each
tenant's backup at URL/<name>, to the node whose client key (its pin, as
lnvault init prints it) the tenant names. The server reads FILE again on
SIGHUP: a revoked tenant's connections are closed and its next refused; its
backup stays.`,
	}
	file := func(c *cobra.Command) {
		c.Flags().String("tenants", "", "the tenants file (created by the first add)")
		c.MarkFlagRequired("tenants")
	}
	add := &cobra.Command{
		Use:   "add NAME --key sha256:... --tenants FILE",
		Short: "Let the node with this client key keep its backup here, under NAME",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, _ := cmd.Flags().GetString("tenants")
			key, _ := cmd.Flags().GetString("key")
			if err := server.CheckTenantName(args[0]); err != nil {
				return err
			}
			pin, err := tlskey.ParsePin(key)
			if err != nil {
				return fmt.Errorf("--key: %w", err)
			}
			tf, err := readTenants(p)
			if err != nil {
				return err
			}
			for _, t := range tf.Tenants {
				if t.Name == args[0] {
					return fmt.Errorf("tenant %s exists already (revoke it first, or choose another name)", t.Name)
				}
				if t.Key == pin {
					return fmt.Errorf("the key %s is tenant %s's already", pin, t.Name)
				}
			}
			tf.Tenants = append(tf.Tenants, server.Tenant{Name: args[0], Key: pin})
			if err := writeTenants(p, tf); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "added tenant %s (key %s); a running server takes it on SIGHUP\n", args[0], pin)
			return nil
		},
	}
	file(add)
	add.Flags().String("key", "", "the node's client key pin (sha256:...), as lnvault init prints it")
	add.MarkFlagRequired("key")
	revoke := &cobra.Command{
		Use:   "revoke NAME --tenants FILE",
		Short: "Refuse the tenant's key from now on (its backup stays)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return editTenant(cmd, args[0], func(t *server.Tenant) error {
				t.Revoked = true
				fmt.Fprintf(cmd.OutOrStdout(), "revoked tenant %s; a running server closes its connections on SIGHUP\n", t.Name)
				return nil
			})
		},
	}
	file(revoke)
	quota := &cobra.Command{
		Use:   "quota NAME [--bytes N] [--changes-per-second R] --tenants FILE",
		Short: "Bound the tenant's backup size (changes beyond it are refused, saying so) and change rate (its writer is slowed to it); 0 lifts a bound",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return editTenant(cmd, args[0], func(t *server.Tenant) error {
				if cmd.Flags().Changed("bytes") {
					v, _ := cmd.Flags().GetInt64("bytes")
					if v < 0 {
						return fmt.Errorf("--bytes %d is negative", v)
					}
					t.QuotaBytes = v
				}
				if cmd.Flags().Changed("changes-per-second") {
					v, _ := cmd.Flags().GetFloat64("changes-per-second")
					if v < 0 {
						return fmt.Errorf("--changes-per-second %v is negative", v)
					}
					t.MaxChangeRate = v
				}
				fmt.Fprintf(cmd.OutOrStdout(), "tenant %s: quota %d bytes, %v changes/s (0: none); a running server takes it on SIGHUP\n", t.Name, t.QuotaBytes, t.MaxChangeRate)
				return nil
			})
		},
	}
	file(quota)
	quota.Flags().Int64("bytes", 0, "largest size of the tenant's backup, in bytes")
	quota.Flags().Float64("changes-per-second", 0, "the tenant's writer is slowed to this many changes a second (bursts of twice that)")
	list := &cobra.Command{
		Use:   "list --tenants FILE",
		Short: "List the tenants",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, _ := cmd.Flags().GetString("tenants")
			tf, err := readTenants(p)
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tKEY\tSTATE\tQUOTA BYTES\tCHANGES/S")
			for _, t := range tf.Tenants {
				st := "active"
				if t.Revoked {
					st = "revoked"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%v\n", t.Name, t.Key, st, t.QuotaBytes, t.MaxChangeRate)
			}
			return w.Flush()
		},
	}
	file(list)
	c.AddCommand(add, revoke, quota, list)
	return c
}

// tenantURL is where tenant name's backup is kept under store: a file
// beside the others for file: (name.dbak), a prefix of its own otherwise.
func tenantURL(store, name string) (string, error) {
	u, err := url.Parse(store)
	if err != nil {
		return "", fmt.Errorf("--store %q: %w", store, err)
	}
	switch lnvault.Scheme(store) {
	case "file":
		u.Path = path.Join(u.Path, name+".dbak")
	case "dir", "s3":
		u.Path = path.Join(u.Path, name)
	default:
		return "", fmt.Errorf("--store %q: use file:///dir/, dir:///dir/ or s3://bucket/prefix", store)
	}
	return u.String(), nil
}

// runHub serves the tenants of --tenants from --store on addr.
func runHub(ctx context.Context, cmd *cobra.Command, addr string, srvCfg server.Config) error {
	f := cmd.Flags()
	store, _ := f.GetString("store")
	tfPath, _ := f.GetString("tenants")
	keyFile, _ := f.GetString("tls-key")
	log := srvCfg.Logger
	if tfPath == "" || keyFile == "" {
		return errors.New("--store serves tenants: give --tenants FILE (lnvault server tenant add) and --tls-key KEY too")
	}
	if _, err := tenantURL(store, "x"); err != nil {
		return err
	}
	k, created, err := tlskey.LoadOrCreate(keyFile)
	if err != nil {
		return err
	}
	if created {
		log.Info("created the server's TLS key", "file", keyFile)
	}
	log.Info("the server's key pin: clients connect with socket:HOST:PORT?pin="+k.Pin, "pin", k.Pin)
	if _, err := os.Stat(tfPath); err != nil {
		return fmt.Errorf("--tenants %s: %w (create it with lnvault server tenant add NAME --key sha256:... --tenants %s)", tfPath, err, tfPath)
	}
	tf, err := readTenants(tfPath)
	if err != nil {
		return err
	}
	open := func(ctx context.Context, name string) (lnvault.Backend, error) {
		u, err := tenantURL(store, name)
		if err != nil {
			return nil, err
		}
		b, err := lnvault.Open(ctx, u, lnvault.OpenOptions{Logger: log.With("tenant", name)})
		if errors.Is(err, lnvault.ErrNotFound) {
			b, err = lnvault.Open(ctx, u, lnvault.OpenOptions{Create: true, Logger: log.With("tenant", name)})
		}
		return b, err
	}
	h, err := server.NewHub(server.HubConfig{Server: srvCfg, Open: open, Key: k}, tf.Tenants)
	if err != nil {
		return fmt.Errorf("%s: %w", tfPath, err)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			tf, err := readTenants(tfPath)
			if err == nil {
				err = h.SetTenants(tf.Tenants)
			}
			if err != nil {
				log.Error("reloading the tenants failed; the previous ones stay", "file", tfPath, "err", err)
				continue
			}
			log.Info("tenants reloaded", "file", tfPath)
		}
	}()
	ln, err := listenChecked(ctx, addr)
	if err != nil {
		return err
	}
	return h.Serve(ctx, ln)
}

func listenChecked(ctx context.Context, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", addr, err)
	}
	return ln, nil
}
