// Package dbapply materialises a backup into a SQLite database file: it applies
// changes (snapshots and transactions) in large transactions with foreign keys
// on, checks the result, and takes consistent snapshots of a live database.
// Restore, verify, compaction and the demo all build on it.
package dbapply

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/durable"
	"modernc.org/sqlite" // the "sqlite" driver (no cgo)
)

// DefaultBatch is how many statements go into one SQLite transaction: large
// enough that commits do not dominate, small enough to bound the journal.
const DefaultBatch = 50000

// Applier applies changes, in order, to one database file.
type Applier struct {
	path    string
	db      *sql.DB
	conn    *sql.Conn
	inTx    bool
	pending int // statements since BEGIN
	batch   int
	version uint32
	applied int64
	// wal: a database kept across runs (OpenWAL): atomic commits that a
	// crash never tears, instead of a temp file fsynced once at the end.
	wal bool
}

// OpenWAL opens an existing database to apply changes to it across runs, in
// WAL mode with synchronous=NORMAL: a crash may lose the last commits but
// never leaves a torn database. Its version is the file's data_version.
func OpenWAL(ctx context.Context, path string) (*Applier, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, err
	}
	a := &Applier{path: path, batch: DefaultBatch, wal: true}
	if err := a.open(ctx); err != nil {
		return nil, err
	}
	v, err := dataVersion(ctx, a.conn)
	if err != nil {
		a.closeDB()
		return nil, fmt.Errorf("reading the data_version of %s: %w", path, err)
	}
	a.version = v
	return a, nil
}

// SetJournalDelete puts the database at path in the rollback journal mode
// (a copy of a WAL database keeps WAL in its header otherwise) and fsyncs it.
func SetJournalDelete(ctx context.Context, path string) error {
	db, err := sql.Open("sqlite", fileURI(path))
	if err != nil {
		return err
	}
	_, err = db.ExecContext(ctx, "PRAGMA journal_mode = DELETE")
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("journal mode of %s: %w", path, err)
	}
	return durable.SyncFile(path)
}

// Commit commits what is applied so far.
func (a *Applier) Commit(ctx context.Context) error { return a.commit(ctx) }

// Create makes a new empty database at path (which must not exist) and returns
// an Applier for it.
func Create(ctx context.Context, path string) (*Applier, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	f.Close()
	a := &Applier{path: path, batch: DefaultBatch}
	if err := a.open(ctx); err != nil {
		os.Remove(path)
		return nil, err
	}
	return a, nil
}

// Path is the database file being written.
func (a *Applier) Path() string { return a.path }

// Version is the version of the last applied change.
func (a *Applier) Version() uint32 { return a.version }

// Applied counts the changes applied so far.
func (a *Applier) Applied() int64 { return a.applied }

