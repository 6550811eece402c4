package file

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/durable"
	"golang.org/x/sys/unix"
)

// OpenBackend is Open as an lnvault.Opener (package backends wires it to
// file: URLs).
func OpenBackend(ctx context.Context, rawURL string, opts lnvault.OpenOptions) (lnvault.Backend, error) {
	b, err := Open(ctx, rawURL, opts)
	if err != nil {
		return nil, err // not a typed nil inside the interface
	}
	return b, nil
}

// ErrNotBackup: the file exists but is neither an lnvault nor a backup-plugin
// file.
var ErrNotBackup = errors.New("not an lnvault/backup-plugin file")

// ErrReadOnly: a write on a backend opened with ReadOnly.
var ErrReadOnly = errors.New("backup opened read-only")

// ParseURL returns the absolute, cleaned path of a file:///abs/path URL.
func ParseURL(rawURL string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("invalid file URL %q: %w (write file:///absolute/path/backup.dbak)", rawURL, err)
	}
	if !strings.EqualFold(u.Scheme, "file") {
		return "", fmt.Errorf("not a file URL: %q (write file:///absolute/path/backup.dbak)", rawURL)
	}
	if u.Opaque != "" {
		return "", fmt.Errorf("file URL %q has a relative path: write an absolute path after three slashes, e.g. file:///var/backups/lightningd.dbak", rawURL)
	}
	if u.Host != "" || u.User != nil {
		return "", fmt.Errorf("file URL %q names the host %q: the file backend only writes local files; write file:///%s (three slashes), or use socket:host:port for a remote server",
			rawURL, u.Host, strings.TrimPrefix(u.Path, "/"))
	}
	if u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return "", fmt.Errorf("file URL %q has a query or fragment: the file backend takes no options, write file://%s", rawURL, u.Path)
	}
	if u.Path == "" || !strings.HasPrefix(u.Path, "/") {
		return "", fmt.Errorf("file URL %q has no absolute path: write file:///absolute/path/backup.dbak", rawURL)
	}
	if strings.HasSuffix(u.Path, "/") {
		return "", fmt.Errorf("file URL %q names a directory: give the backup file's path, e.g. file://%slightningd.dbak", rawURL, u.Path)
	}
	return filepath.Clean(u.Path), nil
}

// Backend is a backup stored in one local file. It implements
// lnvault.Backend. One writer per file (enforced with a lock); any number of
// readers.
type Backend struct {
	url, path string
	log       *slog.Logger
	readOnly  bool

	// mu serialises the writer's operations: Append, Rewind and the swap at
	// the end of Compact.
	mu          sync.Mutex
	f           *os.File // writer: the data file, read-write; nil for readers
	lockF       *os.File
	hdr         header // the durable head (writer) or the head read at open
	slot        int    // format 2: the slot holding hdr
	truncFirst  bool   // bytes past hdr.endOffset must go before the next write
	fsize       int64  // writer: the data file's size (records + preallocated room)
	noPrealloc  bool   // the filesystem cannot preallocate
	broken      error  // set after a failed write: the on-disk state is unknown
	rewinds     uint64 // counts rewinds, so Compact can tell one happened meanwhile
	compacting  bool
	buf         []byte // the record being built, reused
	hbuf        [headerSize]byte
	metaMu      sync.RWMutex
	metaHdr     header
	closed      bool
	compactHook func(stage string) // tests: called at compaction stages
}

var (
	_ lnvault.Backend = (*Backend)(nil)
	_ lnvault.Idler   = (*Backend)(nil)
	_ lnvault.Emptier = (*Backend)(nil)
)

