package main

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/testnet"
)

func readLock(t *testing.T, dir string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "backup.lock"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("backup.lock is not JSON: %v: %q", err, data)
	}
	return m
}

func TestCLIInitSnapshot(t *testing.T) {
	ldir := t.TempDir()
	db := filepath.Join(ldir, "lightningd.sqlite3")
	replayCorpus(t, db, 700)
	bdir := t.TempDir()
	url := "file://" + filepath.Join(bdir, "node.dbak")

	r := mustRun(t, "init", url, "--lightning-dir", ldir)
	if !strings.Contains(r.stdout, "version 700") {
		t.Errorf("init output %q does not name the snapshot version", r.stdout)
	}
	lock := readLock(t, ldir)
	if lock["backend_url"] != url || len(lock) != 1 {
		t.Fatalf("backup.lock = %v, want exactly backend_url %s", lock, url)
	}
	// The backup holds one snapshot at the database's data_version.
	b, err := lnvault.Open(context.Background(), url, lnvault.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	md := b.Metadata()
	var kinds []lnvault.Kind
	err = b.Stream(context.Background(), 0, func(c *lnvault.Change) error {
		kinds = append(kinds, c.Kind)
		return nil
	})
	b.Close()
	if err != nil {
		t.Fatal(err)
	}
	if md.Version != 700 || len(kinds) != 1 || kinds[0] != lnvault.KindSnapshot {
		t.Fatalf("metadata %+v, changes %v; want one snapshot at 700", md, kinds)
	}
	// It restores to the same database.
	dest := filepath.Join(t.TempDir(), "restored")
	mustRun(t, "restore", url, dest)
	if dumpOf(t, dest) != dumpOf(t, db) {
		t.Fatal("restore of the init snapshot differs from the node's database")
	}

	// A second init on the same node is refused (backup.lock exists), and
	// nothing is created.
	url2 := "file://" + filepath.Join(bdir, "second.dbak")
	r = runCLI(t, "init", url2, "--lightning-dir", ldir)
	assertOneLineError(t, r, "backup.lock", "--force")
	if _, err := os.Stat(filepath.Join(bdir, "second.dbak")); err == nil {
		t.Fatal("refused init created a backup")
	}
	// --force replaces it; several URLs go into backend_urls.
	url3 := "file://" + filepath.Join(bdir, "third.dbak")
	mustRun(t, "init", url2, url3, "--lightning-dir", ldir, "--force", "--format", "1")
	lock = readLock(t, ldir)
	urls, _ := lock["backend_urls"].([]any)
	if lock["backend_url"] != url2 || len(urls) != 2 || urls[0] != url2 || urls[1] != url3 {
		t.Fatalf("backup.lock = %v", lock)
	}
	for _, u := range []string{url2, url3} {
		r := mustRun(t, "status", u, "--json")
		var st lnvault.Status
		if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
			t.Fatal(err)
		}
		if st.Metadata.Version != 700 || !strings.Contains(st.Format, "1") {
			t.Fatalf("%s: status %+v, want version 700 in format 1", u, st)
		}
	}
	// An existing backup is never overwritten, and the failed init removes
	// the backups it created before the failure.
	url4 := "file://" + filepath.Join(bdir, "fourth.dbak")
	r = runCLI(t, "init", url4, url, "--lightning-dir", ldir, "--force")
	assertOneLineError(t, r, "node.dbak", "exists")
	if _, err := os.Stat(filepath.Join(bdir, "fourth.dbak")); err == nil {
		t.Fatal("failed init left fourth.dbak behind")
	}
	if lock := readLock(t, ldir); lock["backend_url"] != url2 {
		t.Fatalf("failed init changed backup.lock: %v", lock)
	}
}

func TestCLIInitFreshNode(t *testing.T) {
	ldir := t.TempDir()
	url := "file://" + filepath.Join(t.TempDir(), "node.dbak")
	mustRun(t, "init", url, "--lightning-dir", ldir)
	if lock := readLock(t, ldir); lock["backend_url"] != url {
		t.Fatalf("backup.lock = %v", lock)
	}
	if _, err := os.Stat(filepath.Join(ldir, "lightningd.sqlite3")); err == nil {
		t.Fatal("init created a database in the lightning dir")
	}
	r := mustRun(t, "status", url, "--json")
	var st lnvault.Status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatal(err)
	}
	if st.Metadata != (lnvault.Metadata{}) {
		t.Fatalf("fresh backup metadata %+v, want version 0", st.Metadata)
	}
	mustRun(t, "verify", url)
	// Without --lightning-dir, init only creates the backup.
	url2 := "file://" + filepath.Join(t.TempDir(), "plain.dbak")
	mustRun(t, "init", url2)
}

