// Package powercut cuts the power under the backup: the backup file lives on
// LazyFS, which loses every unsynced write on command and can tear a
// sequence of writes, while the real lnvault binary is driven as lightningd
// drives it (the harness, the real corpus). After each cut the machine comes
// back (remount), the plugin restarts with lightningd's next db_write, and in
// the end the backup must restore to exactly the node's database: every
// acknowledged change once, nothing else. Under CI=true these tests run,
// never skip.
package powercut

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/backends"
	"github.com/lnvault/lnvault/backupplugin"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/dumphash"
	"github.com/lnvault/lnvault/internal/harness"
	"github.com/lnvault/lnvault/internal/lazyfs"
	"github.com/lnvault/lnvault/restore"
)

var lnvaultBin string

func TestMain(m *testing.M) {
	backends.Register()
	os.Exit(harness.RunWithLnvault(m, "lnv-pc-", &lnvaultBin))
}

// mount mounts LazyFS for a test; without it the test fails under CI and is
// skipped (saying what to install) elsewhere.
func mount(t *testing.T) *lazyfs.FS {
	t.Helper()
	if _, err := lazyfs.Binary(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	if !dumphash.Available() {
		t.Fatal("the sqlite3 command line tool is needed (apt-get install sqlite3)")
	}
	dir, err := os.MkdirTemp("", "lnv-lz-")
	if err != nil {
		t.Fatal(err)
	}
	fs, err := lazyfs.Mount(dir)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		fs.Close()
		os.RemoveAll(dir)
	})
	return fs
}

// cuts is how many cuts a campaign makes: 50, 1000 with LNVAULT_LONG=1, or
// LNVAULT_CUTS.
func cuts() int {
	if n, err := strconv.Atoi(os.Getenv("LNVAULT_CUTS")); err == nil && n > 0 {
		return n
	}
	if os.Getenv("LNVAULT_LONG") == "1" {
		return 1000
	}
	return 50
}

// workload is what lightningd sends during a campaign of n cuts: the real
// corpus, then, when n cuts need more changes than it holds (at most 15 a
// cut), CLN-shaped datastore writes that carry on from its last version.
func workload(n int) []corpus.Request {
	reqs := corpus.MustLoad()
	if need := n*15 + 100; need > len(reqs) {
		last := reqs[len(reqs)-1].DataVersion
		reqs = append(reqs, harness.Synthetic(last+1, need-len(reqs), 400, false, 1)...)
	}
	return reqs
}

// fault is one way the power goes.
type fault struct {
	name string
	// arm prepares lazyfs before the next append (nil: none); the append
	// then fails or succeeds by itself.
	arm func(fs *lazyfs.FS, path string) error
	// midAppend: the plugin is killed at a random moment of the append and
	// the unsynced data is dropped.
	midAppend bool
}

var faults = []fault{
	{name: "cut during an append (clear unsynced data)", midAppend: true},
	{name: "cut between appends (clear unsynced data)"},
	{name: "crash before the append's fdatasync", arm: func(fs *lazyfs.FS, p string) error {
		return fs.CrashBefore("fsync", regexpQuote(filepath.Base(p)))
	}},
	{name: "torn: only the first write of the append", arm: func(fs *lazyfs.FS, p string) error { return fs.TornSeq(p, 1) }},
	{name: "torn: only the second write of the append", arm: func(fs *lazyfs.FS, p string) error { return fs.TornSeq(p, 2) }},
	{name: "torn: half of the first write", arm: func(fs *lazyfs.FS, p string) error { return fs.TornOp(p, 2, 1) }},
	{name: "torn: the second half of the first write", arm: func(fs *lazyfs.FS, p string) error { return fs.TornOp(p, 2, 2) }},
}

func regexpQuote(s string) string { return strings.ReplaceAll(s, ".", `\.`) }

// TestPowerCutsFileBackup runs the campaign on a file: backup of each format.
func TestPowerCutsFileBackup(t *testing.T) {
	for _, format := range []int{2, 1} {
		t.Run(fmt.Sprintf("format%d", format), func(t *testing.T) {
			campaign(t, format, cuts())
		})
	}
}

