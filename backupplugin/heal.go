package backupplugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/dbapply"
)

// Heal is what the first db_write does to a destination that is behind the
// node: some commits reached lightningd's database without reaching the hook
// (the steps of lightningd's shutdown after its plugins are gone, or a start
// without the plugin). The node's database file holds exactly its committed
// state at that moment, so it is stored as a snapshot at that version.
const Heal Action = 2

// HealConfig says whether and where a gap is healed.
type HealConfig struct {
	// Disabled keeps the reference's behaviour: a backup behind the node
	// stops it ("Backup is out of date").
	Disabled bool
	// DBPath finds the node's database file.
	DBPath func() (string, error)
	// TempDir holds the snapshot while it is stored ("" = beside the
	// database, on the node's own disk).
	TempDir string
	// Busy is how long a lock of lightningd's is waited for (it waits for
	// us): 200 ms when zero.
	Busy time.Duration
}

// HealReport describes a heal, for the log and backup-status.
type HealReport struct {
	At             string   `json:"at"`
	BackupVersion  uint32   `json:"backup_version"`
	NodeVersion    uint32   `json:"node_version"`
	Missing        uint32   `json:"versions_missing"`
	Database       string   `json:"database"`
	DatabaseBytes  int64    `json:"database_bytes"`
	ReadMs         float64  `json:"read_ms"`
	TookMs         float64  `json:"took_ms"`
	Destinations   []string `json:"destinations"`
	FirstDataWrite uint32   `json:"first_write"`
}

// committedVersion is the version lightningd has committed when it sends a
// db_write of data_version d: d-1 for a transaction, d for a migration's
// PRAGMA-only write (which does not bump data_version).
func committedVersion(d uint32, writes []string) int64 {
	if lnvault.IsPragmaOnly(writes) {
		return int64(d)
	}
	return int64(d) - 1
}

