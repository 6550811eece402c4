package s3_test

import (
	"context"
	"fmt"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/harness"
	"github.com/lnvault/lnvault/internal/s3test"
	"github.com/lnvault/lnvault/replica"
	s3store "github.com/lnvault/lnvault/replica/s3"
)

// slowGets adds a fixed delay to every GET, as the round trip to a remote
// S3 region does (versitygw on loopback answers in well under a millisecond).
type slowGets struct {
	replica.ObjectStore
	delay time.Duration
}

func (s slowGets) Get(ctx context.Context, key string) ([]byte, string, error) {
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
		return nil, "", ctx.Err()
	}
	return s.ObjectStore.Get(ctx, key)
}

// BenchmarkRestoreParallelism streams a replica of 2,000 one-change segments
// (the corpus's first 2,000 changes, as the synchronous backend writes them)
// with parallelism 1 and 8 and reports the speed-up, on versitygw over
// loopback and with 20 ms added per GET (a remote region's round trip).
func BenchmarkRestoreParallelism(b *testing.B) {
	ctx := context.Background()
	endpoint, bucket := s3test.Start(b)
	u, _ := url.Parse(s3test.URL(endpoint, bucket, "bench"))
	st, err := s3store.Open(ctx, u, u.Query())
	if err != nil {
		b.Fatal(err)
	}
	client := replica.NewClient(st)
	reqs := corpus.MustLoad()[:2000]
	seedSegments(b, client, reqs)
	stream := func(store replica.ObjectStore, par int) time.Duration {
		rb, err := replica.OpenBackend(ctx, replica.NewClient(store), lnvault.OpenOptions{ReadOnly: true, Parallelism: par}, replica.DefaultOptions)
		if err != nil {
			b.Fatal(err)
		}
		defer rb.Close()
		n := 0
		start := time.Now()
		if err := rb.Stream(ctx, 0, func(c *lnvault.Change) error { n++; return nil }); err != nil {
			b.Fatal(err)
		}
		if n != len(reqs) {
			b.Fatalf("streamed %d changes, want %d", n, len(reqs))
		}
		return time.Since(start)
	}
	slow := slowGets{ObjectStore: st, delay: 20 * time.Millisecond}
	b.ResetTimer()
	var t1, t8, s1, s8 time.Duration
	for i := 0; i < b.N; i++ {
		t1 += stream(st, 1)
		t8 += stream(st, 8)
		s1 += stream(slow, 1)
		s8 += stream(slow, 8)
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(t1.Seconds()/n, "s/restore-p1-loopback")
	b.ReportMetric(t8.Seconds()/n, "s/restore-p8-loopback")
	b.ReportMetric(float64(t1)/float64(t8), "speedup-p8-loopback")
	b.ReportMetric(s1.Seconds()/n, "s/restore-p1-20ms")
	b.ReportMetric(s8.Seconds()/n, "s/restore-p8-20ms")
	b.ReportMetric(float64(s1)/float64(s8), "speedup-p8-20ms")
}

// seedSegments stores reqs as one-change segments of a new generation, as
// the synchronous backend writes them, 32 PUTs at a time.
func seedSegments(b *testing.B, client *replica.Client, reqs []corpus.Request) {
	ctx := context.Background()
	gen := replica.NewGenerationID(nil, time.Now())
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	errs := make(chan error, len(reqs))
	var prev uint32
	for i, r := range reqs {
		data, h, err := replica.EncodeSegment(uint64(i), prev, []*lnvault.Change{r.Change()}, time.Now())
		if err != nil {
			b.Fatal(err)
		}
		prev = r.DataVersion
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if _, err := client.WriteSegment(ctx, gen, data, h); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// BenchmarkCompactionAppendWait: appends to an s3:// replica (versitygw, 20 ms
// added per GET as a remote region's round trip) go on while it compacts the
// corpus's 2,994 one-change segments. Reported: the max and p99 wait of those
// appends (the goal: max <= 50 ms, as on file:), beside appends measured in
// the same run just before and just after the compaction (the reference),
// and their ratio.
func BenchmarkCompactionAppendWait(b *testing.B) {
	ctx := context.Background()
	endpoint, bucket := s3test.Start(b)
	reqs := corpus.MustLoad()
	more := harness.Synthetic(reqs[len(reqs)-1].DataVersion+1, 100000, 1300, false, 5)
	var during, ref []time.Duration
	next := 0
	appendOne := func(rb *replica.Backend) time.Duration {
		t := time.Now()
		if err := rb.Append(ctx, more[next].Change()); err != nil {
			b.Fatal(err)
		}
		next++
		return time.Since(t)
	}
	var compactTime time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		u, _ := url.Parse(s3test.URL(endpoint, bucket, fmt.Sprintf("bench%d", i)))
		st, err := s3store.Open(ctx, u, u.Query())
		if err != nil {
			b.Fatal(err)
		}
		if err := replica.NewClient(st).CreateMarker(ctx); err != nil {
			b.Fatal(err)
		}
		seedSegments(b, replica.NewClient(st), reqs)
		rb, err := replica.OpenBackend(ctx, replica.NewClient(slowGets{ObjectStore: st, delay: 20 * time.Millisecond}), lnvault.OpenOptions{}, replica.DefaultOptions)
		if err != nil {
			b.Fatal(err)
		}
		next = 0
		b.StartTimer()
		for range 100 {
			ref = append(ref, appendOne(rb))
		}
		start := time.Now()
		done := make(chan error, 1)
		go func() { _, err := rb.Compact(ctx); done <- err }()
	wait:
		for {
			select {
			case err := <-done:
				if err != nil {
					b.Fatal(err)
				}
				break wait
			default:
				during = append(during, appendOne(rb))
			}
		}
		compactTime += time.Since(start)
		for range 100 {
			ref = append(ref, appendOne(rb))
		}
		b.StopTimer()
		rb.Close()
		b.StartTimer()
	}
	b.StopTimer()
	d, r := harness.Summarize(during), harness.Summarize(ref)
	ms := func(t time.Duration) float64 { return float64(t.Microseconds()) / 1000 }
	b.ReportMetric(ms(d.Max), "max-ms")
	b.ReportMetric(ms(d.P99), "p99-ms")
	b.ReportMetric(ms(r.Max), "ref-max-ms")
	b.ReportMetric(ms(r.P99), "ref-p99-ms")
	b.ReportMetric(float64(d.P99)/float64(r.P99), "p99-ratio")
	b.ReportMetric(float64(d.N)/float64(b.N), "appends/compaction")
	b.ReportMetric(ms(compactTime)/float64(b.N), "compact-ms")
}