// Open opens (or with opts.Create creates) the backup file named by a
// file:///abs/path URL.
func Open(ctx context.Context, rawURL string, opts lnvault.OpenOptions) (*Backend, error) {
	path, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	format := opts.Format
	if format == 0 {
		format = 2
	}
	if format != 1 && format != 2 {
		return nil, fmt.Errorf("file backend: unknown format %d (use 1 for the backup plugin's format or 2, the default)", opts.Format)
	}
	st, err := os.Stat(path)
	switch {
	case err == nil && st.IsDir():
		return nil, fmt.Errorf("%s is a directory: give the backup file's path, e.g. file://%s", path, filepath.Join(path, "lightningd.dbak"))
	case err == nil && opts.Create:
		return nil, fmt.Errorf("%w: %s (open it without creating, or choose another path)", lnvault.ErrExists, path)
	case err == nil && !st.Mode().IsRegular():
		return nil, fmt.Errorf("%s is not a regular file", path)
	case errors.Is(err, fs.ErrNotExist) && !opts.Create:
		return nil, fmt.Errorf("%w at %s: run `lnvault init file://%s` first", lnvault.ErrNotFound, path, path)
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("cannot access backup %s: %w", path, err)
	}
	if opts.Create {
		if err := checkDir(filepath.Dir(path)); err != nil {
			return nil, err
		}
	}
	b := &Backend{url: rawURL, path: path, log: opts.Log(), readOnly: opts.ReadOnly}
	if !opts.ReadOnly {
		if err := b.lock(); err != nil {
			return nil, err
		}
	}
	ok := false
	defer func() {
		if !ok {
			b.unlock()
		}
	}()
	if opts.Create {
		if err := create(path, format); err != nil {
			return nil, err
		}
	}
	if opts.ReadOnly {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("opening backup: %w", err)
		}
		s, err := loadState(f)
		f.Close()
		if err != nil {
			return nil, err
		}
		b.hdr, b.slot = s.hdr, s.slot
		b.metaHdr = s.hdr
		if s.damage != nil {
			// Stream returns this damage after the records it can still
			// give; a warning here would say it twice.
			b.log.Debug("backup header damaged", "path", path, "err", s.damage)
		}
		ok = true
		return b, nil
	}
	if err := b.openWriter(); err != nil {
		return nil, err
	}
	ok = true
	return b, nil
}

func checkDir(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("backup directory %s does not exist: create it first (mkdir -p %s)", dir, dir)
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if err := unix.Access(dir, unix.W_OK|unix.X_OK); err != nil {
		return fmt.Errorf("backup directory %s is not writable by this user: fix its permissions or choose another directory", dir)
	}
	return nil
}

// lock takes the writer lock on the sidecar <path>.lock. The data file itself
// is not locked because compaction replaces it by rename.
func (b *Backend) lock() error {
	lp := b.path + ".lock"
	f, err := os.OpenFile(lp, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return fmt.Errorf("cannot create lock file %s: the directory is not writable by this user (fix its permissions, or open read-only)", lp)
		}
		return fmt.Errorf("cannot create lock file %s: %w", lp, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("%w: another lnvault (plugin or server) is writing the backup %s (lock %s held)", lnvault.ErrLocked, b.path, lp)
		}
		return fmt.Errorf("locking %s: %w", lp, err)
	}
	b.lockF = f
	return nil
}

func (b *Backend) unlock() {
	if b.lockF != nil {
		b.lockF.Close() // closing releases the flock; the file stays (deleting it would race)
		b.lockF = nil
	}
}

