package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/sealed"
	"github.com/spf13/cobra"
)

// newStatusCmd is `lnvault status`.
func newStatusCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "status URL",
		Short: "Describe a backup: versions, records, size, format, last change",
		Long: `Status describes a backup from what its storage says. With --identity FILE
an end-to-end encrypted backup is read and authenticated too, and status
shows its authenticated head (version, generation, chain).`,
		Args: cobra.ExactArgs(1),
		RunE: runStatus,
	}
	c.Flags().Bool("json", false, "print the status as JSON")
	addIdentityFlag(c)
	return c
}

func runStatus(cmd *cobra.Command, args []string) error {
	ctx := cmd.Context()
	b, err := openBackupURL(ctx, args[0], lnvault.OpenOptions{ReadOnly: true})
	if err != nil {
		return err
	}
	defer b.Close()
	st, err := b.Status(ctx)
	if err != nil {
		return fmt.Errorf("reading the status of %s: %w", args[0], err)
	}
	head := ""
	if ids, err := identitiesFromFlags(cmd); err != nil {
		return err
	} else if len(ids) > 0 {
		r := sealed.NewReader(b, ids, nil)
		if _, err := r.Scan(ctx); err != nil {
			return fmt.Errorf("authenticating %s: %w", args[0], err)
		}
		head = r.Head().String()
		st.Format += ", authenticated"
	}
	if st.URL == "" {
		st.URL = args[0]
	}
	out := cmd.OutOrStdout()
	if asJSON, _ := cmd.Flags().GetBool("json"); asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	last := "unknown"
	if !st.LastChange.IsZero() {
		last = st.LastChange.UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(out, "url:            %s\n", st.URL)
	fmt.Fprintf(out, "format:         %s\n", st.Format)
	fmt.Fprintf(out, "version:        %d\n", st.Metadata.Version)
	fmt.Fprintf(out, "prev version:   %d\n", st.Metadata.PrevVersion)
	fmt.Fprintf(out, "version count:  %d\n", st.Metadata.VersionCount)
	fmt.Fprintf(out, "records:        %d\n", st.Records)
	fmt.Fprintf(out, "size:           %s (%d bytes)\n", formatBytes(st.Size), st.Size)
	fmt.Fprintf(out, "last change:    %s\n", last)
	if head != "" {
		fmt.Fprintf(out, "authenticated:  %s\n", head)
	}
	return nil
}
