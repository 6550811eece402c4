package s3_test

import (
	"context"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/corpus"
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
	// Setup: 2,000 PUTs, 32 at a time.
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