// Delete removes the backup file (durably: directory fsync) and closes the
// backend. The lock sidecar stays, empty: removing it while others may
// have it open would let two writers lock different files of one name.
func (b *Backend) Delete(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.readOnly || b.closed {
		return b.writable()
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := os.Remove(b.path); err != nil {
		return fmt.Errorf("deleting %s: %w", b.path, err)
	}
	if err := durable.SyncDir(filepath.Dir(b.path)); err != nil {
		return fmt.Errorf("deleting %s: %w", b.path, err)
	}
	b.closed = true
	if b.f != nil {
		b.f.Close()
		b.f = nil
	}
	b.unlock()
	return nil
}

// Empty replaces the backup file by an empty backup of the same format
// (temp file, fsync, rename, directory fsync) and stays open for writing at
// version 0. A compaction running meanwhile is abandoned at its swap.
func (b *Backend) Empty(ctx context.Context) error {
	if err := b.lockWriter(ctx); err != nil {
		return err
	}
	defer b.mu.Unlock()
	dir := filepath.Dir(b.path)
	tmp, err := durable.WriteTemp(dir, durable.TempPattern(b.path), 0o600, func(f *os.File) error {
		_, err := f.Write(emptyImage(int(b.hdr.format)))
		return err
	})
	if err != nil {
		return fmt.Errorf("emptying %s: %w", b.path, err)
	}
	// Closed before the swap, as for a compaction (FUSE filesystems
	// replace an open file in two renames).
	b.f.Close()
	b.f = nil
	b.rewinds++ // a compaction in progress must not swap the old log back in
	if err := durable.Replace(tmp, b.path); err != nil {
		if oerr := b.openWriter(); oerr != nil {
			b.broken = fmt.Errorf("emptying %s failed (%v) and the backup could not be opened again: %w", b.path, err, oerr)
		}
		return fmt.Errorf("emptying %s: %w", b.path, err)
	}
	b.truncFirst = false
	if err := b.openWriter(); err != nil {
		b.broken = err
		return fmt.Errorf("emptying %s: opening the empty backup: %w", b.path, err)
	}
	b.log.Info("backup emptied", "path", b.path)
	return nil
}

// emptyImage is a backup file with no change. Format 2 has both header slots
// valid from the start: a single damaged slot then always leaves a
// recognisable format-2 header next to it.
func emptyImage(format int) []byte {
	var buf [v2DataStart]byte
	h := header{format: uint32(format), endOffset: v1DataStart}
	if format != 2 {
		h.encode(buf[:])
		return buf[:headerSize]
	}
	h.endOffset = v2DataStart
	h.lastChange = time.Now().UnixNano()
	h.encode(buf[headerSize:])
	h.seq = 1
	h.encode(buf[:])
	return buf[:]
}

// create writes a new backup file with an empty header: temp file, fsync,
// link into place (link, unlike rename, never replaces an existing file),
// directory fsync.
func create(path string, format int) error {
	if err := durable.CreateFile(path, emptyImage(format), 0o600); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %s", lnvault.ErrExists, path)
		}
		return fmt.Errorf("creating backup %s: %w", path, err)
	}
	return nil
}

func fdatasync(f *os.File) error {
	for {
		err := unix.Fdatasync(int(f.Fd()))
		if err != unix.EINTR {
			if err != nil {
				return fmt.Errorf("fdatasync %s: %w", f.Name(), err)
			}
			return nil
		}
	}
}

// state is what opening a file finds.
type state struct {
	hdr  header
	slot int
	size int64
	// damage is a damaged format-2 slot explained by an interrupted append:
	// the writer may carry on, readers must report it after the records.
	damage *lnvault.CorruptError
	// tailVersion is the version of the (unacknowledged) record past the
	// end, when there is one that can be parsed.
	tail int64
	// fellBack says why the newest format-2 header was passed over for the
	// older one (its last record is missing or damaged); badSeq is its seq.
	fellBack string
	badSeq   uint64
}

func corrupt(off int64, v uint32, format string, args ...any) *lnvault.CorruptError {
	return &lnvault.CorruptError{Offset: off, Version: v, Reason: fmt.Sprintf(format, args...)}
}

// loadState reads and checks the header of f. A reader may race with a
// writer's header update and see it torn: damage is read again at once, and
// counts only once two reads agree.
func loadState(f *os.File) (state, error) {
	var prev [v2DataStart]byte
	var s state
	var err error
	for try := 0; try < 4; try++ {
		s, err = loadOnce(f)
		if err == nil && s.damage == nil {
			if s.hdr.format == 1 && try < 3 {
				// Format 1 has no checksum: a header read while the
				// writer rewrites it counts only if a second read agrees.
				var a, b [headerSize]byte
				f.ReadAt(a[:], 0)
				s.hdr.encode(b[:])
				if a != b && decodeCommon(a[:]) != decodeCommon(b[:]) {
					continue
				}
			}
			return s, nil
		}
		var ce *lnvault.CorruptError
		if err != nil && !errors.As(err, &ce) {
			return s, err
		}
		var cur [v2DataStart]byte
		n, _ := f.ReadAt(cur[:], 0)
		if try > 0 && cur == prev {
			break
		}
		prev = cur
		_ = n
		if try == 2 {
			time.Sleep(time.Millisecond)
		}
	}
	return s, err
}

