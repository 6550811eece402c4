package file

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/corpus"
	"golang.org/x/sys/unix"
)

// crash drops the writer the way a killed process does: no truncation of the
// preallocated room, no header rewrite.
func crash(b *Backend) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.f.Close()
	b.f = nil
	b.unlock()
	b.closed = true
}

func logTo(buf *bytes.Buffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Idle keeps zero-filled room past the records, a chunk at a time, and
// appends into it overwrite it without growing the file; Close gives it back.
func TestIdleKeepsRoom(t *testing.T) {
	reqs := corpus.MustLoad()[:200]
	url, path := tempURL(t, "b.dbak")
	b := mustOpen(t, url, lnvault.OpenOptions{Create: true})
	appendAll(t, b, reqs[:1])
	size := func() int64 {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	if got := size(); got != int64(b.hdr.endOffset) {
		t.Fatalf("before any Idle the file is %d bytes, records end at %d", got, b.hdr.endOffset)
	}
	for i := 1; i <= preallocRoom/zeroChunk; i++ {
		b.Idle()
		if got, want := size(), int64(b.hdr.endOffset)+int64(i*zeroChunk); got != want {
			t.Fatalf("after %d Idle calls the file is %d bytes, want %d", i, got, want)
		}
	}
	b.Idle() // enough room: nothing added
	full := size()
	if full-int64(b.hdr.endOffset) != preallocRoom {
		t.Fatalf("room %d after Idle calls, want %d", full-int64(b.hdr.endOffset), preallocRoom)
	}
	appendAll(t, b, reqs[1:])
	if got := size(); got != full || int64(b.hdr.endOffset) >= full {
		t.Fatalf("appends into the room changed the file from %d to %d bytes (records end at %d)", full, got, b.hdr.endOffset)
	}
	if ok, err := allZero(b.f, int64(b.hdr.endOffset), full); err != nil || !ok {
		t.Fatalf("the room past the records is not zeros: %v %v", ok, err)
	}
	// Written blocks, not unwritten extents (fallocate's): converting those
	// on the first write is the journal commit the room exists to avoid.
	if n, err := unwrittenExtents(b.f, int64(b.hdr.endOffset), full); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("reading the file's extents (FIEMAP): %v", err)
		}
		t.Logf("cannot check extents here: %v", err)
	} else if n != 0 {
		t.Fatalf("%d extents of the room past the records are unwritten (allocated, not written)", n)
	}
	end := int64(b.hdr.endOffset)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if got := size(); got != end {
		t.Fatalf("after Close the file is %d bytes, records end at %d", got, end)
	}
	checkSame(t, streamAll(t, mustOpen(t, url, lnvault.OpenOptions{ReadOnly: true}), 0), reqs)
}

// A writer keeps room past its records; after a crash the next writer takes
// that room as it is (no warning, no truncation), and readers and Status see
// only the records.
func TestPreallocatedRoomAfterCrash(t *testing.T) {
	reqs := corpus.MustLoad()[:40]
	url, path := tempURL(t, "b.dbak")
	b := mustOpen(t, url, lnvault.OpenOptions{Create: true})
	appendAll(t, b, reqs[:20])
	for range 4 {
		b.Idle()
	}
	end := int64(b.hdr.endOffset)
	if b.noPrealloc {
		t.Fatalf("the test directory's filesystem cannot preallocate: %s", path)
	}
	crash(b)
	if fi, _ := os.Stat(path); fi.Size() < end+preallocRoom {
		t.Fatalf("file is %d bytes for records ending at %d: no room preallocated", fi.Size(), end)
	}

	rb := mustOpen(t, url, lnvault.OpenOptions{ReadOnly: true})
	checkSame(t, streamAll(t, rb, 0), reqs[:20])
	if st, err := rb.Status(context.Background()); err != nil || st.Size != end {
		t.Fatalf("status %+v, %v: want size %d", st, err, end)
	}
	rb.Close()

	var logs bytes.Buffer
	w := mustOpen(t, url, lnvault.OpenOptions{Logger: logTo(&logs)})
	if strings.Contains(logs.String(), "WARN") {
		t.Fatalf("reopening a backup with preallocated room warned:\n%s", logs.String())
	}
	if fi, _ := os.Stat(path); w.fsize != fi.Size() || w.truncFirst {
		t.Fatalf("writer fsize %d truncFirst %v, file %d", w.fsize, w.truncFirst, fi.Size())
	}
	appendAll(t, w, reqs[20:])
	checkSame(t, streamAll(t, w, 0), reqs)
	w.Close()
	checkSame(t, streamAll(t, mustOpen(t, url, lnvault.OpenOptions{ReadOnly: true}), 0), reqs)
}

