package restore

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lnvault/lnvault"
)

func TestVerifyCorpus(t *testing.T) {
	b := fixtureFake(t, 500)
	rep, err := Verify(context.Background(), b)
	if err != nil {
		t.Fatal(err)
	}
	stmts := int64(0)
	for _, c := range b.changes {
		stmts += int64(len(c.stmts))
	}
	if !rep.OK() || rep.Changes != int64(len(b.changes)) || rep.Snapshots != 1 || rep.FirstVersion != FixtureSnap ||
		rep.LastVersion != 500 || rep.DataVersion != 500 || rep.Statements != stmts {
		t.Fatalf("report %+v", rep)
	}
	// The migrations (repeated versions) verify too.
	rep, err = Verify(context.Background(), corpusFake(t, 5))
	if err != nil || rep.LastVersion != 5 || rep.FirstVersion != 1 || rep.Snapshots != 0 {
		t.Fatalf("report %+v, %v", rep, err)
	}
}

func TestVerifyEmpty(t *testing.T) {
	rep, err := Verify(context.Background(), newFake())
	if err != nil || !rep.OK() || rep.Changes != 0 {
		t.Fatalf("empty backup: %+v, %v", rep, err)
	}
}

func TestVerifyProblems(t *testing.T) {
	corrupt := &lnvault.CorruptError{Offset: 4242, Version: 300, Reason: "checksum mismatch"}
	tests := []struct {
		name   string
		setup  func(*fakeBackend)
		want   []string
		offset int64 // of the *CorruptError found by errors.As; -2: none expected
	}{
		{"corrupt record", func(f *fakeBackend) { f.failAt, f.failErr = 50, corrupt }, []string{"offset 4242", "version 300"}, 4242},
		{"gap", func(f *fakeBackend) { f.changes = append(f.changes[:30:30], f.changes[31:]...) }, []string{"changes are missing"}, -1},
		{"head beyond log", func(f *fakeBackend) { f.md.Version += 3 }, []string{"missing changes", "403"}, -1},
		{"bad statement", func(f *fakeBackend) { f.changes[20].stmts = []string{"DELETE FROM nosuchtable"} }, []string{"nosuchtable"}, -1},
		{"foreign key violation", func(f *fakeBackend) {
			// A snapshot taken with foreign keys off can hold a dangling
			// reference; foreign_key_check must catch it.
			snap := fkViolationDB(t)
			f.changes = []fakeChange{{version: 7, kind: lnvault.KindSnapshot, snap: snap}}
			f.md = lnvault.Metadata{Version: 7, VersionCount: 1}
		}, []string{"foreign_key_check", "version 7"}, -1},
	}
	base := fixtureFake(t, 400)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := *base
			f.changes = append([]fakeChange(nil), base.changes...)
			tt.setup(&f)
			rep, err := Verify(context.Background(), &f)
			if err == nil || rep.OK() {
				t.Fatalf("verify passed a damaged backup: %+v", rep)
			}
			if !errors.Is(err, lnvault.ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			var ce *lnvault.CorruptError
			if tt.offset != -2 {
				if !errors.As(err, &ce) || ce.Offset != tt.offset {
					t.Errorf("want a CorruptError at offset %d, got %v", tt.offset, err)
				}
			}
		})
	}
}

// fkViolationDB returns the bytes of a database whose child row references
// a missing parent.
func fkViolationDB(t *testing.T) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fk.sqlite3")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, s := range []string{
		"PRAGMA foreign_keys = OFF",
		"CREATE TABLE parent (id INTEGER PRIMARY KEY)",
		"CREATE TABLE child (parent_id INTEGER REFERENCES parent(id))",
		"INSERT INTO child VALUES (5)",
	} {
		if _, err := db.Exec(s); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestVerifyIOErrorIsNotCorrupt(t *testing.T) {
	f := fixtureFake(t, 330)
	f.failAt, f.failErr = 5, errors.New("connection reset")
	_, err := Verify(context.Background(), f)
	if err == nil || errors.Is(err, lnvault.ErrCorrupt) || !strings.Contains(err.Error(), "connection reset") {
		t.Fatalf("want a plain read error, got %v", err)
	}
}
