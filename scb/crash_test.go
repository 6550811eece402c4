package scb

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The crash helper: the test binary re-executed with LNVAULT_SCB_CRASH_DIR
// set swaps versions in a loop until it is killed.
const crashEnv = "LNVAULT_SCB_CRASH_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashEnv); dir != "" {
		crashHelper(dir, os.Getenv("LNVAULT_SCB_CRASH_RUN"))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// crashContent is self-checking: a header naming run, index and length,
// pseudo-random bytes derived from them, then the SHA-256 of all before it.
func crashContent(run, i int) []byte {
	r := rand.New(rand.NewPCG(uint64(run), uint64(i)))
	n := 256 + r.IntN(24<<10)
	b := []byte(fmt.Sprintf("LNVTEST %d %d %d\n", run, i, n))
	body := make([]byte, n)
	for j := range body {
		body[j] = byte(r.Uint32())
	}
	b = append(b, body...)
	sum := sha256.Sum256(b)
	return append(b, sum[:]...)
}

// parseCrashContent returns run and index of a complete content, or an error
// for anything partial or mixed.
func parseCrashContent(b []byte) (run, i int, err error) {
	line, _, ok := bytes.Cut(b, []byte("\n"))
	if !ok {
		return 0, 0, fmt.Errorf("no header line in %d bytes", len(b))
	}
	var n int
	if _, err := fmt.Sscanf(string(line), "LNVTEST %d %d %d", &run, &i, &n); err != nil {
		return 0, 0, fmt.Errorf("bad header %q", line)
	}
	if !bytes.Equal(b, crashContent(run, i)) {
		return 0, 0, fmt.Errorf("content of run %d index %d is not whole (%d bytes)", run, i, len(b))
	}
	return run, i, nil
}

func crashHelper(dir, runS string) {
	run, _ := strconv.Atoi(runS)
	ctx := context.Background()
	local := &FileSwapper{Path: filepath.Join(dir, "scb.bin"), Keep: 5}
	st, err := OpenStore(ctx, "dir://"+filepath.Join(dir, "store"), StoreOptions{})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(3)
	}
	ss := &StoreSwapper{Store: st}
	w := bufio.NewWriter(os.Stdout)
	fmt.Fprintln(w, "ready")
	w.Flush()
	for i := 0; ; i++ {
		b := NewBackup(KindLNDMulti, crashContent(run, i), -1)
		if err := local.UpdateAndSwap(ctx, b); err != nil {
			fmt.Fprintln(w, "error", err)
			w.Flush()
			os.Exit(3)
		}
		if err := ss.UpdateAndSwap(ctx, b); err != nil {
			fmt.Fprintln(w, "error", err)
			w.Flush()
			os.Exit(3)
		}
		fmt.Fprintln(w, "acked", i)
		w.Flush()
	}
}

// TestCrashAtomicity SIGKILLs the helper at random points, over and over on
// the same folders, and checks after each kill that the local file and the
// store's latest version are exactly one complete version, no older than the
// last acknowledged one; every archived and stored version stays whole.
func TestCrashAtomicity(t *testing.T) {
	runs := 200
	if os.Getenv("LNVAULT_LONG") == "1" {
		runs = 2000
	}
	const dirs = 8
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	start := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 2)
	var mu sync.Mutex
	killedMidway := 0
	for d := 0; d < dirs; d++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dir := filepath.Join(root, fmt.Sprint(d))
			os.Mkdir(dir, 0o700)
			lastRun, lastAck := -1, -1 // newest acknowledged (run, index) in dir
			var checked uint64         // store versions verified so far
			for r := d; r < runs; r += dirs {
				sem <- struct{}{}
				acked, mid, err := crashOnce(exe, dir, r)
				<-sem
				if err != nil {
					t.Error(err)
					return
				}
				if acked >= 0 {
					lastRun, lastAck = r, acked
				}
				if mid {
					mu.Lock()
					killedMidway++
					mu.Unlock()
				}
				if err := checkCrashDir(dir, lastRun, lastAck, &checked); err != nil {
					t.Errorf("after run %d (last acked %d/%d): %v", r, lastRun, lastAck, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d kills in %v, %d after the helper started swapping", runs, time.Since(start).Round(time.Millisecond), killedMidway)
	if killedMidway < runs/2 {
		t.Errorf("only %d of %d kills hit the swap loop", killedMidway, runs)
	}
}

// crashOnce runs the helper and kills it at a random point. It returns the
// last index the helper acknowledged (-1: none) and whether the kill came
// after the loop had started.
func crashOnce(exe, dir string, run int) (int, bool, error) {
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), crashEnv+"="+dir, "LNVAULT_SCB_CRASH_RUN="+strconv.Itoa(run))
	out, err := cmd.StdoutPipe()
	if err != nil {
		return -1, false, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return -1, false, err
	}
	lines := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	acked := -1
	mid := false
	var killAt <-chan time.Time
	if rand.IntN(5) == 0 {
		// Now and then anywhere, startup included.
		killAt = time.After(time.Duration(rand.IntN(60)) * time.Millisecond)
	}
	timeout := time.After(20 * time.Second)
loop:
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				break loop
			}
			switch {
			case l == "ready":
				mid = true
				if killAt == nil {
					killAt = time.After(time.Duration(rand.IntN(40000)) * time.Microsecond)
				}
			case strings.HasPrefix(l, "acked "):
				acked, _ = strconv.Atoi(strings.TrimPrefix(l, "acked "))
			default:
				cmd.Process.Kill()
				cmd.Wait()
				return acked, mid, fmt.Errorf("helper: %s", l)
			}
		case <-killAt:
			cmd.Process.Signal(syscall.SIGKILL)
			killAt = nil
		case <-timeout:
			cmd.Process.Kill()
			cmd.Wait()
			return acked, mid, fmt.Errorf("helper did not die")
		}
	}
	cmd.Wait()
	return acked, mid, nil
}

