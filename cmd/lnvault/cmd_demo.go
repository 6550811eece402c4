package main

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/backupplugin"
	"github.com/lnvault/lnvault/dbapply"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/dumphash"
	"github.com/lnvault/lnvault/internal/harness"
	"github.com/lnvault/lnvault/restore"
	"github.com/spf13/cobra"
)

// newDemoCmd is `lnvault demo`.
func newDemoCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "demo",
		Short: "Back up real Core Lightning traffic through the plugin, restore it and check it byte for byte",
		Long: `Demo runs the whole product in a temp directory: it creates a file backup,
starts this binary as a plugin the way lightningd does, replays the embedded
corpus of real db_write requests (2994, schema migrations included), crashes
lightningd between an ack and its commit and restarts it (the plugin must
rewind the uncommitted change), restores
the backup and compares the SHA-256 of 'sqlite3 .dump' with the one recorded
from the real node. It exits 1 if they differ.`,
		Args: cobra.NoArgs,
		RunE: runDemo,
	}
	c.Flags().Bool("keep", false, "keep the temp directory and print its path")
	return c
}

func runDemo(cmd *cobra.Command, _ []string) error {
	ctx := cmd.Context()
	out := cmd.OutOrStdout()
	keep, _ := cmd.Flags().GetBool("keep")
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("demo runs this binary as the plugin but cannot find it: %w", err)
	}
	dir, err := os.MkdirTemp("", "lnvault-demo-")
	if err != nil {
		return fmt.Errorf("demo needs a temp directory (set TMPDIR to a writable one): %w", err)
	}
	if keep {
		fmt.Fprintf(out, "working in %s (kept)\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	step := func(name string, t time.Time) {
		fmt.Fprintf(out, "  %-64s %10s\n", name, time.Since(t).Round(100*time.Microsecond))
	}

	reqs, err := corpus.Load()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "lnvault demo: %d db_write requests of a real Core Lightning node\n", len(reqs))

	// 1. init a file backup (format 2) and backup.lock, as `lnvault init` does.
	t := time.Now()
	backupPath := filepath.Join(dir, "backups", "lightningd.dbak")
	if err := os.MkdirAll(filepath.Dir(backupPath), 0o700); err != nil {
		return err
	}
	url := "file://" + backupPath
	b, err := lnvault.Open(ctx, url, lnvault.OpenOptions{Create: true, Format: 2})
	if err != nil {
		return fmt.Errorf("creating the demo backup: %w", err)
	}
	if err := b.Close(); err != nil {
		return err
	}
	h, err := harness.New(harness.Config{Bin: self, Dir: filepath.Join(dir, "lightning")})
	if err != nil {
		return err
	}
	defer h.Close()
	if err := backupplugin.WriteLock(h.NetDir(), backupplugin.Lock{BackendURL: url}); err != nil {
		return err
	}
	step("init "+url, t)

	// 2. the plugin, as lightningd starts it.
	t = time.Now()
	if err := h.Start(ctx); err != nil {
		return err
	}
	step("start plugin (LIGHTNINGD_PLUGIN=1, getmanifest)", t)

	// 3. replay: the first db_write before init, as a real node sends it.
	// Two thirds in, lightningd crashes between the plugin's answer and its
	// own commit: the backup then holds a change the node never committed.
	cut := len(reqs) * 2 / 3
	for cut < len(reqs)-1 && reqs[cut].DataVersion != reqs[cut-1].DataVersion+1 {
		cut++ // not a migration's repeated version
	}
	t = time.Now()
	if err := h.Replay(ctx, reqs[:cut], 1); err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	step(fmt.Sprintf("replay %d db_writes (each acked once durable)", cut), t)
	t = time.Now()
	r := reqs[cut]
	if _, err := h.WriteNoCommit(ctx, r.ID, r.DataVersion, r.Writes); err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	h.Kill()
	step(fmt.Sprintf("crash: lightningd dies after the ack of %d, before its commit", r.DataVersion), t)
	// 4. lightningd restarts and sends that data_version again: the plugin
	// must drop the uncommitted change before taking the resent one.
	t = time.Now()
	if err := h.Start(ctx); err != nil {
		return err
	}
	if err := h.Replay(ctx, reqs[cut:], 1); err != nil {
		return fmt.Errorf("replay after the crash: %w", err)
	}
	if !h.LogsContain("rewinding it") {
		return errors.New("demo FAILED: the plugin did not rewind the change lightningd never committed")
	}
	step(fmt.Sprintf("restart: the plugin rewinds %d, then the other %d", r.DataVersion, len(reqs)-cut), t)
	lat := harness.Summarize(h.Latencies())
	fmt.Fprintf(out, "    ack latency p50 %s  p99 %s  max %s\n", msStr(lat.P50), msStr(lat.P99), msStr(lat.Max))

	raw, err := h.Request(ctx, "backup-status", nil)
	if err != nil {
		return fmt.Errorf("backup-status: %w", err)
	}
	var st backupplugin.StatusReport
	if err := json.Unmarshal(raw, &st); err != nil {
		return fmt.Errorf("backup-status answer: %w", err)
	}
	fmt.Fprintf(out, "    backup at version %d, %d bytes\n", st.Version, st.BackupSize)
	t = time.Now()
	if code, err := h.Stop(ctx); err != nil || code != 0 {
		return fmt.Errorf("plugin did not stop cleanly (exit %d): %v", code, err)
	}
	step("stop plugin", t)

	// 5. restore.
	t = time.Now()
	rb, err := lnvault.Open(ctx, url, lnvault.OpenOptions{ReadOnly: true})
	if err != nil {
		return err
	}
	restored := filepath.Join(dir, "restored", "lightningd.sqlite3")
	os.MkdirAll(filepath.Dir(restored), 0o700)
	res, err := restore.Restore(ctx, rb, restored, restore.Options{})
	rb.Close()
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	step(fmt.Sprintf("restore version %d (%d changes, %d bytes)", res.Version, res.Changes, res.Bytes), t)

	// 6. check.
	t = time.Now()
	if dumphash.Available() {
		got, err := dumphash.Of(restored)
		if err != nil {
			return err
		}
		step("sqlite3 .dump | sha256", t)
		fmt.Fprintf(out, "    restored %s\n    expected %s\n", got, corpus.FinalDumpSHA256())
		if got != corpus.FinalDumpSHA256() {
			return errors.New("demo FAILED: the restored database differs from the node's")
		}
	} else {
		fmt.Fprintln(out, "    the sqlite3 command line tool is not installed (apt-get install sqlite3): comparing with a direct replay instead")
		ref := filepath.Join(dir, "reference.sqlite3")
		if err := replayDirect(ctx, ref, reqs); err != nil {
			return err
		}
		a, err := contentHash(ctx, restored)
		if err != nil {
			return err
		}
		e, err := contentHash(ctx, ref)
		if err != nil {
			return err
		}
		step("content hash of restore and direct replay", t)
		fmt.Fprintf(out, "    restored %s\n    replayed %s\n", a, e)
		if a != e {
			return errors.New("demo FAILED: the restored database differs from a direct replay")
		}
	}
	fmt.Fprintln(out, "demo OK: the restore is byte for byte the node's database")
	return nil
}

