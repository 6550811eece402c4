package replica

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/crcio"
	"github.com/lnvault/lnvault/internal/zpool"
)

// Every object lnvault writes to a replica is a fixed header followed by a
// zstd-compressed body. The header repeats what the object's name says (so a
// renamed or misplaced object is detected) and carries a CRC-32C of the header
// and the compressed body, checked before anything is decompressed.
//
//	0  "LNVO"                 magic
//	4  u8  format (1)
//	5  u8  type (1 segment, 2 snapshot)
//	6  u16 reserved (0)
//	8  u64 first index        (snapshot: index of the last change it holds)
//	16 u64 last index
//	24 u32 first version
//	28 u32 last version
//	32 u32 prev version       (version of the change before the last one)
//	36 u32 count              (changes in a segment, 1 for a snapshot)
//	40 i64 created, unix nanoseconds
//	48 u64 raw (uncompressed) body length
//	56 u64 compressed body length
//	64 u32 CRC-32C of bytes [0,64) and the compressed body
//	68 body
//
// All integers are big-endian.
const (
	headerSize    = 68
	objectFormat  = 1
	typeSegment   = 1
	typeSnapshot  = 2
	maxRawBody    = 1 << 34 // 16 GiB: far above any CLN database, bounds a forged header
	maxStatements = 1 << 26
	// A segment is built in memory; a snapshot change larger than this is
	// stored as a snapshot object (EncodeSnapshotFile), which streams.
	maxSegmentSnapshot = 16 << 20
	// MaxInMemoryObject bounds an object read whole into memory (a
	// segment, the lease), compressed or not: lnvault writes segments of a
	// batch of about a MiB, or of one change (a transaction of at most
	// wire.DefaultMaxChange, a snapshot change of at most 16 MiB). A
	// larger one is from a foreign or hostile store and is refused
	// before it is held.
	MaxInMemoryObject = 96 << 20
)

// MaxListed bounds a listing of the store: a replica compacted at the
// default threshold holds about 100,000 objects. (A variable so that tests
// can reach it quickly.)
var MaxListed = 1 << 20

var (
	magic    = [4]byte{'L', 'N', 'V', 'O'}
	encoders = zpool.NewEncoders(4, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	decoders = zpool.NewDecoders(4, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxRawBody))
)

// Header describes an object; it is what Decode checks against the name.
type Header struct {
	Type         uint8
	FirstIndex   uint64
	LastIndex    uint64
	FirstVersion uint32
	LastVersion  uint32
	PrevVersion  uint32
	Count        uint32
	Created      time.Time
}

// Segment is a decoded segment object: consecutive changes of a generation.
type Segment struct {
	Header
	Changes []*lnvault.Change
}

