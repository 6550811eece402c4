package restore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/dbapply"
)

// VerifyReport is what Verify found.
type VerifyReport struct {
	Metadata     lnvault.Metadata `json:"metadata"`
	Changes      int64            `json:"changes"`       // changes read and applied
	Snapshots    int64            `json:"snapshots"`     // of which snapshots
	Statements   int64            `json:"statements"`    // SQL statements in the transactions
	FirstVersion uint32           `json:"first_version"` // oldest version in the log
	LastVersion  uint32           `json:"last_version"`  // newest version read
	DataVersion  uint32           `json:"data_version"`  // vars.data_version of the restored database (0: none)
	Problems     []string         `json:"problems"`      // empty when all is well
}

// OK tells whether the backup passed every check.
func (r VerifyReport) OK() bool { return len(r.Problems) == 0 }

// Verify reads every change of b (the backend's Stream checks checksums and
// continuity and returns a *lnvault.CorruptError), checks continuity itself
// too, restores into a temp database and runs integrity_check and
// foreign_key_check on it.
//
// The error is nil only when the backup is sound. A damaged backup gives an
// error that matches errors.Is(err, lnvault.ErrCorrupt) (errors.As finds the
// *lnvault.CorruptError naming the first bad record when there is one); any
// other error means the check could not be carried out.
func Verify(ctx context.Context, b lnvault.Backend) (VerifyReport, error) {
	rep := VerifyReport{Metadata: b.Metadata()}
	dir, err := os.MkdirTemp("", "lnvault-verify-")
	if err != nil {
		return rep, fmt.Errorf("verify needs a temp directory (set TMPDIR to a writable one): %w", err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, DefaultName)
	a, err := dbapply.Create(ctx, path)
	if err != nil {
		return rep, fmt.Errorf("verify: creating temp database: %w", err)
	}
	defer a.Close(context.WithoutCancel(ctx))

	// corrupt records a problem with the backup's content; the first one is
	// the error Verify returns.
	var first error
	corrupt := func(err error) error {
		if !errors.Is(err, lnvault.ErrCorrupt) {
			err = fmt.Errorf("%w: %w", lnvault.ErrCorrupt, err)
		}
		rep.Problems = append(rep.Problems, err.Error())
		if first == nil {
			first = err
		}
		return err
	}

	err = b.Stream(ctx, 0, func(c *lnvault.Change) error {
		if rep.Changes == 0 {
			rep.FirstVersion = c.Version
		} else if err := continuous(rep.LastVersion, c); err != nil {
			return corrupt(err)
		}
		if err := a.Apply(ctx, c); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return corrupt(&lnvault.CorruptError{Offset: -1, Version: c.Version, Reason: err.Error()})
		}
		rep.Changes++
		rep.LastVersion = c.Version
		if c.Kind == lnvault.KindSnapshot {
			rep.Snapshots++
		} else {
			rep.Statements += int64(len(c.Statements))
		}
		return nil
	})
	switch {
	case err == nil:
	case first != nil:
		// Already recorded by corrupt.
	case ctx.Err() != nil:
		return rep, ctx.Err()
	case errors.Is(err, lnvault.ErrCorrupt):
		corrupt(err)
	default:
		return rep, fmt.Errorf("verify: reading the backup: %w", err)
	}
	if first != nil {
		return rep, first
	}

	md := rep.Metadata
	if rep.Changes == 0 {
		if md.Version != 0 || md.VersionCount != 0 {
			corrupt(&lnvault.CorruptError{Offset: -1, Version: md.Version,
				Reason: fmt.Sprintf("the backup's head is version %d but it holds no change", md.Version)})
		}
		return rep, first
	}
	if rep.LastVersion != md.Version {
		corrupt(&lnvault.CorruptError{Offset: -1, Version: rep.LastVersion,
			Reason: fmt.Sprintf("the changes end at version %d, the backup's head says %d: the log is missing changes", rep.LastVersion, md.Version)})
	}
	if err := a.Close(ctx); err != nil {
		return rep, fmt.Errorf("verify: %w", err)
	}
	if err := dbapply.Check(ctx, path, true); err != nil {
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
		corrupt(&lnvault.CorruptError{Offset: -1, Version: rep.LastVersion,
			Reason: fmt.Sprintf("the database restored from it fails its check: %v", err)})
	}
	if err := checkDataVersion(ctx, path, rep.LastVersion); err != nil {
		corrupt(err)
	}
	if has, err := hasVars(ctx, path); err == nil && has {
		rep.DataVersion, _ = dbapply.DataVersion(ctx, path)
	}
	return rep, first
}

// hasVars tells whether the database at path has a vars table (Core
// Lightning's, holding data_version).
func hasVars(ctx context.Context, path string) (bool, error) {
	db, err := sql.Open("sqlite", dbapply.ReadOnlyDSN(path))
	if err != nil {
		return false, err
	}
	defer db.Close()
	var n int
	err = db.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'vars'").Scan(&n)
	if err != nil {
		return false, fmt.Errorf("reading the restored database's schema: %w", err)
	}
	return n > 0, nil
}
