package restore_test

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/dumphash"
	"github.com/lnvault/lnvault/restore"
)

// rebuildChanges is a table-rebuild migration of channels, in the exact shape
// lightningd sends it (db/db_sqlite3.c, prepare_table_manip and
// complete_table_manip), on a database whose channels have ON DELETE
// CASCADE children (channel_htlcs, htlc_sigs) with rows, built from the real
// schema: PRAGMA foreign_keys = OFF as its own write repeating the
// data_version, the rebuild in one transaction, PRAGMA foreign_keys = ON.
func rebuildChanges(t *testing.T) []*lnvault.Change {
	t.Helper()
	create := map[string]string{}
	for _, line := range strings.Split(corpus.Schema, "\n") {
		if m := regexp.MustCompile(`^CREATE TABLE (\w+) `).FindStringSubmatch(line); m != nil {
			create[m[1]] = strings.TrimSuffix(line, ";")
		}
	}
	for _, name := range []string{"vars", "peers", "channels", "channel_htlcs", "htlc_sigs"} {
		if create[name] == "" {
			t.Fatalf("schema.sql has no table %s", name)
		}
	}
	v1 := []string{create["vars"], create["peers"], create["channels"], create["channel_htlcs"], create["htlc_sigs"],
		"INSERT INTO vars (name, intval) VALUES ('data_version', 1);",
		"INSERT INTO peers (id, node_id, address) VALUES (1, x'02aa', '127.0.0.1:9735');",
		"INSERT INTO channels (id, peer_id, state) VALUES (1, 1, 2);",
		"INSERT INTO channels (id, peer_id, state) VALUES (2, 1, 2);",
	}
	for i := 1; i <= 5; i++ {
		v1 = append(v1, fmt.Sprintf("INSERT INTO channel_htlcs (id, channel_id, channel_htlc_id, direction, msatoshi, hstate) VALUES (%d, %d, %d, 0, 1000, 3);", i, 1+i%2, i))
	}
	v1 = append(v1, "INSERT INTO htlc_sigs (channelid, signature) VALUES (1, x'30440220');", "INSERT INTO htlc_sigs (channelid, signature) VALUES (2, x'30440221');")
	rebuild := []string{
		"ALTER TABLE channels RENAME TO temp_channels;",
		create["channels"] + ";",
		"INSERT INTO channels SELECT * FROM temp_channels;",
		"DROP TABLE temp_channels;",
		"UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = 1;",
	}
	return []*lnvault.Change{
		lnvault.NewTransaction(1, v1),
		lnvault.NewTransaction(1, []string{"PRAGMA foreign_keys = OFF;"}),
		lnvault.NewTransaction(2, rebuild),
		lnvault.NewTransaction(2, []string{"PRAGMA foreign_keys = ON;"}),
		lnvault.NewTransaction(3, []string{
			"INSERT INTO peers (id, node_id, address) VALUES (2, x'02bb', '127.0.0.1:9736');",
			"UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = 2;",
		}),
	}
}

// applyAsLightningd applies changes as lightningd commits them: foreign keys
// on, each transaction in BEGIN/COMMIT, a PRAGMA-only write outside any.
func applyAsLightningd(t *testing.T, path string, cs []*lnvault.Change) {
	t.Helper()
	ctx := context.Background()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	exec := func(s string) {
		if _, err := conn.ExecContext(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	exec("PRAGMA foreign_keys = ON")
	for _, c := range cs {
		if lnvault.IsPragmaOnly(c.Statements) {
			for _, s := range c.Statements {
				exec(s)
			}
			continue
		}
		exec("BEGIN")
		for _, s := range c.Statements {
			exec(s)
		}
		exec("COMMIT")
	}
}

func countRows(t *testing.T, path, table string) int {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow("SELECT count(*) FROM " + table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A rebuild migration of a table with ON DELETE CASCADE children, restored
// and compacted, gives what SQLite gives applying the statements with
// lightningd's transaction boundaries: the children are kept. (Inside one
// transaction SQLite ignores PRAGMA foreign_keys, and DROP TABLE
// temp_channels cascades into them.)
func TestRebuildMigrationKeepsCascadeChildren(t *testing.T) {
	if !dumphash.Available() {
		t.Fatal("the sqlite3 command line tool is needed (apt-get install sqlite3)")
	}
	ctx := context.Background()
	cs := rebuildChanges(t)
	dir := t.TempDir()
	ref := filepath.Join(dir, "ref.sqlite3")
	applyAsLightningd(t, ref, cs)
	if n := countRows(t, ref, "channel_htlcs"); n != 5 {
		t.Fatalf("reference: %d channel_htlcs rows, want 5", n)
	}
	want, err := dumphash.Of(ref)
	if err != nil {
		t.Fatal(err)
	}
	for _, compact := range []bool{false, true} {
		t.Run(fmt.Sprintf("compacted=%v", compact), func(t *testing.T) {
			url := "file://" + filepath.Join(t.TempDir(), "b.dbak")
			w, err := lnvault.Open(ctx, url, lnvault.OpenOptions{Create: true, Format: 2})
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range cs {
				if err := w.Append(ctx, c); err != nil {
					t.Fatal(err)
				}
			}
			if compact {
				if _, err := w.Compact(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			b, err := lnvault.Open(ctx, url, lnvault.OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			dest := filepath.Join(t.TempDir(), "restored.sqlite3")
			if _, err := restore.Restore(ctx, b, dest, restore.Options{}); err != nil {
				t.Fatal(err)
			}
			if h, s := countRows(t, dest, "channel_htlcs"), countRows(t, dest, "htlc_sigs"); h != 5 || s != 2 {
				t.Fatalf("restored: %d channel_htlcs and %d htlc_sigs rows, want 5 and 2 (the rebuild cascaded into them)", h, s)
			}
			got, err := dumphash.Of(dest)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Fatalf("restored dump %s, want %s (SQLite with lightningd's boundaries)", got, want)
			}
		})
	}
}
