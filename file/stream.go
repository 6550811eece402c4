package file

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"

	"github.com/klauspost/compress/zstd"
	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/crcio"
)

// rec describes one record found in a file.
type rec struct {
	off     int64
	version uint32
	kind    lnvault.Kind
	hdrLen  int64
	stored  int64 // stored payload length
	codec   uint8
	rawLen  uint32
}

func (r rec) end() int64 { return r.off + r.hdrLen + r.stored }

// walker reads the records of one file in order, checking them as it goes.
type walker struct {
	f    *os.File
	h    header
	size int64
	// limit > 0: visit only the records before this offset, without the
	// checks of the head against the header (compaction reads a prefix).
	limit       int64
	from        uint32
	headersOnly bool // do not read payloads (v1 scans); no changes are built
	tmpDir      string
	// fn gets every record; c is nil for records before from and in
	// headersOnly mode. c.Snapshot is only valid during the call.
	fn func(r rec, c *lnvault.Change) error

	n        int64
	last     rec
	started  bool
	buf, raw []byte
	dec      *zstd.Decoder
}

var errStopped = errors.New("stopped")

func (w *walker) run(ctx context.Context) error {
	var err error
	if w.h.format == 1 {
		err = w.v1(ctx)
	} else {
		err = w.v2(ctx)
	}
	if w.dec != nil {
		decoders.Put(w.dec)
		w.dec = nil
	}
	if errors.Is(err, errStopped) {
		return nil
	}
	return err
}

func (w *walker) visit(r rec, c *lnvault.Change) error {
	if w.fn == nil {
		return nil
	}
	err := w.fn(r, c)
	if errors.Is(err, lnvault.ErrStop) {
		return errStopped
	}
	return err
}

// deliver reports whether record r goes to the caller: from the first record
// whose version is >= from, everything.
func (w *walker) deliver(r rec) bool {
	if w.headersOnly {
		return false
	}
	if !w.started && r.version >= w.from {
		w.started = true
	}
	return w.started
}

