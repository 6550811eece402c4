package main

import (
	"encoding/json"
	"fmt"

	"github.com/lnvault/lnvault"
	"github.com/spf13/cobra"
)

// newCompactCmd is `lnvault compact`.
func newCompactCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "compact URL",
		Short: "Replace the backup's log up to its head with a snapshot (offline)",
		Long: `Compact replaces every change before the head with one snapshot; the head
stays a separate change so the plugin can still rewind it. Run it while
lightningd is stopped (the backup is locked while it writes). Prints the
statistics as JSON: {"before": {...}, "after": {...}}.`,
		Args: cobra.ExactArgs(1),
		RunE: runCompact,
	}
}

func runCompact(cmd *cobra.Command, args []string) error {
	ctx := cmd.Context()
	b, err := openBackupURL(ctx, args[0], lnvault.OpenOptions{})
	if err != nil {
		return err
	}
	stats, err := b.Compact(ctx)
	if cerr := b.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("closing %s after compaction: %w", args[0], cerr)
	}
	if err != nil {
		return fmt.Errorf("compacting %s: %w", args[0], err)
	}
	enc := json.NewEncoder(cmd.OutOrStdout())
	return enc.Encode(stats)
}