func newer(run, i, lastRun, lastAck int) bool {
	return run > lastRun || (run == lastRun && i >= lastAck)
}

func checkCrashDir(dir string, lastRun, lastAck int, checked *uint64) error {
	local := &FileSwapper{Path: filepath.Join(dir, "scb.bin"), Keep: 5}
	b, err := os.ReadFile(local.Path)
	if os.IsNotExist(err) {
		if lastRun >= 0 {
			return fmt.Errorf("local file missing after an acknowledged swap")
		}
	} else if err != nil {
		return err
	} else {
		run, i, err := parseCrashContent(b)
		if err != nil {
			return fmt.Errorf("local file: %w", err)
		}
		if !newer(run, i, lastRun, lastAck) {
			return fmt.Errorf("local file holds %d/%d, older than acknowledged %d/%d", run, i, lastRun, lastAck)
		}
	}
	arch, err := local.Archived()
	if err != nil {
		return err
	}
	if len(arch) > 5 {
		return fmt.Errorf("archive holds %d files, bound is 5", len(arch))
	}
	for _, a := range arch {
		ab, err := os.ReadFile(a)
		if err != nil {
			return err
		}
		if _, _, err := parseCrashContent(ab); err != nil {
			return fmt.Errorf("archived %s: %w", filepath.Base(a), err)
		}
	}
	ctx := context.Background()
	st, err := OpenDir(filepath.Join(dir, "store"), StoreOptions{})
	if err != nil {
		return err
	}
	ents, err := st.scan()
	if err != nil || len(ents) == 0 {
		if lastRun < 0 {
			return nil
		}
		return fmt.Errorf("store empty after an acknowledged put (%v)", err)
	}
	// Every version added since the last check must be whole (List would
	// read them all each time; the store grows to thousands).
	seqs := map[uint64]bool{}
	for _, e := range ents {
		if seqs[e.seq] {
			return fmt.Errorf("sequence number %d used twice", e.seq)
		}
		seqs[e.seq] = true
		if e.seq <= *checked {
			continue
		}
		raw, err := st.Get(ctx, e.id)
		if err != nil {
			return err
		}
		env, err := DecodeEnvelope(raw)
		if err != nil {
			return fmt.Errorf("store version %s is damaged: %v", e.id, err)
		}
		if _, _, err := parseCrashContent(env.Payload); err != nil {
			return fmt.Errorf("store version %s: %v", e.id, err)
		}
	}
	*checked = ents[len(ents)-1].seq
	latest := ents[len(ents)-1]
	data, _, err := Fetch(ctx, st, Version{ID: latest.id}, nil)
	if err != nil {
		return err
	}
	run, i, err := parseCrashContent(data)
	if err != nil {
		return fmt.Errorf("store latest: %w", err)
	}
	if !newer(run, i, lastRun, lastAck) {
		return fmt.Errorf("store latest holds %d/%d, older than acknowledged %d/%d", run, i, lastRun, lastAck)
	}
	return nil
}
