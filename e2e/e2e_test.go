// Package e2e tests lnvault on a real regtest network: Bitcoin Core and Core
// Lightning from ../shared/, lnvault built from this tree as a node's
// --important-plugin. Under CI=true these tests run, never skip.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lnvault/lnvault/backupplugin"
	"github.com/lnvault/lnvault/internal/harness"
	"github.com/lnvault/lnvault/internal/realnode"
)

var (
	lnvaultBin string
	tools      realnode.Tools
	toolsErr   error
	workDir    string
)

func TestMain(m *testing.M) {
	code := func() int {
		dir, err := os.MkdirTemp("", "lnv-e2e-") // short: unix socket paths < 108 bytes
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		workDir = dir
		defer os.RemoveAll(dir)
		tools, toolsErr = realnode.Find()
		if toolsErr == nil {
			if lnvaultBin, err = harness.BuildLnvault(dir); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
		defer stopNetwork()
		return m.Run()
	}()
	os.Exit(code)
}

// need fails (under CI) or skips with what to install when the real nodes
// are missing.
func need(tb testing.TB) {
	tb.Helper()
	if toolsErr != nil {
		if os.Getenv("CI") == "true" {
			tb.Fatal(toolsErr)
		}
		tb.Skip(toolsErr)
	}
	if _, err := exec.LookPath("sqlite3"); err != nil {
		tb.Fatal("the sqlite3 command line tool is needed to compare databases (apt-get install sqlite3)")
	}
}

func testCtx(tb testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	tb.Cleanup(cancel)
	return ctx
}

// network is one bitcoind with l1 (lnvault on a file: backup) and l2 (no
// backup plugin), one channel l1 -> l2 with some funds pushed to l2. It is
// built once and shared by the tests, which leave it running and connected.
type network struct {
	btc    *realnode.Bitcoind
	l1, l2 *realnode.Node
	backup string // l1's backup URL
	labels atomic.Int64
}

var (
	netOnce sync.Once
	netErr  error
	theNet  *network
)

func stopNetwork() {
	if theNet == nil {
		return
	}
	for _, n := range []*realnode.Node{theNet.l1, theNet.l2} {
		if n != nil {
			n.Kill()
		}
	}
	if theNet.btc != nil {
		theNet.btc.Stop()
	}
}

func getNetwork(tb testing.TB) *network {
	tb.Helper()
	need(tb)
	netOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		theNet = &network{}
		netErr = theNet.build(ctx)
	})
	if netErr != nil {
		tb.Fatalf("setting up the regtest network: %v", netErr)
	}
	return theNet
}

func (nw *network) build(ctx context.Context) error {
	var err error
	if nw.btc, err = realnode.StartBitcoind(ctx, tools, filepath.Join(workDir, "btc")); err != nil {
		return err
	}
	if nw.l1, err = realnode.NewNode(tools, nw.btc, "l1", filepath.Join(workDir, "l1")); err != nil {
		return err
	}
	if nw.l2, err = realnode.NewNode(tools, nw.btc, "l2", filepath.Join(workDir, "l2")); err != nil {
		return err
	}
	nw.backup = "file://" + filepath.Join(workDir, "l1-backup.dbak")
	// From the node's first start, as a user sets it up: init on the empty
	// network directory, then lightningd with lnvault as important plugin.
	if out, err := lnvault("init", nw.backup, "--lightning-dir", nw.l1.NetDir()); err != nil {
		return fmt.Errorf("lnvault init: %v: %s", err, out)
	}
	nw.l1.Plugins = []string{lnvaultBin}
	for _, n := range []*realnode.Node{nw.l1, nw.l2} {
		if err := n.Start(ctx); err != nil {
			return err
		}
	}
	if err := nw.l1.Fund(ctx, "1"); err != nil {
		return err
	}
	return nw.l1.OpenChannel(ctx, nw.l2, 1_000_000, 300_000_000)
}

// lnvault runs the lnvault binary.
func lnvault(args ...string) (string, error) {
	out, err := exec.Command(lnvaultBin, args...).CombinedOutput()
	return string(out), err
}

func (nw *network) label() string {
	return fmt.Sprintf("e2e-%d-%d", time.Now().UnixNano(), nw.labels.Add(1))
}

// startL1 starts l1 and waits until its channel is back to normal.
func (nw *network) startL1(ctx context.Context) error {
	if err := nw.l1.Start(ctx); err != nil {
		return err
	}
	return nw.l1.WaitChannelNormal(ctx, nw.l2)
}

// backupVersion is the head of l1's backup.
func (nw *network) backupVersion(tb testing.TB) uint32 {
	tb.Helper()
	return headVersion(tb, nw.backup)
}

// checkRestore restores l1's backup (l1 stopped) and compares its dump with
// l1's database.
func (nw *network) checkRestore(tb testing.TB, when string) {
	tb.Helper()
	restoreEquals(tb, nw.backup, nw.l1.DBPath(), when)
}

