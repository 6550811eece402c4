package main

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/lnvault/lnvault/replica"
	"github.com/spf13/cobra"
)

// generationInfo is one line of `lnvault generations`.
type generationInfo struct {
	Generation   string    `json:"generation"`
	FirstVersion uint32    `json:"first_version"`
	LastVersion  uint32    `json:"last_version"`
	Snapshots    int       `json:"snapshots"`
	Segments     int       `json:"segments"`
	Size         int64     `json:"size_bytes"`
	Created      time.Time `json:"created"`
	Updated      time.Time `json:"updated"`
	Current      bool      `json:"current"`
}

// newGenerationsCmd is `lnvault generations`.
func newGenerationsCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "generations REPLICA_URL",
		Short: "List the generations stored in an object-storage replica",
		Long: `List the generations of a replica (s3://... or dir:///...): each is one
continuous history, with the versions it covers, how many snapshots and
segments it holds, its size and when it was created and last updated. A
restore uses the current (newest) generation.`,
		Example: `  lnvault generations 's3://backups/node1?endpoint=http://127.0.0.1:7070&path-style=true'
  lnvault generations --json dir:///mnt/nas/node1`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			asJSON, _ := cmd.Flags().GetBool("json")
			st, _, err := replica.ParseURL(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			defer st.Close()
			inv, err := replica.NewClient(st).Inventory(cmd.Context())
			if err != nil {
				return err
			}
			out := []generationInfo{}
			for i, g := range inv.Generations {
				gi := generationInfo{Generation: g.ID, Snapshots: len(g.Snapshots), Segments: len(g.Segments), Size: g.Size(),
					Created: g.Created().UTC(), Updated: g.Updated().UTC(), Current: i == len(inv.Generations)-1}
				gi.FirstVersion, gi.LastVersion = versionRange(g)
				out = append(out, gi)
			}
			if asJSON {
				e := json.NewEncoder(cmd.OutOrStdout())
				e.SetIndent("", "  ")
				return e.Encode(out)
			}
			if len(out) == 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "no generation at %s\n", st)
				return nil
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 2, 2, ' ', 0)
			fmt.Fprintln(w, "GENERATION\tVERSIONS\tSNAPSHOTS\tSEGMENTS\tSIZE\tCREATED\tUPDATED\t")
			for _, g := range out {
				cur := ""
				if g.Current {
					cur = " (current)"
				}
				fmt.Fprintf(w, "%s%s\t%d-%d\t%d\t%d\t%d\t%s\t%s\t\n", g.Generation, cur, g.FirstVersion, g.LastVersion, g.Snapshots, g.Segments, g.Size,
					g.Created.Format(time.RFC3339), g.Updated.Format(time.RFC3339))
			}
			return w.Flush()
		},
	}
	c.Flags().Bool("json", false, "print JSON")
	return c
}

// versionRange is the lowest and highest version a generation's objects hold.
func versionRange(g *replica.Generation) (lo, hi uint32) {
	first := true
	see := func(a, b uint32) {
		if first || a < lo {
			lo = a
		}
		if first || b > hi {
			hi = b
		}
		first = false
	}
	for _, s := range g.Snapshots {
		see(s.Version, s.Version)
	}
	for _, s := range g.Segments {
		see(s.FirstVersion, s.LastVersion)
	}
	return lo, hi
}
