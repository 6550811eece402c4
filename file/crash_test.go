package file

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/dbapply"
	"github.com/lnvault/lnvault/internal/corpus"
)

const crashChildEnv = "LNVAULT_FILE_CRASH_CHILD"

func TestMain(m *testing.M) {
	lnvault.Register("file", OpenBackend) // this package's tests open file: URLs
	if os.Getenv(crashChildEnv) == "1" {
		if err := crashChild(); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(3)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// crashChild plays the plugin: it opens the backup, optionally rewinds the
// last change and sends it again (lightningd had not committed it), then
// appends the corpus from NEXT on, printing "durable <i>" after each Append
// returns, and compacts in the background at random moments. The parent
// kills it at a random time.
func crashChild() error {
	ctx := context.Background()
	// The corpus slice comes from the parent in a simple binary file:
	// parsing the whole JSON corpus would dominate a short-lived child.
	first, _ := strconv.Atoi(os.Getenv("LNVAULT_CRASH_FIRST"))
	reqs, err := readReqs(os.Getenv("LNVAULT_CRASH_REQS"), first)
	if err != nil {
		return err
	}
	next, _ := strconv.Atoi(os.Getenv("LNVAULT_CRASH_NEXT"))
	seed, _ := strconv.ParseUint(os.Getenv("LNVAULT_CRASH_SEED"), 10, 64)
	rng := rand.New(rand.NewPCG(seed, 7))
	b, err := Open(ctx, os.Getenv("LNVAULT_CRASH_URL"), lnvault.OpenOptions{})
	if err != nil {
		return err
	}
	var outMu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	say := func(s string, a ...any) {
		outMu.Lock()
		fmt.Fprintf(out, s+"\n", a...)
		out.Flush()
		outMu.Unlock()
	}
	say("ready")
	if next > 0 && rng.IntN(6) == 0 {
		say("rewinding")
		if err := b.Rewind(ctx); err == nil {
			next--
		} else if !errors.Is(err, lnvault.ErrRewindTwice) {
			return err
		} else {
			say("rewind-refused")
		}
	}
	compactAt := -1
	if os.Getenv("LNVAULT_CRASH_COMPACT_NOW") == "t" {
		compactAt = next
	} else if rng.IntN(2) == 0 {
		compactAt = next + rng.IntN(15)
	}
	var wg sync.WaitGroup
	for i := next; i < len(reqs); i++ {
		if i == compactAt {
			wg.Add(1)
			say("compacting")
			go func() {
				defer wg.Done()
				if _, err := b.Compact(ctx); err != nil && !strings.Contains(err.Error(), "rewound") {
					fmt.Fprintln(os.Stderr, "compact:", err)
					os.Exit(4)
				}
				say("compacted")
			}()
		}
		if reqs[i].Writes == nil {
			break // past the slice the parent sent
		}
		if err := b.Append(ctx, reqs[i].Change()); err != nil {
			return err
		}
		say("durable %d", i)
	}
	wg.Wait()
	return b.Close()
}

// TestCrash kills a writer (SIGKILL) at random moments, during appends,
// rewinds and compactions, and checks after each kill that a new writer opens
// the backup, that every change reported durable is in it with at most one
// more, and that it restores to a database passing integrity_check.
func TestCrash(t *testing.T) {
	runs := 200
	if v, _ := strconv.Atoi(os.Getenv("LNVAULT_CRASH_RUNS")); v > 0 {
		runs = v
	}
	if os.Getenv("LNVAULT_LONG") == "1" {
		runs = 2000
	}
	reqs := corpus.MustLoad()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	dir := t.TempDir()
	var url string
	next := 0   // corpus index the next child starts from
	format := 1 // alternates per backup file
	fileNo := 0 // backups started
	restores, compactions, killedCompacting, appended := 0, 0, 0, 0
	var readyWait, restoreTime time.Duration
	start := time.Now()
	for run := 0; run < runs; run++ {
		if url == "" || next >= len(reqs) || run%25 == 0 {
			fileNo++
			format = 3 - format
			url = "file://" + filepath.Join(dir, fmt.Sprintf("crash-%d.dbak", fileNo))
			b := mustOpen(t, url, lnvault.OpenOptions{Create: true, Format: format})
			b.Close()
			next = 0
		}
		lo, hi := max(0, next-1), min(len(reqs), next+400)
		reqFile := filepath.Join(dir, "reqs.bin")
		if err := writeReqs(reqFile, reqs[lo:hi]); err != nil {
			t.Fatal(err)
		}
		// One run in eight lets a compaction finish before the kill, so
		// the backups get compacted and later kills hit later stages.
		waitCompact := rng.IntN(12) == 0
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), crashChildEnv+"=1", "LNVAULT_CRASH_URL="+url,
			"LNVAULT_CRASH_REQS="+reqFile, "LNVAULT_CRASH_FIRST="+strconv.Itoa(lo),
			"LNVAULT_CRASH_NEXT="+strconv.Itoa(next), "LNVAULT_CRASH_COMPACT_NOW="+strconv.FormatBool(waitCompact)[:1], "LNVAULT_CRASH_SEED="+strconv.FormatUint(rng.Uint64(), 10))
		stdout, _ := cmd.StdoutPipe()
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan []string, 1)
		ready, compactedCh := make(chan struct{}), make(chan struct{})
		go func() {
			var l []string
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				switch sc.Text() {
				case "ready":
					close(ready)
				case "compacted":
					close(compactedCh)
				}
				l = append(l, sc.Text())
			}
			lines <- l
		}()
		t0 := time.Now()
		select {
		case <-ready:
			readyWait += time.Since(t0)
		case <-time.After(20 * time.Second):
		}
		// Kill 0-60 ms into the child's work (a few to a few dozen
		// appends), one run in five later so that compactions also finish.
		d := time.Duration(rng.IntN(60_000)) * time.Microsecond
		if waitCompact {
			select {
			case <-compactedCh:
			case <-time.After(30 * time.Second):
				t.Errorf("run %d: compaction did not finish in 30s", run)
			}
			d = time.Duration(rng.IntN(20_000)) * time.Microsecond
		} else if rng.IntN(5) == 0 {
			d = time.Duration(rng.IntN(400)) * time.Millisecond
		}
		time.Sleep(d)
		cmd.Process.Signal(syscall.SIGKILL)
		out := <-lines
		werr := cmd.Wait()
		if ee, ok := werr.(*exec.ExitError); ok && ee.ExitCode() > 0 {
			t.Fatalf("run %d: child failed: %v\n%s", run, werr, stderr.String())
		}
		// The lowest count of changes that must be present.
		must := next
		compacted, compacting := false, false
		for _, l := range out {
			switch {
			case l == "compacting":
				compacting = true
				compactions++
			case l == "rewinding":
				must = next - 1 // the plugin drops the uncommitted last change
			case l == "rewind-refused":
				must = next
			case l == "compacted":
				compacted, compacting = true, false
			case strings.HasPrefix(l, "durable "):
				i, _ := strconv.Atoi(strings.TrimPrefix(l, "durable "))
				must = i + 1
			}
		}
		if compacting {
			killedCompacting++
		}
		n := checkCrashBackup(t, run, url, reqs, must)
		appended += max(0, n-next)
		next = n
		// Restoring is slow under -race; there only every 25th run and
		// after compactions (whose snapshot makes it quick).
		if (compacted && (!raceEnabled || rng.IntN(2) == 0)) || run%50 == 49 || (!raceEnabled && run%4 == 0) {
			t1 := time.Now()
			restoreCheck(t, run, url)
			restoreTime += time.Since(t1)
			restores++
		}
	}
	t.Logf("%d runs over %d backups (v1 and v2), %d changes appended, %d compactions started, %d killed while compacting, %d restores (%v), waited %v for children to start, %v in all",
		runs, fileNo, appended, compactions, killedCompacting, restores, restoreTime, readyWait, time.Since(start))
	if compactions == killedCompacting || killedCompacting == 0 {
		t.Errorf("compactions were not both interrupted and completed: the test did not exercise them")
	}
}

