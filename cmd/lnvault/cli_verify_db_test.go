package main

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"testing"
)

// verify --db compares a backup with a stopped node's database: equal and
// one uncommitted change pass; a gap, an old database and other content at
// the same version exit 2 and say what to do.
func TestCLIVerifyDB(t *testing.T) {
	dir := t.TempDir()
	url := writeBackup(t, filepath.Join(dir, "b.dbak"), 2, 1000)
	for _, tc := range []struct {
		name   string
		dbAt   uint32
		mutate bool
		code   int
		want   string
	}{
		{"equal", 1000, false, 0, "equal"},
		{"one uncommitted change", 999, false, 0, "uncommitted"},
		{"gap", 1100, false, 2, "gap: the database is at version 1100, the backup at 1000"},
		{"old database", 900, false, 2, "behind: the database is at version 900"},
		{"different rows", 1000, true, 2, "different: at version 1000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := filepath.Join(t.TempDir(), "lightningd.sqlite3")
			replayCorpus(t, db, tc.dbAt)
			if tc.mutate {
				h, err := sql.Open("sqlite", db)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := h.ExecContext(context.Background(), "INSERT INTO vars (name, intval) VALUES ('lnvault_test_row', 1)"); err != nil {
					t.Fatal(err)
				}
				h.Close()
			}
			r := runCLI(t, "verify", url, "--db", db)
			if r.code != tc.code || !strings.Contains(r.stdout+r.stderr, tc.want) {
				t.Fatalf("exit %d, output %q %q; want exit %d and %q", r.code, r.stdout, r.stderr, tc.code, tc.want)
			}
			if tc.code != 0 {
				assertOneLineError(t, r)
			}
		})
	}
}

// init --no-heal writes "heal": false into backup.lock.
func TestCLIInitNoHeal(t *testing.T) {
	ldir := t.TempDir()
	url := "file://" + filepath.Join(t.TempDir(), "node.dbak")
	mustRun(t, "init", url, "--lightning-dir", ldir, "--no-heal")
	lock := readLock(t, ldir)
	if lock["backend_url"] != url || lock["heal"] != false {
		t.Fatalf("backup.lock = %v, want backend_url %s and heal false", lock, url)
	}
}