// v1 follows the reference reader: sequentially from 512, stop after the
// first record whose version is >= the header's version. Orphans past that
// point (the reference plugin's rewind leaves them) are ignored. One
// extension: when the head is a repeated version (a migration's PRAGMA
// payload), the records of that same version up to end_offset are read too,
// if they land exactly on end_offset and the header's last record.
func (w *walker) v1(ctx context.Context) error {
	h := w.h
	if w.limit == 0 && h.endOffset <= v1DataStart {
		if h.version != 0 {
			return corrupt(v1DataStart, h.version, "the header says version %d but the file holds no records", h.version)
		}
		return nil
	}
	off := int64(v1DataStart)
	last := int64(-1)
	chainEnd := int64(-1)
	var rh [v1RecHdr]byte
	for {
		if w.limit > 0 {
			if off >= w.limit {
				return nil
			}
		} else if chainEnd >= 0 {
			if off >= chainEnd {
				break
			}
		} else if last >= int64(h.version) {
			if e := w.repeatChain(off, w.last.off); e > 0 {
				chainEnd = e
				continue
			}
			break
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if off+v1RecHdr > w.size {
			return corrupt(off, uint32(max(last, 0)), "the file ends at %d, before the record of version %d that its header promises: it was truncated", w.size, h.version)
		}
		if _, err := w.f.ReadAt(rh[:], off); err != nil {
			return fmt.Errorf("reading record at %d: %w", off, err)
		}
		r := rec{off: off, hdrLen: v1RecHdr, stored: int64(binary.BigEndian.Uint32(rh[0:])),
			version: binary.BigEndian.Uint32(rh[4:]), kind: lnvault.Kind(rh[8])}
		r.rawLen = uint32(r.stored)
		if r.kind != lnvault.KindTransaction && r.kind != lnvault.KindSnapshot {
			return corrupt(off, r.version, "unknown record type %d", rh[8])
		}
		if r.end() > w.size {
			return corrupt(off, r.version, "the record of %d bytes runs past the end of the file (%d): it was truncated", r.stored, w.size)
		}
		var c *lnvault.Change
		if w.deliver(r) {
			c = &lnvault.Change{Version: r.version, Kind: r.kind}
			if r.kind == lnvault.KindSnapshot {
				c.Snapshot = io.NewSectionReader(w.f, off+v1RecHdr, r.stored)
			} else {
				w.buf = grow(w.buf, int(r.stored))
				if _, err := w.f.ReadAt(w.buf, off+v1RecHdr); err != nil {
					return fmt.Errorf("reading record at %d: %w", off, err)
				}
				c.Statements = lnvault.SplitStatements(w.buf)
			}
		}
		if err := w.visit(r, c); err != nil {
			return err
		}
		w.last = r
		w.n++
		last = int64(r.version)
		off = r.end()
	}
	if uint32(last) != h.version {
		return corrupt(w.last.off, w.last.version, "versions do not match up: the records stop at version %d, the header says %d", last, h.version)
	}
	return nil
}

// repeatChain tells where the records after off end if they all carry the
// header's version and end exactly at end_offset (and, when the header names
// it, with the last one at last_record_offset); 0 if they do not.
func (w *walker) repeatChain(off, stopOff int64) int64 {
	h := w.h
	end := int64(h.endOffset)
	if off >= end || (h.lastRecordOffset != 0 && uint64(stopOff) == h.lastRecordOffset) {
		return 0
	}
	var rh [v1RecHdr]byte
	lastOff := int64(-1)
	for off < end {
		if _, err := w.f.ReadAt(rh[:], off); err != nil {
			return 0
		}
		if binary.BigEndian.Uint32(rh[4:]) != h.version || (rh[8] != 1 && rh[8] != 2) {
			return 0
		}
		lastOff = off
		off += v1RecHdr + int64(binary.BigEndian.Uint32(rh[0:]))
	}
	if off != end || (h.lastRecordOffset != 0 && uint64(lastOff) != h.lastRecordOffset) {
		return 0
	}
	return end
}

func (w *walker) v2(ctx context.Context) error {
	h := w.h
	end := int64(h.endOffset)
	if w.limit > 0 {
		end = w.limit
	}
	off := int64(v2DataStart)
	var rh [v2RecHdr]byte
	var prev uint32
	for off < end {
		if err := ctx.Err(); err != nil {
			return err
		}
		if end-off < v2RecHdr {
			return corrupt(off, prev, "%d stray bytes before the end of the records at %d", end-off, end)
		}
		if _, err := w.f.ReadAt(rh[:], off); err != nil {
			return corrupt(off, prev, "cannot read the record header: %v", err)
		}
		rh2 := parseRecHdr(rh[:])
		r := rec{off: off, hdrLen: v2RecHdr, stored: int64(rh2.storedLen), version: rh2.version,
			kind: lnvault.Kind(rh2.typ), codec: rh2.codec, rawLen: rh2.rawLen}
		if r.end() > end {
			return corrupt(off, r.version, "the record of %d bytes runs past the end of the records at %d (damaged length)", r.stored, end)
		}
		if w.headersOnly {
			if err := w.visit(r, nil); err != nil {
				return err
			}
			w.last = r
			w.n++
			prev = r.version
			off = r.end()
			continue
		}
		// Checksum first: every other check trusts the header's fields.
		var sum uint32
		inline := r.kind == lnvault.KindTransaction && r.stored <= maxTxRaw
		if inline {
			w.buf = grow(w.buf, int(r.stored))
			if _, err := w.f.ReadAt(w.buf, off+v2RecHdr); err != nil {
				return corrupt(off, r.version, "cannot read the record: %v", err)
			}
			sum = crcio.Checksum(w.buf)
		} else {
			var err error
			if sum, err = crcRange(w.f, off+v2RecHdr, r.stored); err != nil {
				return err
			}
		}
		if recordCRC(sum, rh[:]) != rh2.crc {
			return corrupt(off, r.version, "record checksum mismatch: the record is damaged")
		}
		if err := rh2.check(rh[:]); err != nil {
			return corrupt(off, r.version, "%v", err)
		}
		if w.n > 0 && !lnvault.Follows(prev, r.version, r.kind) {
			return corrupt(off, r.version, "version %d follows version %d: changes are missing", r.version, prev)
		}
		var c *lnvault.Change
		var cleanup func()
		if w.deliver(r) {
			var err error
			if c, cleanup, err = w.changeV2(r); err != nil {
				return err
			}
		}
		err := w.visit(r, c)
		if cleanup != nil {
			cleanup()
		}
		if err != nil {
			return err
		}
		w.last = r
		w.n++
		prev = r.version
		off = r.end()
	}
	if w.limit > 0 {
		return nil
	}
	switch {
	case w.n == 0 && (h.version != 0 || h.lastRecordOffset != 0):
		return corrupt(v2DataStart, h.version, "the header says version %d but the file holds no records", h.version)
	case w.n > 0 && w.last.version != h.version:
		return corrupt(w.last.off, w.last.version, "the last record has version %d, the header says %d", w.last.version, h.version)
	case h.lastRecordOffset != 0 && uint64(w.last.off) != h.lastRecordOffset:
		return corrupt(w.last.off, w.last.version, "the last record starts at %d, the header says %d", w.last.off, h.lastRecordOffset)
	case uint64(w.n) != h.recordCount:
		return corrupt(0, h.version, "the file holds %d records, the header says %d", w.n, h.recordCount)
	}
	return nil
}

// changeV2 builds the change of a checked record whose stored payload (for
// transactions) is in w.buf.
func (w *walker) changeV2(r rec) (*lnvault.Change, func(), error) {
	c := &lnvault.Change{Version: r.version, Kind: r.kind}
	if w.dec == nil {
		w.dec = decoders.Get()
	}
	if r.kind == lnvault.KindTransaction {
		payload := w.buf
		if r.codec != codecRaw {
			if cap(w.raw) < int(r.rawLen) {
				w.raw = make([]byte, 0, r.rawLen)
			}
			out, err := w.dec.DecodeAll(w.buf, w.raw[:0])
			if err != nil || len(out) != int(r.rawLen) {
				return nil, nil, corrupt(r.off, r.version, "cannot decompress the record (%d bytes, expected %d): %v", len(out), r.rawLen, err)
			}
			w.raw = out
			payload = out
		}
		c.Statements = lnvault.SplitStatements(payload)
		return c, nil, nil
	}
	stored := io.NewSectionReader(w.f, r.off+v2RecHdr, r.stored)
	if r.codec == codecRaw {
		c.Snapshot = stored
		return c, nil, nil
	}
	// A compressed snapshot is expanded into an unlinked temp file, not RAM.
	tmp, err := os.CreateTemp(w.tmpDir, ".lnvault-snapshot-*")
	if err != nil {
		tmp, err = os.CreateTemp("", ".lnvault-snapshot-*")
		if err != nil {
			return nil, nil, fmt.Errorf("temp file for a snapshot: %w", err)
		}
	}
	os.Remove(tmp.Name())
	if err := w.dec.Reset(stored); err != nil {
		tmp.Close()
		return nil, nil, corrupt(r.off, r.version, "cannot decompress the snapshot: %v", err)
	}
	n, err := io.Copy(tmp, io.LimitReader(w.dec, int64(r.rawLen)+1))
	w.dec.Reset(nil)
	if err != nil || n != int64(r.rawLen) {
		tmp.Close()
		var pe *os.PathError
		if errors.As(err, &pe) {
			return nil, nil, fmt.Errorf("expanding snapshot at %d: %w", r.off, err)
		}
		return nil, nil, corrupt(r.off, r.version, "cannot decompress the snapshot (%d bytes, expected %d): %v", n, r.rawLen, err)
	}
	c.Snapshot = io.NewSectionReader(tmp, 0, n)
	return c, func() { tmp.Close() }, nil
}

func grow(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n, n+n/4)
	}
	return b[:n]
}