// checkCrashBackup opens the backup as the next writer would and checks that
// it holds the corpus prefix of at least must and at most must+1 changes;
// it returns the length of that prefix.
func checkCrashBackup(t *testing.T, run int, url string, reqs []corpus.Request, must int) int {
	t.Helper()
	b, err := Open(context.Background(), url, lnvault.OpenOptions{Logger: quietLog()})
	if err != nil {
		t.Fatalf("run %d: reopening after the kill: %v", run, err)
	}
	defer b.Close()
	all, err := tryStream(b, 0)
	if err != nil {
		t.Fatalf("run %d: stream after the kill: %v", run, err)
	}
	if len(all) == 0 {
		if must > 0 {
			t.Fatalf("run %d: backup empty, %d changes were durable", run, must)
		}
		return 0
	}
	txs := all
	var snap *got
	if all[0].Kind == lnvault.KindSnapshot {
		snap, txs = &all[0], all[1:]
	}
	// Find the corpus index of the last change near where it must be.
	last := all[len(all)-1]
	end := -1
	for j := max(0, must-2); j <= min(len(reqs)-1, must+1); j++ {
		if last.Kind == lnvault.KindTransaction && reqs[j].DataVersion == last.Version && slices.Equal(reqs[j].Writes, last.Statements) {
			end = j
		}
	}
	if end < 0 && len(txs) == 0 && snap != nil {
		end = -2 // only a snapshot; not produced by compaction (it keeps the head)
	}
	if end < 0 {
		t.Fatalf("run %d: the last change (version %d) is not corpus change %d or %d", run, last.Version, must-1, must)
	}
	n := end + 1
	if n < must || n > must+1 {
		t.Fatalf("run %d: backup holds %d corpus changes; %d were reported durable, at most one more may be there", run, n, must)
	}
	first := n - len(txs)
	if first < 0 {
		t.Fatalf("run %d: %d transactions for a prefix of %d", run, len(txs), n)
	}
	for i, g := range txs {
		r := reqs[first+i]
		if g.Kind != lnvault.KindTransaction || g.Version != r.DataVersion || !slices.Equal(g.Statements, r.Writes) {
			t.Fatalf("run %d: change %d of the backup differs from corpus change %d", run, i, first+i)
		}
	}
	if snap == nil && first != 0 {
		t.Fatalf("run %d: the backup starts at corpus change %d without a snapshot", run, first)
	}
	if snap != nil && (first == 0 || snap.Version != reqs[first-1].DataVersion) {
		t.Fatalf("run %d: snapshot at version %d before corpus change %d", run, snap.Version, first)
	}
	return n
}