func loadOnce(f *os.File) (state, error) {
	var s state
	st, err := f.Stat()
	if err != nil {
		return s, err
	}
	s.size = st.Size()
	var buf [v2DataStart]byte
	n, err := f.ReadAt(buf[:], 0)
	if err != nil && err != io.EOF {
		return s, fmt.Errorf("reading backup header of %s: %w", f.Name(), err)
	}
	b := buf[:n]
	switch {
	case n == 0:
		return s, corrupt(0, 0, "the file is empty: it was truncated (or is not a backup; `lnvault init` writes a header)")
	case n < 4:
		return s, corrupt(0, 0, "the file is only %d bytes long: its header was truncated", n)
	}
	w0 := binary.BigEndian.Uint32(b)
	var w1 uint32
	if n >= headerSize+4 {
		w1 = binary.BigEndian.Uint32(b[headerSize:])
	}
	switch {
	case w0 == 1:
		return loadV1(s, b)
	case w0 == 2 || w1 == 2:
		return loadV2(f, s, b)
	}
	return s, fmt.Errorf("%w: %s starts with %08x, expected a backup header of format 1 or 2 (is this the right file?)", ErrNotBackup, f.Name(), w0)
}

func loadV1(s state, b []byte) (state, error) {
	if len(b) < headerSize {
		return s, corrupt(0, 0, "the file is only %d bytes long, shorter than its %d byte header: truncated", len(b), headerSize)
	}
	h := decodeCommon(b)
	if h.endOffset < v1DataStart {
		// The reference plugin's init may leave 0 here before the first
		// record; nothing is stored then.
		if h.endOffset != 0 || h.lastRecordOffset != 0 {
			return s, corrupt(0, h.version, "header end_offset %d lies inside the header", h.endOffset)
		}
		h.endOffset = v1DataStart
	}
	if h.lastRecordOffset != 0 && (h.lastRecordOffset < v1DataStart || h.lastRecordOffset+v1RecHdr > h.endOffset) {
		return s, corrupt(0, h.version, "header last_record_offset %d is outside the records (512..%d)", h.lastRecordOffset, h.endOffset)
	}
	if uint64(s.size) < h.endOffset {
		return s, corrupt(s.size, h.version, "the file is %d bytes but its header says the records end at %d: it was truncated", s.size, h.endOffset)
	}
	s.hdr = h
	return s, nil
}

func loadV2(f *os.File, s state, b []byte) (state, error) {
	var hs [2]header
	var ss [2]slotState
	var why [2]string
	for i := 0; i < 2; i++ {
		lo := i * headerSize
		if lo > len(b) {
			lo = len(b)
		}
		hi := min(lo+headerSize, len(b))
		hs[i], ss[i], why[i] = decodeV2(b[lo:hi])
	}
	best := -1
	for i := 0; i < 2; i++ {
		if ss[i] == slotValid && (best < 0 || hs[i].seq > hs[best].seq) {
			best = i
		}
	}
	if best < 0 {
		return s, corrupt(0, 0, "no valid header: slot 0: %s; slot 1: %s (restore from another copy of the backup)", why[0], why[1])
	}
	// A power cut can keep the newest header and lose the record it was
	// written for (both went out before the one fdatasync): that fdatasync
	// never returned, so the change was never acknowledged. Fall back to the
	// older header when it is the state just before that record.
	if o := 1 - best; ss[o] == slotValid && hs[o].seq < hs[best].seq && hs[best].lastRecordOffset != 0 && hs[o].endOffset == hs[best].lastRecordOffset {
		if err := lastRecordErr(f, s.size, hs[best]); err != nil {
			s.fellBack = fmt.Sprintf("the newest header (slot %d, version %d) describes a record that is missing or damaged (%v); its fdatasync never returned, so that change was never acknowledged: carrying on from the header before it (slot %d, version %d)",
				best, hs[best].version, err, o, hs[o].version)
			s.badSeq = hs[best].seq
			// Readers cannot tell that from a record damaged after it was
			// acknowledged: they stream the older state and then say so.
			s.damage = corrupt(int64(hs[best].lastRecordOffset), hs[o].version,
				"the newest header (version %d) describes a record that is missing or damaged (%v): either a power cut interrupted that append before its fdatasync returned (then the change was never acknowledged) or the record was damaged later and that change is lost; restore with --to-version %d to accept the state before it",
				hs[best].version, err, hs[o].version)
			best = o
		}
	}
	h := hs[best]
	other := 1 - best
	if h.endOffset < v2DataStart || (h.lastRecordOffset != 0 && (h.lastRecordOffset < v2DataStart || h.lastRecordOffset+v2RecHdr > h.endOffset)) {
		return s, corrupt(int64(best*headerSize), h.version, "header offsets are inconsistent (end_offset %d, last_record_offset %d)", h.endOffset, h.lastRecordOffset)
	}
	if uint64(s.size) < h.endOffset {
		return s, corrupt(s.size, h.version, "the file is %d bytes but its header says the records end at %d: it was truncated", s.size, h.endOffset)
	}
	s.hdr, s.slot = h, best
	if ss[other] != slotBad {
		return s, nil
	}
	// The other slot is damaged. Explained by an interrupted append when
	// what lies past the intact header's end is at most one record: the
	// append wrote it, and its header (into the other slot) did not land
	// whole. Then nothing acknowledged can be missing unless the damage hit
	// the newest header instead, which nobody can tell apart: the writer may
	// go on (lightningd's first write settles it), readers must say so.
	tail := uint64(s.size) - h.endOffset
	s.tail = int64(tail)
	if tail >= v2RecHdr {
		var rh [v2RecHdr]byte
		if _, err := f.ReadAt(rh[:], int64(h.endOffset)); err != nil {
			return s, fmt.Errorf("reading %s: %w", f.Name(), err)
		}
		r := parseRecHdr(rh[:])
		recEnd := h.endOffset + uint64(r.storedLen) + v2RecHdr
		extra := uint64(r.storedLen)+v2RecHdr < tail
		if extra {
			zero, err := allZero(f, int64(recEnd), s.size)
			if err != nil {
				return s, fmt.Errorf("reading %s: %w", f.Name(), err)
			}
			extra = !zero // preallocated room is not a record
		}
		if extra {
			return s, corrupt(int64(other*headerSize), h.version,
				"header slot %d is damaged (%s) and %d bytes follow the intact header's end at %d: more than one unacknowledged record, so this is not an interrupted append; restore from another copy, or restore with --to-version %d to accept losing the later changes",
				other, why[other], tail, h.endOffset, h.version)
		}
	}
	s.damage = corrupt(int64(other*headerSize), h.version,
		"header slot %d is damaged (%s); the intact header describes version %d: either the last append was interrupted and its record (after offset %d) was never acknowledged, or the newest header was damaged and that change is lost; restore with --to-version %d to accept the state before it",
		other, why[other], h.version, h.endOffset, h.version)
	return s, nil
}

