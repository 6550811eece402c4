package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"filippo.io/age"
	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/restore"
	"github.com/lnvault/lnvault/scb"
	"github.com/lnvault/lnvault/sealed"
	"github.com/spf13/cobra"
)

// newRestoreCmd is `lnvault restore`.
func newRestoreCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "restore URL [URL...] DEST",
		Short: "Restore the node's database from a backup",
		Long: `Restore writes the database at the backup's latest version (or --to-version,
or --to-time for object storage) to DEST: a database file, or a directory
(then DEST/lightningd.sqlite3). It writes a temp file beside DEST, checks it
(version continuity, integrity_check, data_version), fsyncs it and renames it
into place; an existing DEST is only replaced with --force.

An end-to-end encrypted backup needs --identity FILE (an age identity it was
made for). Given several URLs (destinations of one backup), restore reads and
authenticates each, restores the newest head, and names every destination
that is behind it (its host serves an older backup) or forked from it.`,
		Example: `  lnvault restore file:///var/backups/node.dbak ~/.lightning/bitcoin/lightningd.sqlite3
  lnvault restore --identity /media/usb/lnvault.key socket:friend.example:8700 s3://bucket/node ~/.lightning/bitcoin`,
		Args: cobra.MinimumNArgs(2),
		RunE: runRestore,
	}
	f := c.Flags()
	f.Uint32("to-version", 0, "restore this version instead of the latest")
	f.String("to-time", "", "restore the last version stored at or before this RFC 3339 time (object storage only)")
	f.Bool("force", false, "overwrite an existing DEST")
	f.Int("parallelism", 0, "concurrent downloads for object storage (0: the backend's default)")
	addIdentityFlag(c)
	return c
}

func runRestore(cmd *cobra.Command, args []string) error {
	ctx := cmd.Context()
	urls, dest := args[:len(args)-1], args[len(args)-1]
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
	ids, err := identitiesFromFlags(cmd)
	if err != nil {
		return err
	}
	url, b, _, err := newestOf(cmd, urls, lnvault.OpenOptions{ReadOnly: true, Parallelism: par}, ids)
	if err != nil {
		return err
	}
	defer b.Close()
	if toTime != "" {
		vt, ok := b.Inner().(lnvault.VersionAtTimer)
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

func addIdentityFlag(c *cobra.Command) {
	c.Flags().StringArray("identity", nil, "age identity file for an end-to-end encrypted backup (as --new-identity or age-keygen wrote it); repeatable")
}

func identitiesFromFlags(cmd *cobra.Command) ([]age.Identity, error) {
	files, _ := cmd.Flags().GetStringArray("identity")
	return scb.ReadIdentities(files)
}

// openReadable opens a backup to read: a sealed one is opened with ids
// (and without them fails naming its recipients); with ids, a plaintext
// change is refused.
func openReadable(ctx context.Context, url string, opts lnvault.OpenOptions, ids []age.Identity) (*sealed.Backend, error) {
	b, err := openBackupURL(ctx, url, opts)
	if err != nil {
		return nil, err
	}
	return sealed.NewReader(b, ids, nil), nil
}

// newestOf opens the one URL, or of several destinations of one backup the
// newest authenticated head, after saying how each stands to it.
func newestOf(cmd *cobra.Command, urls []string, opts lnvault.OpenOptions, ids []age.Identity) (string, *sealed.Backend, []sealed.Relation, error) {
	ctx := cmd.Context()
	if len(urls) == 1 {
		b, err := openReadable(ctx, urls[0], opts, ids)
		return urls[0], b, nil, err
	}
	bs, rel, newest, err := compareDestinations(cmd, urls, opts, ids)
	if err != nil {
		return "", nil, nil, err
	}
	for i, b := range bs {
		if i != newest && b != nil {
			b.Close()
		}
	}
	if newest < 0 {
		return "", nil, rel, fmt.Errorf("the destinations hold different heads at the same version (%s): none can be trusted over the other; restore from one URL only after finding out which the node wrote last", describe(urls, rel))
	}
	return urls[newest], bs[newest], rel, nil
}

// lagging names the destinations that are not at the newest head.
func lagging(urls []string, rel []sealed.Relation) error {
	var bad []string
	for i, r := range rel {
		switch r.State {
		case sealed.Newest, sealed.Same:
		case "":
			bad = append(bad, urls[i]+": could not be read")
		default:
			bad = append(bad, fmt.Sprintf("%s is %s (%s)", urls[i], r.State, r.Detail))
		}
	}
	if len(bad) == 0 {
		return nil
	}
	return fmt.Errorf("%w: not every destination holds the newest head: %s; the node's next start brings one that is behind back in line (it heals it with a snapshot), a forked one must be re-initialised (lnvault delete, then lnvault init)", lnvault.ErrCorrupt, strings.Join(bad, "; "))
}

// compareDestinations scans every destination and reports, on stderr, how
// each stands to the newest authenticated head.
func compareDestinations(cmd *cobra.Command, urls []string, opts lnvault.OpenOptions, ids []age.Identity) ([]*sealed.Backend, []sealed.Relation, int, error) {
	ctx := cmd.Context()
	bs := make([]*sealed.Backend, len(urls))
	trails := make([][]sealed.Mark, len(urls))
	w := cmd.ErrOrStderr()
	ok := 0
	for i, u := range urls {
		b, err := openReadable(ctx, u, opts, ids)
		if err == nil {
			trails[i], err = b.Scan(ctx)
			if err != nil {
				b.Close()
			}
		}
		if err != nil {
			if errors.Is(err, lnvault.ErrSealed) {
				return nil, nil, -1, fmt.Errorf("%s: %w", u, err)
			}
			fmt.Fprintf(w, "lnvault: %s: CANNOT BE USED: %v\n", u, err)
			trails[i] = nil
			continue
		}
		bs[i] = b
		ok++
	}
	if ok == 0 {
		return nil, nil, -1, errors.New("no destination could be read (see above)")
	}
	newest, rel := sealed.Compare(trails)
	for i, u := range urls {
		if bs[i] == nil {
			continue
		}
		switch rel[i].State {
		case sealed.Newest, sealed.Same:
			fmt.Fprintf(w, "lnvault: %s: %s, %s\n", u, rel[i].State, rel[i].Detail)
		default:
			fmt.Fprintf(w, "lnvault: WARNING: %s is %s: %s\n", u, strings.ToUpper(string(rel[i].State)), rel[i].Detail)
		}
	}
	return bs, rel, newest, nil
}

func describe(urls []string, rel []sealed.Relation) string {
	var parts []string
	for i, r := range rel {
		if r.State != "" {
			parts = append(parts, fmt.Sprintf("%s: %s", urls[i], r.Detail))
		}
	}
	return strings.Join(parts, "; ")
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
