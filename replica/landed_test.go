package replica_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/replica"
	"github.com/lnvault/lnvault/replica/dir"
)

// landsThenFails stores every object, but while fail > 0 it answers the
// PUT of a segment with an error, as an object store that answers 500 after
// it stored the object does.
type landsThenFails struct {
	replica.ObjectStore
	fail atomic.Int32
	hits atomic.Int32
}

func (s *landsThenFails) lie(key string, err error) error {
	if err == nil && strings.Contains(key, "/segments/") && s.fail.Add(-1) >= 0 {
		s.hits.Add(1)
		return errors.New("500 Internal Server Error (after storing " + key + ")")
	}
	return err
}

func (s *landsThenFails) Put(ctx context.Context, key string, data []byte) error {
	return s.lie(key, s.ObjectStore.Put(ctx, key, data))
}

func (s *landsThenFails) PutIf(ctx context.Context, key string, data []byte, match string) (string, error) {
	tag, err := s.ObjectStore.PutIf(ctx, key, data, match)
	return tag, s.lie(key, err)
}

// Segments whose PUT landed but reported an error, under a replicator (as
// `lnvault server --replicate` runs one): the retries must not store the same
// changes a second time. They used to be uploaded again under a new key (the
// key held the creation time), and restore then failed with "two histories
// in one generation" while the lag looked healthy.
func TestReplicatorLandedButFailedPut(t *testing.T) {
	ctx := context.Background()
	ds, err := dir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st := &landsThenFails{ObjectStore: ds}
	rb, err := replica.OpenBackend(ctx, replica.NewClient(st), lnvault.OpenOptions{Create: true}, replica.DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	local, err := lnvault.Open(ctx, "file://"+filepath.Join(t.TempDir(), "node.dbak"), lnvault.OpenOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	r := replica.NewReplicator(local, rb, replica.ReplicatorOptions{FlushInterval: 10 * time.Millisecond})
	w := r.Backend()
	defer w.Close()
	changes := corpus.MustLoad()[:300]
	for i, q := range changes {
		c := q.Change()
		if i == 100 || i == 200 {
			flush(t, r)
			st.fail.Store(2)
		}
		if err := w.Append(ctx, c); err != nil {
			t.Fatal(err)
		}
		if i%10 == 0 {
			time.Sleep(15 * time.Millisecond) // several batches
		}
	}
	flush(t, r)
	if st.hits.Load() < 3 {
		t.Fatalf("only %d PUTs failed after landing", st.hits.Load())
	}
	ro, err := replica.OpenBackend(ctx, replica.NewClient(ds), lnvault.OpenOptions{ReadOnly: true}, replica.DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	var got []uint32
	if err := ro.Stream(ctx, 0, func(c *lnvault.Change) error { got = append(got, c.Version); return nil }); err != nil {
		t.Fatalf("restoring the replica: %v", err)
	}
	if len(got) != len(changes) {
		t.Fatalf("the replica restores %d changes, %d were appended", len(got), len(changes))
	}
	if h, want := restoreHash(t, ro), restoreHash(t, local); h != want {
		t.Fatalf("the replica restores %s, the local backup %s", h, want)
	}
}

// The synchronous path (s3:// in backup.lock): an Append whose PUT landed
// but failed returns the error; the caller's retry of the same change finds
// it stored and is not stored twice; the next change follows it.
func TestAppendLandedButFailedPut(t *testing.T) {
	ctx := context.Background()
	ds, err := dir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st := &landsThenFails{ObjectStore: ds}
	rb, err := replica.OpenBackend(ctx, replica.NewClient(st), lnvault.OpenOptions{Create: true}, replica.DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	defer rb.Close()
	changes := corpus.MustLoad()[:40]
	for i, q := range changes {
		c := q.Change()
		if i == 20 {
			st.fail.Store(1)
			if err := rb.Append(ctx, c); err == nil {
				t.Fatal("the failed PUT was not reported")
			}
		}
		if err := rb.Append(ctx, c); err != nil {
			t.Fatalf("append %d: %v", c.Version, err)
		}
	}
	var got []uint32
	if err := rb.Stream(ctx, 0, func(c *lnvault.Change) error { got = append(got, c.Version); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(changes) {
		t.Fatalf("the replica holds %d changes for %d appended: %v", len(got), len(changes), got)
	}
}
