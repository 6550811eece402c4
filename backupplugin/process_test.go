package backupplugin_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/backupplugin"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/dumphash"
	"github.com/lnvault/lnvault/internal/harness"
	"github.com/lnvault/lnvault/restore"
)

// node is a simulated lightningd with file backups named in backup.lock.
type node struct {
	t     *testing.T
	dir   string
	paths []string // backup files
	urls  []string // as in backup.lock
	h     *harness.Harness
}

func newNode(t *testing.T, urls ...string) *node { return newNodeFrom(t, "", urls...) }

// newNodeFrom makes a node; with seed (a dir made by buildCorpusTemplate) its
// backup and node database start as copies of the seed's.
func newNodeFrom(t *testing.T, seed string, urls ...string) *node {
	t.Helper()
	dir := t.TempDir()
	n := &node{t: t, dir: dir}
	if len(urls) == 0 {
		urls = []string{"file://" + filepath.Join(dir, "backup.dbak")}
	}
	if seed != "" {
		copyFile(t, filepath.Join(seed, "backup.dbak"), strings.TrimPrefix(urls[0], "file://"))
		copyFile(t, filepath.Join(seed, "node", "regtest", "lightningd.sqlite3"), filepath.Join(dir, "node", "regtest", "lightningd.sqlite3"))
	}
	for i, u := range urls {
		path := strings.TrimPrefix(strings.TrimPrefix(u, "file://"), "flaky://")
		if (seed == "" || i > 0) && (strings.HasPrefix(u, "file://") || strings.HasPrefix(u, "flaky://")) {
			b, err := lnvault.Open(context.Background(), "file://"+path, lnvault.OpenOptions{Create: true, Format: 2})
			if err != nil {
				t.Fatal(err)
			}
			b.Close()
		}
		n.paths = append(n.paths, path)
		n.urls = append(n.urls, u)
	}
	h, err := harness.New(harness.Config{Bin: os.Args[0], Dir: filepath.Join(dir, "node")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	n.h = h
	lock := backupplugin.Lock{BackendURL: n.urls[0], BackendURLs: n.urls[1:]}
	if err := backupplugin.WriteLock(h.NetDir(), lock); err != nil {
		t.Fatal(err)
	}
	return n
}

func (n *node) start() {
	n.t.Helper()
	if err := n.h.Start(ctx(n.t)); err != nil {
		n.t.Fatal(err)
	}
}

func (n *node) stop() {
	n.t.Helper()
	code, err := n.h.Stop(ctx(n.t))
	if err != nil || code != 0 {
		n.t.Fatalf("plugin stop: code %d, %v; logs %v", code, err, n.h.Logs())
	}
	if n.h.LogsContain(harness.BadLogLevel) {
		n.t.Fatalf("the plugin logged at a level lightningd refuses: %v", n.h.Logs())
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

func (n *node) meta(i int) lnvault.Metadata {
	n.t.Helper()
	b, err := lnvault.Open(context.Background(), "file://"+n.paths[i], lnvault.OpenOptions{ReadOnly: true})
	if err != nil {
		n.t.Fatal(err)
	}
	defer b.Close()
	return b.Metadata()
}

// restoreHash restores backup i and returns its dump hash.
func (n *node) restoreHash(i int) string {
	n.t.Helper()
	b, err := lnvault.Open(context.Background(), "file://"+n.paths[i], lnvault.OpenOptions{ReadOnly: true})
	if err != nil {
		n.t.Fatal(err)
	}
	defer b.Close()
	dest := filepath.Join(n.t.TempDir(), "restored.sqlite3")
	if _, err := restore.Restore(context.Background(), b, dest, restore.Options{}); err != nil {
		n.t.Fatalf("restore of %s: %v", n.paths[i], err)
	}
	return hashOf(n.t, dest)
}

func hashOf(t *testing.T, path string) string {
	t.Helper()
	h, err := dumphash.Of(path)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// checkRestores: every backup restores to the node's database.
func (n *node) checkRestores() {
	n.t.Helper()
	want := hashOf(n.t, n.h.NodeDBPath())
	for i := range n.paths {
		if got := n.restoreHash(i); got != want {
			n.t.Fatalf("restore of %s: dump %s, node database %s", n.urls[i], got, want)
		}
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// The whole corpus replayed through the plugin is shared by the tests that
// need a corpus-sized backup: under -race, SQLite work in the harness costs
// seconds per replay.
var corpusTmpl struct {
	once   sync.Once
	dir    string
	status []byte
	err    error
}

func corpusTemplate(t *testing.T) string {
	t.Helper()
	corpusTmpl.once.Do(func() {
		corpusTmpl.dir, corpusTmpl.status, corpusTmpl.err = buildCorpusTemplate()
	})
	if corpusTmpl.err != nil {
		t.Fatalf("replaying the corpus: %v", corpusTmpl.err)
	}
	return corpusTmpl.dir
}

func buildCorpusTemplate() (string, []byte, error) {
	dir, err := os.MkdirTemp("", "lnvault-corpus-")
	if err != nil {
		return "", nil, err
	}
	url := "file://" + filepath.Join(dir, "backup.dbak")
	b, err := lnvault.Open(context.Background(), url, lnvault.OpenOptions{Create: true, Format: 2})
	if err != nil {
		return dir, nil, err
	}
	b.Close()
	h, err := harness.New(harness.Config{Bin: os.Args[0], Dir: filepath.Join(dir, "node")})
	if err != nil {
		return dir, nil, err
	}
	defer h.Close()
	if err := backupplugin.WriteLock(h.NetDir(), backupplugin.Lock{BackendURL: url}); err != nil {
		return dir, nil, err
	}
	c, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := h.Start(c); err != nil {
		return dir, nil, err
	}
	if err := h.Replay(c, corpus.MustLoad(), 1); err != nil {
		return dir, nil, err
	}
	raw, err := h.Request(c, "backup-status", nil)
	if err != nil {
		return dir, nil, err
	}
	if code, err := h.Stop(c); err != nil || code != 0 {
		return dir, nil, fmt.Errorf("plugin exit %d: %v", code, err)
	}
	return dir, raw, nil
}

func TestReplayCorpusRestoresExactly(t *testing.T) {
	t.Parallel()
	reqs := corpus.MustLoad()
	n := newNodeFrom(t, corpusTemplate(t))
	// backup-status, answered after the replay, reports the head.
	raw := corpusTmpl.status
	var st backupplugin.StatusReport
	if err := json.Unmarshal(raw, &st); err != nil {
		t.Fatal(err)
	}
	last := reqs[len(reqs)-1].DataVersion
	if st.Version != last || len(st.Destinations) != 1 || st.Destinations[0].Version != last || !st.Destinations[0].OK || st.Acks != int64(len(reqs)) || st.P99AckMs <= 0 {
		t.Fatalf("backup-status: %s", raw)
	}
	if got := n.restoreHash(0); got != corpus.FinalDumpSHA256() {
		t.Fatalf("restored dump %s, corpus %s", got, corpus.FinalDumpSHA256())
	}
	if got := hashOf(t, n.h.NodeDBPath()); got != corpus.FinalDumpSHA256() {
		t.Fatalf("harness node database dump %s, corpus %s", got, corpus.FinalDumpSHA256())
	}
}

// The first-write rule, through the real plugin process.
func TestFirstWriteRuleProcess(t *testing.T) {
	t.Parallel()
	reqs := corpus.MustLoad()[:60]
	t.Run("in sync B==D-1", func(t *testing.T) {
		t.Parallel()
		n := newNode(t)
		n.start()
		if err := n.h.Replay(ctx(t), reqs[:30], 1); err != nil {
			t.Fatal(err)
		}
		n.stop()
		n.start()
		if err := n.h.Replay(ctx(t), reqs[30:], 1); err != nil {
			t.Fatal(err)
		}
		n.stop()
		if !n.h.LogsContain("action=append") || n.h.LogsContain("rewinding") {
			t.Fatalf("logs: %v", n.h.Logs())
		}
		n.checkRestores()
	})
	t.Run("crash after answer P==D-1 rewinds", func(t *testing.T) {
		t.Parallel()
		n := newNode(t)
		n.start()
		if err := n.h.Replay(ctx(t), reqs[:29], 1); err != nil {
			t.Fatal(err)
		}
		// lightningd crashes after the answer, before its commit.
		r := reqs[29]
		if _, err := n.h.WriteNoCommit(ctx(t), r.ID, r.DataVersion, r.Writes); err != nil {
			t.Fatal(err)
		}
		n.h.Kill()
		if m := n.meta(0); m.Version != r.DataVersion {
			t.Fatalf("backup head %d, want the uncommitted %d", m.Version, r.DataVersion)
		}
		n.start()
		// It restarts and sends the same data_version again, with other content.
		other := []string{"INSERT INTO vars (name, val) VALUES ('crash-test', 'x');", r.Writes[len(r.Writes)-1]}
		if _, err := n.h.Write(ctx(t), "", r.DataVersion, other); err != nil {
			t.Fatal(err)
		}
		if err := n.h.Replay(ctx(t), reqs[30:], 0); err != nil {
			t.Fatal(err)
		}
		n.stop()
		if !n.h.LogsContain("rewinding") {
			t.Fatalf("no rewind logged: %v", n.h.Logs())
		}
		n.checkRestores()
	})
	t.Run("migration repeat at start is appended, not rewound", func(t *testing.T) {
		t.Parallel()
		n := newNode(t)
		n.start()
		if err := n.h.Replay(ctx(t), reqs[:1], 1); err != nil { // version 1, committed
			t.Fatal(err)
		}
		n.stop()
		n.start()
		// reqs[1] is the migration's PRAGMA foreign_keys = OFF with version 1 again.
		if !lnvault.IsPragmaOnly(reqs[1].Writes) || reqs[1].DataVersion != reqs[0].DataVersion {
			t.Fatal("corpus changed: request 2 is not the PRAGMA repeat")
		}
		if err := n.h.Replay(ctx(t), reqs[1:], 1); err != nil {
			t.Fatal(err)
		}
		n.stop()
		if n.h.LogsContain("rewinding") {
			t.Fatalf("the migration repeat rewound a committed change: %v", n.h.Logs())
		}
		if m := n.meta(0); m.VersionCount != uint64(len(reqs)) {
			t.Fatalf("version_count %d, want %d", m.VersionCount, len(reqs))
		}
		n.checkRestores()
	})
	for _, tc := range []struct {
		name   string
		stored int // requests in the backup
		first  int // index of the first write after the restart
		reason string
	}{
		{"lost state", 40, 20, "lost some state"},
		{"out of date", 20, 40, "out of date"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := newNode(t)
			n.start()
			if err := n.h.Replay(ctx(t), reqs[:tc.stored], 1); err != nil {
				t.Fatal(err)
			}
			n.stop()
			before := n.meta(0)
			n.start()
			r := reqs[tc.first]
			_, err := n.h.Write(ctx(t), r.ID, r.DataVersion, r.Writes)
			if err == nil || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("db_write answered %v, want an error with %q", err, tc.reason)
			}
			if !n.h.LogsContain(tc.reason) {
				t.Fatalf("reason not logged: %v", n.h.Logs())
			}
			// Nothing later is accepted either, and the backup is untouched.
			r = reqs[tc.first+1]
			if _, err := n.h.Write(ctx(t), r.ID, r.DataVersion, r.Writes); err == nil {
				t.Fatal("a later db_write was acknowledged")
			}
			n.h.Kill()
			if after := n.meta(0); after != before {
				t.Fatalf("backup changed from %+v to %+v", before, after)
			}
		})
	}
}

func TestLockFileProblemsStopThePlugin(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		content string // "" = no file
		want    string
	}{
		{"missing", "", "lnvault init file:///path/to/backup.dbak --lightning-dir"},
		{"corrupt", `{"backend_url": `, "lnvault init file:///path/to/backup.dbak --lightning-dir"},
		{"no destination", `{"something": 1}`, "names no destination"},
		{"backup missing", `{"backend_url": "file:///nonexistent/dir/backup.dbak"}`, "opening backup destination file:///nonexistent/dir/backup.dbak: no backup found there; with lightningd stopped, create it from the node's database: `lnvault init file:///nonexistent/dir/backup.dbak --lightning-dir <dir>`"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t)
			lock := filepath.Join(n.h.NetDir(), backupplugin.LockFile)
			os.Remove(lock)
			if tc.content != "" {
				os.WriteFile(lock, []byte(tc.content), 0o600)
			}
			if err := n.h.Start(ctx(t)); err == nil {
				t.Fatal("plugin answered getmanifest without a usable backup.lock")
			}
			code, err := n.h.WaitExit(ctx(t))
			if err != nil || code == 0 {
				t.Fatalf("exit code %d, %v", code, err)
			}
			if !n.h.LogsContain(tc.want) {
				t.Fatalf("log does not say %q: %v", tc.want, n.h.Logs())
			}
			for _, l := range n.h.Logs() {
				if l.Level != "error" {
					t.Errorf("unexpected log %+v", l)
				}
			}
		})
	}
}

func TestDestinationOptionMustMatchLock(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	h, err := harness.New(harness.Config{Bin: os.Args[0], Dir: filepath.Join(n.dir, "node"),
		Options: map[string]any{backupplugin.OptDestination: "file:///elsewhere.dbak"}})
	if err != nil {
		t.Fatal(err)
	}
	n.h.Close()
	defer h.Close()
	if err := h.Start(ctx(t)); err != nil {
		t.Fatal(err)
	}
	h.Init(ctx(t)) // the plugin exits instead of answering
	code, err := h.WaitExit(ctx(t))
	if err != nil || code == 0 || !h.LogsContain("does not match") {
		t.Fatalf("code %d, %v, logs %v", code, err, h.Logs())
	}
}

func TestTwoDestinations(t *testing.T) {
	t.Parallel()
	reqs := corpus.MustLoad()[:200]
	dir := t.TempDir()
	a := "file://" + filepath.Join(dir, "a.dbak")
	b := "flaky://" + filepath.Join(dir, "b.dbak")
	n := newNode(t, a, b)
	n.start()
	if err := n.h.Replay(ctx(t), reqs[:150], 1); err != nil {
		t.Fatal(err)
	}
	// Both hold every change (restored at the end).
	n.stop()
	for i := range n.paths {
		if m := n.meta(i); m.Version != reqs[149].DataVersion {
			t.Fatalf("destination %d at %d", i, m.Version)
		}
	}
	// b fails: no "continue", and a does not keep the change either.
	n.start()
	if err := n.h.Replay(ctx(t), reqs[150:160], 1); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(n.paths[1]+".fail", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r := reqs[160]
	_, err := n.h.Write(ctx(t), r.ID, r.DataVersion, r.Writes)
	if err == nil || !strings.Contains(err.Error(), "injected failure") {
		t.Fatalf("db_write with a failing destination answered %v", err)
	}
	raw, err := n.h.Request(ctx(t), "backup-status", nil)
	if err != nil {
		t.Fatal(err)
	}
	var st backupplugin.StatusReport
	json.Unmarshal(raw, &st)
	if st.Failed == "" || st.Destinations[1].OK || !strings.Contains(st.Destinations[1].LastError, "injected") {
		t.Fatalf("backup-status does not show the failure: %s", raw)
	}
	n.h.Kill()
	for i := range n.paths {
		if m := n.meta(i); m.Version != reqs[159].DataVersion {
			t.Fatalf("destination %d at %d after the failure, want %d (nothing half-written)", i, m.Version, reqs[159].DataVersion)
		}
	}
	// Repaired, lightningd restarts and sends the change again: all good.
	os.Remove(n.paths[1] + ".fail")
	n.start()
	if err := n.h.Replay(ctx(t), reqs[160:], 1); err != nil {
		t.Fatal(err)
	}
	n.stop()
	n.checkRestores()
}

// The same through a partial write: one destination stored the change and
// the other failed, then the plugin is killed before it could take it back.
func TestPartialWriteThenCrash(t *testing.T) {
	t.Parallel()
	reqs := corpus.MustLoad()[:100]
	dir := t.TempDir()
	n := newNode(t, "file://"+filepath.Join(dir, "a.dbak"), "flaky://"+filepath.Join(dir, "b.dbak"))
	n.start()
	if err := n.h.Replay(ctx(t), reqs[:50], 1); err != nil {
		t.Fatal(err)
	}
	n.h.Kill()
	// Make a (the file) one change ahead by hand, as if b failed and we died.
	b, err := lnvault.Open(context.Background(), "file://"+n.paths[0], lnvault.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Append(context.Background(), reqs[50].Change()); err != nil {
		t.Fatal(err)
	}
	b.Close()
	n.start()
	if err := n.h.Replay(ctx(t), reqs[50:], 1); err != nil {
		t.Fatal(err)
	}
	n.stop()
	n.checkRestores()
}

func TestCompactionUnderLoad(t *testing.T) {
	t.Parallel()
	reqs := corpus.MustLoad()
	n := newNodeFrom(t, corpusTemplate(t))
	n.start()
	more := harness.Synthetic(reqs[len(reqs)-1].DataVersion+1, 1000, 1300, false, 3)
	done := make(chan error, 1)
	go func() {
		var errs []string
		for i := 0; i < 3; i++ {
			raw, err := n.h.Request(ctx(t), "backup-compact", nil)
			if err != nil {
				errs = append(errs, err.Error())
				continue
			}
			var st lnvault.CompactStats
			if err := json.Unmarshal(raw, &st); err != nil || st.Before.VersionCount == 0 {
				errs = append(errs, "bad stats "+string(raw))
			}
		}
		if len(errs) > 0 {
			done <- &stringErr{strings.Join(errs, "; ")}
			return
		}
		done <- nil
	}()
	if err := n.h.Replay(ctx(t), more, 1); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	st := harness.Summarize(n.h.Latencies())
	t.Logf("db_write during compaction: n=%d p50=%v p99=%v max=%v", st.N, st.P50, st.P99, st.Max)
	n.stop()
	n.checkRestores()
}

type stringErr struct{ s string }

func (e *stringErr) Error() string { return e.s }

// SIGKILL at random points while a compaction runs never loses an
// acknowledged change: after each kill the plugin restarts, lightningd resends
// what it did not commit, and the backup restores to the node's database.
func TestKillDuringCompaction(t *testing.T) {
	t.Parallel()
	runs := 50
	if os.Getenv("LNVAULT_LONG") == "1" {
		runs = 300
	}
	reqs := corpus.MustLoad()
	n := newNodeFrom(t, corpusTemplate(t))
	n.start()
	more := harness.Synthetic(reqs[len(reqs)-1].DataVersion+1, runs*41+10, 600, false, 7)
	next := 0
	rng := rand.New(rand.NewPCG(1, 2))
	for run := 0; run < runs; run++ {
		comp := make(chan struct{})
		go func() {
			defer close(comp)
			n.h.Request(context.Background(), "backup-compact", nil)
		}()
		killAt := time.Now().Add(time.Duration(rng.IntN(120)) * time.Millisecond)
		// At most 40 writes a run, so the synthetic changes last all runs.
		for limit := next + 40; time.Now().Before(killAt) && next < limit; {
			r := more[next]
			if _, err := n.h.Write(ctx(t), r.ID, r.DataVersion, r.Writes); err != nil {
				t.Fatalf("run %d: %v", run, err)
			}
			next++
		}
		// Sometimes a change is on its way when the kill comes: not committed.
		if rng.IntN(2) == 0 {
			r := more[next]
			n.h.Send("db_write", r.ID, map[string]any{"data_version": r.DataVersion, "writes": r.Writes})
		}
		n.h.Kill()
		<-comp
		n.start()
		if (run+1)%25 == 0 {
			// Every acknowledged change is there (a lost one would also make
			// the next first write fail as out of date).
			if err := n.h.Init(ctx(t)); err != nil {
				t.Fatal(err)
			}
			// The backup may hold one change the node never committed (the
			// kill came between append and answer); the next write rewinds it.
			r := more[next]
			if _, err := n.h.Write(ctx(t), r.ID, r.DataVersion, r.Writes); err != nil {
				t.Fatalf("run %d: %v", run, err)
			}
			next++
			n.stop()
			n.checkRestores()
			n.start()
		}
	}
	if err := n.h.Replay(ctx(t), more[next:next+5], 1); err != nil {
		t.Fatal(err)
	}
	n.stop()
	n.checkRestores()
	t.Logf("%d kills during compaction, %d synthetic changes acknowledged", runs, next+5)
}
