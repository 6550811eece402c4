package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/lnvault/lnvault"
)

// DefaultReplicatorInterval is how often pending changes are uploaded.
const DefaultReplicatorInterval = time.Second

// ReplicatorOptions tune the background shipping of changes.
type ReplicatorOptions struct {
	// FlushInterval bounds the lag: what accumulated is uploaded at least
	// this often (default 1s).
	FlushInterval time.Duration
	// FlushBytes uploads early once this much is pending, and caps the size
	// of one segment (default 1 MiB).
	FlushBytes int64
	// MaxPendingBytes: past this much unshipped data (replica unreachable),
	// the in-memory queue is dropped and the replicator later catches up by
	// streaming from the local backend (default 64 MiB).
	MaxPendingBytes int64
	Logger          *slog.Logger
}

// ReplicatorStatus is what `status` and the metrics show about a replica.
type ReplicatorStatus struct {
	URL            string        `json:"url"`
	Generation     string        `json:"generation"`
	ReplicaVersion uint32        `json:"replica_version"`
	ReplicaCount   uint64        `json:"replica_version_count"`
	LocalVersion   uint32        `json:"local_version"`
	PendingChanges int           `json:"pending_changes"`
	PendingBytes   int64         `json:"pending_bytes"`
	Lag            time.Duration `json:"lag_ns"` // age of the oldest change not yet on the replica
	CatchingUp     bool          `json:"catching_up"`
	LastUpload     time.Time     `json:"last_upload"`
	LastError      string        `json:"last_error,omitempty"`
	// UploadErrors counts failed rounds (uploads, resyncs, compactions)
	// since the replicator started; each is retried with backoff.
	UploadErrors uint64 `json:"upload_errors"`
}

// Replicator ships the changes of a local backend to a replica in the
// background: changes are queued as they are appended locally and uploaded in
// segments every FlushInterval (or FlushBytes). At start, after an upload
// error, and after a rewind of a change that may already be on the replica,
// it re-synchronises: it finds the replica's head among the local changes
// (same version, same previous version, same statements) and uploads what
// follows; if the histories diverged it starts a new generation from a
// snapshot of the local state.
type Replicator struct {
	local lnvault.Backend
	rb    *Backend
	opts  ReplicatorOptions
	log   *slog.Logger

	// stepMu is held by each round of uploads (step) and by Empty, so an
	// upload never lands in a replica being emptied.
	stepMu       sync.Mutex
	mu           sync.Mutex
	queue        []*lnvault.Change
	queueBytes   int64
	pendingSince time.Time // oldest change not yet on the replica; zero if none
	needResync   bool
	compactReq   bool
	// rebaseReq: the node's snapshot the local backup was rebased on, to
	// put into the replica once it holds a change after it.
	rebaseReq  *pendingRebase
	lastErr    error
	errCount   uint64
	lastUpload time.Time
	appends    uint64 // local appends and rewinds, to see if a resync raced one
	// shipped is the snapshot change this replicator uploaded last, while
	// it is the replica's head and no local rewind happened since: a
	// snapshot head has no statements to be recognised by in the local log.
	shipped *shippedSnapshot

	kick    chan struct{}
	flushed *sync.Cond // signalled after each step
	stop    chan struct{}
	done    chan struct{}
	cancel  context.CancelFunc
	ctx     context.Context
	closeMu sync.Once
}

type pendingRebase struct {
	path    string // a copy of the snapshot
	version uint32
}

type shippedSnapshot struct {
	version uint32
	md      lnvault.Metadata // the replica's metadata right after it
}

// NewReplicator starts replicating local to rb. Use Backend() as the
// server's backend; Close stops it.
func NewReplicator(local lnvault.Backend, rb *Backend, o ReplicatorOptions) *Replicator {
	if o.FlushInterval <= 0 {
		o.FlushInterval = DefaultReplicatorInterval
	}
	if o.FlushBytes <= 0 {
		o.FlushBytes = 1 << 20
	}
	if o.MaxPendingBytes <= 0 {
		o.MaxPendingBytes = 64 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Replicator{local: local, rb: rb, opts: o, log: o.Logger, needResync: true,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}), ctx: ctx, cancel: cancel}
	r.flushed = sync.NewCond(&r.mu)
	if local.Metadata().VersionCount > 0 || local.Metadata().Version > 0 {
		r.pendingSince = time.Now()
	}
	go r.loop()
	return r
}

// Backend returns local wrapped so that its changes are replicated.
func (r *Replicator) Backend() lnvault.Backend { return replicated{r} }

// Replica is the replica backend.
func (r *Replicator) Replica() *Backend { return r.rb }

