package replica

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/lnvault/lnvault/internal/crcio"
)

// A snapshot object holds a whole database, which can be several GiB on a
// node with little memory: it is encoded into and decoded from temp files,
// streaming, never held in memory. The object format is the one of
// EncodeSnapshot.

// tempFile creates a temp file and unlinks it at once: closing it frees the
// space, and nothing is left behind whatever happens to the process.
func tempFile(pattern string) (*os.File, error) {
	f, err := os.CreateTemp("", pattern)
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// EncodeSnapshotFile encodes the database read from db as a snapshot object
// (the same bytes EncodeSnapshot's format describes) into an unlinked temp
// file, and returns it with the object's size. Memory does not grow with the
// database. The caller closes f.
func EncodeSnapshotFile(idx uint64, v, prev uint32, db io.Reader, created time.Time) (f *os.File, size int64, h Header, err error) {
	h = Header{Type: typeSnapshot, FirstIndex: idx, LastIndex: idx, FirstVersion: v, LastVersion: v,
		PrevVersion: prev, Count: 1, Created: created}
	if f, err = tempFile("lnvault-snapshot-*.zst"); err != nil {
		return nil, 0, h, err
	}
	if size, err = writeSnapshotObject(f, db, h); err != nil {
		f.Close()
		return nil, 0, h, err
	}
	return f, size, h, nil
}

// writeSnapshotObject writes the object to the empty file f: a header left
// blank, the compressed body (checksummed as it goes), then the header, whose
// CRC covers itself first: the body's CRC is combined behind it.
func writeSnapshotObject(f *os.File, db io.Reader, h Header) (int64, error) {
	var hdr [headerSize]byte
	if _, err := f.Write(hdr[:]); err != nil {
		return 0, err
	}
	body := &crcio.Writer{W: f}
	raw := &countReader{r: db}
	enc := encoders.Get()
	enc.Reset(body)
	if _, err := io.Copy(enc, raw); err != nil {
		enc.Close()
		return 0, fmt.Errorf("compressing the snapshot: %w", err)
	}
	if err := enc.Close(); err != nil {
		return 0, fmt.Errorf("compressing the snapshot: %w", err)
	}
	encoders.Put(enc)
	if raw.n > maxRawBody {
		return 0, fmt.Errorf("the database is %d bytes, more than the %d a snapshot object may hold", raw.n, int64(maxRawBody))
	}
	putHeader(hdr[:], h, uint64(raw.n), uint64(body.N))
	c := crcio.Combine(crcio.Checksum(hdr[:64]), body.CRC, body.N)
	binary.BigEndian.PutUint32(hdr[64:], c)
	if _, err := f.WriteAt(hdr[:], 0); err != nil {
		return 0, err
	}
	return headerSize + body.N, nil
}

// objectSink receives a downloaded object: the header in memory, the body
// into a temp file, checksummed on the way.
type objectSink struct {
	hdr  [headerSize]byte
	hn   int
	zLen uint64 // the header's body length, once the header is in
	body *os.File
	err  error  // from body: the disk, not the object
	crc  uint32 // of the body bytes kept
	n    int64  // body bytes received
}

func (s *objectSink) Write(p []byte) (int, error) {
	total := len(p)
	if s.hn < headerSize {
		k := copy(s.hdr[s.hn:], p)
		s.hn += k
		p = p[k:]
		if s.hn == headerSize {
			s.zLen = binary.BigEndian.Uint64(s.hdr[56:])
		}
	}
	if len(p) == 0 {
		return total, nil
	}
	// Bytes past the announced length are only counted: such an object is
	// rejected anyway, and a padded one must not fill the disk.
	keep := p
	switch have := uint64(s.n); {
	case have >= s.zLen:
		keep = nil
	case uint64(len(p)) > s.zLen-have:
		keep = p[:s.zLen-have]
	}
	if len(keep) > 0 {
		if _, err := s.body.Write(keep); err != nil {
			s.err = err
			return 0, err
		}
		s.crc = crcio.Update(s.crc, keep)
	}
	s.n += int64(len(p))
	return total, nil
}

// objectError is a fault of the object itself (callers name the object in a
// CorruptError), as opposed to an I/O error.
type objectError struct{ err error }

func (e *objectError) Error() string { return e.err.Error() }
func (e *objectError) Unwrap() error { return e.err }

func badObject(format string, a ...any) error {
	return &objectError{fmt.Errorf(format, a...)}
}

// fileWriter records the file's errors, to tell them from the decoder's.
type fileWriter struct {
	f   *os.File
	err error
}

func (w *fileWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	if err != nil {
		w.err = err
	}
	return n, err
}

// decodeSnapshotStream receives a snapshot object through get, which writes
// it to the given writer, into a temp file; verifies the header and checksum
// before anything is decompressed, as decodeBody does, with the same
// messages; then decompresses the body into an unlinked temp file, returned
// with the database's size. The caller closes raw. Faults of the object are
// *objectError.
func decodeSnapshotStream(get func(w io.Writer) error) (h Header, raw *os.File, size int64, err error) {
	zf, err := tempFile("lnvault-snapshot-*.zst")
	if err != nil {
		return h, nil, 0, err
	}
	defer zf.Close()
	sink := &objectSink{body: zf}
	if err := get(sink); err != nil {
		if sink.err != nil {
			return h, nil, 0, sink.err
		}
		return h, nil, 0, err
	}
	h, rawLen, zLen, err := parseHeader(sink.hdr[:sink.hn])
	if err != nil {
		return h, nil, 0, &objectError{err}
	}
	if zLen != uint64(sink.n) {
		return h, nil, 0, badObject("body is %d bytes, header says %d (truncated or padded object)", sink.n, zLen)
	}
	c := crcio.Combine(crcio.Checksum(sink.hdr[:64]), sink.crc, sink.n)
	if want := binary.BigEndian.Uint32(sink.hdr[64:68]); c != want {
		return h, nil, 0, badObject("checksum mismatch (crc32c %08x, header says %08x)", c, want)
	}
	if err := checkHeader(h, rawLen); err != nil {
		return h, nil, 0, &objectError{err}
	}
	if err := checkSnapshotHeader(h); err != nil {
		return h, nil, 0, &objectError{err}
	}
	dec := decoders.Get()
	defer decoders.Put(dec)
	if err := dec.Reset(io.NewSectionReader(zf, 0, int64(zLen))); err != nil {
		return h, nil, 0, badObject("decompressing: %w", err)
	}
	if raw, err = tempFile("lnvault-snapshot-*.sqlite3"); err != nil {
		return h, nil, 0, err
	}
	// One byte more than announced is an error.
	w := &fileWriter{f: raw}
	n, err := io.Copy(w, io.LimitReader(dec, int64(rawLen)+1))
	switch {
	case w.err != nil:
		err = w.err
	case err != nil:
		err = badObject("decompressing: %w", err)
	case uint64(n) != rawLen:
		err = badObject("body decompresses to %d bytes, header says %d", n, rawLen)
	}
	if err != nil {
		raw.Close()
		return h, nil, 0, err
	}
	return h, raw, n, nil
}
