package e2e

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/lnvault/lnvault/dbapply" // the "sqlite" driver
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
	// An encrypted backup at hosts of its own, whose every byte is checked.
	encDir := t.TempDir()
	encSrv := harness.NewServerProc(t, lnvaultBin, "file://"+filepath.Join(encDir, "server.dbak"))
	encSrv.Start(true)
	idFile := filepath.Join(t.TempDir(), "l1.key")
	dests := []struct {
		name      string
		urls      []string
		encrypted bool
	}{
		{"socket: to lnvault server", []string{socketURL}, false},
		{"s3:// on versitygw", []string{s3test.URL(endpoint, bucket, "l1")}, false},
		{"file: and s3:// at once", []string{"file://" + filepath.Join(workDir, "l1-both.dbak"), s3test.URL(endpoint, bucket, "l1-both")}, false},
		{"end-to-end encrypted, socket: and s3:// at once", []string{"socket:" + encSrv.Addr, s3test.URL(endpoint, bucket, "l1-enc")}, true},
		{"file:", []string{fileURL}, false},
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
		var ids []string
		if d.encrypted {
			args = append(args, "--new-identity", idFile)
			ids = []string{"--identity", idFile}
		}
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
			restoreEquals(t, u, nw.l1.DBPath(), fmt.Sprintf("%s after %d kills", d.name, kills), ids...)
		}
		if d.encrypted {
			hostHoldsNoPlaintext(t, nw.l1.DBPath(), endpoint, bucket, "l1-enc/", encDir)
		}
		// The disaster drill: the database is lost; lnvault restore
		// brings it back from the destination; the node starts, its
		// channel is there, and payments work both ways.
		if err := os.Remove(nw.l1.DBPath()); err != nil {
			t.Fatal(err)
		}
		if out, err := lnvault(append(append([]string{"restore"}, ids...), d.urls[len(d.urls)-1], nw.l1.DBPath())...); err != nil {
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

// restoreEquals restores url (with args, e.g. --identity) and compares it
// with the database at db.
func restoreEquals(tb testing.TB, url, db, when string, args ...string) {
	tb.Helper()
	dest := filepath.Join(tb.TempDir(), "restored.sqlite3")
	if out, err := lnvault(append(append([]string{"restore"}, args...), url, dest)...); err != nil {
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

// hostHoldsNoPlaintext checks every byte the hosts of an encrypted backup
// hold (the files under dirs, the objects under prefix) for the node's
// secrets as its db_writes spell them: its invoices' payment hashes and
// preimages, its peers' ids and its channels' funding txids, as SQL's hex
// blob literals in either case.
func hostHoldsNoPlaintext(tb testing.TB, nodeDB, endpoint, bucket, prefix string, dirs ...string) {
	tb.Helper()
	db, err := sql.Open("sqlite", "file:"+nodeDB+"?mode=ro")
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	var probes []string
	for _, q := range []string{
		"SELECT hex(payment_hash) FROM invoices", "SELECT hex(payment_key) FROM invoices",
		"SELECT hex(node_id) FROM peers", "SELECT hex(funding_tx_id) FROM channels",
	} {
		rows, err := db.Query(q)
		if err != nil {
			tb.Fatalf("%s: %v", q, err)
		}
		for rows.Next() {
			var h string
			if rows.Scan(&h) == nil && len(h) >= 32 {
				probes = append(probes, h, strings.ToLower(h))
			}
		}
		rows.Close()
	}
	if len(probes) < 20 {
		tb.Fatalf("only %d probes from the node's database: the check would look at nothing", len(probes))
	}
	held := map[string][]byte{}
	for _, d := range dirs {
		filepath.WalkDir(d, func(p string, e fs.DirEntry, err error) error {
			if err == nil && e.Type().IsRegular() && !strings.HasSuffix(p, ".log") {
				if b, err := os.ReadFile(p); err == nil {
					held[p] = b
				}
			}
			return nil
		})
	}
	for k, b := range s3test.Objects(tb, endpoint, bucket, prefix) {
		held[k] = b
	}
	var total int
	for name, b := range held {
		total += len(b)
		for _, p := range probes {
			if bytes.Contains(b, []byte(p)) {
				tb.Fatalf("%s holds the node's plaintext %s", name, p)
			}
		}
	}
	if len(held) < 3 {
		tb.Fatalf("the hosts hold %d files and objects: the check looked at nothing", len(held))
	}
	tb.Logf("the encrypted backup's hosts hold %d files and objects (%d bytes): none holds any of %d secrets of the node's database", len(held), total, len(probes))
}
