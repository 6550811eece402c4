package e2e

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lnvault/lnvault/internal/dumphash"
	"github.com/lnvault/lnvault/internal/harness"
	"github.com/lnvault/lnvault/internal/realnode"
	"github.com/lnvault/lnvault/internal/s3test"
)

// killsPerDestination: 6 per destination kind in CI (24 in all), 50 with
// LNVAULT_LONG=1 (200).
func killsPerDestination() int {
	if longRun() {
		return 50
	}
	return 6
}

// TestPaymentsUnderCrashes: payments both ways and invoices on l1 while its
// whole process group is SIGKILLed at random moments, for each destination
// kind in backup.lock (socket: to lnvault server, s3:// on versitygw, two at
// once, file:). After each kill the backup is at the node's version or one
// ahead (the change acknowledged but not committed, rewound at the next
// start); after the kills and a quiet stop every destination restores to
// exactly the node's database. Then the disaster drill on that destination:
// the database deleted, restored by lnvault restore, the node started, its
// channel normal and payments going both ways.
func TestPaymentsUnderCrashes(t *testing.T) {
	nw := getNetwork(t)
	ctx := testCtx(t, 40*time.Minute)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 5))
	srv := harness.NewServerProc(t, lnvaultBin, "file://"+filepath.Join(t.TempDir(), "server.dbak"))
	srv.Start(true)
	endpoint, bucket := s3test.Start(t)
	socketURL := "socket:" + srv.Addr
	fileURL := "file://" + filepath.Join(workDir, "l1-crash.dbak")
	dests := []struct {
		name string
		urls []string
	}{
		{"socket: to lnvault server", []string{socketURL}},
		{"s3:// on versitygw", []string{s3test.URL(endpoint, bucket, "l1")}},
		{"file: and s3:// at once", []string{"file://" + filepath.Join(workDir, "l1-both.dbak"), s3test.URL(endpoint, bucket, "l1-both")}},
		{"file:", []string{fileURL}},
	}
	kills := killsPerDestination()
	total, payments, drills := 0, 0, 0
	for _, d := range dests {
		// As an operator moves a node to a new destination: stop it, init
		// the destination from its database, start it.
		if err := nw.l1.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		args := append(append([]string{"init"}, d.urls...), "--lightning-dir", nw.l1.NetDir(), "--force")
		if out, err := lnvault(args...); err != nil {
			t.Fatalf("%s: lnvault init: %v: %s", d.name, err, out)
		}
		if err := nw.startL1(ctx); err != nil {
			t.Fatalf("%s: first start: %v", d.name, err)
		}
		for k := 0; k < kills; k++ {
			stop := make(chan struct{})
			p1, p2 := nw.payLoop(ctx, stop), nw.payLoop(ctx, stop)
			inv := nw.invoiceLoop(ctx, stop)
			time.Sleep(time.Duration(300+rng.IntN(1500)) * time.Millisecond)
			nw.l1.Kill()
			close(stop)
			payments += <-p1 + <-p2
			<-inv
			total++
			nv, err := realnode.DataVersionAfterCrash(nw.l1.DBPath())
			if err != nil {
				t.Fatal(err)
			}
			for _, u := range d.urls {
				if bv := headVersion(t, u); bv < nv || bv > nv+1 {
					t.Fatalf("%s, kill %d: node at version %d, %s at %d: want the node's version or one more", d.name, k, nv, u, bv)
				}
			}
			if err := nw.startL1(ctx); err != nil {
				t.Fatalf("%s: restart after kill %d: %v\n%s", d.name, k, err, nw.l1.LogTail(30))
			}
		}
		if err := nw.l1.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		for _, u := range d.urls {
			restoreEquals(t, u, nw.l1.DBPath(), fmt.Sprintf("%s after %d kills", d.name, kills))
		}
		// The disaster drill: the database is lost; lnvault restore
		// brings it back from the destination; the node starts, its
		// channel is there, and payments work both ways.
		if err := os.Remove(nw.l1.DBPath()); err != nil {
			t.Fatal(err)
		}
		if out, err := lnvault("restore", d.urls[len(d.urls)-1], nw.l1.DBPath()); err != nil {
			t.Fatalf("%s: the drill's restore: %v: %s", d.name, err, out)
		}
		if err := nw.startL1(ctx); err != nil {
			t.Fatalf("%s: start after the drill's restore: %v\n%s", d.name, err, nw.l1.LogTail(30))
		}
		for i := range 3 {
			if err := realnode.PayFrom(ctx, nw.l1, nw.l2, 20_000, nw.label()); err != nil {
				t.Fatalf("%s: payment %d out after the drill: %v", d.name, i, err)
			}
			if err := realnode.PayFrom(ctx, nw.l2, nw.l1, 10_000, nw.label()); err != nil {
				t.Fatalf("%s: payment %d in after the drill: %v", d.name, i, err)
			}
		}
		drills++
	}
	// The other tests go on with the file: destination.
	nw.backup = fileURL
	if payments == 0 {
		t.Fatal("no payment went through: the kills were not busy")
	}
	t.Logf("%d SIGKILLs of l1's process group (%d per destination kind) while %d payments went through: every restart succeeded, every destination restored exactly; %d disaster drills (database deleted, restored, payments both ways)", total, kills, payments, drills)
}

// headVersion is the head version of the backup at url.
func headVersion(tb testing.TB, url string) uint32 {
	tb.Helper()
	out, err := lnvault("status", url, "--json")
	if err != nil {
		tb.Fatalf("lnvault status %s: %v: %s", url, err, out)
	}
	var st struct {
		Metadata struct {
			Version uint32 `json:"version"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		tb.Fatalf("lnvault status --json: %v: %s", err, out)
	}
	return st.Metadata.Version
}

// restoreEquals restores url and compares it with the database at db.
func restoreEquals(tb testing.TB, url, db, when string) {
	tb.Helper()
	dest := filepath.Join(tb.TempDir(), "restored.sqlite3")
	if out, err := lnvault("restore", url, dest); err != nil {
		tb.Fatalf("%s: lnvault restore %s: %v: %s", when, url, err, out)
	}
	want, err := dumphash.Of(db)
	if err != nil {
		tb.Fatal(err)
	}
	got, err := dumphash.Of(dest)
	if err != nil {
		tb.Fatal(err)
	}
	if got != want {
		nv, _ := realnode.DataVersion(db)
		rv, _ := realnode.DataVersion(dest)
		tb.Fatalf("%s: the restore of %s differs from the node's database (node data_version %d, restored %d)", when, url, nv, rv)
	}
}