// Local is the backend being replicated (itself replicated when several
// replicas are chained, see ReplicatorsOf).
func (r *Replicator) Local() lnvault.Backend { return r.local }

// Status reports the replication state.
func (r *Replicator) Status() ReplicatorStatus {
	md := r.rb.Metadata()
	r.mu.Lock()
	defer r.mu.Unlock()
	st := ReplicatorStatus{URL: r.rb.client.String(), Generation: r.rb.Generation(), ReplicaVersion: md.Version, ReplicaCount: md.VersionCount,
		LocalVersion: r.local.Metadata().Version, PendingChanges: len(r.queue), PendingBytes: r.queueBytes,
		CatchingUp: r.needResync, LastUpload: r.lastUpload, UploadErrors: r.errCount}
	if !r.pendingSince.IsZero() {
		st.Lag = time.Since(r.pendingSince)
	}
	if r.lastErr != nil {
		st.LastError = r.lastErr.Error()
	}
	return st
}

func (r *Replicator) poke() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

func (r *Replicator) loop() {
	defer close(r.done)
	t := time.NewTicker(r.opts.FlushInterval)
	defer t.Stop()
	backoff := time.Duration(0)
	for {
		select {
		case <-r.stop:
			return
		case <-r.kick:
		case <-t.C:
		}
		if backoff > 0 {
			select {
			case <-r.stop:
				return
			case <-time.After(backoff):
			}
		}
		if err := r.step(r.ctx); err != nil {
			backoff = min(max(2*backoff, 500*time.Millisecond), 30*time.Second)
			r.log.Warn("replica: upload failed, will retry", "replica", r.rb.client.String(), "err", err, "retry_in", backoff)
		} else {
			backoff = 0
		}
	}
}

// step does one round of work: resync if needed, else upload the queue, then
// a requested compaction.
func (r *Replicator) step(ctx context.Context) error {
	r.stepMu.Lock()
	err := r.stepInner(ctx)
	r.stepMu.Unlock()
	r.mu.Lock()
	r.lastErr = err
	if err != nil {
		r.errCount++
	}
	r.flushed.Broadcast()
	r.mu.Unlock()
	return err
}

func (r *Replicator) stepInner(ctx context.Context) error {
	r.mu.Lock()
	if r.needResync {
		r.mu.Unlock()
		return r.resync(ctx)
	}
	batch := r.queue
	r.queue, r.queueBytes = nil, 0
	compact := r.compactReq
	r.mu.Unlock()
	if len(batch) > 0 {
		if err := r.upload(ctx, batch); err != nil {
			r.mu.Lock()
			r.needResync = true
			r.queue, r.queueBytes = nil, 0
			r.mu.Unlock()
			return err
		}
	}
	r.mu.Lock()
	if len(r.queue) == 0 && !r.needResync {
		r.pendingSince = time.Time{}
	}
	r.mu.Unlock()
	r.rebaseReplica(ctx)
	if compact {
		if _, err := r.rb.Compact(ctx); err != nil {
			return fmt.Errorf("compacting the replica: %w", err)
		}
		r.mu.Lock()
		r.compactReq = false
		r.mu.Unlock()
	}
	return nil
}

// rebaseReplica puts the node's snapshot the local backup was rebased on
// into the replica, once the replica holds a change after it. A failure
// drops it (the replica then keeps its changes until the next rebase).
func (r *Replicator) rebaseReplica(ctx context.Context) {
	r.mu.Lock()
	req := r.rebaseReq
	r.mu.Unlock()
	if req == nil || r.rb.Metadata().Version <= req.version {
		return
	}
	f, err := os.Open(req.path)
	if err == nil {
		var st os.FileInfo
		if st, err = f.Stat(); err == nil {
			_, err = r.rb.Rebase(ctx, lnvault.NewSnapshot(req.version, io.NewSectionReader(f, 0, st.Size())))
		}
		f.Close()
	}
	if err != nil {
		r.log.Warn("the replica was not rebased on the node's snapshot; it keeps its changes until the next compaction", "version", req.version, "err", err)
	} else {
		r.log.Info("replica rebased on the node's snapshot", "version", req.version)
	}
	r.mu.Lock()
	if r.rebaseReq == req {
		r.rebaseReq = nil
	}
	r.mu.Unlock()
	os.Remove(req.path)
}

