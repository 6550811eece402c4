package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/restore"
	"github.com/spf13/cobra"
)

// newRestoreCmd is `lnvault restore`.
func newRestoreCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "restore URL DEST",
		Short: "Restore the node's database from a backup",
		Long: `Restore writes the database at the backup's latest version (or --to-version,
or --to-time for object storage) to DEST: a database file, or a directory
(then DEST/lightningd.sqlite3). It writes a temp file beside DEST, checks it
(version continuity, integrity_check, data_version), fsyncs it and renames it
into place; an existing DEST is only replaced with --force.`,
		Example: "  lnvault restore file:///var/backups/node.dbak ~/.lightning/bitcoin/lightningd.sqlite3",
		Args:    cobra.ExactArgs(2),
		RunE:    runRestore,
	}
	f := c.Flags()
	f.Uint32("to-version", 0, "restore this version instead of the latest")
	f.String("to-time", "", "restore the last version stored at or before this RFC 3339 time (object storage only)")
	f.Bool("force", false, "overwrite an existing DEST")
	f.Int("parallelism", 0, "concurrent downloads for object storage (0: the backend's default)")
	return c
}

func runRestore(cmd *cobra.Command, args []string) error {
	ctx := cmd.Context()
	url, dest := args[0], args[1]
	f := cmd.Flags()
	toVersion, _ := f.GetUint32("to-version")
	toTime, _ := f.GetString("to-time")
	force, _ := f.GetBool("force")
	par, _ := f.GetInt("parallelism")
	if par < 0 {
		return fmt.Errorf("--parallelism %d is negative: give a number of downloads, or 0 for the default", par)
	}
	var at time.Time
	if toTime != "" {
		if f.Changed("to-version") {
			return errors.New("--to-version and --to-time both given: use one of them")
		}
		var err error
		if at, err = time.Parse(time.RFC3339, toTime); err != nil {
			return fmt.Errorf("--to-time %q is not an RFC 3339 time: use e.g. 2025-01-31T17:04:05Z", toTime)
		}
	}
	if f.Changed("to-version") && toVersion == 0 {
		return errors.New("--to-version 0 is not a version: omit the flag to restore the latest")
	}

	// Never under a running node, --force or not: lightningd would go on
	// with the database it has open and overwrite what was restored.
	destDir := filepath.Dir(dest)
	if st, err := os.Stat(dest); err == nil && st.IsDir() {
		destDir = dest
	}
	if sock, running := lightningdAnswers(destDir); running {
		return fmt.Errorf("lightningd is running in %s (it answers on %s): stop it first (lightning-cli stop), then restore", destDir, sock)
	}
	b, err := openBackupURL(ctx, url, lnvault.OpenOptions{ReadOnly: true, Parallelism: par})
	if err != nil {
		return err
	}
	defer b.Close()
	if toTime != "" {
		vt, ok := b.(lnvault.VersionAtTimer)
		if !ok {
			return fmt.Errorf("--to-time needs a backend that records when each change was stored (s3:); %s does not: use --to-version", url)
		}
		if toVersion, err = vt.VersionAt(ctx, at); err != nil {
			return fmt.Errorf("finding the version stored at %s: %w", at.Format(time.RFC3339), err)
		}
	}
	res, err := restore.Restore(ctx, b, dest, restore.Options{ToVersion: toVersion, Force: force, Progress: os.Stderr})
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "restored version %d (%d changes, %s) in %s to %s\n",
		res.Version, res.Changes, formatBytes(res.Bytes), res.Duration.Round(time.Millisecond), res.Path)
	return nil
}

// openBackupURL opens a backup for a CLI command and turns the common
// failures into one line that says what to do.
func openBackupURL(ctx context.Context, url string, opts lnvault.OpenOptions) (lnvault.Backend, error) {
	b, err := lnvault.Open(ctx, url, opts)
	switch {
	case err == nil:
		return b, nil
	case errors.Is(err, lnvault.ErrNotFound) && !strings.Contains(err.Error(), "lnvault init"):
		return nil, fmt.Errorf("%w (check the URL, or create the backup with `lnvault init %s`)", err, url)
	case errors.Is(err, lnvault.ErrLocked):
		return nil, fmt.Errorf("%w (stop the process that writes to it, e.g. lightningd, first)", err)
	}
	return nil, err
}

// formatBytes prints a size for humans.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
