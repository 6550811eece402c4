package main

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/lnvault/lnvault/replica"
	"github.com/spf13/cobra"
)

// newSnapshotsCmd is `lnvault snapshots`.
func newSnapshotsCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "snapshots REPLICA_URL",
		Short: "List the snapshots stored in an object-storage replica",
		Long: `List the snapshots of a replica (s3://... or dir:///...): generation, the
index and version of the last change each holds, size and creation time.
A restore starts from the newest snapshot at or before its target.`,
		Example: `  lnvault snapshots 's3://backups/node1?endpoint=http://127.0.0.1:7070&path-style=true'
  lnvault snapshots --json --generation 0000018c2f4a5b6c dir:///mnt/nas/node1`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			asJSON, _ := cmd.Flags().GetBool("json")
			only, _ := cmd.Flags().GetString("generation")
			st, _, err := replica.ParseURL(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			defer st.Close()
			inv, err := replica.NewClient(st).Inventory(cmd.Context())
			if err != nil {
				return err
			}
			out := []replica.SnapshotInfo{}
			found := only == ""
			for _, g := range inv.Generations {
				if only != "" && g.ID != only {
					continue
				}
				found = true
				for _, s := range g.Snapshots {
					s.Created = s.Created.UTC()
					out = append(out, s)
				}
			}
			if !found {
				return fmt.Errorf("generation %s is not in %s: list them with lnvault generations", only, st)
			}
			if asJSON {
				e := json.NewEncoder(cmd.OutOrStdout())
				e.SetIndent("", "  ")
				return e.Encode(out)
			}
			if len(out) == 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "no snapshot at %s (a generation that began from an empty database has none until a compaction)\n", st)
				return nil
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 2, 2, ' ', 0)
			fmt.Fprintln(w, "GENERATION\tINDEX\tVERSION\tSIZE\tCREATED\t")
			for _, s := range out {
				fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%s\t\n", s.Generation, s.Index, s.Version, s.Size, s.Created.Format(time.RFC3339))
			}
			return w.Flush()
		},
	}
	c.Flags().Bool("json", false, "print JSON")
	c.Flags().String("generation", "", "only this generation")
	return c
}