// openWriter opens the data file for appending and makes the writer's state
// consistent with it.
func (b *Backend) openWriter() error {
	f, err := os.OpenFile(b.path, os.O_RDWR, 0)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return fmt.Errorf("backup %s is not writable by this user: fix its permissions or open it read-only", b.path)
		}
		return fmt.Errorf("opening backup %s: %w", b.path, err)
	}
	s, err := loadState(f)
	if err != nil {
		f.Close()
		return err
	}
	if s.hdr.format == 1 {
		if s, err = b.normalizeV1(f, s); err != nil {
			f.Close()
			return err
		}
	}
	b.f, b.hdr, b.slot = f, s.hdr, s.slot
	b.metaHdr = s.hdr
	b.fsize = s.size
	if s.fellBack != "" {
		// The writer carries on: the first-write rule (a rewind, or a
		// heal from the node's database) settles which state is right.
		b.log.Warn("backup: "+s.fellBack, "path", b.path)
		s.damage = nil
		// Replace the passed-over header first, durably: once the tail is
		// cut it would point past the end of the file.
		nh := s.hdr
		nh.seq = s.badSeq + 1
		nh.encode(b.hbuf[:])
		if _, err := f.WriteAt(b.hbuf[:], int64((1-s.slot)*headerSize)); err != nil {
			f.Close()
			b.f = nil
			return fmt.Errorf("rewriting the header of %s: %w", b.path, err)
		}
		if err := fdatasync(f); err != nil {
			f.Close()
			b.f = nil
			return err
		}
		b.hdr.seq, b.metaHdr.seq, b.slot = nh.seq, nh.seq, 1-s.slot
	}
	if err := b.checkLastRecord(); err != nil {
		f.Close()
		b.f = nil
		return err
	}
	b.removeStaleTemps()
	if uint64(s.size) > s.hdr.endOffset {
		zero := false
		if s.hdr.format == 2 {
			if zero, err = allZero(f, int64(s.hdr.endOffset), s.size); err != nil {
				f.Close()
				b.f = nil
				return fmt.Errorf("reading %s: %w", b.path, err)
			}
		}
		if zero && s.damage == nil {
			return nil // room preallocated by an earlier writer
		}
		if s.damage != nil {
			// Keep the evidence until the next write replaces it.
			b.log.Warn("backup: carrying on from the intact header; the record after it was never acknowledged or its header is damaged",
				"path", b.path, "version", s.hdr.version, "err", s.damage)
			b.truncFirst = true
			return nil
		}
		// The tail of an append interrupted before its header landed (or
		// the orphan records of the reference plugin's rewind): never
		// acknowledged, ignored by readers, dropped here.
		b.log.Warn("backup: dropping bytes past the end of the last acknowledged record", "path", b.path,
			"end_offset", s.hdr.endOffset, "file_size", s.size)
		if err := b.truncateTail(); err != nil {
			f.Close()
			b.f = nil
			return err
		}
	} else if s.damage != nil {
		b.log.Warn("backup: a header slot is damaged; it is rewritten by the next append", "path", b.path, "err", s.damage)
	}
	return nil
}

