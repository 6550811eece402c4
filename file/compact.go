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
	var stats lnvault.CompactStats
	b.mu.Lock()
	if err := b.writable(); err != nil {
		b.mu.Unlock()
		return stats, err
	}
	if b.compacting {
		b.mu.Unlock()
		return stats, fmt.Errorf("backup %s: a compaction is already running", b.path)
	}
	b.compacting = true
	h0, rewinds0 := b.hdr, b.rewinds
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		b.compacting = false
		b.mu.Unlock()
	}()

	f, err := os.Open(b.path)
	if err != nil {
		return stats, fmt.Errorf("compaction: %w", err)
	}
	defer f.Close()
	// Find the head and what precedes it. Records before h0's end do not
	// change unless a rewind happens, which the swap detects.
	scan := &walker{f: f, h: h0, size: int64(h0.endOffset), limit: int64(h0.endOffset), headersOnly: true}
	var before rec
	var nPrefix int64
	scan.fn = func(r rec, _ *lnvault.Change) error {
		if scan.n > 0 {
			before = scan.last
		}
		return nil
	}
	if err := scan.run(ctx); err != nil {
		return stats, fmt.Errorf("compaction: %w", err)
	}
	if scan.n > 0 {
		nPrefix = scan.n - 1
	}
	records := scan.n
	stats.Before = lnvault.SizeStats{BackupSize: int64(h0.endOffset), VersionCount: uint64(records)}
	stats.After = stats.Before
	if nPrefix == 0 || (nPrefix == 1 && before.kind == lnvault.KindSnapshot) {
		return stats, nil // nothing to fold
	}
	head := scan.last
	dir, base := filepath.Dir(b.path), filepath.Base(b.path)
	b.hook("start")

	// 1. The database at the record before the head.
	dbPath, err := tempName(dir, "."+base+".compact-*.sqlite")
	if err != nil {
		return stats, err
	}
	defer os.Remove(dbPath)
	ap, err := dbapply.Create(ctx, dbPath)
	if err != nil {
		return stats, fmt.Errorf("compaction: %w", err)
	}
	apply := &walker{f: f, h: h0, size: int64(h0.endOffset), limit: head.off, tmpDir: dir,
		fn: func(_ rec, c *lnvault.Change) error { return ap.Apply(ctx, c) }}
	if err := apply.run(ctx); err != nil {
		ap.Close(ctx)
		return stats, fmt.Errorf("compaction: %w", err)
	}
	if err := ap.Finish(ctx); err != nil {
		return stats, fmt.Errorf("compaction: the rebuilt database fails its checks: %w", err)
	}
	b.hook("snapshot-built")

	// 2. The new file: snapshot record, then the head verbatim.
	tmp, err := os.CreateTemp(dir, "."+base+".compact-*")
	if err != nil {
		return stats, fmt.Errorf("compaction: %w", err)
	}
	swapped := false
	defer func() {
		if !swapped {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	start := dataStart(h0.format)
	db, err := os.Open(dbPath)
	if err != nil {
		return stats, err
	}
	st, err := db.Stat()
	if err != nil {
		db.Close()
		return stats, err
	}
	n, err := writeSnapshot(tmp, h0.format, start, apply.last.version, io.NewSectionReader(db, 0, st.Size()))
	db.Close()
	if err != nil {
		return stats, fmt.Errorf("compaction: %w", err)
	}
	newHead := int64(start) + n
	if err := copyRange(tmp, newHead, f, head.off, int64(h0.endOffset)-head.off); err != nil {
		b.mu.Lock()
		rewound := b.rewinds != rewinds0
		b.mu.Unlock()
		if rewound {
			return stats, b.errRewound()
		}
		return stats, err
	}
	// No handle of ours may stay open on the old file over the swap (see
	// below).
	f.Close()
	if err := tmp.Sync(); err != nil { // the bulk, before taking the lock
		return stats, fmt.Errorf("compaction: fsync: %w", err)
	}
	b.hook("file-written")

	// 3. The swap, under the lock: append what came meanwhile, header,
	// fsync, rename, directory fsync.
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.writable(); err != nil {
		return stats, err
	}
	if b.rewinds != rewinds0 {
		return stats, b.errRewound()
	}
	h1 := b.hdr
	shift := newHead - head.off
	if err := copyRange(tmp, int64(h0.endOffset)+shift, b.f, int64(h0.endOffset), int64(h1.endOffset-h0.endOffset)); err != nil {
		return stats, err
	}
	appended := int64(h1.versionCount - h0.versionCount)
	nh := h1
	nh.endOffset = uint64(int64(h1.endOffset) + shift)
	if h1.lastRecordOffset != 0 {
		nh.lastRecordOffset = uint64(int64(h1.lastRecordOffset) + shift)
	}
	nh.recordCount = uint64(2 + appended)
	slot := 0
	if nh.format == 1 {
		nh.encode(b.hbuf[:])
		if _, err := tmp.WriteAt(b.hbuf[:], 0); err != nil {
			return stats, fmt.Errorf("compaction: %w", err)
		}
	} else {
		for i := 0; i < 2; i++ {
			nh.seq = h1.seq + 1 + uint64(i)
			nh.encode(b.hbuf[:])
			if _, err := tmp.WriteAt(b.hbuf[:], int64(i*headerSize)); err != nil {
				return stats, fmt.Errorf("compaction: %w", err)
			}
		}
		slot = 1
	}
	if err := tmp.Sync(); err != nil {
		return stats, fmt.Errorf("compaction: fsync: %w", err)
	}
	b.hook("before-rename")
	// The old file is closed first: a FUSE filesystem (sshfs, rclone, ...)
	// replaces a file that is still open in two renames of its own (the
	// target to .fuse_hidden*, then the source over it), and a power cut
	// between them leaves no backup at all. Found with LazyFS.
	if err := b.f.Close(); err != nil {
		b.log.Warn("compaction: closing the old file before the swap", "path", b.path, "err", err)
	}
	// Not durable.Replace: the temp file stays open as the backup's handle.
	if err := os.Rename(tmp.Name(), b.path); err != nil {
		if f, oerr := os.OpenFile(b.path, os.O_RDWR, 0); oerr == nil {
			b.f = f
		} else {
			b.broken = fmt.Errorf("compaction: the swap failed (%v) and the backup could not be opened again: %w", err, oerr)
		}
		return stats, fmt.Errorf("compaction: %w", err)
	}
	swapped = true
	b.f = tmp
	b.setHdr(nh, slot)
	b.fsize = int64(nh.endOffset)
	b.truncFirst = false
	if err := durable.SyncDir(dir); err != nil {
		// The rename may not survive a crash: appends to the new file could
		// vanish with it. Stop writing.
		b.broken = err
		return stats, fmt.Errorf("compaction: %w", err)
	}
	stats.Before = lnvault.SizeStats{BackupSize: int64(h1.endOffset), VersionCount: uint64(records + appended)}
	stats.After = lnvault.SizeStats{BackupSize: int64(nh.endOffset), VersionCount: uint64(2 + appended)}
	b.log.Info("backup compacted", "path", b.path, "before_bytes", stats.Before.BackupSize, "after_bytes", stats.After.BackupSize,
		"records_before", stats.Before.VersionCount, "records_after", stats.After.VersionCount)
	return stats, nil
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