func restoreCheck(t *testing.T, run int, url string) {
	t.Helper()
	ctx := context.Background()
	b, err := Open(ctx, url, lnvault.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	db := filepath.Join(t.TempDir(), "r.sqlite3")
	ap, err := dbapply.Create(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Stream(ctx, 0, func(c *lnvault.Change) error { return ap.Apply(ctx, c) }); err != nil {
		ap.Close(ctx)
		t.Fatalf("run %d: restore: %v", run, err)
	}
	if err := ap.Finish(ctx); err != nil {
		t.Fatalf("run %d: restored database: %v", run, err)
	}
	os.Remove(db)
}

// writeReqs stores requests as: u32 count, then per request u32 version,
// u32 statement count, and per statement u32 length + bytes.
func writeReqs(path string, reqs []corpus.Request) error {
	var b []byte
	b = binary.BigEndian.AppendUint32(b, uint32(len(reqs)))
	for _, r := range reqs {
		b = binary.BigEndian.AppendUint32(b, r.DataVersion)
		b = binary.BigEndian.AppendUint32(b, uint32(len(r.Writes)))
		for _, w := range r.Writes {
			b = binary.BigEndian.AppendUint32(b, uint32(len(w)))
			b = append(b, w...)
		}
	}
	return os.WriteFile(path, b, 0o600)
}

// readReqs reads what writeReqs wrote, placed at index first of a slice as
// long as the corpus (entries outside it have nil Writes).
func readReqs(path string, first int) ([]corpus.Request, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	be := binary.BigEndian
	u32 := func() uint32 {
		v := be.Uint32(data)
		data = data[4:]
		return v
	}
	n := int(u32())
	out := make([]corpus.Request, first+n+1)
	for i := 0; i < n; i++ {
		r := &out[first+i]
		r.DataVersion = u32()
		r.Writes = make([]string, u32())
		for j := range r.Writes {
			l := u32()
			r.Writes[j] = string(data[:l])
			data = data[l:]
		}
	}
	return out, nil
}
