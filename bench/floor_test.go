package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/backupplugin"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/harness"
)

// BenchmarkDbWriteVsFloor: db_write ack latency of the real plugin into a
// file backup against the floor plugin (e2e/floorplugin: decode, write,
// fdatasync, answer), both driven by the same real traffic, one change to
// each in turn (the order alternating), in the same directory, so both see
// the same disk.
func BenchmarkDbWriteVsFloor(b *testing.B) {
	ctx := context.Background()
	tmp := b.TempDir()
	floorBin := filepath.Join(tmp, "floorplugin")
	if out, err := exec.Command("go", "build", "-o", floorBin, "../e2e/floorplugin").CombinedOutput(); err != nil {
		b.Fatalf("building the floor plugin: %v: %s", err, out)
	}
	reqs := corpus.MustLoad()
	if f := os.Getenv("LNVAULT_BENCH_TRAFFIC"); f != "" {
		reqs = trafficFrom(b, f)
	}
	if b.N < len(reqs) {
		reqs = reqs[:max(b.N, 1)]
	}
	start := func(name, bin string) *harness.Harness {
		h, err := harness.New(harness.Config{Bin: bin, Dir: filepath.Join(tmp, name), NoNodeDB: true})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { h.Close() })
		url := "file://" + filepath.Join(tmp, name+".dbak")
		bk, err := lnvault.Open(ctx, url, lnvault.OpenOptions{Create: true})
		if err != nil {
			b.Fatal(err)
		}
		bk.Close()
		if err := backupplugin.WriteLock(h.NetDir(), backupplugin.Lock{BackendURL: url}); err != nil {
			b.Fatal(err)
		}
		if err := h.Start(ctx); err != nil {
			b.Fatal(err)
		}
		return h
	}
	lv, fl := start("lnvault", os.Args[0]), start("floor", floorBin)
	var lvLat, flLat []time.Duration
	write := func(h *harness.Harness, i int, r corpus.Request, into *[]time.Duration) {
		d, err := h.Write(ctx, fmt.Sprint(i), r.DataVersion, r.Writes)
		if err != nil {
			b.Fatal(err)
		}
		if h.Inited() {
			*into = append(*into, d)
		}
	}
	b.ResetTimer()
	for i, r := range reqs {
		if i == 1 {
			for _, h := range []*harness.Harness{lv, fl} {
				if err := h.Init(ctx); err != nil {
					b.Fatal(err)
				}
			}
		}
		if i%2 == 0 {
			write(lv, i, r, &lvLat)
			write(fl, i, r, &flLat)
		} else {
			write(fl, i, r, &flLat)
			write(lv, i, r, &lvLat)
		}
	}
	b.StopTimer()
	l, f := harness.Summarize(lvLat), harness.Summarize(flLat)
	if l.N == 0 || f.N == 0 {
		return // b.N == 1: only the write before init
	}
	b.Logf("lnvault p50 %.3f ms p99 %.3f ms mean %.3f ms | floor p50 %.3f ms p99 %.3f ms mean %.3f ms (n=%d)",
		ms(l.P50), ms(l.P99), ms(l.Sum/time.Duration(l.N)), ms(f.P50), ms(f.P99), ms(f.Sum/time.Duration(f.N)), l.N)
	b.ReportMetric(float64(l.P50)/float64(f.P50), "p50÷floor")
	b.ReportMetric(float64(l.P99)/float64(f.P99), "p99÷floor")
	b.ReportMetric(float64(l.Sum)/float64(f.Sum), "mean÷floor")
}

// trafficFrom reads the transactions of a backup as requests: the traffic of
// a real node recorded by lnvault itself.
func trafficFrom(b *testing.B, path string) []corpus.Request {
	bk, err := lnvault.Open(context.Background(), "file://"+path, lnvault.OpenOptions{ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	defer bk.Close()
	var reqs []corpus.Request
	err = bk.Stream(context.Background(), 0, func(c *lnvault.Change) error {
		if c.Kind == lnvault.KindTransaction {
			reqs = append(reqs, corpus.Request{DataVersion: c.Version, Writes: append([]string(nil), c.Statements...)})
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return reqs
}
