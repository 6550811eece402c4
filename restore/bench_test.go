package restore_test

import (
	"context"
	"database/sql"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/dbapply"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/dumphash"
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

// cliScript is the corpus as a script for Debian's sqlite3: dbapply's
// pragmas, then each db_write as the transaction lightningd committed (a
// migration's PRAGMA-only write outside any), as the statements restore
// applies.
func cliScript(tb testing.TB, path string) {
	tb.Helper()
	var sb strings.Builder
	sb.WriteString("PRAGMA foreign_keys = ON;\nPRAGMA synchronous = OFF;\nPRAGMA journal_mode = MEMORY;\n")
	for _, r := range corpus.MustLoad() {
		pragma := lnvault.IsPragmaOnly(r.Writes)
		if !pragma {
			sb.WriteString("BEGIN;\n")
		}
		for _, s := range r.Writes {
			sb.WriteString(strings.TrimRight(strings.TrimSpace(dbapply.FixStatement(s)), ";"))
			sb.WriteString(";\n")
		}
		if !pragma {
			sb.WriteString("COMMIT;\n")
		}
	}
	if err := os.WriteFile(path, []byte(sb.String()), 0o600); err != nil {
		tb.Fatal(err)
	}
}

// BenchmarkRestoreVsSQLiteCLI: restore of the corpus from a format-2 file
// against Debian's sqlite3 applying the same statements with lightningd's
// transaction boundaries and the same pragmas (then an fsync, as restore's
// own), alternating which goes first. restore/cli is the ratio (goal ≤ 1.2).
func BenchmarkRestoreVsSQLiteCLI(b *testing.B) {
	bin, err := exec.LookPath("sqlite3")
	if err != nil {
		b.Fatal("this benchmark compares with Debian's sqlite3: apt-get install sqlite3")
	}
	ctx := context.Background()
	dir := b.TempDir()
	url, _ := writeCorpusBackup(b, dir, 2)
	script := filepath.Join(dir, "corpus.sql")
	cliScript(b, script)
	bk, err := lnvault.Open(ctx, url, lnvault.OpenOptions{ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	defer bk.Close()
	cli := func(dest string) time.Duration {
		in, err := os.Open(script)
		if err != nil {
			b.Fatal(err)
		}
		defer in.Close()
		t := time.Now()
		cmd := exec.Command(bin, "-bail", dest)
		cmd.Stdin = in
		if out, err := cmd.CombinedOutput(); err != nil || strings.Contains(string(out), "Error") {
			b.Fatalf("sqlite3: %v: %s", err, out)
		}
		f, err := os.OpenFile(dest, os.O_RDWR, 0)
		if err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		f.Close()
		return time.Since(t)
	}
	rest := func(dest string) time.Duration {
		t := time.Now()
		if _, err := restore.Restore(ctx, bk, dest, restore.Options{}); err != nil {
			b.Fatal(err)
		}
		return time.Since(t)
	}
	var tRestore, tCLI time.Duration
	i := 0
	for b.Loop() {
		dest, ref := filepath.Join(dir, "restored"), filepath.Join(dir, "cli")
		os.Remove(dest)
		os.Remove(ref)
		if i%2 == 0 {
			tRestore += rest(dest)
			tCLI += cli(ref)
		} else {
			tCLI += cli(ref)
			tRestore += rest(dest)
		}
		i++
	}
	if h1, h2 := dumpHash(b, filepath.Join(dir, "restored")), dumpHash(b, filepath.Join(dir, "cli")); h1 != h2 {
		b.Fatalf("restore and sqlite3 built different databases: %s vs %s", h1, h2)
	}
	b.ReportMetric(float64(tRestore)/float64(tCLI), "restore/cli")
	b.ReportMetric(float64(tRestore.Microseconds())/1000/float64(i), "restore-ms/op")
	b.ReportMetric(float64(tCLI.Microseconds())/1000/float64(i), "cli-ms/op")
}

func dumpHash(tb testing.TB, path string) string {
	tb.Helper()
	h, err := dumphash.Of(path)
	if err != nil {
		tb.Fatal(err)
	}
	return h
}
