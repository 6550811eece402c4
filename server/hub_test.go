package server_test

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/server"
	"github.com/lnvault/lnvault/socket"
)

// A hub keeps each tenant's backup apart: tenants write and read only their
// own, an unknown key is refused in the handshake, a revoked tenant's next
// connection too, with its backup left as it was.
func TestHubTenants(t *testing.T) {
	ctx := context.Background()
	store := t.TempDir()
	hk, _ := newKey(t)
	ka, pa := newKey(t)
	kb, pb := newKey(t)
	_, pc := newKey(t)
	open := func(ctx context.Context, name string) (lnvault.Backend, error) {
		u := "file://" + filepath.Join(store, name+".dbak")
		b, err := lnvault.Open(ctx, u, lnvault.OpenOptions{Logger: testLogger(t)})
		if err != nil {
			b, err = lnvault.Open(ctx, u, lnvault.OpenOptions{Create: true, Logger: testLogger(t)})
		}
		return b, err
	}
	tenants := []server.Tenant{{Name: "alice", Key: ka.Pin}, {Name: "bob", Key: kb.Pin}}
	h, err := server.NewHub(server.HubConfig{Server: server.Config{Logger: testLogger(t)}, Open: open, Key: hk}, tenants)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- h.Serve(hctx, ln) }()
	defer func() { cancel(); <-done }()
	url := func(key string) string {
		return "socket:" + ln.Addr().String() + "?pin=" + hk.Pin + "&key=" + key + "&retries=0"
	}

	cs := corpusChanges(t)[:60]
	for _, w := range []struct {
		key string
		cs  []*lnvault.Change
	}{{pa, cs[:40]}, {pb, cs[:20]}} {
		b := openSocket(t, url(w.key), lnvault.OpenOptions{Create: true})
		for _, c := range w.cs {
			if err := b.Append(ctx, c); err != nil {
				t.Fatal(err)
			}
		}
		b.Close()
	}
	// Each reads its own, nothing of the other's.
	checkExact(t, openSocket(t, url(pa), lnvault.OpenOptions{ReadOnly: true}), cs[:40])
	checkExact(t, openSocket(t, url(pb), lnvault.OpenOptions{ReadOnly: true}), cs[:20])

	if _, err := socket.Open(ctx, url(pc), lnvault.OpenOptions{Logger: testLogger(t)}); err == nil || !strings.Contains(err.Error(), "refused this client") {
		t.Fatalf("an unknown key: %v", err)
	}
	tenants[1].Revoked = true
	if err := h.SetTenants(tenants); err != nil {
		t.Fatal(err)
	}
	if _, err := socket.Open(ctx, url(pb), lnvault.OpenOptions{Logger: testLogger(t)}); err == nil || !strings.Contains(err.Error(), "refused this client") {
		t.Fatalf("a revoked key: %v", err)
	}
	checkExact(t, openSocket(t, url(pa), lnvault.OpenOptions{ReadOnly: true}), cs[:40])
	// bob's backup is left as it was.
	b, err := lnvault.Open(ctx, "file://"+filepath.Join(store, "bob.dbak"), lnvault.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	checkExact(t, b, cs[:20])

	if err := h.SetTenants([]server.Tenant{{Name: "alice", Key: ka.Pin}, {Name: "Bob!", Key: kb.Pin}}); err == nil {
		t.Fatal("a bad tenant name was taken")
	}
	if err := h.SetTenants([]server.Tenant{{Name: "alice", Key: ka.Pin}, {Name: "carol", Key: ka.Pin}}); err == nil {
		t.Fatal("two tenants with one key were taken")
	}
}