// normalizeV1 makes a format-1 header agree with what the reference reader
// reads. Files of the reference plugin after its rewind hold the rewound
// record where the reader stops and the new one after it, with an end_offset
// that matches neither; appending after end_offset would then cut a record in
// two. The reader's view wins (it is what every restore so far produced):
// end_offset moves to where it stops, and the rest is truncated by the caller.
func (b *Backend) normalizeV1(f *os.File, s state) (state, error) {
	w := &walker{f: f, h: s.hdr, size: s.size, headersOnly: true}
	if err := w.run(context.Background()); err != nil {
		return s, err
	}
	if w.n == 0 {
		return s, nil
	}
	end := uint64(w.last.end())
	if end == s.hdr.endOffset {
		return s, nil
	}
	b.log.Warn("backup: format-1 header does not match its records (written by the reference plugin after a rewind?); using where the reader stops",
		"path", b.path, "end_offset", s.hdr.endOffset, "reader_end", end)
	h := s.hdr
	h.endOffset = end
	if h.lastRecordOffset != 0 {
		h.lastRecordOffset = uint64(w.last.off)
	}
	h.encode(b.hbuf[:])
	if _, err := f.WriteAt(b.hbuf[:], 0); err != nil {
		return s, fmt.Errorf("rewriting the header of %s: %w", b.path, err)
	}
	if err := fdatasync(f); err != nil {
		return s, err
	}
	s.hdr = h
	return s, nil
}

func (b *Backend) truncateTail() error {
	if err := b.f.Truncate(int64(b.hdr.endOffset)); err != nil {
		return fmt.Errorf("truncating %s at %d: %w", b.path, b.hdr.endOffset, err)
	}
	b.fsize = int64(b.hdr.endOffset)
	if err := fdatasync(b.f); err != nil {
		return err
	}
	b.truncFirst = false
	return nil
}

// checkLastRecord verifies that the head record is where the header says, so
// a writer does not build on a damaged head.
func (b *Backend) checkLastRecord() error {
	h := b.hdr
	if h.lastRecordOffset == 0 {
		return nil
	}
	off := int64(h.lastRecordOffset)
	if h.format == 1 {
		var rh [v1RecHdr]byte
		if _, err := b.f.ReadAt(rh[:], off); err != nil {
			return corrupt(off, h.version, "cannot read the last record: %v", err)
		}
		l := binary.BigEndian.Uint32(rh[:])
		v := binary.BigEndian.Uint32(rh[4:])
		if v != h.version || off+v1RecHdr+int64(l) > int64(h.endOffset) || (rh[8] != 1 && rh[8] != 2) {
			// Files of the reference plugin after its rewind do not
			// satisfy this; they still stream, so only warn.
			b.log.Warn("backup: the last record does not match the header (a file written by the reference plugin after a rewind?)",
				"path", b.path, "offset", off, "record_version", v, "header_version", h.version)
		}
		return nil
	}
	if err := lastRecordErr(b.f, b.fsize, h); err != nil {
		return corrupt(off, h.version, "%v (run `lnvault verify`; restore from another copy)", err)
	}
	return nil
}

