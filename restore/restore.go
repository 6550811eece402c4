// Package restore materialises a backup into a Core Lightning database file
// and verifies backups. Restore is the product: it streams the backup into a
// temp file beside the destination, checks the result (version continuity,
// integrity_check, vars.data_version), fsyncs and renames it into place, so
// the destination is either the exact database at the asked version or
// untouched.
package restore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/dbapply"
	"github.com/lnvault/lnvault/internal/durable"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// DefaultName is the database file name used when the destination is a
// directory, as in a lightning directory.
const DefaultName = "lightningd.sqlite3"

// Options tune Restore.
type Options struct {
	ToVersion uint32       // 0 = latest
	Force     bool         // overwrite an existing DEST
	Progress  io.Writer    // nil = quiet; a progress bar is drawn only when this is a terminal
	Log       *slog.Logger // nil = slog.Default()
}

func (o Options) log() *slog.Logger {
	if o.Log != nil {
		return o.Log
	}
	return slog.Default()
}

// Result describes a finished restore.
type Result struct {
	Path     string        // the restored database file
	Version  uint32        // its version (data_version)
	Changes  int64         // changes applied
	Bytes    int64         // size of the database file
	Duration time.Duration // wall time of the restore
}

// Restore materialises backup b into dest: a file path, or an existing
// directory (then dest/lightningd.sqlite3). It refuses to overwrite an
// existing file unless opts.Force. On error, dest is untouched and no temp
// file is left behind.
func Restore(ctx context.Context, b lnvault.Backend, dest string, opts Options) (Result, error) {
	start := time.Now()
	log := opts.log()
	path, err := destPath(dest, opts.Force)
	if err != nil {
		return Result{}, err
	}
	md := b.Metadata()
	target, err := targetVersion(md, opts.ToVersion)
	if err != nil {
		return Result{}, err
	}
	tmp, err := createTemp(ctx, filepath.Dir(path))
	if err != nil {
		return Result{}, err
	}
	ok := false
	defer func() {
		if !ok {
			tmp.discard(ctx)
		}
	}()

	bar := newBar(ctx, b, opts.Progress, target == md.Version)
	n, err := apply(ctx, b, tmp.a, target, opts.ToVersion != 0, bar)
	if bar != nil {
		_ = bar.Finish()
	}
	if err != nil {
		return Result{}, err
	}
	if err := tmp.a.Finish(ctx); err != nil {
		return Result{}, fmt.Errorf("restored database at version %d fails its check (%w): the backup may be damaged, run `lnvault verify`", target, err)
	}
	if err := checkDataVersion(ctx, tmp.path, target); err != nil {
		return Result{}, err
	}
	// SQLite side files of an old database would be replayed into the new
	// one (a hot journal rolled back, a WAL applied): destPath refused them
	// without Force, with Force they go before the new file arrives.
	for _, side := range sideFiles(path) {
		if err := os.Remove(side); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return Result{}, fmt.Errorf("removing the old database's %s: %w", side, err)
		}
	}
	if err := place(tmp.path, path, opts.Force); err != nil {
		return Result{}, err
	}
	ok = true
	st, err := os.Stat(path)
	if err != nil {
		return Result{}, err
	}
	res := Result{Path: path, Version: target, Changes: n, Bytes: st.Size(), Duration: time.Since(start)}
	log.Debug("restored", "path", path, "version", target, "changes", n, "bytes", res.Bytes, "duration", res.Duration)
	return res, nil
}

