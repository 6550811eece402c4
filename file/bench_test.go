package file

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/harness"
	"golang.org/x/sys/unix"
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

// BenchmarkAppend measures the latency of Append with corpus-shaped changes,
// and in the same loop (same disk, same moment) the floor: writing the same
// number of bytes (the change's format-1 record) at the end of a file plus one
// fdatasync. It reports both p50/p99 and their ratios.
func BenchmarkAppend(b *testing.B) {
	reqs := corpus.MustLoad()
	for _, format := range []int{1, 2} {
		b.Run(fmt.Sprintf("v%d", format), func(b *testing.B) {
			dir := benchDir(b)
			bk, err := Open(context.Background(), "file://"+filepath.Join(dir, "b.dbak"), lnvault.OpenOptions{Create: true, Format: format})
			if err != nil {
				b.Fatal(err)
			}
			defer bk.Close()
			ref, err := os.OpenFile(filepath.Join(dir, "ref"), os.O_RDWR|os.O_CREATE, 0o600)
			if err != nil {
				b.Fatal(err)
			}
			defer ref.Close()
			sizes := make([]int, len(reqs))
			for i, r := range reqs {
				sizes[i] = v1RecHdr + len(joinNUL(r.Writes))
			}
			buf := make([]byte, 64<<10)
			app := make([]time.Duration, 0, b.N)
			raw := make([]time.Duration, 0, b.N)
			var refOff int64
			ctx := context.Background()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r := reqs[i%len(reqs)]
				c := &lnvault.Change{Version: uint32(i + 1), Kind: lnvault.KindTransaction, Statements: r.Writes}
				t0 := time.Now()
				if err := bk.Append(ctx, c); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				n := sizes[i%len(sizes)]
				if n > len(buf) {
					buf = make([]byte, n)
				}
				if _, err := ref.WriteAt(buf[:n], refOff); err != nil {
					b.Fatal(err)
				}
				if err := unix.Fdatasync(int(ref.Fd())); err != nil {
					b.Fatal(err)
				}
				refOff += int64(n)
				t2 := time.Now()
				app = append(app, t1.Sub(t0))
				raw = append(raw, t2.Sub(t1))
				bk.Idle() // as the plugin and the server do once a change is acknowledged
			}
			b.StopTimer()
			harness.ReportRatios(b, app, raw, "raw")
		})
	}
}

// BenchmarkCorpusSize writes the whole corpus in both formats and reports the
// size of format 2 relative to format 1 (the reference layout).
func BenchmarkCorpusSize(b *testing.B) {
	reqs := corpus.MustLoad()
	for i := 0; i < b.N; i++ {
		var size [3]int64
		for _, format := range []int{1, 2} {
			dir := benchDir(b)
			p := filepath.Join(dir, fmt.Sprintf("b%d.dbak", format))
			bk, err := Open(context.Background(), "file://"+p, lnvault.OpenOptions{Create: true, Format: format})
			if err != nil {
				b.Fatal(err)
			}
			appendAll(b, bk, reqs)
			bk.Close()
			fi, _ := os.Stat(p)
			size[format] = fi.Size()
		}
		b.ReportMetric(float64(size[1]), "v1-bytes")
		b.ReportMetric(float64(size[2]), "v2-bytes")
		b.ReportMetric(float64(size[2])/float64(size[1]), "v2/v1-size")
	}
}
