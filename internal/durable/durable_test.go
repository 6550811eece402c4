package durable

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// names lists dir's entries: a leftover temp file shows here.
func names(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestWriteFileReplaces(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	for _, data := range []string{"one", "two, longer"} {
		if err := WriteFile(p, []byte(data), 0o640); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(p)
		if err != nil || string(got) != data {
			t.Fatalf("read %q, %v; want %q", got, err, data)
		}
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v, want 0640", st.Mode().Perm())
	}
	if n := names(t, dir); len(n) != 1 {
		t.Fatalf("entries %v: a temp file was left", n)
	}
}

func TestCreateFileRefusesAnExistingFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := CreateFile(p, []byte("first"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := CreateFile(p, []byte("second"), 0o600)
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second create: %v, want fs.ErrExist", err)
	}
	if got, _ := os.ReadFile(p); string(got) != "first" {
		t.Fatalf("the existing file became %q", got)
	}
	if n := names(t, dir); len(n) != 1 {
		t.Fatalf("entries %v: a temp file was left", n)
	}
}

func TestWriteTempRemovesOnFailure(t *testing.T) {
	dir := t.TempDir()
	boom := errors.New("boom")
	_, err := WriteTemp(dir, "x-*", 0o600, func(f *os.File) error {
		f.Write([]byte("partial"))
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err %v, want the fill's", err)
	}
	if n := names(t, dir); len(n) != 0 {
		t.Fatalf("entries %v after a failed fill", n)
	}
	if _, err := WriteTemp(filepath.Join(dir, "missing"), "x-*", 0o600, writer(nil)); err == nil {
		t.Fatal("a temp file in a missing directory")
	}
}

func TestReplaceAndCreateErrors(t *testing.T) {
	dir := t.TempDir()
	tmp, err := WriteTemp(dir, "x-*", 0o600, writer([]byte("data")))
	if err != nil {
		t.Fatal(err)
	}
	// A rename over a non-empty directory fails.
	target := filepath.Join(dir, "d")
	os.MkdirAll(filepath.Join(target, "inner"), 0o700)
	if err := Replace(tmp, target); err == nil {
		t.Fatal("replaced a directory")
	}
	if _, err := os.Stat(tmp); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("temp file kept after a failed replace: %v", err)
	}
	tmp, _ = WriteTemp(dir, "x-*", 0o600, writer([]byte("data")))
	var le *os.LinkError
	if err := Create(tmp, target); !errors.Is(err, fs.ErrExist) || !errors.As(err, &le) {
		t.Fatalf("create over a directory: %v", err)
	}
	if _, err := os.Stat(tmp); err != nil {
		t.Fatalf("a failed create took the temp file, its caller's to place otherwise: %v", err)
	}
}

func TestSyncErrorsNameThePath(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "gone")
	for _, err := range []error{SyncDir(missing), SyncFile(missing)} {
		if err == nil || !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("err %v, want not-exist", err)
		}
	}
	if err := SyncDir(missing); err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("%v does not name %s", err, missing)
	}
}

func TestMkdirAllBelowRoot(t *testing.T) {
	root := t.TempDir()
	d := filepath.Join(root, "a", "b", "c")
	if err := MkdirAll(root, d); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(d)
	if err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
		t.Fatalf("stat %v, %v", st, err)
	}
	if err := MkdirAll(root, d); err != nil {
		t.Fatalf("again: %v", err)
	}
}
