package replica_test

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/dumphash"
	"github.com/lnvault/lnvault/replica"
	"github.com/lnvault/lnvault/replica/dir"
)

// stallingGets holds every GET of a segment until released: a compaction
// reading a long log from a slow store.
type stallingGets struct {
	replica.ObjectStore
	armed   chan struct{} // closed: GETs of segments stall
	entered chan struct{} // receives once a GET stalls
	release chan struct{}
	once    sync.Once
}

func (s *stallingGets) stall(key string) {
	select {
	case <-s.armed:
	default:
		return
	}
	if strings.Contains(key, "/segments/") {
		s.once.Do(func() { close(s.entered) })
		<-s.release
	}
}

func (s *stallingGets) Get(ctx context.Context, key string) ([]byte, string, error) {
	s.stall(key)
	return s.ObjectStore.Get(ctx, key)
}

func (s *stallingGets) GetTo(ctx context.Context, key string, w io.Writer) (string, error) {
	s.stall(key)
	return s.ObjectStore.GetTo(ctx, key, w)
}

// A compaction of an object-store replica does not hold appends: while it
// reads the log (stalled here), an Append completes. It used to wait for
// the whole compaction (100k one-change objects at the default threshold):
// every db_write with it.
func TestCompactionDoesNotHoldAppends(t *testing.T) {
	ctx := context.Background()
	ds, err := dir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st := &stallingGets{ObjectStore: ds, armed: make(chan struct{}), entered: make(chan struct{}), release: make(chan struct{})}
	rb, err := replica.OpenBackend(ctx, replica.NewClient(st), lnvault.OpenOptions{Create: true}, replica.DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	defer rb.Close()
	reqs := corpus.MustLoad()[:80]
	for _, q := range reqs[:60] {
		if err := rb.Append(ctx, q.Change()); err != nil {
			t.Fatal(err)
		}
	}
	close(st.armed)
	compacted := make(chan error, 1)
	go func() {
		_, err := rb.Compact(ctx)
		compacted <- err
	}()
	select {
	case <-st.entered:
	case err := <-compacted:
		t.Fatalf("the compaction ended without reading a segment: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the compaction never read a segment")
	}
	appended := make(chan error, 1)
	go func() {
		for _, q := range reqs[60:] {
			if err := rb.Append(ctx, q.Change()); err != nil {
				appended <- err
				return
			}
		}
		appended <- nil
	}()
	select {
	case err := <-appended:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		close(st.release)
		t.Fatal("appends waited for the compaction")
	}
	close(st.release)
	if err := <-compacted; err != nil {
		t.Fatalf("compaction: %v", err)
	}
	if md := rb.Metadata(); md.Version != reqs[len(reqs)-1].DataVersion || md.VersionCount != uint64(len(reqs)) {
		t.Fatalf("head %+v after the appends", md)
	}
	if h, want := restoreHash(t, rb), replayTo(t, reqs); h != want {
		t.Fatalf("restore %s, want %s", h, want)
	}
}

// replayTo is the reference: reqs applied with dbapply.
func replayTo(t *testing.T, reqs []corpus.Request) string {
	t.Helper()
	cs := make([]*lnvault.Change, len(reqs))
	for i, r := range reqs {
		cs[i] = r.Change()
	}
	h, err := dumphash.OfReplay(context.Background(), filepath.Join(t.TempDir(), "ref.sqlite3"), cs)
	if err != nil {
		t.Fatal(err)
	}
	return h
}