func (a *Applier) open(ctx context.Context) error {
	db, err := sql.Open("sqlite", fileURI(a.path))
	if err != nil {
		return err
	}
	db.SetMaxOpenConns(1)
	conn, err := db.Conn(ctx)
	if err != nil {
		db.Close()
		return err
	}
	// The file is a temp file until the caller renames it, and the caller
	// fsyncs it at the end: no journal fsyncs are needed on the way.
	pragmas := []string{"PRAGMA foreign_keys = ON", "PRAGMA synchronous = OFF", "PRAGMA journal_mode = MEMORY"}
	if a.wal {
		pragmas = []string{"PRAGMA foreign_keys = ON", "PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL"}
	}
	for _, p := range pragmas {
		if _, err := conn.ExecContext(ctx, p); err != nil {
			conn.Close()
			db.Close()
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	a.db, a.conn = db, conn
	return nil
}

// Apply applies one change. A snapshot replaces the whole database.
func (a *Applier) Apply(ctx context.Context, c *lnvault.Change) error {
	if lnvault.IsSealed(c) {
		// A host holding an encrypted backup, or a restore without the
		// identity: say so rather than fail on it as SQL or as a database.
		return fmt.Errorf("%w: its %s at version %d is ciphertext, so it cannot be applied here: restore it with the age identity it was made for (--identity FILE); a host cannot compact it: the node does (lightning-cli backup-compact, or automatically)", lnvault.ErrSealed, c.Kind, c.Version)
	}
	switch c.Kind {
	case lnvault.KindSnapshot:
		if err := a.applySnapshot(ctx, c); err != nil {
			return fmt.Errorf("applying snapshot at version %d: %w", c.Version, err)
		}
	case lnvault.KindTransaction:
		if err := a.applyTx(ctx, c); err != nil {
			return fmt.Errorf("applying change version %d: %w", c.Version, err)
		}
	default:
		return fmt.Errorf("change version %d: unknown kind %v", c.Version, c.Kind)
	}
	a.version = c.Version
	a.applied++
	return nil
}

func (a *Applier) applyTx(ctx context.Context, c *lnvault.Change) error {
	if lnvault.IsPragmaOnly(c.Statements) {
		// lightningd commits, runs a migration's PRAGMA foreign_keys
		// outside any transaction and begins again: inside one SQLite
		// ignores it, and a table rebuild with foreign keys on cascades
		// deletes into the children.
		if err := a.commit(ctx); err != nil {
			return err
		}
		for _, s := range c.Statements {
			if _, err := a.conn.ExecContext(ctx, s); err != nil {
				return fmt.Errorf("%w (statement: %.200s)", err, s)
			}
		}
		return nil
	}
	if !a.inTx {
		if _, err := a.conn.ExecContext(ctx, "BEGIN"); err != nil {
			return err
		}
		a.inTx, a.pending = true, 0
	}
	for _, s := range c.Statements {
		if _, err := a.conn.ExecContext(ctx, FixStatement(s)); err != nil {
			return fmt.Errorf("%w (statement: %.200s)", err, s)
		}
	}
	a.pending += len(c.Statements)
	if a.pending >= a.batch {
		return a.commit(ctx)
	}
	return nil
}

func (a *Applier) commit(ctx context.Context) error {
	if !a.inTx {
		return nil
	}
	a.inTx = false
	_, err := a.conn.ExecContext(ctx, "COMMIT")
	return err
}

func (a *Applier) closeDB() error {
	var errs []error
	if a.conn != nil {
		errs = append(errs, a.conn.Close())
	}
	if a.db != nil {
		errs = append(errs, a.db.Close())
	}
	a.conn, a.db = nil, nil
	return errors.Join(errs...)
}

func (a *Applier) applySnapshot(ctx context.Context, c *lnvault.Change) error {
	if c.Snapshot == nil {
		return errors.New("snapshot without data")
	}
	if a.inTx {
		// Everything before a snapshot is replaced by it.
		_, _ = a.conn.ExecContext(ctx, "ROLLBACK")
		a.inTx = false
	}
	if err := a.closeDB(); err != nil {
		return err
	}
	f, err := os.OpenFile(a.path, os.O_RDWR|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, io.NewSectionReader(c.Snapshot, 0, c.Snapshot.Size()))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return a.open(ctx)
}

// Close commits what is pending and closes the database without checks.
func (a *Applier) Close(ctx context.Context) error {
	err := a.commit(ctx)
	return errors.Join(err, a.closeDB())
}

// Finish commits, checks the database (integrity and foreign keys), closes it
// and fsyncs the file. The caller renames it into place.
func (a *Applier) Finish(ctx context.Context) error {
	if err := a.commit(ctx); err != nil {
		a.closeDB()
		return err
	}
	if err := checkConn(ctx, a.conn, false); err != nil {
		a.closeDB()
		return err
	}
	if err := a.closeDB(); err != nil {
		return err
	}
	return durable.SyncFile(a.path)
}

var (
	reservedTil = regexp.MustCompile(`reserved_til=(\d+)WHERE`)
	peerID      = regexp.MustCompile(`peer_id=(\d+)WHERE channels\.id=`)
)

// FixStatement repairs statements written by Core Lightning versions with an
// expansion bug (a missing space before WHERE), as the reference restore does.
func FixStatement(s string) string {
	if !strings.Contains(s, "WHERE") || (!strings.Contains(s, "reserved_til=") && !strings.Contains(s, "peer_id=")) {
		return s
	}
	s = reservedTil.ReplaceAllString(s, "reserved_til=$1 WHERE")
	return peerID.ReplaceAllString(s, "peer_id=$1 WHERE channels.id=")
}

// Check runs PRAGMA integrity_check and, if fk is set, PRAGMA
// foreign_key_check on the database at path.
func Check(ctx context.Context, path string, fk bool) error {
	db, err := openRO(path)
	if err != nil {
		return err
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return checkConn(ctx, conn, fk)
}

func checkConn(ctx context.Context, conn *sql.Conn, fk bool) error {
	rows, err := conn.QueryContext(ctx, "PRAGMA integrity_check")
	if err != nil {
		return fmt.Errorf("integrity_check: %w", err)
	}
	var problems []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			rows.Close()
			return err
		}
		if s != "ok" {
			problems = append(problems, s)
		}
	}
	rows.Close()
	if len(problems) > 0 {
		return fmt.Errorf("integrity_check failed: %s", strings.Join(problems, "; "))
	}
	if !fk {
		return nil
	}
	rows, err = conn.QueryContext(ctx, "PRAGMA foreign_key_check")
	if err != nil {
		return fmt.Errorf("foreign_key_check: %w", err)
	}
	defer rows.Close()
	n := 0
	var first string
	for rows.Next() {
		var table, parent string
		var rowid sql.NullInt64
		var fkid int64
		if err := rows.Scan(&table, &rowid, &parent, &fkid); err != nil {
			return err
		}
		if n == 0 {
			first = fmt.Sprintf("table %s row %d references missing %s", table, rowid.Int64, parent)
		}
		n++
	}
	if n > 0 {
		return fmt.Errorf("foreign_key_check found %d violation(s), first: %s", n, first)
	}
	return rows.Err()
}

// ReadOnlyDSN is the data source name that opens the database file at path
// read-only. The path goes into an SQLite URI, so the characters a URI gives
// a meaning to are escaped: a directory named "a#b" must not open "a".
func ReadOnlyDSN(path string) string { return fileURI(path) + "?mode=ro" }

// fileURI is path as an SQLite file: URI. A bare path is not safe either: the
// driver takes what follows a '?' as its options.
func fileURI(path string) string {
	return "file:" + strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(path)
}

func openRO(path string) (*sql.DB, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, err
	}
	db, err := sql.Open("sqlite", ReadOnlyDSN(path))
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	return db, nil
}

