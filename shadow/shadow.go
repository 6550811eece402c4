// Package shadow keeps, beside the node's database, a plaintext copy of it
// that the plugin updates off the ack path: the node compacts an
// end-to-end encrypted backup (which its hosts cannot read) from a copy of
// the shadow, without touching lightningd's database while lightningd
// runs. Reading lightningd's database takes a lock lightningd's next commit
// would wait for (or fail on); the shadow is ours alone.
//
// The shadow is applied in WAL mode: a crash can lose its last commits but
// never tears it. At every start it is aligned with the node's database
// while lightningd waits for the answer to its first db_write (the only
// moment the node's database can be read without racing a commit): kept
// when it is at the node's committed version, copied anew otherwise.
package shadow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/dbapply"
	"github.com/lnvault/lnvault/internal/durable"
)

// MaxQueue bounds the statements waiting to be applied; beyond it the
// shadow stops for this run (compaction waits for the next start) rather
// than hold more memory.
const MaxQueue = 256 << 20

// Shadow is the plaintext copy of one node's database.
type Shadow struct {
	path string
	log  *slog.Logger

	mu      sync.Mutex // the database: the applier and Copy
	a       *dbapply.Applier
	version uint32 // committed in the shadow

	qmu    sync.Mutex
	queue  []*lnvault.Change
	qbytes int64
	broken error
	wake   chan struct{}
	stop   chan struct{}
	done   chan struct{}
}

// New returns the shadow kept at path; nothing is read or written before
// Align.
func New(path string, log *slog.Logger) *Shadow {
	return &Shadow{path: path, log: log, wake: make(chan struct{}, 1)}
}

// Path is the shadow's file.
func (s *Shadow) Path() string { return s.path }

// Align makes the shadow the node's database at version n, the version
// lightningd has committed: the file is kept if it is at n, else replaced
// by a copy of nodeDB. Call it from the first db_write, before answering:
// lightningd cannot commit meanwhile. It starts the applier.
func (s *Shadow) Align(ctx context.Context, n uint32, nodeDB string) error {
	if s.done != nil {
		return errors.New("shadow: aligned twice")
	}
	a, err := dbapply.OpenWAL(ctx, s.path)
	if err == nil && a.Version() != n {
		s.log.Info("the shadow copy of the node's database is not at its version: copying it anew", "shadow", s.path, "shadow_version", a.Version(), "node_version", n)
		a.Close(ctx)
		a, err = nil, errStale
	}
	if err != nil {
		if a, err = s.copyNode(ctx, n, nodeDB); err != nil {
			return fmt.Errorf("shadow copy of the node's database: %w", err)
		}
	}
	s.a, s.version = a, n
	s.stop, s.done = make(chan struct{}), make(chan struct{})
	go s.run()
	return nil
}

var errStale = errors.New("stale")

// copyNode replaces the shadow by a copy of nodeDB (temp file, rename,
// directory fsync) and opens it.
func (s *Shadow) copyNode(ctx context.Context, n uint32, nodeDB string) (*dbapply.Applier, error) {
	tmp := s.path + ".tmp"
	os.Remove(tmp)
	v, err := dbapply.SnapshotLive(ctx, nodeDB, tmp, 2*time.Second)
	if err != nil {
		return nil, err
	}
	if v != n {
		os.Remove(tmp)
		return nil, fmt.Errorf("the node's database %s is at version %d, not %d", nodeDB, v, n)
	}
	for _, side := range []string{"-wal", "-shm"} {
		os.Remove(s.path + side)
	}
	if err := durable.Replace(tmp, s.path); err != nil {
		return nil, err
	}
	return dbapply.OpenWAL(ctx, s.path)
}

