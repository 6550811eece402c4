package server_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

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
	if _, err := socket.Open(ctx, "socket:"+ln.Addr().String()+"?retries=0", lnvault.OpenOptions{Logger: testLogger(t)}); err == nil || !strings.Contains(err.Error(), "speaks TLS") {
		t.Fatalf("a client without TLS: %v", err)
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

// BenchmarkHubNeighbour: the ack p50/p99 of a tenant writing the corpus
// through a hub while another tenant floods (4 writers' worth of large
// changes as fast as its limit lets it) ÷ the same tenant with the other
// idle, in alternating bursts. The flooder is throttled to
// LNVAULT_BENCH_FLOOD_RATE changes/s (default 200; 0: no limit).
func BenchmarkHubNeighbour(b *testing.B) {
	ctx := context.Background()
	store := b.TempDir()
	hk, _ := newKey(b)
	kq, pq := newKey(b)
	kf, pf := newKey(b)
	rate := 200.0
	if v := os.Getenv("LNVAULT_BENCH_FLOOD_RATE"); v != "" {
		fmt.Sscan(v, &rate)
	}
	open := func(ctx context.Context, name string) (lnvault.Backend, error) {
		return lnvault.Open(ctx, "file://"+filepath.Join(store, name+".dbak"), lnvault.OpenOptions{Create: true, Logger: testLogger(b)})
	}
	h, err := server.NewHub(server.HubConfig{Server: server.Config{Logger: testLogger(b)}, Open: open, Key: hk},
		[]server.Tenant{{Name: "quiet", Key: kq.Pin}, {Name: "flood", Key: kf.Pin, Quota: server.Quota{MaxChangeRate: rate}}})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	hctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- h.Serve(hctx, ln) }()
	defer func() { cancel(); <-done }()
	url := func(key string) string { return "socket:" + ln.Addr().String() + "?pin=" + hk.Pin + "&key=" + key }
	quiet := openSocket(b, url(pq), lnvault.OpenOptions{Create: true})
	flood := openSocket(b, url(pf), lnvault.OpenOptions{Create: true})
	changes := corpusChanges(b)
	big := strings.Repeat("x", 60000)
	var alone, beside []time.Duration
	v, fv := uint32(0), uint32(0)
	const burst = 100
	b.ResetTimer()
	for round := 0; round < 2 || len(alone)+len(beside) < b.N; round++ {
		stop := make(chan struct{})
		fdone := make(chan struct{})
		flooding := round%2 == 1
		if flooding {
			go func() {
				defer close(fdone)
				for {
					select {
					case <-stop:
						return
					default:
					}
					fv++
					if err := flood.Append(ctx, lnvault.NewTransaction(fv, []string{"INSERT INTO t VALUES ('" + big + "')"})); err != nil {
						return
					}
				}
			}()
		} else {
			close(fdone)
		}
		for i := 0; i < burst; i++ {
			v++
			t0 := time.Now()
			if err := quiet.Append(ctx, lnvault.NewTransaction(v, changes[int(v)%len(changes)].Statements)); err != nil {
				b.Fatal(err)
			}
			if flooding {
				beside = append(beside, time.Since(t0))
			} else {
				alone = append(alone, time.Since(t0))
			}
		}
		close(stop)
		<-fdone
	}
	b.StopTimer()
	slices.Sort(alone)
	slices.Sort(beside)
	q := func(s []time.Duration, f float64) float64 { return float64(s[int(float64(len(s)-1)*f)].Microseconds()) }
	b.ReportMetric(q(alone, 0.99), "alone-p99-µs")
	b.ReportMetric(q(beside, 0.99), "beside-p99-µs")
	b.ReportMetric(q(beside, 0.5)/q(alone, 0.5), "beside/alone-p50")
	b.ReportMetric(q(beside, 0.99)/q(alone, 0.99), "beside/alone-p99")
	b.ReportMetric(float64(fv), "flood-changes")
}
