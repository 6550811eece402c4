package server_test

import (
	"context"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/server"
	"github.com/lnvault/lnvault/socket"
	"github.com/lnvault/lnvault/tlskey"
)

func newKey(t testing.TB) (*tlskey.Key, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "k.key")
	k, _, err := tlskey.LoadOrCreate(path)
	if err != nil {
		t.Fatal(err)
	}
	return k, path
}

// startTLS serves a new file backup over TLS with a server key that admits
// only the client keys in allowed.
func startTLS(t testing.TB, allowed ...string) (*testServer, *tlskey.Key) {
	t.Helper()
	ts := startServer(t, server.Config{}) // a plaintext listener on the same backup
	sk, _ := newKey(t)
	ok := map[string]bool{}
	for _, p := range allowed {
		ok[p] = true
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go ts.srv.ServeTLS(context.Background(), ln, tlskey.ServerConfig(sk, func(p string) bool { return ok[p] }))
	ts.addr = ln.Addr().String()
	return ts, sk
}

// Over TLS with pinned keys a client writes and restores; a wrong server
// pin, a missing or unauthorized client key, or a client without TLS is
// refused with a clear error, and nothing is stored.
func TestTLSPinsAndClientKeys(t *testing.T) {
	ctx := context.Background()
	ck, ckPath := newKey(t)
	other, otherPath := newKey(t)
	ts, sk := startTLS(t, ck.Pin)
	changes := corpusChanges(t)[:40]

	url := ts.url("pin=" + sk.Pin + "&key=" + ckPath)
	w := openSocket(t, url, lnvault.OpenOptions{Create: true})
	for _, c := range changes {
		if err := w.Append(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	checkExact(t, openSocket(t, url, lnvault.OpenOptions{ReadOnly: true}), changes)
	want := ts.b.Metadata()

	refused := func(what, u, msg string) {
		t.Helper()
		b, err := socket.Open(ctx, u, lnvault.OpenOptions{Logger: testLogger(t)})
		if err == nil {
			err = b.Append(ctx, lnvault.NewTransaction(want.Version+1, []string{"UPDATE vars SET intval = 1 WHERE name = 'x'"}))
			b.Close()
		}
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Fatalf("%s: %v, want an error saying %q", what, err, msg)
		}
		if m := ts.b.Metadata(); m != want {
			t.Fatalf("%s: the backup changed to %+v", what, m)
		}
	}
	refused("wrong server pin", ts.url("pin="+other.Pin+"&key="+ckPath), "not the pinned "+other.Pin)
	refused("no client key", ts.url("pin="+sk.Pin), "admits only authorized client keys")
	refused("unauthorized client key", ts.url("pin="+sk.Pin+"&key="+otherPath), "is not in its --authorized-keys")
	refused("a client without TLS", ts.url("retries=0"), "speaks TLS")
	if _, err := socket.ParseURL(ts.url("key=" + ckPath)); err == nil || !strings.Contains(err.Error(), "give the server's pin= too") {
		t.Fatalf("key= without pin=: %v", err)
	}
}

// BenchmarkAckTLSVsPlain: the ack of one corpus change over TLS with a
// pinned server and an authorized client key ÷ over the plaintext
// protocol, each to its own in-process server over loopback, appended to in
// alternating order. Goal <= 1.1.
func BenchmarkAckTLSVsPlain(b *testing.B) {
	ctx := context.Background()
	plain := startServer(b, server.Config{})
	ck, ckPath := newKey(b)
	sec, sk := startTLS(b, ck.Pin)
	cp := openSocket(b, plain.url(""), lnvault.OpenOptions{})
	ct := openSocket(b, sec.url("pin="+sk.Pin+"&key="+ckPath), lnvault.OpenOptions{})
	changes := corpusChanges(b)
	var lp, lt []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c := lnvault.NewTransaction(uint32(i+1), changes[i%len(changes)].Statements)
		order := []*socket.Backend{cp, ct}
		if i%2 == 1 {
			order[0], order[1] = ct, cp
		}
		for _, bk := range order {
			t0 := time.Now()
			if err := bk.Append(ctx, c); err != nil {
				b.Fatal(err)
			}
			if bk == cp {
				lp = append(lp, time.Since(t0))
			} else {
				lt = append(lt, time.Since(t0))
			}
		}
	}
	b.StopTimer()
	slices.Sort(lp)
	slices.Sort(lt)
	q := func(s []time.Duration, f float64) float64 { return float64(s[int(float64(len(s)-1)*f)].Microseconds()) }
	b.ReportMetric(q(lp, 0.5), "plain-p50-µs")
	b.ReportMetric(q(lt, 0.5), "tls-p50-µs")
	b.ReportMetric(q(lt, 0.5)/q(lp, 0.5), "tls/plain-p50")
	b.ReportMetric(q(lt, 0.99)/q(lp, 0.99), "tls/plain-p99")
}