// destPath resolves DEST and checks it may be written.
func destPath(dest string, force bool) (string, error) {
	if dest == "" {
		return "", errors.New("no destination given: name a database file or a lightning directory")
	}
	path := dest
	st, err := os.Stat(dest)
	switch {
	case err == nil && st.IsDir():
		path = filepath.Join(dest, DefaultName)
		st, err = os.Stat(path)
	}
	switch {
	case err == nil && st.IsDir():
		return "", fmt.Errorf("destination %s is a directory: name a database file instead", path)
	case err == nil && !force:
		return "", fmt.Errorf("destination %s already exists: move it away or pass --force to overwrite it", path)
	case err == nil && !st.Mode().IsRegular():
		return "", fmt.Errorf("destination %s is not a regular file: name a database file instead", path)
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("cannot use destination %s: %w", path, err)
	}
	if !force {
		for _, side := range sideFiles(path) {
			if _, err := os.Lstat(side); err == nil {
				return "", fmt.Errorf("%s exists (left by an old database; SQLite would apply it to the restored one): move it away or pass --force to delete it", side)
			}
		}
	}
	dir := filepath.Dir(path)
	if st, err := os.Stat(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("destination directory %s does not exist: create it first", dir)
		}
		return "", fmt.Errorf("cannot use destination directory %s: %w", dir, err)
	} else if !st.IsDir() {
		return "", fmt.Errorf("destination directory %s is not a directory: name a path inside a directory", dir)
	}
	return path, nil
}

// sideFiles are the files SQLite keeps beside a database.
func sideFiles(path string) []string {
	return []string{path + "-journal", path + "-wal", path + "-shm"}
}

// targetVersion picks the version to restore and checks it against the head.
func targetVersion(md lnvault.Metadata, to uint32) (uint32, error) {
	if md.VersionCount == 0 && md.Version == 0 {
		return 0, errors.New("the backup is empty (no change stored yet): there is nothing to restore; lightningd creates a new database on its first start")
	}
	if to == 0 {
		return md.Version, nil
	}
	if to > md.Version {
		return 0, fmt.Errorf("version %d is not in the backup: its latest version is %d (omit --to-version for the latest)", to, md.Version)
	}
	return to, nil
}

// temp is the database being written beside DEST.
type temp struct {
	path string
	a    *dbapply.Applier
}

// createTemp makes .lightningd.sqlite3.restore-XXXX in dir; dbapply.Create
// opens it O_EXCL, so a name clash just picks another name.
func createTemp(ctx context.Context, dir string) (*temp, error) {
	for range 10 {
		var rb [6]byte
		_, _ = rand.Read(rb[:])
		p := filepath.Join(dir, "."+DefaultName+".restore-"+hex.EncodeToString(rb[:]))
		a, err := dbapply.Create(ctx, p)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err != nil {
			return nil, fmt.Errorf("cannot write in destination directory %s (%w): choose a writable directory", dir, err)
		}
		return &temp{path: p, a: a}, nil
	}
	return nil, fmt.Errorf("cannot create a temp file in %s: too many name clashes", dir)
}

// discard closes and removes the temp database (and any SQLite side file).
func (t *temp) discard(ctx context.Context) {
	_ = t.a.Close(context.WithoutCancel(ctx))
	for _, suffix := range []string{"", "-journal", "-wal", "-shm"} {
		_ = os.Remove(t.path + suffix)
	}
}