// payLoop pays from l1 to l2 (and back every third time) until stop is
// closed; it returns how many payments completed.
func (nw *network) payLoop(ctx context.Context, stop <-chan struct{}) <-chan int {
	done := make(chan int, 1)
	go func() {
		n := 0
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- n
				return
			default:
			}
			from, to := nw.l1, nw.l2
			if i%3 == 2 {
				from, to = nw.l2, nw.l1
			}
			pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			if realnode.PayFrom(pctx, from, to, 100_000, nw.label()) == nil {
				n++
			}
			cancel()
		}
	}()
	return done
}

func longRun() bool { return os.Getenv("LNVAULT_LONG") == "1" }

// rounds is the number of busy stops: >= 10 in CI, >= 100 with LNVAULT_LONG=1.
func rounds() int {
	if longRun() {
		return 100
	}
	return 10
}

// TestBusyStops stops l1 while payments flow, over and over. Every restart
// must succeed, and after each restart and a quiet stop the backup restores
// to exactly the node's database. It counts the stops that left the node
// ahead of its backup (and so needed a heal at the next start).
func TestBusyStops(t *testing.T) {
	nw := getNetwork(t)
	gaps, heals, payments := nw.busyStops(t, rounds(), nil)
	t.Logf("staying for the shutdown: %d busy stops while %d payments went through: %d left the node ahead of its backup, %d heals at restart", rounds(), payments, gaps, heals)
}

// TestBusyStopsLeavingAtOnce is the same with the plugin not staying for the
// shutdown, as the reference does (and lnvault did before it stayed):
// lightningd kills it first, commits then escape the hook, and the next start
// heals them.
func TestBusyStopsLeavingAtOnce(t *testing.T) {
	nw := getNetwork(t)
	n := rounds() / 2 // a comparison: half as many in CI
	gaps, heals, payments := nw.busyStops(t, n, []string{backupplugin.EnvShutdown + "=leave"})
	t.Logf("leaving at once: %d busy stops while %d payments went through: %d left the node ahead of its backup, %d heals at restart", n, payments, gaps, heals)
}

