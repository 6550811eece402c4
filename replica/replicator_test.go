package replica_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/backends"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/dumphash"
	"github.com/lnvault/lnvault/internal/s3test"
	"github.com/lnvault/lnvault/replica"
	"github.com/lnvault/lnvault/replica/dir"
	"github.com/lnvault/lnvault/restore"
	"github.com/lnvault/lnvault/server"
)

// Tests open URLs: wire the storage in, as the binary does.
func TestMain(m *testing.M) {
	backends.Register()
	os.Exit(m.Run())
}

func openReplica(t *testing.T, u string, o lnvault.OpenOptions) *replica.Backend {
	t.Helper()
	b, err := lnvault.Open(context.Background(), u, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b.(*replica.Backend)
}

// flush waits for the replicator to drain, failing the test instead of
// hanging it when that does not happen.
func flush(t *testing.T, r *replica.Replicator) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := r.Flush(ctx); err != nil {
		t.Fatalf("flushing the replicator: %v (status %+v)", err, r.Status())
	}
}

func restoreHash(t *testing.T, b lnvault.Backend) string {
	t.Helper()
	dest := filepath.Join(t.TempDir(), "db")
	if _, err := restore.Restore(context.Background(), b, dest, restore.Options{}); err != nil {
		t.Fatal(err)
	}
	h, err := dumphash.Of(dest)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// The corpus sent by a socket: client to the server (server.New) whose
// backend is a file backup replicated to S3, as `lnvault server --replicate`
// does: once the lag drains, the replica restores the corpus's database. A
// change shipped then rewound starts a new generation and is never restored.
func TestServerReplicateCorpus(t *testing.T) {
	ctx := context.Background()
	endpoint, bucket := s3test.Start(t)
	local, err := lnvault.Open(ctx, "file://"+filepath.Join(t.TempDir(), "node.dbak"), lnvault.OpenOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	u := s3test.URL(endpoint, bucket, "srv")
	rb := openReplica(t, u, lnvault.OpenOptions{Create: true})
	r := replica.NewReplicator(local, rb, replica.ReplicatorOptions{FlushInterval: 100 * time.Millisecond})
	srv := server.New(server.Config{}, r.Backend())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, ln) }()

	cl, err := lnvault.Open(ctx, "socket:"+ln.Addr().String(), lnvault.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	reqs := corpus.MustLoad()
	for i, q := range reqs {
		if err := cl.Append(ctx, q.Change()); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
		if i == 1000 {
			// A change that reaches the replica, then is rewound.
			bogus := lnvault.NewTransaction(q.DataVersion+1, []string{"INSERT INTO vars (name, intval) VALUES ('rewound', 1)"})
			if err := cl.Append(ctx, bogus); err != nil {
				t.Fatal(err)
			}
			flush(t, r)
			if rb.Metadata().VersionCount != uint64(i+2) {
				t.Fatalf("bogus change not shipped: %+v", rb.Metadata())
			}
			if err := cl.Rewind(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := cl.Close(); err != nil {
		t.Fatal(err)
	}
	flush(t, r)
	st := r.Status()
	if st.ReplicaVersion != local.Metadata().Version || st.PendingChanges != 0 || st.Lag != 0 || st.LastError != "" {
		t.Fatalf("status after the lag drained: %+v (local %+v)", st, local.Metadata())
	}
	stop()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if err := r.Backend().Close(); err != nil {
		t.Fatal(err)
	}
	rr := openReplica(t, u, lnvault.OpenOptions{ReadOnly: true})
	if got := restoreHash(t, rr); got != corpus.FinalDumpSHA256() {
		t.Fatalf("replica restore %s, want %s", got, corpus.FinalDumpSHA256())
	}
	if gens, _ := rr.Client().Generations(ctx); len(gens) != 2 {
		t.Fatalf("generations %v, want 2 (the rewind of a shipped change starts one)", gens)
	}
}

const (
	childEnv  = "LNVAULT_REPLICA_CHILD"
	killTotal = 1000 // changes the kill test replicates in all
)

// TestReplicatorChild is the subprocess of TestReplicatorKill: it replicates
// a file backend and appends the corpus until it is killed.
func TestReplicatorChild(t *testing.T) {
	spec := os.Getenv(childEnv)
	if spec == "" {
		return // only meaningful as TestReplicatorKill's child
	}
	ctx := context.Background()
	parts := strings.SplitN(spec, "|", 2)
	local, err := lnvault.Open(ctx, parts[0], lnvault.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rb, err := lnvault.Open(ctx, parts[1], lnvault.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r := replica.NewReplicator(local, rb.(*replica.Backend), replica.ReplicatorOptions{FlushInterval: 20 * time.Millisecond})
	w := r.Backend()
	for i, q := range corpus.MustLoad()[:killTotal] {
		if uint64(i) < local.Metadata().VersionCount {
			continue
		}
		if err := w.Append(ctx, q.Change()); err != nil {
			t.Fatal(err)
		}
		fmt.Printf("appended %d replica %d\n", i+1, r.Status().ReplicaCount)
	}
	time.Sleep(time.Hour) // wait to be killed
}

// The replicator is SIGKILLed while shipping; after restart it resumes from
// what the replica holds and converges to the local backend.
func TestReplicatorKill(t *testing.T) {
	ctx := context.Background()
	endpoint, bucket := s3test.Start(t)
	localURL := "file://" + filepath.Join(t.TempDir(), "node.dbak")
	l, err := lnvault.Open(ctx, localURL, lnvault.OpenOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	u := s3test.URL(endpoint, bucket, "kill", "lease-ttl=2s")
	c, err := lnvault.Open(ctx, u, lnvault.OpenOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()

	cmd := exec.Command(os.Args[0], "-test.run=^TestReplicatorChild$", "-test.v")
	cmd.Env = append(os.Environ(), childEnv+"="+localURL+"|"+u)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	var tail []string
	killedAt := ""
	for sc.Scan() {
		line := sc.Text()
		tail = append(tail, line)
		if len(tail) > 20 {
			tail = tail[1:]
		}
		var a, rc int
		if _, e := fmt.Sscanf(line, "appended %d replica %d", &a, &rc); e == nil && a >= 600 && rc > 0 {
			cmd.Process.Kill() // SIGKILL
			killedAt = line
			break
		}
	}
	if killedAt == "" {
		cmd.Wait()
		t.Fatalf("child ended before being killed:\n%s\n%s", strings.Join(tail, "\n"), stderr.String())
	}
	cmd.Wait()
	t.Logf("killed the replicator at %q", killedAt)

	local, err := lnvault.Open(ctx, localURL, lnvault.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The dead writer's lease expires after lease-ttl.
	var rb lnvault.Backend
	deadline := time.Now().Add(20 * time.Second)
	for {
		rb, err = lnvault.Open(ctx, u, lnvault.OpenOptions{})
		if err == nil || !errors.Is(err, lnvault.ErrLocked) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if rmd, lmd := rb.Metadata(), local.Metadata(); rmd.VersionCount >= lmd.VersionCount {
		t.Logf("replica already complete at kill time: %+v vs %+v", rmd, lmd)
	}
	r := replica.NewReplicator(local, rb.(*replica.Backend), replica.ReplicatorOptions{FlushInterval: 50 * time.Millisecond})
	w := r.Backend()
	reqs := corpus.MustLoad()[:killTotal]
	for i := local.Metadata().VersionCount; i < uint64(len(reqs)); i++ {
		if err := w.Append(ctx, reqs[i].Change()); err != nil {
			t.Fatal(err)
		}
	}
	flush(t, r)
	if rmd, lmd := rb.Metadata(), local.Metadata(); rmd.Version != lmd.Version || rmd.PrevVersion != lmd.PrevVersion {
		t.Fatalf("replica %+v, local %+v", rmd, lmd)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	rr := openReplica(t, u, lnvault.OpenOptions{ReadOnly: true})
	lr, err := lnvault.Open(ctx, localURL, lnvault.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer lr.Close()
	if got, want := restoreHash(t, rr), restoreHash(t, lr); got != want {
		t.Fatalf("replica restore %s, local restore %s", got, want)
	}
	// It resumed the same history rather than starting over.
	if gens, _ := rr.Client().Generations(ctx); len(gens) != 1 {
		t.Fatalf("generations %v, want 1 (resumed, not restarted)", gens)
	}
}

// Chained replicators (one per --replicate) are all found from the outer
// backend, outermost first, and each reports its own status; a change
// reaches every replica.
func TestReplicatorsOfChain(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	local, err := lnvault.Open(ctx, "file://"+filepath.Join(dir, "node.dbak"), lnvault.OpenOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	if rs := replica.ReplicatorsOf(local); len(rs) != 0 {
		t.Fatalf("a plain backend has replicators %v", rs)
	}
	ra := replica.NewReplicator(local, openReplica(t, "dir://"+filepath.Join(dir, "a"), lnvault.OpenOptions{Create: true}), replica.ReplicatorOptions{FlushInterval: 20 * time.Millisecond})
	rb := replica.NewReplicator(ra.Backend(), openReplica(t, "dir://"+filepath.Join(dir, "b"), lnvault.OpenOptions{Create: true}), replica.ReplicatorOptions{FlushInterval: 20 * time.Millisecond})
	w := rb.Backend()
	rs := replica.ReplicatorsOf(w)
	if len(rs) != 2 || rs[0] != rb || rs[1] != ra || rb.Local().Metadata() != ra.Backend().Metadata() {
		t.Fatalf("ReplicatorsOf = %v, want [outer inner]", rs)
	}
	reqs := corpus.MustLoad()[:20]
	for _, q := range reqs {
		if err := w.Append(ctx, q.Change()); err != nil {
			t.Fatal(err)
		}
	}
	want := reqs[len(reqs)-1].DataVersion
	for _, r := range rs {
		flush(t, r)
		st := r.Status()
		if st.ReplicaVersion != want || st.ReplicaCount != uint64(len(reqs)) || st.LocalVersion != want || st.Lag != 0 || st.UploadErrors != 0 || st.LastUpload.IsZero() {
			t.Fatalf("status of %s: %+v", st.URL, st)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

// failDeletes is a store whose deletes fail while fail is set.
type failDeletes struct {
	replica.ObjectStore
	fail atomic.Bool
}

func (s *failDeletes) Delete(ctx context.Context, keys ...string) error {
	if s.fail.Load() {
		return errors.New("injected: delete refused")
	}
	return s.ObjectStore.Delete(ctx, keys...)
}

// Emptying a replicated backend (a server's delete) empties the replica
// first: when that fails nothing local is lost and the backup is shipped
// whole again; when it works both are empty, and what is appended after is
// replicated as a new backup.
func TestReplicatedEmpty(t *testing.T) {
	ctx := context.Background()
	tmp := t.TempDir()
	local, err := lnvault.Open(ctx, "file://"+filepath.Join(tmp, "node.dbak"), lnvault.OpenOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	ds, err := dir.New(filepath.Join(tmp, "replica"))
	if err != nil {
		t.Fatal(err)
	}
	st := &failDeletes{ObjectStore: ds}
	rb, err := replica.OpenBackend(ctx, replica.NewClient(st), lnvault.OpenOptions{Create: true}, replica.DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	r := replica.NewReplicator(local, rb, replica.ReplicatorOptions{FlushInterval: 20 * time.Millisecond})
	w := r.Backend()
	defer w.Close()
	reqs := corpus.MustLoad()[:30]
	for _, q := range reqs[:20] {
		if err := w.Append(ctx, q.Change()); err != nil {
			t.Fatal(err)
		}
	}
	flush(t, r)
	before := w.Metadata()

	st.fail.Store(true)
	err = w.(lnvault.Emptier).Empty(ctx)
	if err == nil || !strings.Contains(err.Error(), "the backup is kept, and shipped to it again") {
		t.Fatalf("empty with a failing replica: %v", err)
	}
	if m := local.Metadata(); m != before {
		t.Fatalf("the local backup changed to %+v although the replica could not be emptied", m)
	}
	st.fail.Store(false)
	flush(t, r)
	if s := r.Status(); s.ReplicaVersion != before.Version || s.ReplicaCount == 0 {
		t.Fatalf("after the failed empty the replica is %+v, want it shipped again to %+v", s, before)
	}

	if err := w.(lnvault.Emptier).Empty(ctx); err != nil {
		t.Fatal(err)
	}
	if m := w.Metadata(); m != (lnvault.Metadata{}) {
		t.Fatalf("local after empty: %+v", m)
	}
	gens, err := rb.Client().Generations(ctx)
	if err != nil || len(gens) != 0 || rb.Metadata() != (lnvault.Metadata{}) {
		t.Fatalf("replica after empty: %+v, generations %v (%v)", rb.Metadata(), gens, err)
	}
	for _, q := range reqs[:10] {
		if err := w.Append(ctx, q.Change()); err != nil {
			t.Fatalf("appending after empty: %v", err)
		}
	}
	flush(t, r)
	if s := r.Status(); s.ReplicaVersion != reqs[9].DataVersion || s.ReplicaCount != 10 {
		t.Fatalf("after empty and 10 appends the replica is %+v", s)
	}
}