// lastRecordErr checks that the format-2 header h's last record is in f (of
// size bytes) where h says, whole: its header, length and (up to 16 MiB)
// checksum.
func lastRecordErr(f *os.File, size int64, h header) error {
	off := int64(h.lastRecordOffset)
	if size < int64(h.endOffset) {
		return fmt.Errorf("the file is %d bytes but the header says the records end at %d", size, h.endOffset)
	}
	var rh [v2RecHdr]byte
	if _, err := f.ReadAt(rh[:], off); err != nil {
		return fmt.Errorf("cannot read the last record at offset %d: %v", off, err)
	}
	r := parseRecHdr(rh[:])
	if err := r.check(rh[:]); err != nil {
		return fmt.Errorf("last record at offset %d: %v", off, err)
	}
	if r.version != h.version || uint64(off)+v2RecHdr+uint64(r.storedLen) != h.endOffset {
		return fmt.Errorf("the last record (version %d, %d bytes) does not end the file where the header says (%d)", r.version, r.storedLen, h.endOffset)
	}
	if r.storedLen <= 16<<20 {
		sum, err := crcRange(f, off+v2RecHdr, int64(r.storedLen))
		if err != nil {
			return err
		}
		if recordCRC(sum, rh[:]) != r.crc {
			return fmt.Errorf("the last record's checksum does not match")
		}
	}
	return nil
}

// removeStaleTemps deletes temp files a crashed Compact or Create left in the
// backup's directory. Only the lock holder calls it.
func (b *Backend) removeStaleTemps() {
	for _, pat := range []string{".compact-*", ".init-*", ".tmp-*"} {
		m, _ := filepath.Glob(filepath.Join(filepath.Dir(b.path), "."+filepath.Base(b.path)+pat))
		for _, p := range m {
			b.log.Info("backup: removing a temp file left by an interrupted operation", "file", p)
			os.Remove(p)
		}
	}
}

// Path is the backup file.
func (b *Backend) Path() string { return b.path }

// Format is 1 or 2.
func (b *Backend) Format() int {
	b.metaMu.RLock()
	defer b.metaMu.RUnlock()
	return int(b.metaHdr.format)
}

// Metadata returns the head as of the last Append/Rewind (read-only: as of
// Open).
func (b *Backend) Metadata() lnvault.Metadata {
	b.metaMu.RLock()
	defer b.metaMu.RUnlock()
	return b.metaHdr.meta()
}

func (b *Backend) setHdr(h header, slot int) {
	b.hdr, b.slot = h, slot
	b.metaMu.Lock()
	b.metaHdr = h
	b.metaMu.Unlock()
}

// Status describes the backup as it is on disk now.
func (b *Backend) Status(ctx context.Context) (lnvault.Status, error) {
	f, err := os.Open(b.path)
	if err != nil {
		return lnvault.Status{}, fmt.Errorf("opening backup: %w", err)
	}
	defer f.Close()
	s, err := loadState(f)
	if err != nil {
		return lnvault.Status{}, err
	}
	st := lnvault.Status{
		URL:      b.url,
		Format:   fmt.Sprintf("file v%d", s.hdr.format),
		Metadata: s.hdr.meta(),
		Size:     s.size,
	}
	if s.hdr.format == 2 {
		st.Size = int64(s.hdr.endOffset) // the file may hold preallocated room past it
		st.Records = int64(s.hdr.recordCount)
		if s.hdr.lastChange != 0 {
			st.LastChange = time.Unix(0, s.hdr.lastChange)
		}
	} else {
		n, err := countV1(ctx, f, s.hdr)
		if err != nil {
			return st, err
		}
		st.Records = n
		if fi, err := f.Stat(); err == nil {
			st.LastChange = fi.ModTime()
		}
	}
	return st, nil
}

// Close releases the file and the lock. A Compact in progress fails.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	var err error
	if b.f != nil {
		if b.broken == nil && b.hdr.format == 2 && b.fsize > int64(b.hdr.endOffset) {
			// Give back the preallocated room; a crash instead leaves it,
			// and the next writer reuses it.
			if b.f.Truncate(int64(b.hdr.endOffset)) == nil {
				err = fdatasync(b.f)
			}
		}
		if cerr := b.f.Close(); err == nil {
			err = cerr
		}
		b.f = nil
	}
	b.unlock()
	return err
}
