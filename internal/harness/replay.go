package harness

import (
	"context"
	"fmt"
	"math"
	"sort"
	"testing"
	"time"

	"github.com/lnvault/lnvault/internal/corpus"
)

// Replay sends reqs in order with their recorded ids. If init was not sent
// since Start, the first `early` requests go before it (as lightningd sends
// its first db_writes before init), then init, then the rest.
func (h *Harness) Replay(ctx context.Context, reqs []corpus.Request, early int) error {
	for i, r := range reqs {
		if i == early && !h.Inited() {
			if err := h.Init(ctx); err != nil {
				return err
			}
		}
		if _, err := h.Write(ctx, r.ID, r.DataVersion, r.Writes); err != nil {
			return fmt.Errorf("request %d (%s): %w", i, r.ID, err)
		}
	}
	if !h.Inited() {
		return h.Init(ctx)
	}
	return nil
}

// Stats summarises latencies.
type Stats struct {
	N                  int
	P50, P99, Max, Sum time.Duration
}

// Summarize computes percentiles of ds.
func Summarize(ds []time.Duration) Stats {
	if len(ds) == 0 {
		return Stats{}
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	st := Stats{N: len(s), P50: Percentile(s, 0.50), P99: Percentile(s, 0.99), Max: s[len(s)-1]}
	for _, d := range s {
		st.Sum += d
	}
	return st
}

// Percentile of sorted durations (nearest rank).
func Percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// ReportRatios reports the p50 and p99 of got and of ref (its floor, measured
// in the same loop) in µs, as "p50-µs" and "<refName>-p50-µs", and got's
// ratios to ref as "p50-ratio" and "p99-ratio".
func ReportRatios(b *testing.B, got, ref []time.Duration, refName string) {
	g, r := Summarize(got), Summarize(ref)
	us := func(d time.Duration) float64 { return float64(d.Microseconds()) }
	b.ReportMetric(us(g.P50), "p50-µs")
	b.ReportMetric(us(g.P99), "p99-µs")
	b.ReportMetric(us(r.P50), refName+"-p50-µs")
	b.ReportMetric(us(r.P99), refName+"-p99-µs")
	b.ReportMetric(float64(g.P50)/float64(r.P50), "p50-ratio")
	b.ReportMetric(float64(g.P99)/float64(r.P99), "p99-ratio")
}
