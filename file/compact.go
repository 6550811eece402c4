package file

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/dbapply"
	"github.com/lnvault/lnvault/internal/durable"
)

// Compact replaces every record before the head with one snapshot of the
// database at that point; the head stays a separate record so it can still be
// rewound. The snapshot is built without holding the append lock (the plugin
// compacts in the background while db_writes keep coming): the records
// appended meanwhile are copied into the new file during a short swap under
// the lock, and the new file replaces the old by rename. A crash at any point
// leaves the old file or the new one.
func (b *Backend) Compact(ctx context.Context) (lnvault.CompactStats, error) {
	c, err := b.beginCompaction()
	if err != nil {
		return lnvault.CompactStats{}, err
	}
	defer c.end()
	if c.f, err = os.Open(b.path); err != nil {
		return c.stats, fmt.Errorf("compaction: %w", err)
	}
	defer c.f.Close()
	fold, err := c.findHead(ctx)
	if err != nil || !fold {
		return c.stats, err
	}
	b.hook("start")
	// 1. The database at the record before the head.
	dbPath, version, err := c.buildSnapshot(ctx)
	if dbPath != "" {
		defer os.Remove(dbPath)
	}
	if err != nil {
		return c.stats, err
	}
	b.hook("snapshot-built")
	// 2. The new file: snapshot record, then the head verbatim.
	defer c.dropTemp()
	db, err := os.Open(dbPath)
	if err != nil {
		return c.stats, err
	}
	defer db.Close()
	st, err := db.Stat()
	if err != nil {
		return c.stats, err
	}
	if err := c.writeNewFile(io.NewSectionReader(db, 0, st.Size()), version); err != nil {
		return c.stats, err
	}
	b.hook("file-written")
	// 3. The swap, under the lock.
	err = c.swap()
	return c.stats, err
}

// Rebase replaces every record up to the last one of version snap.Version
// with snap, a snapshot built elsewhere: by the node, for an end-to-end
// encrypted backup whose records this host cannot read. The records after
// it stay verbatim; there must be at least one (the head stays a separate
// change, so it can still be rewound). Like Compact it runs beside
// appends, which wait only for the swap.
func (b *Backend) Rebase(ctx context.Context, snap *lnvault.Change) (lnvault.CompactStats, error) {
	if snap.Kind != lnvault.KindSnapshot || snap.Snapshot == nil {
		return lnvault.CompactStats{}, fmt.Errorf("rebase of %s: a rebase takes a snapshot, not a %s", b.path, snap.Kind)
	}
	c, err := b.beginCompaction()
	if err != nil {
		return lnvault.CompactStats{}, err
	}
	defer c.end()
	if c.f, err = os.Open(b.path); err != nil {
		return c.stats, fmt.Errorf("rebase: %w", err)
	}
	defer c.f.Close()
	if err := c.findAfter(ctx, snap.Version); err != nil {
		return c.stats, err
	}
	defer c.dropTemp()
	if err := c.writeNewFile(snap.Snapshot, snap.Version); err != nil {
		return c.stats, err
	}
	b.hook("file-written")
	err = c.swap()
	return c.stats, err
}

// findAfter finds the first record after the last one of version v: the
// records kept by a rebase at v.
func (c *compaction) findAfter(ctx context.Context, v uint32) error {
	h0 := c.h0
	scan := &walker{f: c.f, h: h0, size: int64(h0.endOffset), limit: int64(h0.endOffset), headersOnly: true}
	var first rec
	before := false
	scan.fn = func(r rec, _ *lnvault.Change) error {
		if r.version <= v {
			before = true
			c.kept = 0
			return nil
		}
		if c.kept == 0 {
			first = r
		}
		c.kept++
		return nil
	}
	if err := scan.run(ctx); err != nil {
		return fmt.Errorf("rebase: %w", err)
	}
	c.records = scan.n
	c.stats.Before = lnvault.SizeStats{BackupSize: int64(h0.endOffset), VersionCount: uint64(c.records)}
	c.stats.After = c.stats.Before
	switch {
	case !before:
		return fmt.Errorf("rebase of %s at version %d: the backup holds no change at or before it (it starts later)", c.b.path, v)
	case c.kept == 0:
		return fmt.Errorf("rebase of %s at version %d: the head is at that version, and must stay a change of its own; rebase after the next change", c.b.path, v)
	}
	c.head = first
	return nil
}

// compaction is one run of Compact or Rebase.
type compaction struct {
	b        *Backend
	h0       header // the head when it started
	rewinds0 uint64
	f        *os.File // the old file, read
	records  int64    // in the old file up to h0
	head     rec      // the first record kept verbatim: the head
	kept     int64    // records kept verbatim from head on (up to h0)
	dir      string
	base     string
	tmp      *os.File // the new file
	newHead  int64    // where the head goes in it
	swapped  bool
	stats    lnvault.CompactStats
}

