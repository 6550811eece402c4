package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/restore"
	"github.com/spf13/cobra"
)

// newVerifyCmd is `lnvault verify`.
func newVerifyCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "verify URL [URL...] [--db PATH]",
		Short: "Check that a backup restores: checksums, continuity, integrity, foreign keys",
		Long: `Verify reads every change of the backup, checks checksums and version
continuity, restores it into a temp database and runs integrity_check and
foreign_key_check. Exit status: 0 all is well, 2 the backup is damaged (the
message names the first bad record's offset and version), 1 it could not be
checked.

With --db PATH (a stopped node's lightningd.sqlite3) it also compares the
backup with that database: a gap (the node is ahead: commits never reached the
backup), an old database (behind the backup), or different content at the same
version exit 2 with what to do; equal, or one change the node never committed
(the next start rewinds it), exit 0.

An end-to-end encrypted backup needs --identity FILE; every change is
authenticated. Given several URLs (destinations of one backup), verify names
each that is behind the newest head or forked from it (exit 2) and checks the
newest.`,
		Args: cobra.MinimumNArgs(1),
		RunE: runVerify,
	}
	c.Flags().String("db", "", "compare the backup with this stopped node's database")
	addIdentityFlag(c)
	return c
}

// exitError carries a command's exit code to main.
type exitError struct {
	err  error
	code int
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }
func (e *exitError) ExitCode() int { return e.code }

func runVerify(cmd *cobra.Command, args []string) error {
	ctx := cmd.Context()
	ids, err := identitiesFromFlags(cmd)
	if err != nil {
		return err
	}
	url, b, rel, err := newestOf(cmd, args, lnvault.OpenOptions{ReadOnly: true}, ids)
	if err != nil {
		if errors.Is(err, lnvault.ErrCorrupt) {
			return &exitError{fmt.Errorf("%w (restore from another copy of the backup)", err), 2}
		}
		return err
	}
	defer b.Close()
	rep, err := restore.Verify(ctx, b)
	if err != nil {
		if errors.Is(err, lnvault.ErrCorrupt) {
			hint := "keep this file and restore from another copy of the backup"
			if strings.Contains(err.Error(), "--to-version") {
				hint = "keep this file"
			}
			return &exitError{fmt.Errorf("%w (%d problem(s); %s)", err, len(rep.Problems), hint), 2}
		}
		return err
	}
	if len(args) > 1 {
		fmt.Fprintf(cmd.OutOrStdout(), "newest: %s\n", url)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "backup ok: %d changes (%d snapshots, %d statements), versions %d..%d, data_version %d, integrity and foreign keys ok\n",
		rep.Changes, rep.Snapshots, rep.Statements, rep.FirstVersion, rep.LastVersion, rep.DataVersion)
	if db, _ := cmd.Flags().GetString("db"); db != "" {
		c, err := restore.CompareDB(ctx, b, db)
		if err != nil {
			return err
		}
		if !c.OK() {
			return &exitError{fmt.Errorf("%s: %s", c.State, c.Detail), 2}
		}
		fmt.Fprintf(cmd.OutOrStdout(), "database %s: %s: %s\n", db, c.State, c.Detail)
	}
	if err := lagging(args, rel); err != nil {
		return &exitError{err, 2}
	}
	return nil
}