// Add queues a transaction the node has written (durable at every
// destination) to be applied. It never blocks.
func (s *Shadow) Add(c *lnvault.Change) {
	if c.Kind != lnvault.KindTransaction {
		s.fail(fmt.Errorf("a %s at version %d reached the shadow", c.Kind, c.Version))
		return
	}
	var n int64
	for _, st := range c.Statements {
		n += int64(len(st))
	}
	s.qmu.Lock()
	if s.broken == nil && s.qbytes+n > MaxQueue {
		s.broken = fmt.Errorf("the shadow fell %d bytes of changes behind the node", s.qbytes+n)
		s.queue, s.qbytes = nil, 0
		s.log.Warn("the shadow copy of the node's database stops for this run; compaction of the encrypted backup waits for the next start", "err", s.broken)
	}
	if s.broken == nil {
		s.queue = append(s.queue, c)
		s.qbytes += n
	}
	s.qmu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *Shadow) fail(err error) {
	s.qmu.Lock()
	if s.broken == nil {
		s.broken = err
		s.queue, s.qbytes = nil, 0
		s.log.Warn("the shadow copy of the node's database stops for this run; compaction of the encrypted backup waits for the next start", "err", err)
	}
	s.qmu.Unlock()
}

func (s *Shadow) run() {
	defer close(s.done)
	for {
		select {
		case <-s.stop:
			s.apply(true)
			return
		case <-s.wake:
			s.apply(false)
		}
	}
}

// apply applies what is queued in one transaction, but for the newest
// change unless the shadow is closing: lightningd may never commit that one
// (it crashed before), and a copy of the shadow is then always behind the
// backup's head, as the snapshot of a compaction must be (the head stays a
// change of its own).
func (s *Shadow) apply(all bool) {
	s.qmu.Lock()
	batch := s.queue
	s.queue, s.qbytes = nil, 0
	if !all && len(batch) > 0 {
		last := batch[len(batch)-1]
		batch = batch[:len(batch)-1]
		s.queue = append(s.queue, last)
		for _, st := range last.Statements {
			s.qbytes += int64(len(st))
		}
	}
	broken := s.broken
	s.qmu.Unlock()
	if len(batch) == 0 || broken != nil {
		return
	}
	ctx := context.Background()
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.version
	for _, c := range batch {
		if !lnvault.Follows(v, c.Version, c.Kind) {
			s.fail(fmt.Errorf("change %d does not follow the shadow's version %d", c.Version, v))
			return
		}
		v = c.Version
		if err := s.a.Apply(ctx, c); err != nil {
			s.fail(err)
			return
		}
	}
	if err := s.a.Commit(ctx); err != nil {
		s.fail(err)
		return
	}
	s.version = v
}

// Version is the version the shadow has committed.
func (s *Shadow) Version() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

// Copy writes a consistent copy of the shadow to dst and returns its
// version (a sealed.SnapshotSource). The applier waits meanwhile; the
// node's db_writes do not.
func (s *Shadow) Copy(ctx context.Context, dst string) (uint32, error) {
	s.qmu.Lock()
	broken := s.broken
	s.qmu.Unlock()
	if broken != nil {
		return 0, fmt.Errorf("the shadow copy of the node's database stopped for this run (%w): compaction waits for the next start", broken)
	}
	if s.done == nil {
		return 0, errors.New("the shadow copy of the node's database is not ready before the node's first write")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return 0, err
	}
	v, err := dbapply.Snapshot(ctx, s.path, dst)
	if err != nil {
		return 0, err
	}
	// The copy is restored as lightningd's database: in the rollback
	// journal mode lightningd's own file has, not the shadow's WAL.
	if err := dbapply.SetJournalDelete(ctx, dst); err != nil {
		os.Remove(dst)
		return 0, err
	}
	if v != s.version {
		os.Remove(dst)
		return 0, fmt.Errorf("the shadow's copy is at version %d, the shadow at %d", v, s.version)
	}
	return v, nil
}

// Close applies what is queued (lightningd committed the last change when it
// stops cleanly; if not, the next Align sees the shadow ahead and copies the
// node's database anew) and closes the shadow.
func (s *Shadow) Close() error {
	if s.done == nil {
		return nil
	}
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.a.Close(context.Background())
}