// DataVersion reads vars.data_version of the database at path (0 when the
// row is missing, as in a database lightningd never wrote to).
func DataVersion(ctx context.Context, path string) (uint32, error) {
	db, err := openRO(path)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	return dataVersion(ctx, db)
}

func dataVersion(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) (uint32, error) {
	var v sql.NullInt64
	err := q.QueryRowContext(ctx, "SELECT intval FROM vars WHERE name = 'data_version'").Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading vars.data_version: %w", err)
	}
	return uint32(v.Int64), nil
}

// Snapshot copies the live database at src into a new file dst with SQLite's
// online backup API, in one step so the copy is consistent even while
// lightningd writes, and returns the data_version of the copy. dst is fsync'd.
func Snapshot(ctx context.Context, src, dst string) (uint32, error) {
	return snapshot(ctx, fileURI(src), src, dst)
}

// SnapshotLive is Snapshot of the database of a running lightningd, read-only:
// lightningd holds its write transaction open while it waits for a db_write
// answer, so the file holds its last committed state. A lock lightningd holds
// is waited for at most busy, never longer: lightningd waits for us.
func SnapshotLive(ctx context.Context, src, dst string, busy time.Duration) (uint32, error) {
	return snapshot(ctx, fmt.Sprintf("%s&_pragma=busy_timeout(%d)", ReadOnlyDSN(src), busy.Milliseconds()), src, dst)
}

func snapshot(ctx context.Context, dsn, src, dst string) (uint32, error) {
	if _, err := os.Stat(src); err != nil {
		return 0, err
	}
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	err = conn.Raw(func(dc any) error {
		b, ok := dc.(interface {
			NewBackup(string) (*sqlite.Backup, error)
		})
		if !ok {
			return errors.New("sqlite driver has no online backup API")
		}
		bk, err := b.NewBackup(dst)
		if err != nil {
			return err
		}
		// Step(-1) copies every page under one read lock: a consistent copy.
		for more := true; more; {
			if more, err = bk.Step(-1); err != nil {
				bk.Finish()
				return err
			}
		}
		return bk.Finish()
	})
	if err != nil {
		os.Remove(dst)
		return 0, fmt.Errorf("snapshot of %s: %w", src, err)
	}
	v, err := DataVersion(ctx, dst)
	if err != nil {
		os.Remove(dst)
		return 0, err
	}
	return v, durable.SyncFile(dst)
}

// Identity is what tells one node's database from another's: Core Lightning
// stores the node's id and the chain's genesis hash in vars at its first start
// and refuses to start on a database whose node_id is not its own.
type Identity struct {
	NodeID  string // hex; "" when the database has none yet
	Genesis string // hex
}

func (i Identity) String() string {
	return fmt.Sprintf("node_id %s, genesis_hash %s", orNone(i.NodeID), orNone(i.Genesis))
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// ReadIdentity reads the Identity of the database file at path, read-only.
func ReadIdentity(ctx context.Context, path string) (Identity, error) {
	db, err := openRO(path)
	if err != nil {
		return Identity{}, err
	}
	defer db.Close()
	var id Identity
	rows, err := db.QueryContext(ctx, "SELECT name, hex(blobval) FROM vars WHERE name IN ('node_id', 'genesis_hash')")
	if err != nil {
		return Identity{}, fmt.Errorf("reading vars of %s: %w", path, err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		var val sql.NullString
		if err := rows.Scan(&name, &val); err != nil {
			return Identity{}, err
		}
		if name == "node_id" {
			id.NodeID = strings.ToLower(val.String)
		} else {
			id.Genesis = strings.ToLower(val.String)
		}
	}
	return id, rows.Err()
}

// identityStmt matches the statements that set node_id and genesis_hash, as
// lightningd sends them: INSERT INTO vars (name, blobval) VALUES ('node_id', x'..').
var identityStmt = regexp.MustCompile(`(?i)^\s*INSERT\s+INTO\s+vars\s*\(\s*name\s*,\s*blobval\s*\)\s*VALUES\s*\(\s*'(node_id|genesis_hash)'\s*,\s*x'([0-9a-f]*)'\s*\)`)

// ScanIdentity fills id from statements of a transaction that set it.
func ScanIdentity(id *Identity, statements []string) {
	for _, s := range statements {
		if len(s) > 300 || !strings.Contains(s, "vars") {
			continue
		}
		m := identityStmt.FindStringSubmatch(s)
		if m == nil {
			continue
		}
		if strings.EqualFold(m[1], "node_id") {
			id.NodeID = strings.ToLower(m[2])
		} else {
			id.Genesis = strings.ToLower(m[2])
		}
	}
}
