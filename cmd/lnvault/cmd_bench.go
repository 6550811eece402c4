package main

import (
	"fmt"
	"os"

	"github.com/lnvault/lnvault/bench"
	"github.com/spf13/cobra"
)

// newBenchCmd is `lnvault bench`.
func newBenchCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "bench [URL|PATH]",
		Short: "Measure db_write ack latency through the plugin against a destination",
		Long: `Bench starts this binary as a plugin the way lightningd does, replays the
embedded corpus of real db_write requests (or --changes synthetic ones of about
--size bytes) into a new backup at the destination, and prints the ack latency
(p50/p99/max) and changes/s next to a raw write+fdatasync of the same sizes on
the destination's filesystem, with the ratios. Without an argument the backup
goes to a temp directory; a file URL, path or directory names the disk to test
(the bench backup is removed afterwards); a socket: URL measures a server.`,
		Example: `  lnvault bench
  lnvault bench /mnt/backupdisk --changes 5000 --size 2000
  lnvault bench socket:backup.example.com:8700`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			changes, _ := cmd.Flags().GetInt("changes")
			size, _ := cmd.Flags().GetInt("size")
			if changes < 0 || size < 0 {
				return fmt.Errorf("--changes and --size must be positive (got %d, %d)", changes, size)
			}
			if size > 0 && changes == 0 {
				return fmt.Errorf("--size only applies to a synthetic workload: give --changes N too")
			}
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("bench runs this binary as the plugin but cannot find it: %w", err)
			}
			o := bench.Options{Bin: self, Changes: changes, Size: size, Log: cmd.ErrOrStderr()}
			if len(args) == 1 {
				o.URL = args[0]
			}
			res, err := bench.Run(cmd.Context(), o)
			if err != nil {
				return err
			}
			res.Print(cmd.OutOrStdout())
			return nil
		},
	}
	c.Flags().Int("changes", 0, "replay this many synthetic changes instead of the corpus")
	c.Flags().Int("size", 0, "bytes per synthetic change (default: the corpus's median, ~1300)")
	return c
}
