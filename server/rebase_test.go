package server_test

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/dbapply"
	"github.com/lnvault/lnvault/server"
)

// snapshotOf builds the database of changes, as the node's would be.
func snapshotOf(t *testing.T, changes []*lnvault.Change) *lnvault.Change {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "node.sqlite3")
	a, err := dbapply.Create(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range changes {
		if err := a.Apply(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, _ := f.Stat()
	return lnvault.NewSnapshot(changes[len(changes)-1].Version, io.NewSectionReader(f, 0, st.Size()))
}

// The client's snapshot replaces the changes up to its version over a
// second connection while the writer goes on appending; what the server
// holds then restores to the whole log.
func TestRebaseOverSocket(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, server.Config{})
	changes := corpusChanges(t)[:400]
	w := openSocket(t, ts.url(""), lnvault.OpenOptions{Create: true})
	for _, c := range changes[:300] {
		if err := w.Append(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	snap := snapshotOf(t, changes[:250])
	appended, errc := appendInBackground(w, changes[300:])
	st, err := w.Rebase(ctx, snap)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Logf("rebased at change 250 with %d changes appended meanwhile: %+v", appended.Load(), st)
	if st.After.VersionCount >= st.Before.VersionCount || st.After.BackupSize >= st.Before.BackupSize {
		t.Fatalf("the rebase did not shrink the backup: %+v", st)
	}
	if h, n := restoreHash(t, openSocket(t, ts.url(""), lnvault.OpenOptions{ReadOnly: true})); h != prefixHash(t, 400) || n != 1+150 {
		t.Fatalf("after the rebase: %d changes streamed, want the snapshot and 150; dump equal %v", n, h == prefixHash(t, 400))
	}

	// Another client may not replace the writer's history.
	other := openSocket(t, ts.url(""), lnvault.OpenOptions{})
	before := ts.b.Metadata()
	if _, err := other.Rebase(ctx, snapshotOf(t, changes[:260])); err == nil || !strings.Contains(err.Error(), "only it may rebase it") {
		t.Fatalf("a rebase by a second client beside the writer: %v", err)
	}
	if m := ts.b.Metadata(); m != before {
		t.Fatalf("a refused rebase changed the backup: %+v", m)
	}
	// The head must stay a change of its own.
	if _, err := w.Rebase(ctx, snapshotOf(t, changes)); err == nil || !strings.Contains(err.Error(), "not rebased") || !strings.Contains(err.Error(), "must stay a change of its own") {
		t.Fatalf("a rebase at the head: %v", err)
	}
	if _, err := openSocket(t, ts.url(""), lnvault.OpenOptions{ReadOnly: true}).Rebase(ctx, snap); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("a read-only rebase: %v", err)
	}
	w.Close()
	ts.stop(t)
	restartServer(t, ts, func(b lnvault.Backend) lnvault.Backend { return plainBackend{b} })
	if _, err := openSocket(t, ts.url(""), lnvault.OpenOptions{}).Rebase(ctx, snap); !errors.Is(err, lnvault.ErrNoRebase) {
		t.Fatalf("a rebase on a server whose store cannot: %v, want ErrNoRebase", err)
	}
}