func campaign(t *testing.T, format, n int) {
	fs := mount(t)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 7))
	t.Logf("seed %d, %d cuts", seed, n)

	path := filepath.Join(fs.Mnt, "node.dbak")
	url := "file://" + path
	b, err := lnvault.Open(ctx, url, lnvault.OpenOptions{Create: true, Format: format})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	h, err := harness.New(harness.Config{Bin: lnvaultBin, Dir: filepath.Join(t.TempDir(), "node")})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := backupplugin.WriteLock(h.NetDir(), backupplugin.Lock{BackendURL: url}); err != nil {
		t.Fatal(err)
	}
	reqs := workload(n)
	next := 0 // the next request lightningd sends: everything before is committed
	write := func(what string) error {
		r := reqs[next]
		_, err := h.Write(ctx, fmt.Sprintf("%s#%d", what, next), r.DataVersion, r.Writes)
		if err == nil {
			next++
		}
		return err
	}
	if err := h.Start(ctx); err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	acked, failedOpen := 0, 0
	cut := 0
	for ; cut < n && next < len(reqs)-40; cut++ {
		for k := 1 + rng.IntN(12); k > 0; k-- {
			if err := write("w"); err != nil {
				t.Fatalf("cut %d: an append with the power on failed: %v; logs %v", cut, err, h.Logs())
			}
			acked++
		}
		f := faults[rng.IntN(len(faults))]
		counts[f.name]++
		switch {
		case f.midAppend:
			r := reqs[next]
			if _, _, err := h.Send("db_write", fmt.Sprintf("m#%d", next), map[string]any{"data_version": r.DataVersion, "writes": r.Writes}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Duration(rng.IntN(400)) * time.Microsecond)
			h.Kill() // its answer, if any, never reaches lightningd: not committed
			if err := fs.ClearCache(); err != nil {
				t.Fatal(err)
			}
		case f.arm == nil:
			h.Kill()
			if err := fs.ClearCache(); err != nil {
				t.Fatal(err)
			}
		default:
			if err := f.arm(fs, path); err != nil {
				t.Fatal(err)
			}
			if err := write("f"); err == nil {
				acked++ // durable before lazyfs went down: must survive
			}
			h.Kill()
		}
		if err := fs.Remount(); err != nil {
			t.Fatalf("cut %d (%s): %v", cut, f.name, err)
		}
		// The backup opens, and holds the acknowledged changes (and at
		// most the one in flight).
		if err := checkHead(ctx, url, reqs, next); err != nil {
			failedOpen++
			t.Fatalf("cut %d (%s): %v", cut, f.name, err)
		}
		if err := h.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if err := write("r"); err != nil {
			t.Fatalf("cut %d (%s): the first write after the cut failed: %v; logs %v", cut, f.name, err, h.Logs())
		}
		acked++
	}
	if cut < n {
		t.Fatalf("the workload ran out after %d of %d cuts", cut, n)
	}
	if _, err := h.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	for name, c := range counts {
		t.Logf("%3d × %s", c, name)
	}
	checkFinal(ctx, t, url, reqs[next-1].DataVersion, h.NodeDBPath())
	t.Logf("format %d: %d cuts, %d acknowledged changes: 0 lost, 0 duplicated, %d backups failed to open", format, n, acked, failedOpen)
}

// checkHead opens the backup read-only: its head is the last committed
// change (next-1) or the one in flight (next), never anything else.
func checkHead(ctx context.Context, url string, reqs []corpus.Request, next int) error {
	b, err := lnvault.Open(ctx, url, lnvault.OpenOptions{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("the backup does not open: %w", err)
	}
	defer b.Close()
	m := b.Metadata()
	last := reqs[next-1].DataVersion
	if m.Version == last || m.Version == reqs[next].DataVersion {
		return nil
	}
	return fmt.Errorf("backup head %d, but the last acknowledged change is %d: %w", m.Version, last, errors.New("lost or extra changes"))
}

// checkFinal: every acknowledged change exactly once, nothing else: the
// backup's head is the last acknowledged version and its restore equals the
// node's database, which holds exactly the committed changes.
func checkFinal(ctx context.Context, t *testing.T, url string, last uint32, nodeDB string) {
	t.Helper()
	rb, err := lnvault.Open(ctx, url, lnvault.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("opening the backup after the campaign: %v", err)
	}
	defer rb.Close()
	if m := rb.Metadata(); m.Version != last {
		t.Fatalf("backup head %d, want %d (the last acknowledged change)", m.Version, last)
	}
	dest := filepath.Join(t.TempDir(), "restored.sqlite3")
	if _, err := restore.Restore(ctx, rb, dest, restore.Options{}); err != nil {
		t.Fatalf("restore after the campaign: %v", err)
	}
	want, err := dumphash.Of(nodeDB)
	if err != nil {
		t.Fatal(err)
	}
	got, err := dumphash.Of(dest)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatal("after the campaign the restore differs from the node's database")
	}
}
