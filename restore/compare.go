package restore

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/dbapply"
)

// Comparison is what CompareDB found between a backup and a stopped node's
// database.
type Comparison struct {
	NodeVersion   uint32 `json:"node_version"`
	BackupVersion uint32 `json:"backup_version"`
	// State: "equal", "gap" (the node is ahead: commits never reached the
	// backup), "uncommitted" (the backup holds one change the node never
	// committed; the next start rewinds it), "behind" (the node's database
	// is older than its backup), "different" (same version, other content).
	State   string `json:"state"`
	Detail  string `json:"detail"`
	Compare uint32 `json:"compared_at,omitempty"` // the version whose content was compared
}

// OK tells whether the node can start on this database with this backup and
// nothing is lost: equal, or the one uncommitted change a start rewinds.
func (c Comparison) OK() bool { return c.State == "equal" || c.State == "uncommitted" }

// CompareDB compares backup b with the database at dbPath, which must not be
// in use (lightningd stopped): versions first, then, at the node's version,
// the schema and every row of every table.
func CompareDB(ctx context.Context, b lnvault.Backend, dbPath string) (Comparison, error) {
	md := b.Metadata()
	if _, err := os.Stat(dbPath); err != nil {
		return Comparison{}, fmt.Errorf("the node's database: %w", err)
	}
	nv, err := dbapply.DataVersion(ctx, dbPath)
	if err != nil {
		return Comparison{}, err
	}
	c := Comparison{NodeVersion: nv, BackupVersion: md.Version}
	switch {
	case nv > md.Version:
		c.State = "gap"
		c.Detail = fmt.Sprintf("the database is at version %d, the backup at %d: %d committed change(s) never reached the backup; start lightningd with lnvault, whose first write stores the database as a snapshot (heal), or re-initialise the backup (lnvault init)", nv, md.Version, nv-md.Version)
		return c, nil
	case nv+1 == md.Version && md.PrevVersion == nv:
		c.State, c.Compare = "uncommitted", nv
	case nv < md.Version:
		c.State = "behind"
		c.Detail = fmt.Sprintf("the database is at version %d, behind the backup at %d: it is an old copy, and lightningd would run on a revoked state; restore the backup over it (lnvault restore --force) instead of starting it", nv, md.Version)
		return c, nil
	default:
		c.State, c.Compare = "equal", nv
	}
	dir, err := os.MkdirTemp("", "lnvault-compare-")
	if err != nil {
		return c, err
	}
	defer os.RemoveAll(dir)
	restored := filepath.Join(dir, DefaultName)
	if _, err := Restore(ctx, b, restored, Options{ToVersion: c.Compare}); err != nil {
		return c, fmt.Errorf("restoring the backup at version %d to compare: %w", c.Compare, err)
	}
	diff, err := diffDatabases(ctx, restored, dbPath)
	if err != nil {
		return c, err
	}
	if diff != "" {
		c.State = "different"
		c.Detail = fmt.Sprintf("at version %d the backup and the database differ: %s; keep both and restore from another copy of the backup", c.Compare, diff)
		return c, nil
	}
	if c.State == "uncommitted" {
		c.Detail = fmt.Sprintf("the backup holds change %d that lightningd never committed; the database equals the backup at %d, and the next start rewinds that change", md.Version, nv)
	} else {
		c.Detail = fmt.Sprintf("the database equals the backup at version %d (schema and every row)", nv)
	}
	return c, nil
}

// diffDatabases names the first difference between two databases ("" when
// none): the schema, then each table's rows in rowid order.
func diffDatabases(ctx context.Context, a, b string) (string, error) {
	da, err := sql.Open("sqlite", dbapply.ReadOnlyDSN(a))
	if err != nil {
		return "", err
	}
	defer da.Close()
	db, err := sql.Open("sqlite", dbapply.ReadOnlyDSN(b))
	if err != nil {
		return "", err
	}
	defer db.Close()
	sa, err := schema(ctx, da)
	if err != nil {
		return "", err
	}
	sb, err := schema(ctx, db)
	if err != nil {
		return "", err
	}
	for name, s := range sa {
		if t, ok := sb[name]; !ok {
			return fmt.Sprintf("%s is only in the backup", name), nil
		} else if t.sql != s.sql {
			return fmt.Sprintf("%s has another definition", name), nil
		}
	}
	for name := range sb {
		if _, ok := sa[name]; !ok {
			return fmt.Sprintf("%s is only in the database", name), nil
		}
	}
	for name, s := range sa {
		if s.typ != "table" {
			continue
		}
		ha, na, err := tableHash(ctx, da, name)
		if err != nil {
			return "", err
		}
		hb, nb, err := tableHash(ctx, db, name)
		if err != nil {
			return "", err
		}
		if na != nb {
			return fmt.Sprintf("table %s has %d rows in the backup, %d in the database", name, na, nb), nil
		}
		if ha != hb {
			return fmt.Sprintf("table %s has other rows", name), nil
		}
	}
	return "", nil
}

type schemaEntry struct{ typ, sql string }

func schema(ctx context.Context, db *sql.DB) (map[string]schemaEntry, error) {
	rows, err := db.QueryContext(ctx, "SELECT type, name, coalesce(sql, '') FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	m := map[string]schemaEntry{}
	for rows.Next() {
		var typ, name, s string
		if err := rows.Scan(&typ, &name, &s); err != nil {
			return nil, err
		}
		m[name] = schemaEntry{typ, s}
	}
	return m, rows.Err()
}

// tableHash hashes every row of a table in rowid order (a WITHOUT ROWID
// table in primary key order, which is SQLite's order for a plain SELECT).
func tableHash(ctx context.Context, db *sql.DB, table string) ([32]byte, int64, error) {
	q := fmt.Sprintf(`SELECT * FROM "%s" ORDER BY rowid`, table)
	rows, err := db.QueryContext(ctx, q)
	if err != nil {
		rows, err = db.QueryContext(ctx, fmt.Sprintf(`SELECT * FROM "%s"`, table))
		if err != nil {
			return [32]byte{}, 0, err
		}
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return [32]byte{}, 0, err
	}
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	h := sha256.New()
	var n int64
	var buf [9]byte
	for rows.Next() {
		if err := rows.Scan(ptrs...); err != nil {
			return [32]byte{}, 0, err
		}
		n++
		for _, v := range vals {
			switch x := v.(type) {
			case nil:
				h.Write([]byte{0})
			case int64:
				buf[0] = 1
				binary.BigEndian.PutUint64(buf[1:], uint64(x))
				h.Write(buf[:])
			case float64:
				buf[0] = 2
				binary.BigEndian.PutUint64(buf[1:], math.Float64bits(x))
				h.Write(buf[:])
			case string:
				writeBytes(h, 3, []byte(x))
			case []byte:
				writeBytes(h, 4, x)
			default:
				writeBytes(h, 5, fmt.Appendf(nil, "%v", x))
			}
		}
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, n, rows.Err()
}

func writeBytes(h interface{ Write([]byte) (int, error) }, tag byte, b []byte) {
	var hdr [9]byte
	hdr[0] = tag
	binary.BigEndian.PutUint64(hdr[1:], uint64(len(b)))
	h.Write(hdr[:])
	h.Write(b)
}