// EncodeSegment encodes changes, the ones of indexes first..first+len-1, as a
// segment object. prev is the version of the change before the first one
// (0 if none); it lets a reader know the backup's prev_version from the last
// object alone.
func EncodeSegment(first uint64, prev uint32, changes []*lnvault.Change, created time.Time) ([]byte, Header, error) {
	if len(changes) == 0 {
		return nil, Header{}, errors.New("empty segment")
	}
	var raw bytes.Buffer
	var b4 [4]byte
	var b8 [8]byte
	for _, c := range changes {
		binary.BigEndian.PutUint32(b4[:], c.Version)
		raw.Write(b4[:])
		raw.WriteByte(byte(c.Kind))
		switch c.Kind {
		case lnvault.KindTransaction:
			binary.BigEndian.PutUint32(b4[:], uint32(len(c.Statements)))
			raw.Write(b4[:])
			for _, s := range c.Statements {
				binary.BigEndian.PutUint32(b4[:], uint32(len(s)))
				raw.Write(b4[:])
				raw.WriteString(s)
			}
		case lnvault.KindSnapshot:
			if c.Snapshot == nil {
				return nil, Header{}, fmt.Errorf("snapshot change %d without data", c.Version)
			}
			if c.Snapshot.Size() > maxSegmentSnapshot {
				return nil, Header{}, fmt.Errorf("snapshot change %d is %d bytes, too large for a segment (store it as a snapshot object)", c.Version, c.Snapshot.Size())
			}
			binary.BigEndian.PutUint64(b8[:], uint64(c.Snapshot.Size()))
			raw.Write(b8[:])
			if _, err := io.Copy(&raw, io.NewSectionReader(c.Snapshot, 0, c.Snapshot.Size())); err != nil {
				return nil, Header{}, fmt.Errorf("reading snapshot %d: %w", c.Version, err)
			}
		default:
			return nil, Header{}, fmt.Errorf("change %d: unknown kind %v", c.Version, c.Kind)
		}
	}
	last := changes[len(changes)-1]
	p := prev
	if len(changes) > 1 {
		p = changes[len(changes)-2].Version
	}
	h := Header{Type: typeSegment, FirstIndex: first, LastIndex: first + uint64(len(changes)) - 1,
		FirstVersion: changes[0].Version, LastVersion: last.Version, PrevVersion: p,
		Count: uint32(len(changes)), Created: created}
	return encode(h, raw.Bytes()), h, nil
}

// EncodeSnapshot encodes a database file as a snapshot object: the state after
// the change of index idx and version v; prev is the version before it.
func EncodeSnapshot(idx uint64, v, prev uint32, db []byte, created time.Time) ([]byte, Header) {
	h := Header{Type: typeSnapshot, FirstIndex: idx, LastIndex: idx, FirstVersion: v, LastVersion: v,
		PrevVersion: prev, Count: 1, Created: created}
	return encode(h, db), h
}

func encode(h Header, raw []byte) []byte {
	enc := encoders.Get()
	out := make([]byte, headerSize, headerSize+len(raw)/3+64)
	out = enc.EncodeAll(raw, out)
	encoders.Put(enc)
	putHeader(out[:headerSize], h, uint64(len(raw)), uint64(len(out)-headerSize))
	c := crcio.Checksum(out[:64])
	c = crcio.Update(c, out[headerSize:])
	binary.BigEndian.PutUint32(out[64:68], c)
	return out
}

func putHeader(b []byte, h Header, rawLen, zLen uint64) {
	copy(b[0:4], magic[:])
	b[4] = objectFormat
	b[5] = h.Type
	b[6], b[7] = 0, 0
	binary.BigEndian.PutUint64(b[8:], h.FirstIndex)
	binary.BigEndian.PutUint64(b[16:], h.LastIndex)
	binary.BigEndian.PutUint32(b[24:], h.FirstVersion)
	binary.BigEndian.PutUint32(b[28:], h.LastVersion)
	binary.BigEndian.PutUint32(b[32:], h.PrevVersion)
	binary.BigEndian.PutUint32(b[36:], h.Count)
	binary.BigEndian.PutUint64(b[40:], uint64(h.Created.UnixNano()))
	binary.BigEndian.PutUint64(b[48:], rawLen)
	binary.BigEndian.PutUint64(b[56:], zLen)
}

// parseHeader reads the fields of a header without judging them beyond what
// tells an lnvault object apart; rawLen and zLen are the body lengths.
func parseHeader(data []byte) (h Header, rawLen, zLen uint64, err error) {
	if len(data) < headerSize {
		return h, 0, 0, fmt.Errorf("object is %d bytes, shorter than its %d-byte header (truncated upload?)", len(data), headerSize)
	}
	if !bytes.Equal(data[0:4], magic[:]) {
		return h, 0, 0, errors.New("not an lnvault object (bad magic)")
	}
	if data[4] != objectFormat {
		return h, 0, 0, fmt.Errorf("object format %d is not supported by this lnvault (upgrade it)", data[4])
	}
	h.Type = data[5]
	h.FirstIndex = binary.BigEndian.Uint64(data[8:])
	h.LastIndex = binary.BigEndian.Uint64(data[16:])
	h.FirstVersion = binary.BigEndian.Uint32(data[24:])
	h.LastVersion = binary.BigEndian.Uint32(data[28:])
	h.PrevVersion = binary.BigEndian.Uint32(data[32:])
	h.Count = binary.BigEndian.Uint32(data[36:])
	h.Created = time.Unix(0, int64(binary.BigEndian.Uint64(data[40:])))
	return h, binary.BigEndian.Uint64(data[48:]), binary.BigEndian.Uint64(data[56:]), nil
}

