package dir

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// A dir: store names itself as the operator wrote it, in messages too.
func TestStringIsDirURL(t *testing.T) {
	root := filepath.Join(t.TempDir(), "replica")
	s, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.String(), "dir://"+root; got != want {
		t.Fatalf("String() = %q, want %q", got, want)
	}
}

// RemoveIfEmpty removes the directory once no object is left, and only then.
func TestRemoveIfEmpty(t *testing.T) {
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "replica")
	s, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutIf(ctx, "lease.json", []byte("{}"), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutIf(ctx, "lease.json", []byte("{}"), etag([]byte("{}"))); err != nil {
		t.Fatal(err) // takes the lock file
	}
	if err := s.RemoveIfEmpty(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "lease.json")); err != nil {
		t.Fatalf("an object was removed: %v", err)
	}
	if err := s.Delete(ctx, "lease.json"); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveIfEmpty(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(root); !os.IsNotExist(err) {
		t.Fatalf("the empty store's directory is still there: %v", err)
	}
}

// Reading a store that does not exist creates nothing; the first write
// creates its directory (and its missing parents).
func TestRootCreatedByTheFirstWrite(t *testing.T) {
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "a", "replica")
	s, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	if objs, err := s.List(ctx, ""); err != nil || len(objs) != 0 {
		t.Fatalf("listing a missing store: %v, %v", objs, err)
	}
	if _, _, err := s.Get(ctx, "marker"); !os.IsNotExist(err) {
		t.Fatalf("get from a missing store: %v", err)
	}
	if err := s.RemoveIfEmpty(); err != nil {
		t.Fatalf("RemoveIfEmpty of a missing store: %v", err)
	}
	if _, err := os.Stat(filepath.Dir(root)); !os.IsNotExist(err) {
		t.Fatalf("reading created the directory: %v", err)
	}
	if err := s.Put(ctx, "gen/x", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if b, _, err := s.Get(ctx, "gen/x"); err != nil || string(b) != "x" {
		t.Fatalf("get after the first put: %q, %v", b, err)
	}
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, nil, 0o600)
	if _, err := New(f); err == nil {
		t.Fatal("a store rooted at a file was accepted")
	}
}
