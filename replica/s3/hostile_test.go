package s3_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"testing"

	"github.com/lnvault/lnvault/replica"
	s3store "github.com/lnvault/lnvault/replica/s3"
)

// zeros is an endless body.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// hostileS3 answers like S3, but every object is endless and every listing
// goes on for ever.
func hostileS3(t *testing.T) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodHead:
		case r.URL.Query().Get("list-type") == "2":
			tok := r.URL.Query().Get("continuation-token")
			var b strings.Builder
			fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>b</Name><IsTruncated>true</IsTruncated><NextContinuationToken>%sx</NextContinuationToken>`, tok)
			n := 1000
			if r.URL.Query().Get("prefix") == "p/bomb/" {
				n = 300_000 // one page far larger than S3 sends
			}
			for i := range n {
				fmt.Fprintf(&b, `<Contents><Key>p/k%s%d</Key><Size>1</Size><LastModified>2026-01-01T00:00:00.000Z</LastModified></Contents>`, tok, i)
			}
			b.WriteString(`</ListBucketResult>`)
			w.Header().Set("Content-Type", "application/xml")
			io.WriteString(w, b.String())
		case r.Method == http.MethodGet:
			io.Copy(w, zeros{}) // until the client goes away
		default:
			http.Error(w, "no", http.StatusForbidden)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// A hostile store's endless object and endless listing are refused with a
// clear error, in bounded memory: at most what lnvault writes in one object
// and one listing.
func TestHostileStoreBounded(t *testing.T) {
	ctx := context.Background()
	t.Setenv("AWS_ACCESS_KEY_ID", "k")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "s")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	ep := hostileS3(t)
	u, _ := url.Parse("s3://b/p?path-style=true&region=us-east-1&endpoint=" + ep)
	st, err := s3store.Open(ctx, u, u.Query())
	if err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, _, err = st.Get(ctx, "gen/segments/x.seg.zst")
	if err == nil || !strings.Contains(err.Error(), "more than lnvault ever writes") {
		t.Fatalf("endless object: %v", err)
	}
	runtime.ReadMemStats(&after)
	// Bounded: a few times the bound (buffer doubling; more under -race),
	// where an unbounded read would never end.
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 8*replica.MaxInMemoryObject {
		t.Fatalf("reading the endless object allocated %d MiB", grew>>20)
	}
	defer func(n int) { replica.MaxListed = n }(replica.MaxListed)
	replica.MaxListed = 20_000
	_, err = st.List(ctx, "")
	if err == nil || !strings.Contains(err.Error(), "far more than an lnvault replica holds") {
		t.Fatalf("endless listing: %v", err)
	}
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err = st.List(ctx, "bomb/")
	if err == nil || !strings.Contains(err.Error(), "far more than an S3 listing page") {
		t.Fatalf("a listing page of 300,000 keys: %v", err)
	}
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 512<<20 {
		t.Fatalf("reading the listing bomb allocated %d MiB", grew>>20)
	}
}
