package sealed

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/file"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/server"
	"github.com/lnvault/lnvault/socket"
)

func benchDir(b *testing.B) string {
	if d := os.Getenv("LNVAULT_BENCH_DIR"); d != "" {
		dir, err := os.MkdirTemp(d, "lnvault-bench-")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(dir) })
		return dir
	}
	return b.TempDir()
}

// BenchmarkSealCorpusChange is what sealing adds to a db_write's ack path:
// join, seal (XChaCha20-Poly1305, padded), base64, for the corpus's
// changes in turn. Goal: <= 0.02 ms a change.
func BenchmarkSealCorpusChange(b *testing.B) {
	reqs := corpus.MustLoad()
	k := newKeys(b)
	w := New(nil, k.session(b))
	var bytes int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r := reqs[i%len(reqs)]
		w.written = uint64(i) // the generation's first change also carries the key
		if _, _, err := w.sealTx(lnvault.NewTransaction(r.DataVersion, r.Writes)); err != nil {
			b.Fatal(err)
		}
		bytes += int64(len(w.buf))
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/change")
	b.ReportMetric(float64(bytes)/float64(b.N), "plain-bytes/change")
}

// pair is a plaintext and a sealed backend of one kind, appended to in
// turn so that both see the same disk at the same moment.
type pair struct {
	plain, sealed lnvault.Backend
}

// BenchmarkAckSealedVsPlain: the latency of one Append with encryption ÷
// without, on file: and on socket: (an lnvault server over loopback), the
// corpus's changes appended to both in alternating order. Goal <= 1.05.
func BenchmarkAckSealedVsPlain(b *testing.B) {
	reqs := corpus.MustLoad()
	for _, kind := range []string{"file", "socket"} {
		b.Run(kind, func(b *testing.B) {
			k := newKeys(b)
			p := pair{plain: openBench(b, kind), sealed: New(openBench(b, kind), k.session(b))}
			ctx := context.Background()
			var lp, ls []time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r := reqs[i%len(reqs)]
				c := lnvault.NewTransaction(uint32(i+1), r.Writes)
				order := []lnvault.Backend{p.plain, p.sealed}
				if i%2 == 1 {
					order[0], order[1] = order[1], order[0]
				}
				for _, bk := range order {
					t0 := time.Now()
					if err := bk.Append(ctx, c); err != nil {
						b.Fatal(err)
					}
					d := time.Since(t0)
					// As the plugin does after an answer (file: keeps its
					// zero-filled room ahead).
					if i, ok := bk.(lnvault.Idler); ok {
						i.Idle()
					}
					if bk == p.plain {
						lp = append(lp, d)
					} else {
						ls = append(ls, d)
					}
				}
			}
			b.StopTimer()
			slices.Sort(lp)
			slices.Sort(ls)
			q := func(s []time.Duration, f float64) float64 { return float64(s[int(float64(len(s)-1)*f)].Microseconds()) }
			b.ReportMetric(q(lp, 0.5), "plain-p50-µs")
			b.ReportMetric(q(ls, 0.5), "sealed-p50-µs")
			b.ReportMetric(q(ls, 0.5)/q(lp, 0.5), "sealed/plain-p50")
			b.ReportMetric(q(ls, 0.99)/q(lp, 0.99), "sealed/plain-p99")
		})
	}
}

func openBench(b *testing.B, kind string) lnvault.Backend {
	b.Helper()
	ctx := context.Background()
	url := "file://" + filepath.Join(benchDir(b), "b.dbak")
	fb, err := file.Open(ctx, url, lnvault.OpenOptions{Create: true, Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	if kind == "file" {
		b.Cleanup(func() { fb.Close() })
		return fb
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	srv := server.New(server.Config{Logger: quiet()}, fb)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(sctx, ln) }()
	sb, err := socket.Open(ctx, "socket:"+ln.Addr().String(), lnvault.OpenOptions{Create: true, Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		sb.Close()
		cancel()
		<-done
		fb.Close()
	})
	return sb
}
