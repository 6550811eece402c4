package powercut

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/lnvault/lnvault/backupplugin"
	"github.com/lnvault/lnvault/internal/harness"
)

// TestPowerCutsServerStore cuts the power under `lnvault server`'s store
// while the real plugin, as lightningd drives it, backs up to it over
// socket:. The node stays up: its plugin reconnects and resends or finds
// its change stored. A cut the server did not survive with every
// acknowledged change is a failed append, a refusal of the server's head, or
// a restore that differs from the node's database.
func TestPowerCutsServerStore(t *testing.T) {
	fs := mount(t)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	n := cuts()
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 11))
	t.Logf("seed %d, %d cuts", seed, n)

	path := filepath.Join(fs.Mnt, "store.dbak")
	srv := harness.NewServerProc(t, lnvaultBin, "file://"+path)
	srv.Start(true)

	h, err := harness.New(harness.Config{Bin: lnvaultBin, Dir: filepath.Join(t.TempDir(), "node")})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	// Quick retries: the server is back within a second of a cut.
	url := "socket:" + srv.Addr + "?retry_delay=100ms&retries=40"
	if err := backupplugin.WriteLock(h.NetDir(), backupplugin.Lock{BackendURL: url}); err != nil {
		t.Fatal(err)
	}
	if err := h.Start(ctx); err != nil {
		t.Fatal(err)
	}
	reqs := workload(n)
	next := 0
	// write sends the next db_write; done yields its outcome after the
	// harness committed it to the node database (an acknowledged change).
	write := func(what string) <-chan error {
		done := make(chan error, 1)
		i := next
		go func() {
			r := reqs[i]
			_, err := h.Write(ctx, fmt.Sprintf("%s#%d", what, i), r.DataVersion, r.Writes)
			done <- err
		}()
		return done
	}
	acked, resent, failed := 0, 0, 0
	counts := map[string]int{}
	restartPlugin := func() {
		h.Kill()
		if err := h.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	cut := 0
	for ; cut < n && next < len(reqs)-40; cut++ {
		for k := 1 + rng.IntN(12); k > 0; k-- {
			if err := <-write("w"); err != nil {
				t.Fatalf("cut %d: an append with the power on failed: %v; server: %s", cut, err, srv.Tail())
			}
			next++
			acked++
		}
		var inflight <-chan error
		var name string
		switch rng.IntN(5) {
		case 0:
			name = "cut during an append (clear unsynced data)"
			inflight = write("m")
			time.Sleep(time.Duration(rng.IntN(600)) * time.Microsecond)
			srv.Kill()
			if err := fs.ClearCache(); err != nil {
				t.Fatal(err)
			}
		case 1:
			name = "cut between appends (clear unsynced data)"
			srv.Kill()
			if err := fs.ClearCache(); err != nil {
				t.Fatal(err)
			}
		case 2:
			name = "crash before the append's fdatasync"
			if err := fs.CrashBefore("fsync", regexpQuote(filepath.Base(path))); err != nil {
				t.Fatal(err)
			}
			inflight = write("f")
			fs.WaitCrashed(5 * time.Second)
			srv.Kill()
		default:
			name = "torn: only the first write of the append"
			persist := 1
			if rng.IntN(2) == 0 {
				name, persist = "torn: only the second write of the append", 2
			}
			if err := fs.TornSeq(path, persist); err != nil {
				t.Fatal(err)
			}
			inflight = write("t")
			fs.WaitCrashed(5 * time.Second)
			srv.Kill()
		}
		counts[name]++
		if err := fs.Remount(); err != nil {
			t.Fatalf("cut %d (%s): %v", cut, name, err)
		}
		// The store opens and holds every acknowledged change (and at
		// most the one in flight).
		if err := checkHead(ctx, srv.URL, reqs, next); err != nil {
			t.Fatalf("cut %d (%s): %v", cut, name, err)
		}
		srv.Start(false)
		if inflight != nil {
			// The plugin reconnects: it finds its change stored, or the
			// server lost it unacknowledged and it sends it again.
			select {
			case err := <-inflight:
				if err == nil {
					next++
					acked++
					resent++
				} else {
					// Answered with an error: lightningd stops, and
					// starts again with the same write.
					failed++
					t.Logf("cut %d (%s): the in-flight write failed (lightningd would restart): %v", cut, name, err)
					restartPlugin()
				}
			case <-time.After(2 * time.Minute):
				t.Fatalf("cut %d (%s): the in-flight write is still unanswered; server: %s", cut, name, srv.Tail())
			}
		}
		if err := <-write("r"); err != nil {
			t.Fatalf("cut %d (%s): the first write after the cut failed: %v; logs %v; server: %s", cut, name, err, h.Logs(), srv.Tail())
		}
		next++
		acked++
	}
	if cut < n {
		t.Fatalf("the workload ran out after %d of %d cuts", cut, n)
	}
	if _, err := h.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	for name, c := range counts {
		t.Logf("%3d × %s", c, name)
	}
	checkFinal(ctx, t, srv.URL, reqs[next-1].DataVersion, h.NodeDBPath())
	t.Logf("server store: %d cuts, %d acknowledged changes (%d of them in flight at a cut, completed after the server came back; %d in-flight writes answered with an error): 0 lost, 0 duplicated, 0 stores failed to open", n, acked, resent, failed)
}
