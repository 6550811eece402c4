package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"sync"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/tlskey"
)

// Tenant is one node whose backup a hub keeps: its name (which names its
// backup in the store) and its client key's pin.
type Tenant struct {
	Name    string `json:"name"`
	Key     string `json:"key"`
	Revoked bool   `json:"revoked,omitempty"`
	Quota
}

var tenantName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)

// CheckTenantName tells whether name can name a tenant (and its backup).
func CheckTenantName(name string) error {
	if !tenantName.MatchString(name) {
		return fmt.Errorf("tenant name %q: use 1-64 lowercase letters, digits, '-' and '_', starting with a letter or digit", name)
	}
	return nil
}

// HubConfig is how a Hub serves its tenants.
type HubConfig struct {
	// Server is each tenant's server configuration (limits, logger, ...).
	Server Config
	// Open opens (creating when missing) the backup of tenant name, and
	// its static channel backup store (nil: none).
	Open func(ctx context.Context, name string) (lnvault.Backend, error)
	// Key is the hub's TLS key.
	Key *tlskey.Key
}

// Hub serves many tenants' backups on one TLS listener: a client's key,
// checked in the handshake, names its tenant, and the connection is served
// by that tenant's own Server over its own backup, so no tenant can read,
// write, list or compact another's. An unknown or revoked key is refused
// during the handshake, before any packet is read.
type Hub struct {
	cfg HubConfig
	log *slog.Logger

	mu      sync.Mutex
	byPin   map[string]Tenant
	servers map[string]*tenantServer // by tenant name, opened at first use
	closing bool
	wg      sync.WaitGroup
}

type tenantServer struct {
	srv *Server
	b   lnvault.Backend
}

// NewHub returns a hub serving tenants.
func NewHub(cfg HubConfig, tenants []Tenant) (*Hub, error) {
	log := cfg.Server.Logger
	if log == nil {
		log = slog.Default()
	}
	h := &Hub{cfg: cfg, log: log, servers: map[string]*tenantServer{}}
	if err := h.SetTenants(tenants); err != nil {
		return nil, err
	}
	return h, nil
}

// SetTenants replaces the tenant table (a reload). The servers of tenants
// revoked or removed are shut down, their backups left as they are.
func (h *Hub) SetTenants(tenants []Tenant) error {
	byPin := map[string]Tenant{}
	names := map[string]bool{}
	for _, t := range tenants {
		if err := CheckTenantName(t.Name); err != nil {
			return err
		}
		pin, err := tlskey.ParsePin(t.Key)
		if err != nil {
			return fmt.Errorf("tenant %s: %w", t.Name, err)
		}
		if names[t.Name] {
			return fmt.Errorf("tenant %s is listed twice", t.Name)
		}
		if o, dup := byPin[pin]; dup {
			return fmt.Errorf("tenants %s and %s have the same key", o.Name, t.Name)
		}
		names[t.Name] = true
		t.Key = pin
		if !t.Revoked {
			byPin[pin] = t
		}
	}
	h.mu.Lock()
	h.byPin = byPin
	var gone []*tenantServer
	for name, ts := range h.servers {
		t, ok := h.activeLocked(name)
		if !ok {
			gone = append(gone, ts)
			delete(h.servers, name)
			continue
		}
		ts.srv.SetQuota(t.Quota)
	}
	h.mu.Unlock()
	for _, ts := range gone {
		h.closeTenant(ts)
	}
	h.log.Info("tenants loaded", "active", len(byPin))
	return nil
}

func (h *Hub) activeLocked(name string) (Tenant, bool) {
	for _, t := range h.byPin {
		if t.Name == name {
			return t, true
		}
	}
	return Tenant{}, false
}

func (h *Hub) closeTenant(ts *tenantServer) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ts.srv.Shutdown(ctx)
	ts.b.Close()
}

// tenantOf is the active tenant of a client key pin.
func (h *Hub) tenantOf(pin string) (Tenant, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	t, ok := h.byPin[pin]
	return t, ok
}

// TLSConfig is the hub's TLS configuration: the hub's key, and only the
// active tenants' keys admitted.
func (h *Hub) TLSConfig() *tls.Config {
	return tlskey.ServerConfig(h.cfg.Key, func(pin string) bool {
		_, ok := h.tenantOf(pin)
		return ok
	})
}

// Serve accepts connections on ln until ctx ends, handing each, once its
// handshake named an active tenant, to that tenant's server.
func (h *Hub) Serve(ctx context.Context, ln net.Listener) error {
	tc := h.TLSConfig()
	h.mu.Lock()
	n := len(h.byPin)
	h.mu.Unlock()
	h.log.Info("backup server listening", "addr", ln.Addr().String(), "tls", true, "tenants", n)
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				h.shutdown()
				return nil
			}
			h.log.Error("accept failed", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			h.handle(ctx, c, tc)
		}()
	}
}

// handle completes the handshake and gives the connection to its tenant.
func (h *Hub) handle(ctx context.Context, nc net.Conn, tc *tls.Config) {
	tuneTCP(nc)
	t := tls.Server(nc, tc)
	if err := handshakeTLS(ctx, t, h.cfg.Key.Pin); err != nil {
		h.log.Warn("refused: TLS handshake failed", "remote", nc.RemoteAddr().String(), "err", err)
		nc.Close()
		return
	}
	pin, err := peerPinOf(t)
	tenant, ok := h.tenantOf(pin)
	if err != nil || !ok {
		// Revoked between the handshake's check and now.
		h.log.Warn("refused: client key not a tenant's", "remote", nc.RemoteAddr().String(), "pin", pin)
		t.Close()
		return
	}
	ts, err := h.serverFor(ctx, tenant)
	if err != nil {
		h.log.Error("opening a tenant's backup failed", "tenant", tenant.Name, "err", err)
		t.Close()
		return
	}
	if !ts.srv.track(t, nil) {
		t.Close()
	}
}

func peerPinOf(t *tls.Conn) (string, error) {
	certs := t.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return "", errors.New("no client certificate")
	}
	return tlskey.Pin(certs[0].PublicKey)
}

// serverFor is the server of tenant t, opening its backup at first use.
func (h *Hub) serverFor(ctx context.Context, t Tenant) (*tenantServer, error) {
	name := t.Name
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return nil, errors.New("the hub is shutting down")
	}
	if ts := h.servers[name]; ts != nil {
		return ts, nil
	}
	b, err := h.cfg.Open(ctx, name)
	if err != nil {
		return nil, err
	}
	cfg := h.cfg.Server
	cfg.Logger = h.log.With("tenant", name)
	cfg.Quota = t.Quota
	srv := New(cfg, b)
	srv.tlsPin = h.cfg.Key.Pin
	ts := &tenantServer{srv: srv, b: b}
	h.servers[name] = ts
	h.log.Info("tenant's backup opened", "tenant", name, "version", b.Metadata().Version)
	return ts, nil
}

// shutdown stops every tenant's server after its in-flight requests.
func (h *Hub) shutdown() {
	h.wg.Wait()
	h.mu.Lock()
	h.closing = true
	servers := h.servers
	h.servers = map[string]*tenantServer{}
	h.mu.Unlock()
	for _, ts := range servers {
		h.closeTenant(ts)
	}
}