func TestCLIInitRefusesRunningNode(t *testing.T) {
	ldir := t.TempDir()
	replayCorpus(t, filepath.Join(ldir, "lightningd.sqlite3"), 10)
	ln := answerRPC(t, ldir)
	bdir := t.TempDir()
	url := "file://" + filepath.Join(bdir, "node.dbak")
	r := runCLI(t, "init", url, "--lightning-dir", ldir)
	assertOneLineError(t, r, "stop lightningd first (lightning-cli stop)")
	if names := listDir(t, bdir); len(names) != 0 {
		t.Fatalf("refused init created %v", names)
	}
	if _, err := os.Stat(filepath.Join(ldir, "backup.lock")); err == nil {
		t.Fatal("refused init wrote backup.lock")
	}

	// A stale socket nobody listens on does not block init.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	mustRun(t, "init", url, "--lightning-dir", ldir)
	if lock := readLock(t, ldir); lock["backend_url"] != url {
		t.Fatalf("backup.lock = %v", lock)
	}
}

// answerRPC accepts connections on dir/lightning-rpc, as a running
// lightningd does, until the test ends.
func answerRPC(t *testing.T, dir string) net.Listener {
	t.Helper()
	return testnet.Serve(t, "unix", filepath.Join(dir, "lightning-rpc"), func(net.Conn) {})
}

// restore refuses to write under a running node, with --force too, and
// leaves its database as it was.
func TestCLIRestoreRefusesRunningNode(t *testing.T) {
	url := "file://" + filepath.Join(t.TempDir(), "node.dbak")
	src := t.TempDir()
	replayCorpus(t, filepath.Join(src, "lightningd.sqlite3"), 10)
	mustRun(t, "init", url, "--lightning-dir", src)
	ldir := t.TempDir()
	db := filepath.Join(ldir, "lightningd.sqlite3")
	if err := os.WriteFile(db, []byte("the running node's database"), 0o600); err != nil {
		t.Fatal(err)
	}
	ln := answerRPC(t, ldir)
	for _, dest := range []string{db, ldir} {
		r := runCLI(t, "restore", url, dest, "--force")
		assertOneLineError(t, r, "lightningd is running in "+ldir)
		assertOneLineError(t, r, "stop it first (lightning-cli stop)")
	}
	if b, _ := os.ReadFile(db); string(b) != "the running node's database" {
		t.Fatalf("a refused restore changed the node's database: %q", b)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	mustRun(t, "restore", url, db, "--force")
	if b, _ := os.ReadFile(db); string(b) == "the running node's database" {
		t.Fatal("restore --force with lightningd stopped did not replace the database")
	}
}

func TestCLIInitBadInput(t *testing.T) {
	dir := t.TempDir()
	url := "file://" + filepath.Join(dir, "b.dbak")
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"bad format", []string{"init", url, "--format", "3"}, []string{"--format 3"}},
		{"missing lightning dir", []string{"init", url, "--lightning-dir", filepath.Join(dir, "nope")}, []string{"nope", "not a directory"}},
		{"duplicate url", []string{"init", url, url}, []string{"twice"}},
		{"not a database", []string{"init", url, "--lightning-dir", notADatabaseDir(t)}, []string{"lightningd.sqlite3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCLI(t, tt.args...)
			assertOneLineError(t, r, tt.want...)
			if names := listDir(t, dir); len(names) != 0 {
				t.Fatalf("failed init left %v", names)
			}
		})
	}
}

// notADatabaseDir is a lightning dir whose lightningd.sqlite3 is garbage.
func notADatabaseDir(t *testing.T) string {
	d := t.TempDir()
	if err := os.WriteFile(filepath.Join(d, "lightningd.sqlite3"), []byte(strings.Repeat("garbage ", 200)), 0o600); err != nil {
		t.Fatal(err)
	}
	return d
}
