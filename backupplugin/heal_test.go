package backupplugin_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lnvault/lnvault/backupplugin"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/harness"
)

// runPrefix starts the node's plugin and writes reqs through it.
func (n *node) runPrefix(reqs []corpus.Request, id string) {
	n.t.Helper()
	n.start()
	for i, r := range reqs {
		if i == 5 && !n.h.Inited() {
			if err := n.h.Init(ctx(n.t)); err != nil {
				n.t.Fatal(err)
			}
		}
		if _, err := n.h.Write(ctx(n.t), fmt.Sprintf("%s#%d", id, i), r.DataVersion, r.Writes); err != nil {
			n.t.Fatalf("write %d (version %d): %v; logs %v", i, r.DataVersion, err, n.h.Logs())
		}
	}
}

// A node that ran without the plugin (or committed after it left) is ahead
// of its backup: the first write stores the node's database as a snapshot at
// the node's version, warns, and goes on; restore equals the node.
func TestHealGap(t *testing.T) {
	reqs := corpus.MustLoad()
	for _, tc := range []struct {
		name string
		gap  int // transactions committed without the plugin
	}{{"one missed commit (a busy stop)", 1}, {"many (a start without the plugin)", 200}} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t)
			n.runPrefix(reqs[:300], "a")
			n.stop()
			before := n.meta(0)
			for _, r := range reqs[300 : 300+tc.gap] {
				if err := n.h.CommitUnreported(ctx(t), r.Writes); err != nil {
					t.Fatal(err)
				}
			}
			next := reqs[300+tc.gap]
			n.runPrefix([]corpus.Request{next}, "b")
			if !n.h.LogsContain("healed a gap") {
				t.Fatalf("no heal warning in the log: %v", n.h.Logs())
			}
			if err := n.h.Init(ctx(t)); err != nil {
				t.Fatal(err)
			}
			raw, err := n.h.Request(ctx(t), "backup-status", map[string]any{})
			if err != nil {
				t.Fatal(err)
			}
			var st backupplugin.StatusReport
			if err := json.Unmarshal(raw, &st); err != nil {
				t.Fatal(err)
			}
			h := st.LastHeal
			wantNode := next.DataVersion - 1
			if h == nil || h.BackupVersion != before.Version || h.NodeVersion != wantNode || h.Missing != wantNode-before.Version || h.TookMs <= 0 {
				t.Fatalf("backup-status last_heal = %+v, want backup %d node %d", h, before.Version, wantNode)
			}
			for i, r := range reqs[301+tc.gap : 400+tc.gap] {
				if _, err := n.h.Write(ctx(t), fmt.Sprintf("c#%d", i), r.DataVersion, r.Writes); err != nil {
					t.Fatal(err)
				}
			}
			n.stop()
			n.checkRestores()
			if m := n.meta(0); m.Version != reqs[399+tc.gap].DataVersion {
				t.Fatalf("backup at %d, want %d", m.Version, reqs[399+tc.gap].DataVersion)
			}
		})
	}
}

// With "heal": false in backup.lock the node stops, as with the reference.
func TestHealDisabled(t *testing.T) {
	reqs := corpus.MustLoad()
	n := newNode(t)
	no := false
	if err := backupplugin.WriteLock(n.h.NetDir(), backupplugin.Lock{BackendURL: n.urls[0], Heal: &no}); err != nil {
		t.Fatal(err)
	}
	n.runPrefix(reqs[:100], "a")
	n.stop()
	if err := n.h.CommitUnreported(ctx(t), reqs[100].Writes); err != nil {
		t.Fatal(err)
	}
	n.start()
	_, err := n.h.Write(ctx(t), "b#0", reqs[101].DataVersion, reqs[101].Writes)
	if err == nil || !strings.Contains(err.Error(), backupplugin.ErrOutOfDate.Error()) || !strings.Contains(err.Error(), `"heal": false`) {
		t.Fatalf("write after a gap with healing off: %v, want the reference's out-of-date reason naming the setting", err)
	}
}

// A node behind its backup (a restore of an old database) still stops, with
// the reference's reason; its database is never read.
func TestBehindBackupStillStops(t *testing.T) {
	reqs := corpus.MustLoad()
	n := newNode(t)
	n.runPrefix(reqs[:100], "a")
	n.stop()
	old := filepath.Join(t.TempDir(), "old.sqlite3")
	copyFile(t, n.h.NodeDBPath(), old)
	n.runPrefix(reqs[100:150], "b")
	n.stop()
	n.h.Close()
	copyFile(t, old, n.h.NodeDBPath())
	h, err := harness.New(harness.Config{Bin: os.Args[0], Dir: filepath.Join(n.dir, "node")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	n.h = h
	n.start()
	_, err = n.h.Write(ctx(t), "c#0", reqs[100].DataVersion, reqs[100].Writes)
	if err == nil || !strings.Contains(err.Error(), backupplugin.ErrLostState.Error()) {
		t.Fatalf("write of a node behind its backup: %v, want %q", err, backupplugin.ErrLostState)
	}
	if n.h.LogsContain("healed") {
		t.Fatalf("a node behind its backup was healed: %v", n.h.Logs())
	}
}

// The shutdown notification: the plugin keeps answering db_write, then leaves
// by itself once nothing else writes, within a moment.
func TestStaysForShutdown(t *testing.T) {
	reqs := corpus.MustLoad()
	n := newNode(t)
	n.runPrefix(reqs[:50], "a")
	if err := n.h.Init(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if err := n.h.Notify("shutdown", map[string]any{}); err != nil {
		t.Fatal(err)
	}
	// lightningd still commits during its shutdown: these must be stored.
	for i, r := range reqs[50:60] {
		if _, err := n.h.Write(ctx(t), fmt.Sprintf("s#%d", i), r.DataVersion, r.Writes); err != nil {
			t.Fatalf("db_write during shutdown: %v", err)
		}
	}
	start := time.Now()
	code, err := n.h.WaitExit(ctx(t))
	if err != nil || code != 0 {
		t.Fatalf("plugin did not leave by itself during shutdown: code %d, %v", code, err)
	}
	// The test binary has no other plugin children but parallel tests' ones;
	// a quiet leave takes about shutdownQuiet.
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("leaving took %s", took)
	}
	if !n.h.LogsContain("db_writes_during_shutdown") {
		t.Fatalf("no leave line in the log: %v", n.h.Logs())
	}
	if m := n.meta(0); m.Version != reqs[59].DataVersion {
		t.Fatalf("backup at %d, want %d", m.Version, reqs[59].DataVersion)
	}
	n.checkRestores()
}
