package sealed

import (
	"bufio"
	"context"
	"encoding/ascii85"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
	"unsafe"

	"filippo.io/age"
	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/seal"
)

// Backend seals every change it stores in an inner backend and opens
// every change it streams from one. Open one with New (writing, a
// Session) or NewReader (reading, identities).
type Backend struct {
	inner lnvault.Backend
	s     *Session
	ids   []age.Identity
	want  *seal.BackupID // the backup expected (backup.lock), nil: the first met

	mu        sync.Mutex // the writer's place in its generation
	written   uint64     // transactions of the session's generation stored: the next index
	chain     seal.Chain
	prevChain seal.Chain
	prevTx    bool // the last append was a transaction (a rewind takes back its index)
	hist      history
	buf, raw  []byte
	src       SnapshotSource

	hmu  sync.Mutex
	head Mark
}

// New returns a backend that seals what it appends to inner with s. The
// node has no identity: identities are for tests and tools that read what
// they write.
func New(inner lnvault.Backend, s *Session, identities ...age.Identity) *Backend {
	return &Backend{inner: inner, s: s, ids: identities, want: &s.ks.backup}
}

// NewReader returns a backend that opens the sealed changes inner streams
// with identities. want, when not nil, is the backup they must belong to.
// Without identities a plaintext backup streams as it is, and a sealed one
// fails naming its recipients; with them, a plaintext change is refused (a
// host cannot slip one in).
func NewReader(inner lnvault.Backend, identities []age.Identity, want *seal.BackupID) *Backend {
	return &Backend{inner: inner, ids: identities, want: want}
}

// Inner is the backend the ciphertext is stored in.
func (b *Backend) Inner() lnvault.Backend { return b.inner }

func (b *Backend) Metadata() lnvault.Metadata { return b.inner.Metadata() }

func (b *Backend) Close() error { return b.inner.Close() }

// Idle passes on to the inner backend.
func (b *Backend) Idle() {
	if i, ok := b.inner.(lnvault.Idler); ok {
		i.Idle()
	}
}

func (b *Backend) Status(ctx context.Context) (lnvault.Status, error) {
	st, err := b.inner.Status(ctx)
	st.Format += ", end-to-end encrypted"
	return st, err
}

