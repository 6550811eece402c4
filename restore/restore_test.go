package restore

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
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/dumphash"
)

// corpusFake returns a fake backend holding every corpus request with
// data_version <= cut (0: all).
func corpusFake(t testing.TB, cut uint32) *fakeBackend {
	t.Helper()
	f := newFake()
	for _, r := range corpus.MustLoad() {
		if cut != 0 && r.DataVersion > cut {
			break
		}
		if err := f.Append(context.Background(), r.Change()); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// replay applies the corpus up to cut (0: all) directly with dbapply, the
// reference a restore must equal.
func replay(t testing.TB, path string, cut uint32) {
	t.Helper()
	ctx := context.Background()
	a, err := dbapply.Create(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range corpus.MustLoad() {
		if cut != 0 && r.DataVersion > cut {
			break
		}
		if err := a.Apply(ctx, r.Change()); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Finish(ctx); err != nil {
		t.Fatal(err)
	}
}

func dump(t testing.TB, path string) string {
	t.Helper()
	if !dumphash.Available() {
		t.Fatal("the sqlite3 command line tool is needed (apt-get install sqlite3, or run ./scripts/test which installs it)")
	}
	h, err := dumphash.Of(path)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// assertClean fails if dir holds anything but the names in keep: no temp
// file, no partial database.
func assertClean(t *testing.T, dir string, keep ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var extra []string
	for _, e := range ents {
		found := false
		for _, k := range keep {
			found = found || e.Name() == k
		}
		if !found {
			extra = append(extra, e.Name())
		}
	}
	if len(extra) > 0 {
		t.Fatalf("left behind in %s: %v", dir, extra)
	}
}

func TestRestoreCorpusLatest(t *testing.T) {
	b := corpusFake(t, 0)
	dir := t.TempDir()
	dest := filepath.Join(dir, "restored.sqlite3")
	res, err := Restore(context.Background(), b, dest, Options{Progress: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	if res.Version != 2992 || res.Changes != int64(len(corpus.MustLoad())) || res.Path != dest || res.Bytes <= 0 {
		t.Fatalf("result %+v", res)
	}
	if got, want := dump(t, dest), corpus.FinalDumpSHA256(); got != want {
		t.Fatalf("dump %s, want %s", got, want)
	}
	if v, err := dbapply.DataVersion(context.Background(), dest); err != nil || v != 2992 {
		t.Fatalf("data_version %d, %v", v, err)
	}
	assertClean(t, dir, "restored.sqlite3")
}

func TestRestoreToVersion(t *testing.T) {
	full := corpusFake(t, 2)
	fx := fixtureFake(t, 450)
	for _, tt := range []struct {
		b  *fakeBackend
		to uint32
	}{{full, 1}, {full, 2}, {fx, 300}, {fx, 301}, {fx, 377}} {
		t.Run("", func(t *testing.T) {
			dir := t.TempDir()
			dest := filepath.Join(dir, "db")
			res, err := Restore(context.Background(), tt.b, dest, Options{ToVersion: tt.to})
			if err != nil {
				t.Fatal(err)
			}
			if res.Version != tt.to {
				t.Fatalf("version %d, want %d", res.Version, tt.to)
			}
			// Every change of the target version is applied, repeats
			// included: the corpus starts 1, 1, 2, 2, 3, so version 2 is
			// four changes.
			want := int64(0)
			for _, c := range tt.b.changes {
				if c.version <= tt.to {
					want++
				}
			}
			if res.Changes != want {
				t.Fatalf("changes %d, want %d", res.Changes, want)
			}
			ref := filepath.Join(t.TempDir(), "ref")
			if tt.b == full {
				replay(t, ref, tt.to)
			} else {
				FixtureReplay(t, ref, tt.to)
			}
			if got, want := dump(t, dest), dump(t, ref); got != want {
				t.Fatalf("dump at %d differs from a direct replay", tt.to)
			}
			if v, err := dbapply.DataVersion(context.Background(), dest); err != nil || v != tt.to {
				t.Fatalf("data_version %d, %v", v, err)
			}
		})
	}
}

func TestRestoreIntoDirectory(t *testing.T) {
	b := fixtureFake(t, 350)
	dir := t.TempDir()
	res, err := Restore(context.Background(), b, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, DefaultName); res.Path != want {
		t.Fatalf("path %s, want %s", res.Path, want)
	}
	assertClean(t, dir, DefaultName)
}

func TestRestoreRefusesExistingDest(t *testing.T) {
	b := fixtureFake(t, 350)
	dir := t.TempDir()
	dest := filepath.Join(dir, "db")
	if err := os.WriteFile(dest, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Restore(context.Background(), b, dest, Options{})
	if err == nil || !strings.Contains(err.Error(), "--force") || !strings.Contains(err.Error(), dest) {
		t.Fatalf("want a refusal naming %s and --force, got %v", dest, err)
	}
	if got, _ := os.ReadFile(dest); string(got) != "precious" {
		t.Fatal("existing destination was modified")
	}
	assertClean(t, dir, "db")

	res, err := Restore(context.Background(), b, dest, Options{Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Version != 350 {
		t.Fatalf("version %d", res.Version)
	}
	if v, _ := dbapply.DataVersion(context.Background(), dest); v != 350 {
		t.Fatalf("data_version %d after --force", v)
	}
	assertClean(t, dir, "db")
}

func TestRestoreStaleSideFiles(t *testing.T) {
	b := fixtureFake(t, 350)
	dir := t.TempDir()
	dest := filepath.Join(dir, "db")
	if err := os.WriteFile(dest+"-journal", []byte("stale hot journal"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Restore(context.Background(), b, dest, Options{})
	if err == nil || !strings.Contains(err.Error(), "db-journal") || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("want a refusal naming the stale journal, got %v", err)
	}
	assertClean(t, dir, "db-journal")
	if _, err := Restore(context.Background(), b, dest, Options{Force: true}); err != nil {
		t.Fatal(err)
	}
	assertClean(t, dir, "db")
	if err := dbapply.Check(context.Background(), dest, true); err != nil {
		t.Fatal(err)
	}
}

func TestRestoreSnapshotThenChanges(t *testing.T) {
	ctx := context.Background()
	// A snapshot (as init or compaction makes), then changes after it.
	b := fixtureFake(t, 400)
	dest := filepath.Join(t.TempDir(), "db")
	res, err := Restore(ctx, b, dest, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Version != 400 || res.Changes != int64(len(b.changes)) {
		t.Fatalf("result %+v", res)
	}
	ref := filepath.Join(t.TempDir(), "ref")
	FixtureReplay(t, ref, 400)
	if got, want := dump(t, dest), dump(t, ref); got != want {
		t.Fatal("dump after snapshot + changes differs from a direct replay")
	}
	// Below the snapshot: not in the log.
	dir := t.TempDir()
	_, err = Restore(ctx, b, filepath.Join(dir, "db"), Options{ToVersion: FixtureSnap - 1})
	if err == nil || !strings.Contains(err.Error(), "oldest change is version 300") {
		t.Fatalf("want a clear error below the snapshot, got %v", err)
	}
	assertClean(t, dir)
}

func TestRestoreErrors(t *testing.T) {
	ctx := context.Background()
	corrupt := &lnvault.CorruptError{Offset: 12345, Version: 77, Reason: "checksum mismatch"}
	tests := []struct {
		name  string
		setup func(*fakeBackend)
		opts  Options
		want  []string
		isErr error
	}{
		{"above head", nil, Options{ToVersion: 5000}, []string{"5000", "latest version is 400"}, nil},
		{"corrupt record", func(f *fakeBackend) { f.failAt, f.failErr = 80, corrupt }, Options{}, []string{"offset 12345", "version 77", "checksum"}, lnvault.ErrCorrupt},
		{"corrupt after target is not read", func(f *fakeBackend) { f.failAt, f.failErr = 90, corrupt }, Options{ToVersion: 310}, nil, nil},
		{"io error", func(f *fakeBackend) { f.failAt, f.failErr = 3, errors.New("disk on fire") }, Options{}, []string{"disk on fire"}, nil},
		{"gap", func(f *fakeBackend) { f.changes = append(f.changes[:50:50], f.changes[51:]...) }, Options{}, []string{"changes are missing"}, lnvault.ErrCorrupt},
		{"head beyond log", func(f *fakeBackend) { f.md.Version++ }, Options{}, []string{"missing changes"}, lnvault.ErrCorrupt},
		{"data_version mismatch", func(f *fakeBackend) {
			f.changes = append(f.changes, fakeChange{version: f.md.Version + 1, kind: lnvault.KindTransaction, stmts: []string{"UPDATE vars SET intval = 1 WHERE name = 'data_version'"}})
			f.md.Version++
		}, Options{}, []string{"data_version 1", "says 401"}, lnvault.ErrCorrupt},
		{"bad statement", func(f *fakeBackend) { f.changes[10].stmts = []string{"INSERT INTO nosuchtable VALUES (1)"} }, Options{}, []string{"nosuchtable", "lnvault verify"}, nil},
	}
	base := fixtureFake(t, 400)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := *base
			f.changes = append([]fakeChange(nil), base.changes...)
			if tt.setup != nil {
				tt.setup(&f)
			}
			// A directory name with the characters SQLite URIs give a
			// meaning to: every check must still read the right file.
			dir := filepath.Join(t.TempDir(), "odd #?% dir")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			dest := filepath.Join(dir, "db")
			_, err := Restore(ctx, &f, dest, tt.opts)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("restore succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
			if tt.isErr != nil && !errors.Is(err, tt.isErr) {
				t.Errorf("error %v is not %v", err, tt.isErr)
			}
			assertClean(t, dir)
		})
	}
}

func TestRestoreBadDestinations(t *testing.T) {
	b := fixtureFake(t, 305)
	tmp := t.TempDir()
	file := filepath.Join(tmp, "afile")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, dest, want string }{
		{"missing dir", filepath.Join(tmp, "nope", "db"), "does not exist"},
		{"parent is a file", filepath.Join(file, "db"), "not a directory"},
		{"empty", "", "no destination"},
	}
	if os.Geteuid() == 0 {
		// root ignores permission bits; sysfs refuses new files even to root.
		tests = append(tests, struct{ name, dest, want string }{"unwritable", "/sys/lnvault-restore-test", "choose a writable directory"})
	} else {
		ro := filepath.Join(tmp, "ro")
		os.Mkdir(ro, 0o500)
		tests = append(tests, struct{ name, dest, want string }{"unwritable", filepath.Join(ro, "db"), "choose a writable directory"})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Restore(context.Background(), b, tt.dest, Options{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("want error with %q, got %v", tt.want, err)
			}
		})
	}
}

func TestRestoreEmptyBackup(t *testing.T) {
	dir := t.TempDir()
	_, err := Restore(context.Background(), newFake(), filepath.Join(dir, "db"), Options{})
	if err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("want an empty-backup error, got %v", err)
	}
	assertClean(t, dir)
}

func TestRestoreCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dir := t.TempDir()
	_, err := Restore(ctx, corpusFake(t, 0), filepath.Join(dir, "db"), Options{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
	assertClean(t, dir)
}

// appearing is a backend during whose stream the destination appears.
type appearing struct {
	*fakeBackend
	dest string
}

func (a appearing) Stream(ctx context.Context, from uint32, fn func(*lnvault.Change) error) error {
	if err := os.WriteFile(a.dest, []byte("lightningd started meanwhile"), 0o600); err != nil {
		return err
	}
	return a.fakeBackend.Stream(ctx, from, fn)
}

func TestRestoreDestAppears(t *testing.T) {
	dir := t.TempDir()
	dest := filepath.Join(dir, "db")
	_, err := Restore(context.Background(), appearing{fixtureFake(t, 310), dest}, dest, Options{})
	if err == nil || !strings.Contains(err.Error(), "appeared while restoring") {
		t.Fatalf("want a refusal, got %v", err)
	}
	if got, _ := os.ReadFile(dest); string(got) != "lightningd started meanwhile" {
		t.Fatal("a file that appeared during the restore was replaced")
	}
	assertClean(t, dir, "db")
}