// checkHeader judges the fields that the checksum cannot: they were written
// by an lnvault, but are they sensible?
func checkHeader(h Header, rawLen uint64) error {
	if h.Type != typeSegment && h.Type != typeSnapshot {
		return fmt.Errorf("unknown object type %d", h.Type)
	}
	if h.LastIndex < h.FirstIndex || h.LastIndex-h.FirstIndex+1 != uint64(h.Count) || h.LastVersion < h.FirstVersion {
		return fmt.Errorf("inconsistent header (indexes %d-%d, versions %d-%d, count %d)", h.FirstIndex, h.LastIndex, h.FirstVersion, h.LastVersion, h.Count)
	}
	if rawLen > maxRawBody {
		return fmt.Errorf("body claims %d bytes, more than the %d limit", rawLen, uint64(maxRawBody))
	}
	return nil
}

// DecodeHeader decodes and checks the header at the start of data (an object,
// or just its first 68 bytes) without the body: the checksum cannot be
// verified, so it is for reading a snapshot's metadata, not its contents.
func DecodeHeader(data []byte) (Header, error) {
	h, rawLen, _, err := parseHeader(data)
	if err != nil {
		return h, err
	}
	return h, checkHeader(h, rawLen)
}

// decodeBody checks the header and the checksum and returns the header and
// the uncompressed body. Errors say what is wrong; callers wrap them in a
// CorruptError naming the object.
func decodeBody(data []byte) (Header, []byte, error) {
	h, rawLen, zLen, err := parseHeader(data)
	if err != nil {
		return h, nil, err
	}
	if zLen != uint64(len(data)-headerSize) {
		return h, nil, fmt.Errorf("body is %d bytes, header says %d (truncated or padded object)", len(data)-headerSize, zLen)
	}
	c := crcio.Checksum(data[:64])
	c = crcio.Update(c, data[headerSize:])
	if want := binary.BigEndian.Uint32(data[64:68]); c != want {
		return h, nil, fmt.Errorf("checksum mismatch (crc32c %08x, header says %08x)", c, want)
	}
	if err := checkHeader(h, rawLen); err != nil {
		return h, nil, err
	}
	if rawLen > MaxInMemoryObject {
		return h, nil, fmt.Errorf("body claims %d bytes, more than lnvault puts in an object read whole (%d)", rawLen, MaxInMemoryObject)
	}
	dec := decoders.Get()
	defer decoders.Put(dec)
	if err := dec.Reset(bytes.NewReader(data[headerSize:])); err != nil {
		return h, nil, fmt.Errorf("decompressing: %w", err)
	}
	// Grow with the data actually decompressed, never trusting rawLen for
	// the allocation; one byte more than announced is an error.
	var buf bytes.Buffer
	buf.Grow(int(min(rawLen, 16<<20)))
	n, err := io.Copy(&buf, io.LimitReader(dec, int64(rawLen)+1))
	if err != nil {
		return h, nil, fmt.Errorf("decompressing: %w", err)
	}
	if uint64(n) != rawLen {
		return h, nil, fmt.Errorf("body decompresses to %d bytes, header says %d", n, rawLen)
	}
	return h, buf.Bytes(), nil
}