// upload writes changes as segments of at most FlushBytes each.
func (r *Replicator) upload(ctx context.Context, cs []*lnvault.Change) error {
	for len(cs) > 0 {
		n, size := 0, int64(0)
		for n < len(cs) && (n == 0 || size+changeSize(cs[n]) <= r.opts.FlushBytes) {
			size += changeSize(cs[n])
			n++
		}
		if err := r.rb.AppendBatch(ctx, cs[:n]); err != nil {
			return err
		}
		r.mu.Lock()
		r.lastUpload = time.Now()
		r.mu.Unlock()
		cs = cs[n:]
	}
	return nil
}

func changeSize(c *lnvault.Change) int64 {
	n := int64(9)
	if c.Snapshot != nil {
		n += c.Snapshot.Size()
	}
	for _, s := range c.Statements {
		n += int64(len(s)) + 4
	}
	return n
}

// cloneTransaction copies a transaction so that it outlives the caller's
// buffers. Snapshot changes are never copied (they can be GiB): they are
// shipped from the local backend while it streams them.
func cloneTransaction(c *lnvault.Change) *lnvault.Change {
	return &lnvault.Change{Version: c.Version, Kind: c.Kind, Statements: slices.Clone(c.Statements)}
}

// isShipped tells whether c, met in the local log where the replica's head
// should be, is the snapshot change this replicator shipped as that head.
func (r *Replicator) isShipped(c *lnvault.Change, rmd lnvault.Metadata, rhead *lnvault.Change) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.shipped
	return s != nil && rhead == nil && c.Kind == lnvault.KindSnapshot && c.Version == s.version && rmd == s.md
}

func sameChange(a, b *lnvault.Change) bool {
	return a != nil && b != nil && a.Kind == lnvault.KindTransaction && b.Kind == a.Kind && a.Version == b.Version && slices.Equal(a.Statements, b.Statements)
}