// Append seals c at the writer's next place and stores it. Its cost on
// the ack path is one AEAD seal and an Ascii85 encoding (BenchmarkSealCorpusChange).
func (b *Backend) Append(ctx context.Context, c *lnvault.Change) error {
	if b.s == nil {
		return fmt.Errorf("this backup was opened for reading: appending needs the node's session")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch c.Kind {
	case lnvault.KindTransaction:
		return b.appendTx(ctx, c)
	case lnvault.KindSnapshot:
		return b.appendSnapshot(ctx, c)
	}
	return fmt.Errorf("change version %d: unknown kind %v", c.Version, c.Kind)
}

func (b *Backend) envelope(kind lnvault.Kind) envelope {
	e := envelope{gen: b.s.key.Generation(), index: b.written}
	if b.s.pad {
		e.flags |= flagPad
	}
	if b.written == 0 || kind == lnvault.KindSnapshot {
		e.key = b.s.ks
	}
	return e
}

func (b *Backend) appendTx(ctx context.Context, c *lnvault.Change) error {
	sc, pos, err := b.sealTx(c)
	if err != nil {
		return err
	}
	if err := b.inner.Append(ctx, sc); err != nil {
		return err
	}
	b.prevChain, b.prevTx = b.chain, true
	if b.written == 0 {
		b.chain = seal.Chain{}
	}
	b.chain = b.chain.Next(pos, b.buf)
	b.written++
	b.hist.add(c.Version, b.written, b.chain)
	return nil
}

// sealTx is what sealing adds to the ack path: the transaction sealed at
// the writer's next place, as the one statement the host stores (its
// plaintext stays in b.buf for the chain).
func (b *Backend) sealTx(c *lnvault.Change) (*lnvault.Change, seal.Position, error) {
	var err error
	if b.buf, err = lnvault.JoinStatements(b.buf[:0], c.Statements); err != nil {
		return nil, seal.Position{}, err
	}
	e := b.envelope(lnvault.KindTransaction)
	pos := seal.Position{Index: e.index, Version: c.Version, Kind: byte(lnvault.KindTransaction)}
	b.raw = appendHeader(b.raw[:0], e)
	if b.raw, err = b.s.key.Seal(b.raw, pos, b.buf, b.s.pad); err != nil {
		return nil, pos, err
	}
	stmt := make([]byte, len(lnvault.SealedPrefix)+ascii85.MaxEncodedLen(len(b.raw)))
	copy(stmt, lnvault.SealedPrefix)
	stmt = stmt[:len(lnvault.SealedPrefix)+ascii85.Encode(stmt[len(lnvault.SealedPrefix):], b.raw)]
	// stmt is not touched again: the string can share its bytes.
	return lnvault.NewTransaction(c.Version, []string{unsafe.String(&stmt[0], len(stmt))}), pos, nil
}

// appendSnapshot seals a snapshot (init's, or the first write's heal) into
// a temp file and stores that. A snapshot takes no index: it stands for
// the changes before the index it carries.
func (b *Backend) appendSnapshot(ctx context.Context, c *lnvault.Change) error {
	if c.Snapshot == nil {
		return fmt.Errorf("snapshot at version %d without data", c.Version)
	}
	e := b.envelope(lnvault.KindSnapshot)
	pos := seal.Position{Index: e.index, Version: c.Version, Kind: snapshotKind}
	chain := b.chain
	if b.written == 0 {
		chain = seal.Chain{}
	}
	chain = chain.Next(pos, nil)
	f, err := sealSnapshotFile(b.s, e, pos, chain, c.Snapshot)
	if err != nil {
		return err
	}
	defer removeTemp(f)
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if err := b.inner.Append(ctx, lnvault.NewSnapshot(c.Version, io.NewSectionReader(f, 0, st.Size()))); err != nil {
		return err
	}
	b.prevChain, b.prevTx = b.chain, false
	b.chain = chain
	b.hist.reset()
	return nil
}

// sealSnapshotFile writes a sealed snapshot to a temp file (TMPDIR).
func sealSnapshotFile(s *Session, e envelope, pos seal.Position, chain seal.Chain, src *io.SectionReader) (*os.File, error) {
	f, err := os.CreateTemp("", "lnvault-sealed-*.snap")
	if err != nil {
		return nil, fmt.Errorf("sealing a snapshot needs a temp file (set TMPDIR to a writable directory): %w", err)
	}
	w := bufio.NewWriterSize(f, 256<<10)
	w.Write([]byte(lnvault.SealedSnapshotMagic))
	w.Write(appendHeader(nil, e))
	err = sealSnapshot(w, s.key, pos, chain, src, s.pad)
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		removeTemp(f)
		return nil, fmt.Errorf("sealing the snapshot at version %d: %w", pos.Version, err)
	}
	return f, nil
}

func removeTemp(f *os.File) {
	f.Close()
	os.Remove(f.Name())
}

// Rewind takes back the last change, and its place in the generation.
func (b *Backend) Rewind(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.inner.Rewind(ctx); err != nil {
		return err
	}
	if b.s == nil {
		return nil
	}
	// A rewind at the first write takes back a change of an earlier
	// generation: this one has stored nothing yet.
	if b.prevTx && b.written > 0 {
		b.written--
		b.hist.drop()
	}
	b.chain, b.prevTx = b.prevChain, false
	return nil
}

// SnapshotSource copies the node's database, consistently, to dst and
// returns the data_version of the copy (dbapply.SnapshotLive).
type SnapshotSource func(ctx context.Context, dst string) (uint32, error)

// SetSnapshotSource lets Compact build snapshots from the node's own
// database (the plugin sets it; without it Compact is refused).
func (b *Backend) SetSnapshotSource(src SnapshotSource) { b.src = src }