// DecodeSegment decodes and verifies a segment object.
func DecodeSegment(data []byte) (*Segment, error) {
	h, raw, err := decodeBody(data)
	if err != nil {
		return nil, err
	}
	if h.Type != typeSegment {
		return nil, errors.New("object is a snapshot, not a segment")
	}
	s := &Segment{Header: h}
	r := raw
	need := func(n uint64) error {
		if uint64(len(r)) < n {
			return fmt.Errorf("segment body truncated at change %d", len(s.Changes)+1)
		}
		return nil
	}
	for len(r) > 0 {
		if uint64(len(s.Changes)) >= uint64(h.Count) {
			return nil, fmt.Errorf("segment holds more than the %d changes its header says", h.Count)
		}
		if err := need(5); err != nil {
			return nil, err
		}
		c := &lnvault.Change{Version: binary.BigEndian.Uint32(r), Kind: lnvault.Kind(r[4])}
		r = r[5:]
		switch c.Kind {
		case lnvault.KindTransaction:
			if err := need(4); err != nil {
				return nil, err
			}
			n := binary.BigEndian.Uint32(r)
			r = r[4:]
			if n > maxStatements || uint64(n)*4 > uint64(len(r)) {
				return nil, fmt.Errorf("change %d claims %d statements, more than the body holds", c.Version, n)
			}
			c.Statements = make([]string, n)
			for i := range c.Statements {
				if err := need(4); err != nil {
					return nil, err
				}
				l := uint64(binary.BigEndian.Uint32(r))
				r = r[4:]
				if err := need(l); err != nil {
					return nil, err
				}
				c.Statements[i] = string(r[:l])
				r = r[l:]
			}
		case lnvault.KindSnapshot:
			if err := need(8); err != nil {
				return nil, err
			}
			l := binary.BigEndian.Uint64(r)
			r = r[8:]
			if err := need(l); err != nil {
				return nil, err
			}
			c.Snapshot = io.NewSectionReader(bytes.NewReader(r[:l]), 0, int64(l))
			r = r[l:]
		default:
			return nil, fmt.Errorf("change %d has unknown kind %d", c.Version, uint8(c.Kind))
		}
		if n := len(s.Changes); n > 0 {
			if prev := s.Changes[n-1].Version; !lnvault.Follows(prev, c.Version, c.Kind) {
				return nil, fmt.Errorf("version %d follows version %d: changes are missing", c.Version, prev)
			}
		}
		s.Changes = append(s.Changes, c)
	}
	if uint64(len(s.Changes)) != uint64(h.Count) {
		return nil, fmt.Errorf("segment holds %d changes, header says %d", len(s.Changes), h.Count)
	}
	if s.Changes[0].Version != h.FirstVersion || s.Changes[len(s.Changes)-1].Version != h.LastVersion {
		return nil, fmt.Errorf("segment versions %d-%d differ from its header's %d-%d",
			s.Changes[0].Version, s.Changes[len(s.Changes)-1].Version, h.FirstVersion, h.LastVersion)
	}
	if len(s.Changes) > 1 && s.Changes[len(s.Changes)-2].Version != h.PrevVersion {
		return nil, fmt.Errorf("segment prev version %d differs from its header's %d", s.Changes[len(s.Changes)-2].Version, h.PrevVersion)
	}
	return s, nil
}

// DecodeSnapshot decodes and verifies a snapshot object and returns its header
// and the database file.
func DecodeSnapshot(data []byte) (Header, []byte, error) {
	h, raw, err := decodeBody(data)
	if err != nil {
		return h, nil, err
	}
	if err := checkSnapshotHeader(h); err != nil {
		return h, nil, err
	}
	return h, raw, nil
}

func checkSnapshotHeader(h Header) error {
	if h.Type != typeSnapshot {
		return errors.New("object is a segment, not a snapshot")
	}
	if h.Count != 1 || h.FirstVersion != h.LastVersion {
		return errors.New("inconsistent snapshot header")
	}
	return nil
}