// heal stores the node's database, at version n, as a snapshot at each of
// dests, whose heads are heads. It is called from the first db_write only:
// lightningd holds its transaction open and waits for the answer, so the file
// is at n and nothing commits while it is read. Any other time, a reader's
// lock could make lightningd's commit fail ("database is locked").
func (v *Vault) heal(ctx context.Context, n, first uint32, dests []*Destination, heads []lnvault.Metadata) (*HealReport, error) {
	start := time.Now()
	cfg := v.healCfg
	if cfg.DBPath == nil {
		return nil, errors.New("the node's database could not be located")
	}
	path, err := cfg.DBPath()
	if err != nil {
		return nil, err
	}
	dir := cfg.TempDir
	if dir == "" {
		dir = filepath.Dir(path)
	}
	tmpDir, err := os.MkdirTemp(dir, ".lnvault-heal-")
	if err != nil {
		return nil, fmt.Errorf("making a temp directory for the snapshot: %w", err)
	}
	defer os.RemoveAll(tmpDir)
	snapPath := filepath.Join(tmpDir, "node.sqlite3")
	busy := cfg.Busy
	if busy <= 0 {
		busy = 200 * time.Millisecond
	}
	got, err := dbapply.SnapshotLive(ctx, path, snapPath, busy)
	if err != nil {
		return nil, fmt.Errorf("reading the node's database %s: %w", path, err)
	}
	read := time.Since(start)
	if got != n {
		return nil, fmt.Errorf("the database %s is at data_version %d, but lightningd's first db_write (%d) says it committed %d: it is not the database lightningd runs on (a --wallet elsewhere?)", path, got, first, n)
	}
	nodeID, err := dbapply.ReadIdentity(ctx, snapPath)
	if err != nil {
		return nil, err
	}
	if nodeID.NodeID == "" || nodeID.Genesis == "" {
		return nil, fmt.Errorf("the database %s has no node_id or genesis_hash in vars: cannot tell whose it is", path)
	}
	for _, d := range dests {
		bid, err := backupIdentity(ctx, d.Backend)
		if errors.Is(err, lnvault.ErrSealed) {
			// The node cannot read its encrypted backup; backup.lock's
			// backup id, bound into every sealed change, says whose it is.
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: reading whose backup it is: %w", d.URL, err)
		}
		if bid != nodeID {
			return nil, fmt.Errorf("%s holds the backup of another node or chain (%s) than the database %s (%s)", d.URL, bid, path, nodeID)
		}
	}
	f, err := os.Open(snapPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	errs := make([]error, len(dests))
	var wg sync.WaitGroup
	for i, d := range dests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.Backend.Append(ctx, lnvault.NewSnapshot(n, io.NewSectionReader(f, 0, st.Size()))); err != nil {
				d.setErr(err)
				errs[i] = fmt.Errorf("%s: storing the node's database as snapshot %d: %w", d.URL, n, err)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	var b uint32
	urls := make([]string, len(dests))
	for i, d := range dests {
		urls[i] = d.URL
		b = max(b, heads[i].Version)
	}
	return &HealReport{
		At: start.UTC().Format(time.RFC3339Nano), BackupVersion: b, NodeVersion: n, Missing: n - b,
		Database: path, DatabaseBytes: st.Size(), ReadMs: ms(read), TookMs: ms(time.Since(start)),
		Destinations: urls, FirstDataWrite: first,
	}, nil
}

// identityScanLimit bounds how many changes backupIdentity reads: lightningd
// stores node_id within its first few transactions.
const identityScanLimit = 10000

// backupIdentity reads whose database a backup holds from its first changes:
// a snapshot's vars, or the transactions that set node_id and genesis_hash.
func backupIdentity(ctx context.Context, b lnvault.Backend) (dbapply.Identity, error) {
	var id dbapply.Identity
	n := 0
	err := b.Stream(ctx, 0, func(c *lnvault.Change) error {
		n++
		if c.Kind == lnvault.KindSnapshot {
			sid, err := snapshotIdentity(ctx, c.Snapshot)
			if err != nil {
				return err
			}
			id = sid
		} else {
			dbapply.ScanIdentity(&id, c.Statements)
		}
		if (id.NodeID != "" && id.Genesis != "") || n >= identityScanLimit {
			return lnvault.ErrStop
		}
		return nil
	})
	if err != nil {
		return id, err
	}
	if id.NodeID == "" || id.Genesis == "" {
		return id, fmt.Errorf("no node_id and genesis_hash in its first %d changes", n)
	}
	return id, nil
}

func snapshotIdentity(ctx context.Context, r *io.SectionReader) (dbapply.Identity, error) {
	if r == nil {
		return dbapply.Identity{}, errors.New("snapshot without data")
	}
	f, err := os.CreateTemp("", "lnvault-identity-*.sqlite3")
	if err != nil {
		return dbapply.Identity{}, err
	}
	defer os.Remove(f.Name())
	_, err = io.Copy(f, io.NewSectionReader(r, 0, r.Size()))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return dbapply.Identity{}, err
	}
	return dbapply.ReadIdentity(ctx, f.Name())
}

// NodeDBPath finds the database of the lightningd that started the plugin:
// --wallet=sqlite3://PATH on its command line (relative to dir, its
// cwd), else dir/lightningd.sqlite3. A wallet set in a config file is not
// seen; then the default is checked against the db_write's version.
func NodeDBPath(dir string) (string, error) {
	def := filepath.Join(dir, "lightningd.sqlite3")
	args, err := parentArgs()
	if err != nil {
		return def, nil
	}
	wallet := ""
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--wallet="); ok {
			wallet = v
		} else if a == "--wallet" && i+1 < len(args) {
			wallet = args[i+1]
		}
	}
	if wallet == "" {
		return def, nil
	}
	p, ok := strings.CutPrefix(wallet, "sqlite3://")
	if !ok {
		return "", fmt.Errorf("lightningd's wallet %q is not an sqlite3 database", wallet)
	}
	// sqlite3://main:replica: the first one is lightningd's.
	if i := strings.IndexByte(p, ':'); i >= 0 {
		p = p[:i]
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(dir, p)
	}
	return p, nil
}

// parentArgs is lightningd's command line (Linux's /proc).
func parentArgs() ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", os.Getppid()))
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), nil
}