// RebaseWait bounds how long Compact waits for a change past the node's
// snapshot (the head must stay a change of its own). A shadow copy is
// behind the head already (package shadow), so this is a safety net.
var RebaseWait = 30 * time.Second

// Compact is the node's: a host cannot build a snapshot from ciphertext.
// It copies the node's database at some version v, waits until the
// backup's head is past v, seals the copy where the changes after v start
// in this run's generation, with the chain up to v, and hands it to the
// storage (lnvault.Rebaser) in place of everything up to v. Appends go on
// meanwhile; nothing is downloaded.
func (b *Backend) Compact(ctx context.Context) (lnvault.CompactStats, error) {
	rb, ok := b.inner.(lnvault.Rebaser)
	switch {
	case b.s == nil || b.src == nil:
		return lnvault.CompactStats{}, fmt.Errorf("%w: its host cannot compact it; the node does (lightning-cli backup-compact, or automatically)", lnvault.ErrSealed)
	case !ok:
		return lnvault.CompactStats{}, fmt.Errorf("%w: the node compacts it by sending a snapshot in place of the changes before its head, which this storage cannot take (a reference backup server): it grows until it is re-initialised", lnvault.ErrSealed)
	}
	snap, release, err := b.s.sharedSnapshot(func() (uint32, *os.File, error) { return b.sealNodeSnapshot(ctx) })
	if err != nil {
		return lnvault.CompactStats{}, err
	}
	defer release()
	cst, err := rb.Rebase(ctx, lnvault.NewSnapshot(snap.v, io.NewSectionReader(snap.f, 0, snap.size)))
	if errors.Is(err, lnvault.ErrNoRebase) {
		err = fmt.Errorf("%w: the node compacts it, and %w; the backup grows until it is re-initialised", lnvault.ErrSealed, err)
	}
	return cst, err
}

// sealNodeSnapshot copies the node's database, waits until the head is
// past its version v, and seals it where this run's changes after v start,
// with the chain up to v, into a temp file.
func (b *Backend) sealNodeSnapshot(ctx context.Context) (uint32, *os.File, error) {
	dir, err := os.MkdirTemp("", "lnvault-compact-")
	if err != nil {
		return 0, nil, fmt.Errorf("compaction needs a temp directory (set TMPDIR to a writable one): %w", err)
	}
	defer os.RemoveAll(dir)
	dbPath := filepath.Join(dir, "node.sqlite3")
	v, err := b.src(ctx, dbPath)
	if err != nil {
		return 0, nil, fmt.Errorf("compaction: copying the node's database: %w", err)
	}
	if err := b.waitPast(ctx, v); err != nil {
		return 0, nil, err
	}
	b.mu.Lock()
	m, found := b.hist.at(v)
	e := b.envelope(lnvault.KindSnapshot)
	b.mu.Unlock()
	if !found {
		return 0, nil, fmt.Errorf("compaction: the node's database is at version %d, which this run has not written (a compaction needs the changes after it to be of this run): it runs again later", v)
	}
	e.index = m.next
	pos := seal.Position{Index: m.next, Version: v, Kind: snapshotKind}
	db, err := os.Open(dbPath)
	if err != nil {
		return 0, nil, err
	}
	defer db.Close()
	st, err := db.Stat()
	if err != nil {
		return 0, nil, err
	}
	f, err := sealSnapshotFile(b.s, e, pos, m.chain, io.NewSectionReader(db, 0, st.Size()))
	return v, f, err
}

