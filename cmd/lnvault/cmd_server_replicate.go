package main

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/replica"
	"github.com/spf13/cobra"
)

// `lnvault server ... --replicate s3://...` ships every change the server
// stores to object storage in the background, as segments, with snapshots on
// compaction; after a crash it resumes from what the replica holds.
func init() {
	f := serverCmd.Flags()
	f.StringArray("replicate", nil, "also ship every change in the background to this replica (s3://BUCKET/PREFIX?endpoint=...&region=...&path-style=true, or dir:///path); repeatable")
	f.Duration("replicate-interval", replica.DefaultReplicatorInterval, "upload what accumulated at least this often (bounds the replica's lag)")
	serverBackendHooks = append(serverBackendHooks, replicateHook)
}

func replicateHook(cmd *cobra.Command, b lnvault.Backend) (lnvault.Backend, error) {
	urls, _ := cmd.Flags().GetStringArray("replicate")
	interval, _ := cmd.Flags().GetDuration("replicate-interval")
	ctx := cmd.Context()
	for _, u := range urls {
		log := slog.Default().With("component", "replicator")
		st, opts, err := replica.ParseURL(ctx, u)
		if err != nil {
			return nil, fmt.Errorf("--replicate: %w", err)
		}
		client := replica.NewClient(st)
		oo := lnvault.OpenOptions{Logger: log}
		rb, err := replica.OpenBackend(ctx, client, oo, opts)
		if errors.Is(err, lnvault.ErrNotFound) {
			oo.Create = true
			rb, err = replica.OpenBackend(ctx, client, oo, opts)
		}
		if err != nil {
			st.Close()
			return nil, fmt.Errorf("--replicate: %w", err)
		}
		r := replica.NewReplicator(b, rb, replica.ReplicatorOptions{FlushInterval: interval, Logger: log})
		log.Info("replicating", "replica", client.String(), "generation", rb.Generation(), "replica_version", rb.Metadata().Version, "local_version", b.Metadata().Version)
		b = r.Backend()
	}
	return b, nil
}