// beginCompaction marks a compaction running and notes the head it starts
// from; end clears the mark.
func (b *Backend) beginCompaction() (*compaction, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.writable(); err != nil {
		return nil, err
	}
	if b.compacting {
		return nil, fmt.Errorf("backup %s: a compaction is already running", b.path)
	}
	b.compacting = true
	return &compaction{b: b, h0: b.hdr, rewinds0: b.rewinds, dir: filepath.Dir(b.path), base: filepath.Base(b.path)}, nil
}

func (c *compaction) end() {
	c.b.mu.Lock()
	c.b.compacting = false
	c.b.mu.Unlock()
}

// rewound tells whether a rewind (or Empty) happened since the start.
func (c *compaction) rewound() bool {
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	return c.b.rewinds != c.rewinds0
}

// findHead finds the head and what precedes it; fold is false when there is
// nothing to fold (at most a snapshot before the head). Records before h0's
// end do not change unless a rewind happens, which the swap detects.
func (c *compaction) findHead(ctx context.Context) (fold bool, err error) {
	h0 := c.h0
	scan := &walker{f: c.f, h: h0, size: int64(h0.endOffset), limit: int64(h0.endOffset), headersOnly: true}
	var before rec
	scan.fn = func(r rec, _ *lnvault.Change) error {
		if scan.n > 0 {
			before = scan.last
		}
		return nil
	}
	if err := scan.run(ctx); err != nil {
		return false, fmt.Errorf("compaction: %w", err)
	}
	var nPrefix int64
	if scan.n > 0 {
		nPrefix = scan.n - 1
	}
	c.records = scan.n
	c.stats.Before = lnvault.SizeStats{BackupSize: int64(h0.endOffset), VersionCount: uint64(c.records)}
	c.stats.After = c.stats.Before
	c.head, c.kept = scan.last, 1
	return nPrefix > 1 || nPrefix == 1 && before.kind != lnvault.KindSnapshot, nil
}

// buildSnapshot applies every record before the head to a new database
// beside the backup and returns its path ("" if none was made) and the
// version it is at.
func (c *compaction) buildSnapshot(ctx context.Context) (string, uint32, error) {
	dbPath, err := tempName(c.dir, "."+c.base+".compact-*.sqlite")
	if err != nil {
		return "", 0, err
	}
	ap, err := dbapply.Create(ctx, dbPath)
	if err != nil {
		return dbPath, 0, fmt.Errorf("compaction: %w", err)
	}
	apply := &walker{f: c.f, h: c.h0, size: int64(c.h0.endOffset), limit: c.head.off, tmpDir: c.dir,
		fn: func(_ rec, ch *lnvault.Change) error { return ap.Apply(ctx, ch) }}
	if err := apply.run(ctx); err != nil {
		ap.Close(ctx)
		return dbPath, 0, fmt.Errorf("compaction: %w", err)
	}
	if err := ap.Finish(ctx); err != nil {
		return dbPath, 0, fmt.Errorf("compaction: the rebuilt database fails its checks: %w", err)
	}
	return dbPath, apply.last.version, nil
}

// writeNewFile writes the new file's records, the snapshot at version then
// the records kept (from the head on) as they are, and fsyncs them before
// the lock is taken. The old file is closed at the end: no handle of ours
// may stay open on it over the swap.
func (c *compaction) writeNewFile(snap *io.SectionReader, version uint32) error {
	tmp, err := os.CreateTemp(c.dir, "."+c.base+".compact-*")
	if err != nil {
		return fmt.Errorf("compaction: %w", err)
	}
	c.tmp = tmp
	start := dataStart(c.h0.format)
	n, err := writeSnapshot(tmp, c.h0.format, start, version, snap)
	if err != nil {
		return fmt.Errorf("compaction: %w", err)
	}
	c.newHead = int64(start) + n
	if err := copyRange(tmp, c.newHead, c.f, c.head.off, int64(c.h0.endOffset)-c.head.off); err != nil {
		if c.rewound() {
			return c.b.errRewound()
		}
		return err
	}
	c.f.Close()
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("compaction: fsync: %w", err)
	}
	return nil
}

// dropTemp removes the new file unless it became the backup.
func (c *compaction) dropTemp() {
	if c.tmp != nil && !c.swapped {
		c.tmp.Close()
		os.Remove(c.tmp.Name())
	}
}

