package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/replica"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
)

// `lnvault server ... --replicate s3://...` ships every change the server
// stores to object storage in the background, as segments, with snapshots on
// compaction; after a crash it resumes from what the replica holds.
func addReplicateFlags(c *cobra.Command) {
	f := c.Flags()
	f.StringArray("replicate", nil, "also ship every change in the background to this replica (s3://BUCKET/PREFIX?endpoint=...&region=...&path-style=true, or dir:///path); repeatable")
	f.Duration("replicate-interval", replica.DefaultReplicatorInterval, "upload what accumulated at least this often (bounds the replica's lag)")
}

// withReplicas wraps b with a replicator per --replicate URL.
func withReplicas(cmd *cobra.Command, b lnvault.Backend) (lnvault.Backend, error) {
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
		rb, err := openReplicaWaiting(ctx, client, opts, log)
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

// openReplicaWaiting opens the replica for writing, creating it if there is
// none. A lease held by another writer is waited for up to one lease TTL
// (plus a margin): a server restarted after a crash finds its own dead
// lease, which expires within the TTL, while a live writer renews its lease
// and keeps it, so this still ends with the "locked" error.
func openReplicaWaiting(ctx context.Context, client *replica.Client, opts replica.Options, log *slog.Logger) (*replica.Backend, error) {
	deadline := time.Now().Add(opts.LeaseTTL + 5*time.Second)
	warned := false
	for {
		oo := lnvault.OpenOptions{Logger: log}
		rb, err := replica.OpenBackend(ctx, client, oo, opts)
		if errors.Is(err, lnvault.ErrNotFound) {
			oo.Create = true
			rb, err = replica.OpenBackend(ctx, client, oo, opts)
		}
		if err == nil || !errors.Is(err, lnvault.ErrLocked) || time.Now().After(deadline) {
			return rb, err
		}
		if !warned {
			log.Warn("replica is locked by another writer; waiting for its lease to expire (a crashed server's lease does within lease-ttl)",
				"replica", client.String(), "lease_ttl", opts.LeaseTTL, "err", err)
			warned = true
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the lease of %s: %w", client, ctx.Err())
		case <-time.After(min(time.Second, max(opts.LeaseTTL/4, 50*time.Millisecond))):
		}
	}
}

// registerReplicaMetrics exports every replica's lag, uploads and errors.
func registerReplicaMetrics(b lnvault.Backend, reg prometheus.Registerer) error {
	rs := replica.ReplicatorsOf(b)
	if len(rs) == 0 {
		return nil
	}
	return reg.Register(replicaCollector{rs: rs})
}

var (
	replicaLabels      = []string{"replica"}
	descReplicaLagVers = prometheus.NewDesc("lnvault_replica_lag_versions",
		"Versions the replica is behind the server's backup (local version minus replica version).", replicaLabels, nil)
	descReplicaLagSecs = prometheus.NewDesc("lnvault_replica_lag_seconds",
		"Age of the oldest change not yet on the replica (0 when it is up to date).", replicaLabels, nil)
	descReplicaVersion = prometheus.NewDesc("lnvault_replica_version",
		"The replica's head version.", replicaLabels, nil)
	descReplicaPending = prometheus.NewDesc("lnvault_replica_pending_changes",
		"Changes queued for the next upload.", replicaLabels, nil)
	descReplicaCatchUp = prometheus.NewDesc("lnvault_replica_catching_up",
		"1 while the replica is being re-synchronised from the local backup (at start, after an error or a rewind).", replicaLabels, nil)
	descReplicaLastUp = prometheus.NewDesc("lnvault_replica_last_upload_timestamp_seconds",
		"Unix time of the last successful upload (0: none since the server started).", replicaLabels, nil)
	descReplicaErrors = prometheus.NewDesc("lnvault_replica_upload_errors_total",
		"Failed upload rounds since the server started (each is retried with backoff).", replicaLabels, nil)
)

// replicaCollector reads each replicator's Status once per scrape, so the
// gauges of one replica are consistent with each other.
type replicaCollector struct{ rs []*replica.Replicator }

func (c replicaCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descReplicaLagVers, descReplicaLagSecs, descReplicaVersion, descReplicaPending, descReplicaCatchUp, descReplicaLastUp, descReplicaErrors} {
		ch <- d
	}
}

func (c replicaCollector) Collect(ch chan<- prometheus.Metric) {
	for _, r := range c.rs {
		st := r.Status()
		lagVersions := 0.0
		if st.LocalVersion > st.ReplicaVersion {
			lagVersions = float64(st.LocalVersion - st.ReplicaVersion)
		}
		catchingUp, lastUp := 0.0, 0.0
		if st.CatchingUp {
			catchingUp = 1
		}
		if !st.LastUpload.IsZero() {
			lastUp = float64(st.LastUpload.UnixNano()) / 1e9
		}
		gauge := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, st.URL)
		}
		gauge(descReplicaLagVers, lagVersions)
		gauge(descReplicaLagSecs, st.Lag.Seconds())
		gauge(descReplicaVersion, float64(st.ReplicaVersion))
		gauge(descReplicaPending, float64(st.PendingChanges))
		gauge(descReplicaCatchUp, catchingUp)
		gauge(descReplicaLastUp, lastUp)
		ch <- prometheus.MustNewConstMetric(descReplicaErrors, prometheus.CounterValue, float64(st.UploadErrors), st.URL)
	}
}
