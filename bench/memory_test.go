package bench

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/dbapply"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/harness"
	"github.com/lnvault/lnvault/internal/s3test"
)

// BenchmarkLargeBackupMemory: peak RSS of `lnvault restore`, `verify` and
// `compact` (the real binary, as an operator runs them) on a large backup:
// a snapshot of a database with the real node's schema and data grown with
// synthetic rows to LNVAULT_BENCH_LARGE bytes (default 1 GiB), then 20,000
// changes of ~4 KiB. Per destination kind (file:, dir:, s3:// on versitygw,
// socket: to lnvault server, whose store is a file: backup: the client's
// side, so its compact is the request); the goal is 64 MiB.
// Run it alone: `go test -run '^$' -bench LargeBackupMemory -benchtime 1x
// -timeout 60m ./bench` (it writes ~6 GiB of temp files, in
// LNVAULT_BENCH_DIR if set).
func BenchmarkLargeBackupMemory(b *testing.B) {
	size := int64(1 << 30)
	if s := os.Getenv("LNVAULT_BENCH_LARGE"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			b.Fatalf("LNVAULT_BENCH_LARGE=%q: %v", s, err)
		}
		size = n
	}
	const changes = 20000
	dir := b.TempDir()
	if d := os.Getenv("LNVAULT_BENCH_DIR"); d != "" {
		var err error
		if dir, err = os.MkdirTemp(d, "lnvault-bench-"); err != nil {
			b.Fatal(err)
		}
		defer os.RemoveAll(dir)
	}
	bin, err := harness.BuildLnvault(dir)
	if err != nil {
		b.Fatal(err)
	}
	db := filepath.Join(dir, "large.sqlite3")
	version := buildLargeDB(b, db, size)
	ep, bucket := s3test.Start(b)
	for b.Loop() {
		for _, kind := range []string{"file", "dir", "s3", "socket"} {
			var url string
			switch kind {
			case "file":
				url = "file://" + filepath.Join(dir, "large.dbak")
			case "dir":
				url = "dir://" + filepath.Join(dir, "large-replica")
			case "s3":
				url = s3test.URL(ep, bucket, "large")
			case "socket":
				srv := harness.NewServerProc(b, bin, "file://"+filepath.Join(dir, "srv.dbak"))
				srv.Start(true)
				defer srv.Kill()
				url = "socket:" + srv.Addr
			}
			writeLargeBackup(b, url, db, version, changes)
			dest := filepath.Join(dir, "restored.sqlite3")
			for _, op := range []struct {
				name string
				args []string
			}{
				{"restore", []string{"restore", url, dest}},
				{"verify", []string{"verify", url}},
				{"compact", []string{"compact", url}},
			} {
				rss, anon := peakRSS(b, bin, op.args...)
				b.ReportMetric(rss, kind+"-"+op.name+"-rss-MiB")
				b.ReportMetric(anon, kind+"-"+op.name+"-anon-MiB")
			}
			if got, err := dbapply.DataVersion(context.Background(), dest); err != nil || got != version+changes {
				b.Fatalf("%s: restored database at data_version %d (%v), want %d", kind, got, err, version+changes)
			}
			os.Remove(dest)
			if out, err := exec.Command(bin, "delete", url, "--yes").CombinedOutput(); err != nil {
				b.Fatalf("deleting %s: %v: %s", url, err, out)
			}
		}
	}
}

// buildLargeDB applies the corpus (the real schema and data) to a new
// database at path, then adds synthetic rows to vars (64 KiB of random
// bytes each) until the file is size bytes; it returns its data_version.
func buildLargeDB(tb testing.TB, path string, size int64) uint32 {
	tb.Helper()
	ctx := context.Background()
	ap, err := dbapply.Create(ctx, path)
	if err != nil {
		tb.Fatal(err)
	}
	for _, r := range corpus.MustLoad() {
		if err := ap.Apply(ctx, r.Change()); err != nil {
			tb.Fatal(err)
		}
	}
	if err := ap.Finish(ctx); err != nil {
		tb.Fatal(err)
	}
	db, err := sql.Open("sqlite", path)
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	for i := 0; ; i += 256 {
		if fi, err := os.Stat(path); err != nil || fi.Size() >= size {
			if err != nil {
				tb.Fatal(err)
			}
			break
		}
		tx, err := db.Begin()
		if err != nil {
			tb.Fatal(err)
		}
		for j := i; j < i+256; j++ {
			if _, err := tx.Exec("INSERT INTO vars (name, blobval) VALUES (?, randomblob(65536))", fmt.Sprintf("synthetic-%d", j)); err != nil {
				tb.Fatal(err)
			}
		}
		if err := tx.Commit(); err != nil {
			tb.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		tb.Fatal(err)
	}
	v, err := dbapply.DataVersion(ctx, path)
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

// writeLargeBackup creates a backup at url holding a snapshot of db at
// version, then n transactions as lightningd writes them (data_version
// bumped, a row of ~4 KiB of hex).
func writeLargeBackup(tb testing.TB, url, db string, version uint32, n int) {
	tb.Helper()
	ctx := context.Background()
	b, err := lnvault.Open(ctx, url, lnvault.OpenOptions{Create: true})
	if err != nil {
		tb.Fatal(err)
	}
	f, err := os.Open(db)
	if err != nil {
		tb.Fatal(err)
	}
	fi, err := f.Stat()
	if err != nil {
		tb.Fatal(err)
	}
	err = b.Append(ctx, lnvault.NewSnapshot(version, io.NewSectionReader(f, 0, fi.Size())))
	f.Close()
	if err != nil {
		tb.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	blob := make([]byte, 2048)
	for i := 1; i <= n; i++ {
		for k := range blob {
			blob[k] = byte(rng.Uint32())
		}
		c := lnvault.NewTransaction(version+uint32(i), []string{
			"UPDATE vars SET intval = intval + 1 WHERE name = 'data_version'",
			fmt.Sprintf("INSERT INTO vars (name, blobval) VALUES ('change-%d', x'%s')", i, hex.EncodeToString(blob)),
		})
		if err := b.Append(ctx, c); err != nil {
			tb.Fatal(err)
		}
	}
	if err := b.Close(); err != nil {
		tb.Fatal(err)
	}
}

// peakRSS runs the lnvault binary with args and returns, in MiB, its peak
// resident set (VmHWM) and the peak of its anonymous memory (heap, stacks,
// SQLite's caches; RssAnon), sampled every 5 ms from /proc. Not the child's
// rusage: a child forked from this process inherits this process's peak
// there (the kernel keeps the pre-exec peak).
func peakRSS(tb testing.TB, bin string, args ...string) (rss, anon float64) {
	tb.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "LIGHTNINGD_PLUGIN=")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	status := fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)
	var hwm, maxAnon int64
	field := func(b []byte, name string) int64 {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, name); ok {
				n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				return n
			}
		}
		return 0
	}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err != nil {
				tb.Fatalf("lnvault %v: %v: %s", args, err, out.String())
			}
			if hwm == 0 {
				tb.Fatalf("lnvault %v ended before its memory could be sampled", args)
			}
			return float64(hwm) / 1024, float64(maxAnon) / 1024
		case <-tick.C:
			if b, err := os.ReadFile(status); err == nil && bytes.Contains(b, []byte("VmHWM")) {
				hwm = max(hwm, field(b, "VmHWM:"))
				maxAnon = max(maxAnon, field(b, "RssAnon:"))
			}
		}
	}
}