// swap, under the lock: append what came meanwhile, write the headers,
// fsync, rename over the backup, fsync the directory.
func (c *compaction) swap() error {
	b, h0 := c.b, c.h0
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.writable(); err != nil {
		return err
	}
	if b.rewinds != c.rewinds0 {
		return b.errRewound()
	}
	h1 := b.hdr
	shift := c.newHead - c.head.off
	if err := copyRange(c.tmp, int64(h0.endOffset)+shift, b.f, int64(h0.endOffset), int64(h1.endOffset-h0.endOffset)); err != nil {
		return err
	}
	appended := int64(h1.versionCount - h0.versionCount)
	nh := h1
	nh.endOffset = uint64(int64(h1.endOffset) + shift)
	if h1.lastRecordOffset != 0 {
		nh.lastRecordOffset = uint64(int64(h1.lastRecordOffset) + shift)
	}
	nh.recordCount = uint64(1 + c.kept + appended)
	nh, slot, err := c.writeHeaders(nh)
	if err != nil {
		return err
	}
	b.hook("before-rename")
	if err := c.rename(nh, slot); err != nil {
		return err
	}
	c.stats.Before = lnvault.SizeStats{BackupSize: int64(h1.endOffset), VersionCount: uint64(c.records + appended)}
	c.stats.After = lnvault.SizeStats{BackupSize: int64(nh.endOffset), VersionCount: uint64(1 + c.kept + appended)}
	b.log.Info("backup compacted", "path", b.path, "before_bytes", c.stats.Before.BackupSize, "after_bytes", c.stats.After.BackupSize,
		"records_before", c.stats.Before.VersionCount, "records_after", c.stats.After.VersionCount)
	return nil
}

// writeHeaders writes nh into the new file (format 2: both slots, with
// sequence numbers after the old file's) and fsyncs it; it returns the
// newest header as written and its slot.
func (c *compaction) writeHeaders(nh header) (header, int, error) {
	b, seq := c.b, nh.seq
	slot := 0
	if nh.format == 1 {
		nh.encode(b.hbuf[:])
		if _, err := c.tmp.WriteAt(b.hbuf[:], 0); err != nil {
			return nh, 0, fmt.Errorf("compaction: %w", err)
		}
	} else {
		for i := 0; i < 2; i++ {
			nh.seq = seq + 1 + uint64(i)
			nh.encode(b.hbuf[:])
			if _, err := c.tmp.WriteAt(b.hbuf[:], int64(i*headerSize)); err != nil {
				return nh, 0, fmt.Errorf("compaction: %w", err)
			}
		}
		slot = 1
	}
	if err := c.tmp.Sync(); err != nil {
		return nh, 0, fmt.Errorf("compaction: fsync: %w", err)
	}
	return nh, slot, nil
}

// rename puts the new file in the backup's place and makes it the writer's
// file, with header nh in slot.
func (c *compaction) rename(nh header, slot int) error {
	b := c.b
	// The old file is closed first: a FUSE filesystem (sshfs, rclone, ...)
	// replaces a file that is still open in two renames of its own (the
	// target to .fuse_hidden*, then the source over it), and a power cut
	// between them leaves no backup at all. Found with LazyFS.
	if err := b.f.Close(); err != nil {
		b.log.Warn("compaction: closing the old file before the swap", "path", b.path, "err", err)
	}
	// Not durable.Replace: the temp file stays open as the backup's handle.
	if err := os.Rename(c.tmp.Name(), b.path); err != nil {
		if f, oerr := os.OpenFile(b.path, os.O_RDWR, 0); oerr == nil {
			b.f = f
		} else {
			b.broken = fmt.Errorf("compaction: the swap failed (%v) and the backup could not be opened again: %w", err, oerr)
		}
		return fmt.Errorf("compaction: %w", err)
	}
	c.swapped = true
	b.f = c.tmp
	b.setHdr(nh, slot)
	b.fsize = int64(nh.endOffset)
	b.truncFirst = false
	if err := durable.SyncDir(c.dir); err != nil {
		// The rename may not survive a crash: appends to the new file could
		// vanish with it. Stop writing.
		b.broken = err
		return fmt.Errorf("compaction: %w", err)
	}
	return nil
}

func (b *Backend) errRewound() error {
	return fmt.Errorf("compaction of %s abandoned: the backup was rewound meanwhile; nothing changed, compact again", b.path)
}

func (b *Backend) hook(stage string) {
	if b.compactHook != nil {
		b.compactHook(stage)
	}
}

// tempName returns an unused path matching pattern (the file is not kept:
// dbapply wants to create it).
func tempName(dir, pattern string) (string, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", fmt.Errorf("compaction: %w", err)
	}
	name := f.Name()
	f.Close()
	if err := os.Remove(name); err != nil {
		return "", err
	}
	return name, nil
}

func copyRange(dst *os.File, dstOff int64, src *os.File, srcOff, n int64) error {
	if n == 0 {
		return nil
	}
	m, err := io.CopyBuffer(io.NewOffsetWriter(dst, dstOff), io.NewSectionReader(src, srcOff, n), make([]byte, max(1, min(n, 1<<20))))
	if err == nil && m != n {
		err = errors.New("short copy")
	}
	if err != nil {
		return fmt.Errorf("compaction: copying records: %w", err)
	}
	return nil
}
