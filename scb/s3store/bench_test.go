package s3store_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/lnvault/lnvault/internal/s3test"
	"github.com/lnvault/lnvault/scb"
	"github.com/lnvault/lnvault/scb/s3store"
)

// BenchmarkPutVsPlainPUT reports a version's Put (listing for the next
// number, then a conditional PUT) as a ratio to one plain PutObject of the
// same bytes measured in the same run (x_plain_put), with 50 versions
// already stored, on versitygw over loopback.
func BenchmarkPutVsPlainPUT(b *testing.B) {
	ctx := context.Background()
	ep, bkt := s3test.Start(b)
	st, err := s3store.Open(ctx, s3test.URL(ep, bkt, "bench"), scb.StoreOptions{})
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 16<<10) // ~100 channels
	rand.Read(data)
	env, err := scb.Seal(scb.NewBackup(scb.KindLNDMulti, data, -1), nil)
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		if _, err := st.Put(ctx, env); err != nil {
			b.Fatal(err)
		}
	}
	c := s3test.Client(ep)
	plain := func(i int) {
		_, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bkt), Key: aws.String(fmt.Sprintf("ref/%d", i)), Body: bytes.NewReader(env)})
		if err != nil {
			b.Fatal(err)
		}
	}
	const refN = 30
	start := time.Now()
	for i := 0; i < refN; i++ {
		plain(i)
	}
	ref := time.Since(start) / refN
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := st.Put(ctx, env); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	per := b.Elapsed() / time.Duration(b.N)
	b.ReportMetric(float64(per)/float64(ref), "x_plain_put")
	b.ReportMetric(float64(ref.Microseconds()), "plain_put_us")
}

// BenchmarkListVsPlainList reports List of 50 versions (a listing plus one
// ranged GET per version, 8 at a time) as a ratio to the bare listing of the
// same keys (x_plain_list).
func BenchmarkListVsPlainList(b *testing.B) {
	ctx := context.Background()
	ep, bkt := s3test.Start(b)
	st, err := s3store.Open(ctx, s3test.URL(ep, bkt, "bench"), scb.StoreOptions{})
	if err != nil {
		b.Fatal(err)
	}
	env, _ := scb.Seal(clnBackup(5, ""), nil)
	for i := 0; i < 50; i++ {
		if _, err := st.Put(ctx, env); err != nil {
			b.Fatal(err)
		}
	}
	c := s3test.Client(ep)
	const refN = 20
	start := time.Now()
	for i := 0; i < refN; i++ {
		out, err := c.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(bkt), Prefix: aws.String("bench/scb/")})
		if err != nil || len(out.Contents) != 50 {
			b.Fatal(err)
		}
	}
	ref := time.Since(start) / refN
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		vs, err := st.List(ctx)
		if err != nil || len(vs) != 50 {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed()/time.Duration(b.N))/float64(ref), "x_plain_list")
}