// An append cut short inside preallocated room (record written, header not)
// is still an interrupted append: the record is dropped, the zeros after it
// are not taken for more records.
func TestInterruptedAppendInPreallocatedRoom(t *testing.T) {
	ctx := context.Background()
	reqs := corpus.MustLoad()[:12]
	url, path := tempURL(t, "b.dbak")
	b := mustOpen(t, url, lnvault.OpenOptions{Create: true})
	appendAll(t, b, reqs[:11])
	slot := 1 - b.slot
	appendAll(t, b, reqs[11:])
	crash(b)
	data, _ := os.ReadFile(path)
	data[slot*headerSize+100] ^= 0x10 // the newest header is torn
	os.WriteFile(path, data, 0o600)

	var logs bytes.Buffer
	w := mustOpen(t, url, lnvault.OpenOptions{Logger: logTo(&logs)})
	if m := w.Metadata(); m.Version != reqs[10].DataVersion || !w.truncFirst {
		t.Fatalf("writer metadata %+v truncFirst %v", m, w.truncFirst)
	}
	if !strings.Contains(logs.String(), "never acknowledged") {
		t.Fatalf("no warning about the interrupted append:\n%s", logs.String())
	}
	appendAll(t, w, reqs[11:])
	checkSame(t, streamAll(t, w, 0), reqs)
	w.Close()

	// A record past the end with no header pointing at it (the append's
	// header never reached the disk): dropped with a warning, and no stale
	// byte of it stays.
	before, _ := os.ReadFile(path)
	w = mustOpen(t, url, lnvault.OpenOptions{})
	end := int64(w.hdr.endOffset)
	if err := w.Append(ctx, lnvault.NewTransaction(reqs[11].DataVersion+1, []string{"SELECT 'LEFTOVER'"})); err != nil {
		t.Fatal(err)
	}
	crash(w)
	data, _ = os.ReadFile(path)
	copy(data, before[:2*headerSize])
	if int64(len(data)) <= end+v2RecHdr || bytes.Equal(data[end:end+v2RecHdr], make([]byte, v2RecHdr)) {
		t.Fatalf("no record past the end at %d (file %d bytes)", end, len(data))
	}
	os.WriteFile(path, data, 0o600)
	logs.Reset()
	w = mustOpen(t, url, lnvault.OpenOptions{Logger: logTo(&logs)})
	if !strings.Contains(logs.String(), "dropping bytes past the end") {
		t.Fatalf("no warning about the leftover record:\n%s", logs.String())
	}
	checkSame(t, streamAll(t, w, 0), reqs)
	if data, _ := os.ReadFile(path); int64(len(data)) != end || bytes.Contains(data, []byte("LEFTOVER")) {
		t.Fatalf("file %d bytes after dropping the leftover (records end at %d)", len(data), end)
	}
	w.Close()
}

// Idle between appends prepares the compressor without changing what is
// stored; it never waits for the lock and is a no-op where it has nothing
// to do.
func TestIdle(t *testing.T) {
	reqs := corpus.MustLoad()[:300]
	for _, format := range []int{1, 2} {
		url, _ := tempURL(t, fmt.Sprintf("v%d.dbak", format))
		b := mustOpen(t, url, lnvault.OpenOptions{Create: true, Format: format})
		b.Idle() // before any append: no encoder yet
		for i, r := range reqs {
			if err := b.Append(context.Background(), r.Change()); err != nil {
				t.Fatal(err)
			}
			if i%3 != 0 {
				b.Idle()
			}
		}
		// Held lock (an append or a compaction swap): Idle returns at once.
		b.mu.Lock()
		done := make(chan struct{})
		go func() { b.Idle(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Idle waited for the backend's lock")
		}
		b.mu.Unlock()
		checkSame(t, streamAll(t, b, 0), reqs)
		b.Close()
		b.Idle() // after Close
		checkSame(t, streamAll(t, mustOpen(t, url, lnvault.OpenOptions{ReadOnly: true}), 0), reqs)
	}
}

// unwrittenExtents counts the extents of f in [from, to) that are allocated
// but not written (FIEMAP_EXTENT_UNWRITTEN).
func unwrittenExtents(f *os.File, from, to int64) (int, error) {
	const (
		fsIocFiemap      = 0xC020660B
		fiemapFlagSync   = 0x1
		extentUnwritten  = 0x800
		maxExtents       = 64
		fiemapHeaderSize = 32
		extentSize       = 56
	)
	buf := make([]byte, fiemapHeaderSize+maxExtents*extentSize)
	le := binary.LittleEndian
	le.PutUint64(buf[0:], uint64(from))
	le.PutUint64(buf[8:], uint64(to-from))
	le.PutUint32(buf[16:], fiemapFlagSync)
	le.PutUint32(buf[24:], maxExtents)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0]))); errno != 0 {
		return 0, errno
	}
	n := 0
	for i := 0; i < int(le.Uint32(buf[20:])); i++ {
		if le.Uint32(buf[fiemapHeaderSize+i*extentSize+40:])&extentUnwritten != 0 {
			n++
		}
	}
	return n, nil
}