// waitPast waits until the head is past v.
func (b *Backend) waitPast(ctx context.Context, v uint32) error {
	deadline := time.Now().Add(RebaseWait)
	for {
		h := b.inner.Metadata().Version
		switch {
		case h > v:
			return nil
		case h < v:
			return fmt.Errorf("compaction: the node's database is at version %d, ahead of the backup's head %d", v, h)
		case time.Now().After(deadline):
			return fmt.Errorf("compaction: no change came within %v after the node's database was copied at version %d (the head must stay a change of its own): it runs again later", RebaseWait, v)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Stream opens and checks every change of the backup and passes the
// plaintext ones to fn from the first whose version is >= from.
func (b *Backend) Stream(ctx context.Context, from uint32, fn func(*lnvault.Change) error) error {
	r := b.newOpener()
	err := b.inner.Stream(ctx, 0, func(c *lnvault.Change) error {
		p, err := r.open(c)
		if err != nil {
			return err
		}
		if p.Version < from {
			return nil
		}
		return fn(p)
	})
	if err == nil {
		b.setHead(r.mark())
	}
	return err
}

// StreamTo passes on to an inner lnvault.TargetStreamer (object storage
// keeps old snapshots, each carrying its generation's key).
func (b *Backend) StreamTo(ctx context.Context, target uint32, fn func(*lnvault.Change) error) error {
	ts, ok := b.inner.(lnvault.TargetStreamer)
	if !ok {
		return b.Stream(ctx, 0, fn)
	}
	r := b.newOpener()
	return ts.StreamTo(ctx, target, func(c *lnvault.Change) error {
		p, err := r.open(c)
		if err != nil {
			return err
		}
		return fn(p)
	})
}

// VersionAt passes on to an inner lnvault.VersionAtTimer.
func (b *Backend) VersionAt(ctx context.Context, t time.Time) (uint32, error) {
	vt, ok := b.inner.(lnvault.VersionAtTimer)
	if !ok {
		return 0, fmt.Errorf("this storage does not record when each change was stored: use --to-version")
	}
	return vt.VersionAt(ctx, t)
}

// Delete passes on to an inner lnvault.Deleter.
func (b *Backend) Delete(ctx context.Context) error {
	d, ok := b.inner.(lnvault.Deleter)
	if !ok {
		return fmt.Errorf("this storage cannot delete its backup")
	}
	return d.Delete(ctx)
}

// Empty passes on to an inner lnvault.Emptier; the next change starts the
// generation again (with its key).
func (b *Backend) Empty(ctx context.Context) error {
	e, ok := b.inner.(lnvault.Emptier)
	if !ok {
		return fmt.Errorf("this storage cannot be emptied in place")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := e.Empty(ctx); err != nil {
		return err
	}
	b.written, b.chain, b.prevChain, b.prevTx = 0, seal.Chain{}, seal.Chain{}, false
	b.hist.reset()
	return nil
}

// Head is the authenticated head the last whole Stream ended at.
func (b *Backend) Head() Mark {
	b.hmu.Lock()
	defer b.hmu.Unlock()
	return b.head
}

func (b *Backend) setHead(m Mark) {
	b.hmu.Lock()
	b.head = m
	b.hmu.Unlock()
}

// history keeps, for the changes of the writer's generation since its last
// snapshot, the index and chain after each version, so that a compaction
// can seal a snapshot that stands for them (bounded: the oldest go).
type history struct {
	marks []histMark
}

type histMark struct {
	version uint32
	next    uint64
	chain   seal.Chain
}

const historyLen = 1 << 14

func (h *history) add(v uint32, next uint64, c seal.Chain) {
	if len(h.marks) == historyLen {
		h.marks = append(h.marks[:0], h.marks[historyLen/2:]...)
	}
	h.marks = append(h.marks, histMark{v, next, c})
}

func (h *history) drop() {
	if len(h.marks) > 0 {
		h.marks = h.marks[:len(h.marks)-1]
	}
}

func (h *history) reset() { h.marks = h.marks[:0] }

// at returns the mark of the last change of version v.
func (h *history) at(v uint32) (histMark, bool) {
	for i := len(h.marks) - 1; i >= 0; i-- {
		if h.marks[i].version == v {
			return h.marks[i], true
		}
		if h.marks[i].version < v {
			break
		}
	}
	return histMark{}, false
}