func crcRange(f *os.File, off, n int64) (uint32, error) {
	h := crc32.New(crcio.Table)
	buf := make([]byte, max(1, min(n, 256<<10)))
	if _, err := io.CopyBuffer(h, io.NewSectionReader(f, off, n), buf); err != nil {
		return 0, corrupt(off, 0, "cannot read %d bytes: %v", n, err)
	}
	return h.Sum32(), nil
}

// Stream calls fn for every change from the first whose version is >= from,
// checking the file as it goes. It reads the file afresh (a consistent
// header, then records up to its end_offset), so it works while a writer
// appends, in this process or another.
func (b *Backend) Stream(ctx context.Context, from uint32, fn func(*lnvault.Change) error) error {
	f, err := os.Open(b.path)
	if err != nil {
		return fmt.Errorf("opening backup: %w", err)
	}
	defer f.Close()
	s, err := loadState(f)
	if err != nil {
		return err
	}
	w := &walker{f: f, h: s.hdr, size: s.size, from: from, tmpDir: filepath.Dir(b.path)}
	stopped := false
	w.fn = func(_ rec, c *lnvault.Change) error {
		if c == nil {
			return nil
		}
		err := fn(c)
		if errors.Is(err, lnvault.ErrStop) {
			stopped = true
		}
		return err
	}
	if err := w.run(ctx); err != nil {
		return err
	}
	if s.damage != nil && !stopped {
		return s.damage
	}
	return nil
}

// countV1 counts the records the reference reader would read.
func countV1(ctx context.Context, f *os.File, h header) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	w := &walker{f: f, h: h, size: st.Size(), headersOnly: true}
	if err := w.run(ctx); err != nil {
		return 0, err
	}
	return w.n, nil
}
