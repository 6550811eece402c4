package restore_test

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/dbapply"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/restore"
)

// writeCorpusBackup stores every corpus request in a new file backup of the
// given format and returns its URL and size.
func writeCorpusBackup(tb testing.TB, dir string, format int) (string, int64) {
	tb.Helper()
	ctx := context.Background()
	path := filepath.Join(dir, "corpus-v"+string(rune('0'+format))+".dbak")
	url := "file://" + path
	b, err := lnvault.Open(ctx, url, lnvault.OpenOptions{Create: true, Format: format})
	if err != nil {
		tb.Fatal(err)
	}
	for _, r := range corpus.MustLoad() {
		if err := b.Append(ctx, r.Change()); err != nil {
			tb.Fatal(err)
		}
	}
	if err := b.Close(); err != nil {
		tb.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		tb.Fatal(err)
	}
	return url, st.Size()
}

// applyPlain is the reference: plain database/sql applying every corpus
// statement in one transaction, with the pragmas dbapply uses, then fsync.
func applyPlain(tb testing.TB, path string, stmts []string) {
	tb.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	for _, p := range []string{"PRAGMA foreign_keys = ON", "PRAGMA synchronous = OFF", "PRAGMA journal_mode = MEMORY"} {
		if _, err := db.Exec(p); err != nil {
			tb.Fatal(err)
		}
	}
	tx, err := db.Begin()
	if err != nil {
		tb.Fatal(err)
	}
	for _, s := range stmts {
		if _, err := tx.Exec(s); err != nil {
			tb.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		tb.Fatal(err)
	}
	db.Close()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		tb.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		tb.Fatal(err)
	}
	f.Close()
}

// BenchmarkRestoreCorpus restores the corpus from a v2 file backup and, in
// the same iteration, applies the same statements with plain SQLite in one
// transaction. restore/sqlite is the ratio of the two (goal <= 1.5);
// v2/v1-size compares the backup sizes of the two file formats.
func BenchmarkRestoreCorpus(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	url2, size2 := writeCorpusBackup(b, dir, 2)
	_, size1 := writeCorpusBackup(b, dir, 1)
	var stmts []string
	for _, r := range corpus.MustLoad() {
		for _, s := range r.Writes {
			stmts = append(stmts, dbapply.FixStatement(s))
		}
	}
	bk, err := lnvault.Open(ctx, url2, lnvault.OpenOptions{ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	defer bk.Close()

	var tRestore, tPlain time.Duration
	i := 0
	for b.Loop() {
		i++
		dest := filepath.Join(dir, "restored")
		ref := filepath.Join(dir, "plain")
		os.Remove(dest)
		os.Remove(ref)
		t0 := time.Now()
		if _, err := restore.Restore(ctx, bk, dest, restore.Options{}); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		applyPlain(b, ref, stmts)
		tPlain += time.Since(t1)
		tRestore += t1.Sub(t0)
	}
	b.ReportMetric(float64(tRestore)/float64(tPlain), "restore/sqlite")
	b.ReportMetric(float64(tRestore.Milliseconds())/float64(i), "restore-ms/op")
	b.ReportMetric(float64(tPlain.Milliseconds())/float64(i), "sqlite-ms/op")
	b.ReportMetric(float64(size2)/float64(size1), "v2/v1-size")
	b.ReportMetric(float64(size2), "v2-bytes")
}
