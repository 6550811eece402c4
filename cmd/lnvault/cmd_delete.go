package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/lnvault/lnvault"
	"github.com/spf13/cobra"
)

// newDeleteCmd is `lnvault delete`.
func newDeleteCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "delete URL",
		Short: "Delete a backup (asks first; refuses while a writer holds it)",
		Long: `Delete removes the backup at URL: a file backup's file, or every generation
of an object-storage backup and its marker. It opens the backup as a writer,
so it refuses while lightningd's plugin or an lnvault server holds it; it
shows what it is about to remove and asks for "yes" on standard input unless
--yes is given. Static channel backups kept beside the backup stay.

For a socket: URL, lnvault server deletes the backup it serves (and its
--replicate replicas) and goes on serving it empty, so that lnvault init can
start a new one there; it refuses while lightningd's plugin is connected.
A reference server cannot: delete its file on its host.`,
		Example: "  lnvault delete file:///var/backups/node.dbak\n  lnvault delete s3://bucket/node --yes\n  lnvault delete socket:backup-host:9735",
		Args:    cobra.ExactArgs(1),
		RunE:    runDelete,
	}
	c.Flags().Bool("yes", false, "delete without asking")
	return c
}

func runDelete(cmd *cobra.Command, args []string) error {
	ctx := cmd.Context()
	url := args[0]
	yes, _ := cmd.Flags().GetBool("yes")
	b, err := lnvault.Open(ctx, url, lnvault.OpenOptions{})
	switch {
	case errors.Is(err, lnvault.ErrLocked):
		return fmt.Errorf("not deleted: %w (stop the writer, lightningd or lnvault server, first)", err)
	case errors.Is(err, lnvault.ErrNotFound):
		return fmt.Errorf("nothing to delete: %w", err)
	case err != nil:
		return err
	}
	defer b.Close()
	d, ok := b.(lnvault.Deleter)
	if !ok {
		return fmt.Errorf("%s backups cannot be deleted by lnvault", lnvault.Scheme(url))
	}
	st, err := b.Status(ctx)
	if err != nil {
		return fmt.Errorf("reading %s before deleting it: %w", url, err)
	}
	what := fmt.Sprintf("%s: version %d, %d changes, %s", url, st.Metadata.Version, st.Metadata.VersionCount, formatBytes(st.Size))
	if !yes {
		fmt.Fprintf(cmd.ErrOrStderr(), "delete the backup %s? type yes: ", what)
		ok, err := confirmed(cmd.InOrStdin())
		if err != nil {
			return err
		}
		if !ok {
			return errors.New("not deleted: the answer was not yes")
		}
	}
	if err := d.Delete(ctx); err != nil {
		return fmt.Errorf("deleting %s: %w", url, err)
	}
	if lnvault.Scheme(url) == "socket" {
		fmt.Fprintf(cmd.OutOrStdout(), "deleted %s; the server goes on serving it empty (static channel backups it keeps stay)\n", what)
		return nil
	}
	fmt.Fprintf(cmd.OutOrStdout(), "deleted %s (static channel backups kept beside it, if any, stay)\n", what)
	return nil
}

// confirmed reads one line and reports whether it says yes.
func confirmed(r io.Reader) (bool, error) {
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil && line == "" {
		return false, errors.New("not deleted: no answer on standard input (pass --yes to delete without asking)")
	}
	return strings.EqualFold(strings.TrimSpace(line), "yes"), nil
}