func msStr(d time.Duration) string { return fmt.Sprintf("%.3fms", float64(d.Microseconds())/1000) }

// replayDirect applies the corpus with dbapply, without any backup.
func replayDirect(ctx context.Context, path string, reqs []corpus.Request) error {
	a, err := dbapply.Create(ctx, path)
	if err != nil {
		return err
	}
	for _, r := range reqs {
		if err := a.Apply(ctx, r.Change()); err != nil {
			a.Close(ctx)
			return err
		}
	}
	return a.Finish(ctx)
}

// contentHash hashes the schema and every row of every table, in order: a
// stand-in for `sqlite3 .dump` when the CLI is missing.
func contentHash(ctx context.Context, path string) (string, error) {
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		return "", err
	}
	defer db.Close()
	h := sha256.New()
	rows, err := db.QueryContext(ctx, "SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_master ORDER BY type, name")
	if err != nil {
		return "", err
	}
	var tables []string
	for rows.Next() {
		var typ, name, tbl, s string
		if err := rows.Scan(&typ, &name, &tbl, &s); err != nil {
			rows.Close()
			return "", err
		}
		fmt.Fprintf(h, "%s|%s|%s|%s\n", typ, name, tbl, s)
		if typ == "table" {
			tables = append(tables, name)
		}
	}
	rows.Close()
	for _, t := range tables {
		if err := hashTable(ctx, db, t, h); err != nil {
			return "", fmt.Errorf("table %s: %w", t, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func hashTable(ctx context.Context, db *sql.DB, table string, w io.Writer) error {
	rows, err := db.QueryContext(ctx, fmt.Sprintf(`SELECT * FROM "%s" ORDER BY rowid`, table))
	if err != nil {
		// WITHOUT ROWID tables: order by every column.
		rows, err = db.QueryContext(ctx, fmt.Sprintf(`SELECT * FROM "%s" ORDER BY 1`, table))
		if err != nil {
			return err
		}
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return err
	}
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return err
		}
		fmt.Fprintf(w, "%s:%#v\n", table, vals)
	}
	return rows.Err()
}