// resync brings the replica to the local head. It streams the local log to
// its end while appends go on (they are not queued meanwhile), and repeats
// until no append happened during a round; then appends are queued again.
func (r *Replicator) resync(ctx context.Context) error {
	for {
		r.mu.Lock()
		seen := r.appends
		r.queue, r.queueBytes = nil, 0
		r.mu.Unlock()
		if err := r.catchUp(ctx); err != nil {
			return err
		}
		r.mu.Lock()
		if r.appends == seen {
			r.needResync = false
			r.mu.Unlock()
			return nil
		}
		r.mu.Unlock()
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// catchUp ships what the replica lacks: the local changes after the
// replica's head if that head is in the local log, else a new generation
// from the local state.
func (r *Replicator) catchUp(ctx context.Context) error {
	lmd := r.local.Metadata()
	if lmd.VersionCount == 0 && lmd.Version == 0 {
		return nil // nothing local yet
	}
	// The head as stored, not as remembered: an upload that failed may have
	// been stored all the same, and must not be uploaded again.
	if err := r.rb.Reload(ctx); err != nil {
		return err
	}
	rmd := r.rb.Metadata()
	rhead := r.rb.headChange()
	if rmd == lmd && rhead == nil && rmd.VersionCount > 0 {
		return nil // a generation that starts with a snapshot of this very head
	}
	matched, err := r.shipAfter(ctx, rmd, rhead)
	if err != nil {
		return err
	}
	if matched {
		r.log.Info("replica: caught up", "replica", r.rb.client.String(), "version", r.rb.Metadata().Version)
		return nil
	}
	// The replica's head is not in the local history (a rewind after it was
	// uploaded, a compacted local log, another history): start a new
	// generation from the local state.
	r.log.Info("replica: histories differ, starting a new generation", "replica", r.rb.client.String(), "replica_version", rmd.Version, "local_version", lmd.Version)
	return r.restartFromLocal(ctx, lmd)
}

// shipAfter finds the replica's head (rmd, with its transaction rhead) in
// the local log (same version, same previous version, same statements) and
// uploads every change after it, in batches; matched is false when the head
// is not there.
func (r *Replicator) shipAfter(ctx context.Context, rmd lnvault.Metadata, rhead *lnvault.Change) (matched bool, err error) {
	var batch []*lnvault.Change
	var batchBytes int64
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := r.upload(ctx, batch)
		batch, batchBytes = nil, 0
		return err
	}
	matched = rmd.VersionCount == 0
	var prev *lnvault.Change
	from := uint32(0)
	if !matched {
		from = rmd.PrevVersion
		if rmd.PrevVersion == 0 {
			from = rmd.Version
		}
	}
	err = r.local.Stream(ctx, from, func(c *lnvault.Change) error {
		defer func() { prev = &lnvault.Change{Version: c.Version, Kind: c.Kind} }()
		if !matched {
			if c.Version > rmd.Version {
				return lnvault.ErrStop // went past the replica's head: diverged
			}
			prevOK := prev == nil && (rmd.PrevVersion == 0 || rmd.PrevVersion != rmd.Version) || prev != nil && prev.Version == rmd.PrevVersion
			if prevOK && (sameChange(c, rhead) || r.isShipped(c, rmd, rhead)) {
				matched = true
			}
			return nil
		}
		if c.Kind == lnvault.KindSnapshot {
			// Uploaded now, streamed from the local backend's file, which
			// is valid only during this callback.
			if err := flush(); err != nil {
				return err
			}
			return r.shipSnapshot(ctx, c)
		}
		cc := cloneTransaction(c)
		batch = append(batch, cc)
		batchBytes += changeSize(cc)
		if batchBytes >= r.opts.FlushBytes {
			return flush()
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("streaming the local backup: %w", err)
	}
	if !matched {
		return false, nil
	}
	return true, flush()
}

// shipSnapshot uploads a local snapshot and remembers it was shipped.
func (r *Replicator) shipSnapshot(ctx context.Context, c *lnvault.Change) error {
	if err := r.upload(ctx, []*lnvault.Change{c}); err != nil {
		return err
	}
	md := r.rb.Metadata()
	r.mu.Lock()
	r.shipped = &shippedSnapshot{version: c.Version, md: md}
	r.mu.Unlock()
	return nil
}

// restartFromLocal starts a new generation with a snapshot of the local
// backup's state (lmd).
func (r *Replicator) restartFromLocal(ctx context.Context, lmd lnvault.Metadata) error {
	var last, before uint32
	var lastTx *lnvault.Change
	var n int
	path, cleanup, err := materialize(ctx, func(fn func(*lnvault.Change) error) error {
		return r.local.Stream(ctx, 0, func(c *lnvault.Change) error {
			if err := fn(c); err != nil {
				return err
			}
			before, last = last, c.Version
			n++
			lastTx = nil
			if c.Kind == lnvault.KindTransaction {
				lastTx = &lnvault.Change{Version: c.Version, Kind: c.Kind, Statements: slices.Clone(c.Statements)}
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	defer cleanup()
	if n < 2 {
		before = lmd.PrevVersion
	}
	// The head's statements let the next resync find it in the local log.
	return r.rb.restartFrom(ctx, path, last, before, lastTx)
}

// Flush waits until everything appended so far is on the replica (or ctx
// ends, or an upload fails).
func (r *Replicator) Flush(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		r.mu.Lock()
		r.flushed.Broadcast()
		r.mu.Unlock()
	})
	defer stop()
	r.poke()
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !r.needResync && len(r.queue) == 0 && r.pendingSince.IsZero() {
			return nil
		}
		r.mu.Unlock()
		r.poke()
		r.mu.Lock()
		r.flushed.Wait()
	}
}

// Close ships what is pending (for up to 30 s), stops, and closes the replica.
func (r *Replicator) Close() error {
	var err error
	r.closeMu.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		ferr := r.Flush(ctx)
		cancel()
		close(r.stop)
		<-r.done
		r.cancel()
		r.mu.Lock()
		if r.rebaseReq != nil {
			os.Remove(r.rebaseReq.path)
			r.rebaseReq = nil
		}
		r.mu.Unlock()
		if ferr != nil {
			ferr = fmt.Errorf("replica %s left behind (it catches up at next start): %w", r.rb.client, ferr)
		}
		err = errors.Join(ferr, r.rb.Close())
	})
	return err
}

// replicated is the local backend with replication hooked into its writes.
type replicated struct{ r *Replicator }

func (w replicated) Metadata() lnvault.Metadata { return w.r.local.Metadata() }

func (w replicated) Append(ctx context.Context, c *lnvault.Change) error {
	r := w.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.local.Append(ctx, c); err != nil {
		return err
	}
	r.appends++
	if r.pendingSince.IsZero() {
		r.pendingSince = time.Now()
	}
	if r.needResync {
		return nil // the resync streams it from the local backend
	}
	if c.Kind != lnvault.KindTransaction {
		// A snapshot is not queued in memory: the resync streams it
		// from the local backend.
		r.queue, r.queueBytes, r.needResync = nil, 0, true
		r.poke()
		return nil
	}
	cc := cloneTransaction(c)
	r.queue = append(r.queue, cc)
	r.queueBytes += changeSize(cc)
	switch {
	case r.queueBytes > r.opts.MaxPendingBytes:
		r.queue, r.queueBytes, r.needResync = nil, 0, true
	case r.queueBytes >= r.opts.FlushBytes:
		r.poke()
	}
	return nil
}

func (w replicated) Rewind(ctx context.Context) error {
	r := w.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.local.Rewind(ctx); err != nil {
		return err
	}
	r.appends++
	r.shipped = nil // a snapshot of the same version could now be another one
	if n := len(r.queue); n > 0 && !r.needResync {
		r.queueBytes -= changeSize(r.queue[n-1])
		r.queue = r.queue[:n-1]
	} else {
		// The change may be on the replica already: resync decides.
		r.needResync = true
		r.queue, r.queueBytes = nil, 0
		if r.pendingSince.IsZero() {
			r.pendingSince = time.Now()
		}
	}
	r.poke()
	return nil
}

func (w replicated) Stream(ctx context.Context, from uint32, fn func(*lnvault.Change) error) error {
	return w.r.local.Stream(ctx, from, fn)
}

func (w replicated) Compact(ctx context.Context) (lnvault.CompactStats, error) {
	st, err := w.r.local.Compact(ctx)
	if err != nil {
		return st, err
	}
	w.r.mu.Lock()
	w.r.compactReq = true
	w.r.mu.Unlock()
	w.r.poke()
	return st, nil
}

// Rebase rebases the local backend (an lnvault.Rebaser) on the node's
// snapshot, then, in the background once the replica has caught up past
// it, the replica (a copy of the snapshot is kept until then).
func (w replicated) Rebase(ctx context.Context, snap *lnvault.Change) (lnvault.CompactStats, error) {
	lr, ok := w.r.local.(lnvault.Rebaser)
	if !ok {
		return lnvault.CompactStats{}, fmt.Errorf("%w: the replicated local backup", lnvault.ErrNoRebase)
	}
	f, err := os.CreateTemp("", "lnvault-rebase-*.snap")
	if err != nil {
		return lnvault.CompactStats{}, fmt.Errorf("rebase: a temp copy of the snapshot for the replica: %w", err)
	}
	_, err = io.Copy(f, io.NewSectionReader(snap.Snapshot, 0, snap.Snapshot.Size()))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return lnvault.CompactStats{}, fmt.Errorf("rebase: a temp copy of the snapshot for the replica: %w", err)
	}
	st, err := lr.Rebase(ctx, snap)
	if err != nil {
		os.Remove(f.Name())
		return st, err
	}
	w.r.mu.Lock()
	if old := w.r.rebaseReq; old != nil {
		os.Remove(old.path)
	}
	w.r.rebaseReq = &pendingRebase{path: f.Name(), version: snap.Version}
	w.r.mu.Unlock()
	w.r.poke()
	return st, nil
}

// Empty empties the replica, then the local backend (which must be an
// lnvault.Emptier), with uploads held meanwhile. In that order a failure
// leaves the backup whole locally, and the resync ships it again.
func (w replicated) Empty(ctx context.Context) error {
	r := w.r
	le, ok := r.local.(lnvault.Emptier)
	if !ok {
		return fmt.Errorf("the local backend (%T) cannot be emptied", r.local)
	}
	r.stepMu.Lock()
	defer r.stepMu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.appends++
	r.queue, r.queueBytes, r.shipped, r.compactReq = nil, 0, nil, false
	if err := r.rb.Empty(ctx); err != nil {
		r.needResync = true
		r.poke()
		return fmt.Errorf("emptying replica %s (the backup is kept, and shipped to it again): %w", r.rb.client, err)
	}
	if err := le.Empty(ctx); err != nil {
		r.needResync = true
		r.poke()
		return err
	}
	r.needResync, r.pendingSince = false, time.Time{}
	return nil
}

// Idle passes the hint on to the local backend.
func (w replicated) Idle() {
	if i, ok := w.r.local.(lnvault.Idler); ok {
		i.Idle()
	}
}

func (w replicated) Status(ctx context.Context) (lnvault.Status, error) { return w.r.local.Status(ctx) }

// Close stops replication (after shipping what is pending) and closes both.
func (w replicated) Close() error {
	return errors.Join(w.r.Close(), w.r.local.Close())
}

// ReplicatorsOf returns every Replicator of a chain of Backend() wrappers
// (one per --replicate), outermost first.
func ReplicatorsOf(b lnvault.Backend) []*Replicator {
	var out []*Replicator
	for {
		r, ok := ReplicatorOf(b)
		if !ok {
			return out
		}
		out = append(out, r)
		b = r.local
	}
}

// ReplicatorOf returns the Replicator behind a backend returned by Backend().
func ReplicatorOf(b lnvault.Backend) (*Replicator, bool) {
	w, ok := b.(replicated)
	if !ok {
		return nil, false
	}
	return w.r, true
}
