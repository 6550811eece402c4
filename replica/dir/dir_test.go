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
