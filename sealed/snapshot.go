package sealed

import (
	"encoding/binary"
	"fmt"
	"io"
	"sync"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/seal"
)

// A snapshot is sealed in chunks, so neither side holds it in memory and a
// restore reads it at any offset: the plaintext stream is
//
//	size u64 | chain after the snapshot [32] | the database file
//
// cut into chunks of chunkPlain bytes, each sealed at the snapshot's
// position with its chunk number (More on all but the last): a chunk moved,
// dropped or cut off fails to open. Every chunk but the last fills a sealed
// body of 64 KiB; the last is padded to a bucket like a transaction.
const (
	chunkPlain   = 64<<10 - 4
	chunkSealed  = seal.Overhead + 64<<10
	snapPrefix   = 8 + 32
	maxSnapshot  = 1 << 46 // 64 TiB: far beyond any node; bounds the arithmetic
	snapshotKind = byte(lnvault.KindSnapshot)
)

// sealSnapshot writes src sealed at pos to w (after the caller wrote the
// magic and the header).
func sealSnapshot(w io.Writer, k *seal.Key, pos seal.Position, chainAfter seal.Chain, src *io.SectionReader, pad bool) error {
	size := src.Size()
	total := snapPrefix + size
	chunks := (total + chunkPlain - 1) / chunkPlain
	plain := make([]byte, chunkPlain)
	binary.BigEndian.PutUint64(plain, uint64(size))
	copy(plain[8:], chainAfter[:])
	var out []byte
	var off int64 // in src
	for j := int64(0); j < chunks; j++ {
		start := 0
		if j == 0 {
			start = snapPrefix
		}
		n := min(int64(chunkPlain-start), size-off)
		if m, err := src.ReadAt(plain[start:start+int(n)], off); int64(m) < n {
			return fmt.Errorf("reading the snapshot at %d: %w", off, err)
		}
		off += n
		p := pos
		p.Chunk, p.More = uint32(j), j < chunks-1
		var err error
		out, err = k.Seal(out[:0], p, plain[:start+int(n)], pad && !p.More)
		if err != nil {
			return err
		}
		if _, err := w.Write(out); err != nil {
			return err
		}
	}
	return nil
}

// snapshotReader opens a sealed snapshot's chunks on demand: an
// io.ReaderAt over the database file it holds.
type snapshotReader struct {
	k          *seal.Key
	pos        seal.Position
	ct         io.ReaderAt
	base       int64 // offset of chunk 0 in ct
	size       int64 // of the database file
	last       int64 // index of the last chunk
	lastSealed int64 // its sealed length
	mu         sync.Mutex
	buf        []byte // plaintext of chunk cur
	cur        int64
	ctb        []byte
}

// openSnapshot checks a sealed snapshot's shape and opens its first chunk.
// ctLen is the length of ct from base on.
func openSnapshot(k *seal.Key, pos seal.Position, ct io.ReaderAt, base, ctLen int64, pad bool) (*snapshotReader, seal.Chain, error) {
	r := &snapshotReader{k: k, pos: pos, ct: ct, base: base, cur: -1}
	var chain seal.Chain
	first := min(ctLen, chunkSealed)
	if first < seal.Overhead+4 {
		return nil, chain, fmt.Errorf("%w: the sealed snapshot at version %d is %d bytes, too short", seal.ErrOpen, pos.Version, ctLen)
	}
	// Chunk 0 says the size; More on it must agree with the length.
	p, err := r.open(0, first, ctLen > chunkSealed)
	if err != nil {
		return nil, chain, err
	}
	if len(p) < snapPrefix {
		return nil, chain, fmt.Errorf("%w: the sealed snapshot at version %d has a first chunk of %d bytes", seal.ErrOpen, pos.Version, len(p))
	}
	size := int64(binary.BigEndian.Uint64(p))
	if size < 0 || size > maxSnapshot {
		return nil, chain, fmt.Errorf("%w: the sealed snapshot at version %d claims %d bytes", seal.ErrOpen, pos.Version, size)
	}
	copy(chain[:], p[8:])
	total := snapPrefix + size
	chunks := (total + chunkPlain - 1) / chunkPlain
	lastPlain := int(total - (chunks-1)*chunkPlain)
	want := (chunks-1)*chunkSealed + int64(seal.Overhead+seal.PaddedLen(lastPlain, pad))
	if want != ctLen {
		return nil, chain, fmt.Errorf("%w: the sealed snapshot at version %d is %d bytes where its %d-byte database takes %d (cut short or extended)", seal.ErrOpen, pos.Version, ctLen, size, want)
	}
	r.size, r.last = size, chunks-1
	r.lastSealed = int64(seal.Overhead + seal.PaddedLen(lastPlain, pad))
	return r, chain, nil
}

func (r *snapshotReader) open(j, n int64, more bool) ([]byte, error) {
	if cap(r.ctb) < int(n) {
		r.ctb = make([]byte, n)
	}
	ct := r.ctb[:n]
	if _, err := r.ct.ReadAt(ct, r.base+j*chunkSealed); err != nil {
		return nil, fmt.Errorf("reading chunk %d of the sealed snapshot at version %d: %w", j, r.pos.Version, err)
	}
	p := r.pos
	p.Chunk, p.More = uint32(j), more
	out, err := r.k.Open(r.buf[:0], p, ct)
	if err != nil {
		return nil, fmt.Errorf("chunk %d of the snapshot: %w", j, err)
	}
	r.buf, r.cur = out, j
	return out, nil
}

func (r *snapshotReader) ReadAt(b []byte, off int64) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for n < len(b) {
		if off >= r.size {
			return n, io.EOF
		}
		po := off + snapPrefix
		j := po / chunkPlain
		if j != r.cur {
			l, more := int64(chunkSealed), true
			if j == r.last {
				l, more = r.lastSealed, false
			}
			if _, err := r.open(j, l, more); err != nil {
				return n, err
			}
		}
		in := int(po - j*chunkPlain)
		c := copy(b[n:], r.buf[in:])
		n += c
		off += int64(c)
	}
	return n, nil
}