// apply streams b into a up to and including every change of version target,
// checking that versions are continuous. It returns how many changes it
// applied.
func apply(ctx context.Context, b lnvault.Backend, a *dbapply.Applier, target uint32, explicit bool, bar *progressbar.ProgressBar) (int64, error) {
	var (
		n    int64
		last uint32
	)
	stream := func(fn func(*lnvault.Change) error) error { return b.Stream(ctx, 0, fn) }
	if ts, ok := b.(lnvault.TargetStreamer); ok && explicit {
		// Object storage: start at the newest snapshot at or before target.
		stream = func(fn func(*lnvault.Change) error) error { return ts.StreamTo(ctx, target, fn) }
	}
	err := stream(func(c *lnvault.Change) error {
		if n == 0 && c.Version > target {
			return fmt.Errorf("version %d is not in the backup: its oldest change is version %d (older versions were compacted away or predate the backup); restore a later version", target, c.Version)
		}
		if c.Version > target {
			return lnvault.ErrStop
		}
		if n > 0 {
			if err := continuous(last, c); err != nil {
				return err
			}
		}
		if err := a.Apply(ctx, c); err != nil {
			return fmt.Errorf("%w: the backup may be damaged, run `lnvault verify`", err)
		}
		n++
		last = c.Version
		if bar != nil {
			_ = bar.Add(1)
		}
		return nil
	})
	var ce *lnvault.CorruptError
	if err != nil && explicit && n > 0 && last == target && errors.As(err, &ce) && ce.Version == target {
		// The damage lies after every change of the version the user asked
		// for (e.g. the head record of an append interrupted by a crash):
		// what was asked for is whole.
		err = nil
	}
	if err != nil {
		if errors.Is(err, lnvault.ErrCorrupt) {
			return n, fmt.Errorf("cannot restore: %w (nothing was written; restore from another copy of the backup)", err)
		}
		return n, fmt.Errorf("cannot restore: %w", err)
	}
	if n == 0 {
		return 0, &lnvault.CorruptError{Offset: -1, Version: target, Reason: fmt.Sprintf("the backup's head is version %d but it holds no change", target)}
	}
	if last != target {
		return n, &lnvault.CorruptError{Offset: -1, Version: last, Reason: fmt.Sprintf("the backup's changes end at version %d, its header says %d: the log is missing changes", last, target)}
	}
	return n, nil
}

// continuous checks that c may follow a change of version last: the next
// version, or a repeat (migrations send PRAGMA foreign_keys with the same
// data_version), or a snapshot further ahead (the whole database at its
// version: the plugin heals a gap of commits that escaped it that way).
func continuous(last uint32, c *lnvault.Change) error {
	if lnvault.Follows(last, c.Version, c.Kind) {
		return nil
	}
	return &lnvault.CorruptError{Offset: -1, Version: c.Version,
		Reason: fmt.Sprintf("%s version %d follows version %d: changes are missing", c.Kind, c.Version, last)}
}

// checkDataVersion compares the restored vars.data_version with the
// backup's version, when the database has that row.
func checkDataVersion(ctx context.Context, path string, want uint32) error {
	has, err := hasVars(ctx, path)
	if err != nil {
		return err
	}
	if !has {
		return nil
	}
	got, err := dbapply.DataVersion(ctx, path)
	if err != nil {
		return err
	}
	if got != 0 && got != want {
		return &lnvault.CorruptError{Offset: -1, Version: want,
			Reason: fmt.Sprintf("the restored database has data_version %d, the backup says %d", got, want)}
	}
	return nil
}

// place moves the finished temp file to path, durably. Without force it must
// not replace a file that appeared since destPath checked (lightningd
// started, another restore): a hard link fails if path exists, atomically;
// where links are not supported, a last check and a rename.
func place(tmp, path string, force bool) error {
	appeared := fmt.Errorf("destination %s appeared while restoring: move it away or pass --force to overwrite it", path)
	if !force {
		err := durable.Create(tmp, path)
		var le *os.LinkError
		switch {
		case err == nil:
			return nil
		case errors.Is(err, fs.ErrExist):
			return appeared
		case !errors.As(err, &le): // linked, then the directory fsync failed
			return fmt.Errorf("restored %s but could not fsync its directory: %w", path, err)
		}
		if _, err := os.Lstat(path); err == nil {
			return appeared
		}
	}
	if err := durable.Replace(tmp, path); err != nil {
		return fmt.Errorf("moving the restored database into place: %w", err)
	}
	return nil
}

// newBar returns a progress bar on w when w is a terminal, else nil.
// The total is the backup's record count when restoring to its head; below
// it the count is unknown and the bar just counts.
func newBar(ctx context.Context, b lnvault.Backend, w io.Writer, toHead bool) *progressbar.ProgressBar {
	if !isTerminal(w) {
		return nil
	}
	total := int64(-1)
	if st, err := b.Status(ctx); toHead && err == nil && st.Records > 0 {
		total = st.Records
	}
	return progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription("restoring"),
		progressbar.OptionShowCount(),
		progressbar.OptionSetItsString("changes"),
		progressbar.OptionShowIts(),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
	)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd()))
}