// busyStops runs the rounds with env in l1's environment (nil: as deployed).
func (nw *network) busyStops(t *testing.T, rounds int, args []string) (gaps, heals, payments int) {
	ctx := testCtx(t, 30*time.Minute)
	if err := nw.l1.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	nw.l1.Env = args
	defer func() { nw.l1.Env = nil }()
	if err := nw.startL1(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < rounds; i++ {
		stop := make(chan struct{})
		done := nw.payLoop(ctx, stop)
		done2 := nw.payLoop(ctx, stop)
		invoices := nw.invoiceLoop(ctx, stop)
		time.Sleep(time.Duration(800+(i*337)%1500) * time.Millisecond)
		if err := nw.l1.Stop(ctx); err != nil {
			t.Fatalf("stop %d: %v", i, err)
		}
		close(stop)
		payments += <-done + <-done2
		<-invoices
		nv, err := realnode.DataVersion(nw.l1.DBPath())
		if err != nil {
			t.Fatal(err)
		}
		if bv := nw.backupVersion(t); nv > bv {
			gaps++
			t.Logf("stop %d: node at %d, backup at %d: a heal is due", i, nv, bv)
		} else if nv+1 < bv {
			t.Fatalf("stop %d: node at %d, backup at %d: the backup is ahead by more than one change", i, nv, bv)
		}
		before := nw.l1.LogCount("healed a gap")
		if err := nw.startL1(ctx); err != nil {
			t.Fatalf("restart after busy stop %d: %v", i, err)
		}
		heals += nw.l1.LogCount("healed a gap") - before
		if err := nw.l1.Stop(ctx); err != nil {
			t.Fatalf("quiet stop %d: %v", i, err)
		}
		if nv, bv := mustDataVersion(t, nw.l1.DBPath()), nw.backupVersion(t); nv > bv && args == nil {
			t.Fatalf("quiet stop %d: node at %d, backup at %d: commits escaped the plugin during a quiet stop", i, nv, bv)
		}
		if args == nil {
			nw.checkRestore(t, fmt.Sprintf("after busy stop %d, restart and quiet stop", i))
		}
		if err := nw.startL1(ctx); err != nil {
			t.Fatalf("start after quiet stop %d: %v", i, err)
		}
		if args != nil {
			// Leaving at once, even a quiet stop may leave a gap: the
			// start just done heals it; check the restore after a stop
			// with the plugin staying.
			if err := nw.l1.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			nw.l1.Env = nil
			if err := nw.startL1(ctx); err != nil {
				t.Fatal(err)
			}
			if err := nw.l1.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			nw.checkRestore(t, fmt.Sprintf("after busy stop %d and restarts", i))
			nw.l1.Env = args
			if err := nw.startL1(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if payments == 0 {
		t.Fatal("no payment went through: the stops were not busy")
	}
	if heals != gaps {
		t.Fatalf("%d stops left a gap but %d restarts healed one", gaps, heals)
	}
	return gaps, heals, payments
}

func mustDataVersion(tb testing.TB, path string) uint32 {
	tb.Helper()
	v, err := realnode.DataVersion(path)
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

// invoiceLoop makes invoices on l1 (db_writes besides the payments') until
// stop is closed.
func (nw *network) invoiceLoop(ctx context.Context, stop <-chan struct{}) <-chan int {
	done := make(chan int, 1)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				done <- n
				return
			default:
			}
			ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if _, err := nw.l1.Invoice(ictx, 1000, nw.label()); err == nil {
				n++
			} else {
				time.Sleep(20 * time.Millisecond)
			}
			cancel()
		}
	}()
	return done
}

// TestStartedWithoutPlugin: l1 runs once without lnvault (many commits the
// backup never sees); the next start with lnvault heals the gap and the
// backup restores exactly.
func TestStartedWithoutPlugin(t *testing.T) {
	nw := getNetwork(t)
	ctx := testCtx(t, 10*time.Minute)
	if err := nw.l1.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	b0 := nw.backupVersion(t)
	nw.l1.Plugins = nil
	if err := nw.startL1(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		if err := realnode.PayFrom(ctx, nw.l1, nw.l2, 50_000, nw.label()); err != nil {
			t.Fatal(err)
		}
	}
	if err := nw.l1.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	nw.l1.Plugins = []string{lnvaultBin}
	nv, err := realnode.DataVersion(nw.l1.DBPath())
	if err != nil {
		t.Fatal(err)
	}
	if nv <= b0+20 {
		t.Fatalf("the node ran without the plugin but is at %d, backup at %d", nv, b0)
	}
	before := nw.l1.LogCount("healed a gap")
	if err := nw.startL1(ctx); err != nil {
		t.Fatalf("start with lnvault after a run without it: %v", err)
	}
	if nw.l1.LogCount("healed a gap") != before+1 {
		t.Fatalf("no heal logged; log tail:\n%s", nw.l1.LogTail(30))
	}
	var st struct {
		LastHeal *struct {
			BackupVersion uint32 `json:"backup_version"`
			NodeVersion   uint32 `json:"node_version"`
			Missing       uint32 `json:"versions_missing"`
		} `json:"last_heal"`
	}
	if err := nw.l1.Call(ctx, "backup-status", nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.LastHeal == nil || st.LastHeal.BackupVersion != b0 || st.LastHeal.NodeVersion != nv || st.LastHeal.Missing != nv-b0 {
		t.Fatalf("backup-status last_heal = %+v, want backup %d node %d", st.LastHeal, b0, nv)
	}
	if err := realnode.PayFrom(ctx, nw.l1, nw.l2, 50_000, nw.label()); err != nil {
		t.Fatal(err)
	}
	if err := nw.l1.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	nw.checkRestore(t, "after a heal of many versions")
	if out, err := lnvault("verify", nw.backup, "--db", nw.l1.DBPath()); err != nil {
		t.Fatalf("lnvault verify --db after the heal: %v: %s", err, out)
	}
	if err := nw.startL1(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestBehindBackupRefuses: a node whose database is older than its backup
// (an old copy put back) must not start, with the reference's reason.
func TestBehindBackupRefuses(t *testing.T) {
	nw := getNetwork(t)
	ctx := testCtx(t, 10*time.Minute)
	if err := nw.l1.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(t.TempDir(), "old.sqlite3")
	cur := filepath.Join(t.TempDir(), "cur.sqlite3")
	copyFile(t, nw.l1.DBPath(), old)
	if err := nw.startL1(ctx); err != nil {
		t.Fatal(err)
	}
	// Invoices, not payments: the old copy must not hold an old channel
	// state, or l2 would see l1 come back revoked if it ever connected.
	for i := 0; i < 3; i++ {
		if _, err := nw.l1.Invoice(ctx, 50_000, nw.label()); err != nil {
			t.Fatal(err)
		}
	}
	if err := nw.l1.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	copyFile(t, nw.l1.DBPath(), cur)
	copyFile(t, old, nw.l1.DBPath())
	if out, err := lnvault("verify", nw.backup, "--db", nw.l1.DBPath()); err == nil || !strings.Contains(out, "behind") {
		t.Fatalf("lnvault verify --db of an old database: %v: %s; want it to say the database is behind", err, out)
	}
	before := nw.l1.LogCount("lost some state")
	if err := nw.l1.Launch(); err != nil {
		t.Fatal(err)
	}
	if err := nw.l1.WaitExit(ctx, 60*time.Second); err != nil {
		nw.l1.Kill()
		t.Fatalf("a node behind its backup kept running: %v", err)
	}
	if nw.l1.ExitErr() == nil {
		t.Fatalf("a node behind its backup exited 0")
	}
	if nw.l1.LogCount("lost some state") <= before {
		t.Fatalf("no \"lost some state\" reason in the log; tail:\n%s", nw.l1.LogTail(30))
	}
	copyFile(t, cur, nw.l1.DBPath())
	if err := nw.startL1(ctx); err != nil {
		t.Fatal(err)
	}
}

func copyFile(tb testing.TB, from, to string) {
	tb.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o600); err != nil {
		tb.Fatal(err)
	}
}
