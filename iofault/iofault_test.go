// Package iofault runs the real plugin binary, as lightningd drives it, over
// storage that fails: a disk that fills up (a small tmpfs) and a filesystem
// that fails a chosen write or fsync (internal/faultfs, a FUSE layer). The
// plugin must answer an error, never continue; the backup must still verify;
// after the fault is gone and lightningd restarts, the node goes on and the
// backup restores to exactly its database. Under CI=true these tests run,
// never skip.
package iofault

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/backends"
	"github.com/lnvault/lnvault/backupplugin"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/dumphash"
	"github.com/lnvault/lnvault/internal/harness"
	"github.com/lnvault/lnvault/restore"
)

var lnvaultBin string

func TestMain(m *testing.M) {
	backends.Register()
	os.Exit(harness.RunWithLnvault(m, "lnv-io-", &lnvaultBin))
}

// need fails under CI=true and skips elsewhere, naming what is missing.
func need(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal(err)
	}
	t.Skip(err)
}

// node is the simulated lightningd with lnvault backing up to url.
type node struct {
	t    *testing.T
	h    *harness.Harness
	url  string
	reqs []corpus.Request
	next int // the next db_write lightningd sends: all before are committed
}

func newNode(t *testing.T, url string) *node {
	t.Helper()
	if !dumphash.Available() {
		t.Fatal("the sqlite3 command line tool is needed (apt-get install sqlite3)")
	}
	h, err := harness.New(harness.Config{Bin: lnvaultBin, Dir: filepath.Join(t.TempDir(), "node")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	if err := backupplugin.WriteLock(h.NetDir(), backupplugin.Lock{BackendURL: url}); err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, h: h, url: url, reqs: corpus.MustLoad()}
	n.start()
	return n
}

func (n *node) start() {
	n.t.Helper()
	if err := n.h.Start(context.Background()); err != nil {
		n.t.Fatal(err)
	}
}

// write sends the next db_write; on success lightningd commits it.
func (n *node) write() error {
	r := n.reqs[n.next]
	_, err := n.h.Write(context.Background(), fmt.Sprintf("w#%d", n.next), r.DataVersion, r.Writes)
	if err == nil {
		n.next++
	}
	return err
}

// restart is lightningd stopping on a failed db_write and starting again.
func (n *node) restart() {
	n.h.Kill()
	n.start()
}

// checkBackup opens the backup read-only and restores it: it holds every
// acknowledged change and at most the one that failed.
func (n *node) checkBackup(what string) {
	n.t.Helper()
	ctx := context.Background()
	b, err := lnvault.Open(ctx, n.url, lnvault.OpenOptions{ReadOnly: true})
	if err != nil {
		n.t.Fatalf("%s: the backup does not open: %v", what, err)
	}
	defer b.Close()
	m := b.Metadata()
	last := n.reqs[n.next-1].DataVersion
	if m.Version != last && m.Version != n.reqs[n.next].DataVersion {
		n.t.Fatalf("%s: backup head %d, last acknowledged %d", what, m.Version, last)
	}
	dest := filepath.Join(n.t.TempDir(), "check.sqlite3")
	if _, err := restore.Restore(ctx, b, dest, restore.Options{ToVersion: last}); err != nil {
		n.t.Fatalf("%s: restore to the last acknowledged version %d: %v", what, last, err)
	}
	// The node's database holds exactly what lightningd committed.
	want, err := dumphash.Of(n.h.NodeDBPath())
	if err != nil {
		n.t.Fatal(err)
	}
	if got, err := dumphash.Of(dest); err != nil || got != want {
		n.t.Fatalf("%s: the backup restored to %d differs from the node's committed state (%v)", what, last, err)
	}
}

// finish stops the node and checks the restore equals its database.
func (n *node) finish() {
	n.t.Helper()
	ctx := context.Background()
	if _, err := n.h.Stop(ctx); err != nil {
		n.t.Fatal(err)
	}
	b, err := lnvault.Open(ctx, n.url, lnvault.OpenOptions{ReadOnly: true})
	if err != nil {
		n.t.Fatal(err)
	}
	defer b.Close()
	dest := filepath.Join(n.t.TempDir(), "final.sqlite3")
	if _, err := restore.Restore(ctx, b, dest, restore.Options{}); err != nil {
		n.t.Fatal(err)
	}
	want, err := dumphash.Of(n.h.NodeDBPath())
	if err != nil {
		n.t.Fatal(err)
	}
	if got, err := dumphash.Of(dest); err != nil || got != want {
		n.t.Fatalf("the final restore differs from the node's database (%v)", err)
	}
}
