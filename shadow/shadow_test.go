package shadow

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/dbapply"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/dumphash"
)

func replay(t *testing.T, path string, cs []*lnvault.Change) {
	t.Helper()
	ctx := context.Background()
	a, err := dbapply.Create(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if err := a.Apply(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Finish(ctx); err != nil {
		t.Fatal(err)
	}
}

func hash(t *testing.T, path string) string {
	t.Helper()
	h, err := dumphash.Of(path)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func waitVersion(t *testing.T, s *Shadow, v uint32) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); s.Version() != v; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the shadow is at %d, want %d", s.Version(), v)
		}
	}
}

// The shadow is copied from the node's database when it is not at its
// version, kept when it is, follows the changes it is given, and copies
// out as a rollback-journal database equal to the node's.
func TestShadowFollowsTheNode(t *testing.T) {
	ctx := context.Background()
	cs, err := corpus.Changes()
	if err != nil {
		t.Fatal(err)
	}
	cs = cs[:300]
	dir := t.TempDir()
	node := filepath.Join(dir, "lightningd.sqlite3")
	replay(t, node, cs[:100])
	log := slog.New(slog.DiscardHandler)
	s := New(filepath.Join(dir, "shadow.sqlite3"), log)
	if _, err := s.Copy(ctx, filepath.Join(dir, "x")); err == nil {
		t.Fatal("a copy before the first write")
	}
	if err := s.Align(ctx, cs[99].Version, node); err != nil {
		t.Fatal(err)
	}
	for _, c := range cs[100:200] {
		s.Add(c)
	}
	// The newest change waits for the next one (lightningd may not commit
	// it); Close applies it.
	waitVersion(t, s, cs[198].Version)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The next start: the shadow is at the node's version (the node
	// committed cs[:200]) and is kept, not copied (the node's file here is
	// older: a copy would show).
	s = New(s.Path(), log)
	if err := s.Align(ctx, cs[199].Version, node); err != nil {
		t.Fatal(err)
	}
	for _, c := range cs[200:] {
		s.Add(c)
	}
	waitVersion(t, s, cs[298].Version)
	out := filepath.Join(dir, "copy.sqlite3")
	v, err := s.Copy(ctx, out)
	if err != nil || v != cs[298].Version {
		t.Fatalf("copy: version %d, %v; want %d, behind the newest change", v, err, cs[298].Version)
	}
	want := filepath.Join(dir, "want.sqlite3")
	replay(t, want, cs[:299])
	if hash(t, out) != hash(t, want) {
		t.Fatal("the shadow's copy is not the database of the changes")
	}
	db, err := sql.Open("sqlite", "file:"+out)
	if err != nil {
		t.Fatal(err)
	}
	var mode string
	if err := db.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil || mode != "delete" {
		t.Fatalf("the copy's journal mode is %q (%v), want delete (lightningd's)", mode, err)
	}
	db.Close()
	// A change that does not follow stops the shadow for the run.
	s.Add(lnvault.NewTransaction(cs[299].Version+5, []string{"UPDATE vars SET intval = 1 WHERE name = 'x'"}))
	s.Add(lnvault.NewTransaction(cs[299].Version+6, []string{"UPDATE vars SET intval = 1 WHERE name = 'x'"}))
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := s.Copy(ctx, filepath.Join(dir, "y")); err != nil {
			if !strings.Contains(err.Error(), "does not follow the shadow's version "+fmt.Sprint(cs[299].Version)) {
				t.Fatal(err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a gap did not stop the shadow")
		}
	}
	s.Close()
	// A shadow behind the node (it lost its last commits) is copied anew.
	replay(t, filepath.Join(dir, "node2.sqlite3"), cs[:250])
	s = New(filepath.Join(dir, "shadow.sqlite3"), log)
	if err := s.Align(ctx, cs[249].Version, filepath.Join(dir, "node2.sqlite3")); err != nil {
		t.Fatal(err)
	}
	if s.Version() != cs[249].Version {
		t.Fatalf("after aligning with a node at %d the shadow is at %d", cs[249].Version, s.Version())
	}
	s.Close()
}
