package s3_test

import (
	"context"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/s3test"
)

// Real S3 behind a proxy that answers 500 after versitygw stored a segment:
// once (the SDK's own retry then meets the object at its key and the
// conditional creation tells it is the same), and for every attempt (the
// Append fails; its retry by the caller finds the change stored). Every
// change is stored exactly once.
func TestSyncLandedButFailedPut(t *testing.T) {
	ctx := context.Background()
	endpoint, bucket := s3test.Start(t)
	fp := s3test.StartFaultProxy(t, endpoint)
	u := s3test.URL(fp.Endpoint, bucket, "node1")
	b, err := lnvault.Open(ctx, u, lnvault.OpenOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	reqs := corpus.MustLoad()[:60]
	for i, r := range reqs {
		c := r.Change()
		switch i {
		case 20:
			fp.FailAfter("PUT", "/segments/", 1)
		case 40:
			fp.FailAfter("PUT", "/segments/", 100)
			if err := b.Append(ctx, c); err == nil {
				t.Fatal("an Append whose every PUT attempt failed returned nil")
			}
			fp.FailAfter("PUT", "", 0)
		}
		if err := b.Append(ctx, c); err != nil {
			t.Fatalf("append %d (version %d): %v", i, c.Version, err)
		}
	}
	if fp.Failed.Load() < 2 {
		t.Fatalf("%d answers failed after the write", fp.Failed.Load())
	}
	rb, err := lnvault.Open(ctx, s3test.URL(endpoint, bucket, "node1"), lnvault.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rb.Close()
	var got []uint32
	if err := rb.Stream(ctx, 0, func(c *lnvault.Change) error { got = append(got, c.Version); return nil }); err != nil {
		t.Fatalf("restoring: %v", err)
	}
	if len(got) != len(reqs) {
		t.Fatalf("the replica holds %d changes for %d appended", len(got), len(reqs))
	}
	for i, v := range got {
		if v != reqs[i].DataVersion {
			t.Fatalf("change %d is version %d, want %d", i, v, reqs[i].DataVersion)
		}
	}
}
