// Package wire is the codec of the remote backup protocol spoken between the
// socket: backend and the backup server (and the reference Python client and
// server): `u8 type | u32 BE length | payload`.
//
// CHANGE and SNAPSHOT carry `u32 version` followed by one complete zlib stream;
// a transaction's statements are joined by NUL with no trailing NUL. Decoding
// never holds a compressed payload whole: it inflates straight from the
// connection, into a bounded buffer for a transaction and into an unlinked
// temporary file for a snapshot, so neither a huge length nor a zlib bomb can
// exhaust memory.
//
// # lnvault's extension: static channel backups
//
// lnvault peers also exchange static channel backups (SCBs) on the same port,
// in packet types 0x20-0x28 that the protocol document does not define. The
// design keeps a reference client and a reference server working unchanged:
//
//   - Nothing in the base protocol changes. METADATA always says protocol 1
//     (the reference client asserts it), and an lnvault server never sends an
//     extension packet unless asked by one.
//   - A client that wants an extension sends HELLO (0x20, the feature names
//     it wants, space separated) immediately followed by REQ_METADATA, in one
//     write. An lnvault server answers FEATURES (0x21, the features it offers,
//     "scb" when it keeps SCBs, "compact" always) and then METADATA. A reference server either
//     skips the unknown HELLO and answers METADATA alone, or closes the
//     connection; both tell the client that the server has no extension
//     (socket.ErrNoSCB), without waiting for a timeout.
//   - SCB requests, answered in order on the connection:
//     SCB_PUT (0x22, one envelope of package scb, at most Limits.MaxSCB bytes)
//     → SCB_VERSIONS (0x24) holding the one stored version, sent once it is
//     durable; SCB_LIST (0x23, empty) → SCB_VERSIONS packets of at most
//     SCBVersionsPerPacket versions each, then DONE; SCB_GET (0x25, a version
//     id, a kind for its latest version, or empty for the latest) → SCB_DATA
//     (0x26, the envelope as stored). Any of them may instead be answered by
//     EXT_ERROR (0x27, a one-line UTF-8 reason); the connection stays usable.
//   - SCB_VERSIONS is a UTF-8 JSON array of SCBVersion objects.
//   - Any connection may send SCB requests: versions are immutable and
//     numbered by the store under its own lock, apart from the database log
//     and its single-writer rule.
//   - "compact": on a connection that asked for it, COMPACT needs no writer
//     role (compaction keeps every change). The socket: client compacts over
//     such a second connection, so its appends on the first are not held
//     until COMPACT_RES; with a reference server it falls back to COMPACT on
//     the writer's connection, as the reference client does.
//   - "takeover": a writer's connection may name its writer with a HELLO
//     feature "writer.<16 hex digits>", random per client process. When
//     the writer's connection goes half-open (a NAT or a link that dropped
//     it without a FIN), the same client reconnecting with the same token
//     takes the writer role over at once instead of being refused as a
//     second writer until TCP keepalive gives up on the old connection;
//     a different writer is refused as before.
//   - "delete": DELETE (0x28, a u32: the head version the user was shown and
//     agreed to delete) on a connection that asked for it deletes every
//     change of the backup; the server goes on serving it, empty at version
//     0, and answers METADATA. It is refused with EXT_ERROR while another
//     connection is the writer (lightningd's plugin), while a compaction
//     runs, or when the head is no longer that version.
//   - "rebase": REBASE (0x29, empty) on a connection that asked for it says
//     that the next SNAPSHOT on it replaces every change up to the
//     snapshot's version (at least the head must come after it); the server
//     answers COMPACT_RES, or EXT_ERROR saying why nothing changed. Only the
//     writer's client may send it (the HELLO names the writer's token). The node
//     compacts an end-to-end encrypted backup, which its server cannot
//     read, this way, while its appends go on over its first connection.
package wire

import (
	"bufio"
	"bytes"
	"compress/flate"
	"compress/zlib"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/lnvault/lnvault"
)

// Type is a packet type.
type Type uint8

// Packet types of protocol version 1.
const (
	TypeChange      Type = 0x01 // u32 version + zlib(statements joined by NUL)
	TypeSnapshot    Type = 0x02 // u32 version + zlib(database file)
	TypeRewind      Type = 0x03 // u32 version to rewind to (the head's prev_version)
	TypeReqMetadata Type = 0x04 // empty
	TypeRestore     Type = 0x05 // empty
	TypeAck         Type = 0x06 // u32 version
	TypeNack        Type = 0x07 // u32 version (or empty, from old peers)
	TypeMetadata    Type = 0x08 // u32 protocol | u32 version | u32 prev_version | u64 version_count
	TypeDone        Type = 0x09 // empty
	TypeCompact     Type = 0x0A // empty
	TypeCompactRes  Type = 0x0B // UTF-8 JSON of lnvault.CompactStats
)

var typeNames = [...]string{
	TypeChange: "CHANGE", TypeSnapshot: "SNAPSHOT", TypeRewind: "REWIND",
	TypeReqMetadata: "REQ_METADATA", TypeRestore: "RESTORE", TypeAck: "ACK",
	TypeNack: "NACK", TypeMetadata: "METADATA", TypeDone: "DONE",
	TypeCompact: "COMPACT", TypeCompactRes: "COMPACT_RES",
}

func (t Type) String() string {
	if int(t) < len(typeNames) && typeNames[t] != "" {
		return typeNames[t]
	}
	if t >= extFirst && t <= extLast {
		return extNames[t-extFirst]
	}
	return fmt.Sprintf("type(0x%02x)", uint8(t))
}

const (
	// HeaderLen is the size of a packet header: type and length.
	HeaderLen = 5
	// Protocol is the protocol version sent in METADATA.
	Protocol = 1
	// MetadataLen is the payload length of METADATA.
	MetadataLen = 20

	// DefaultMaxPacket bounds the payload length announced by a peer.
	DefaultMaxPacket = 1 << 31
	// DefaultMaxChange bounds a decompressed transaction, which is held in
	// memory. Core Lightning's transactions are kilobytes; 64 MiB is ample.
	DefaultMaxChange = 64 << 20
	// DefaultMaxSnapshot bounds a decompressed snapshot, spooled to disk.
	DefaultMaxSnapshot = 64 << 30
	// maxCompactRes bounds the JSON of COMPACT_RES.
	maxCompactRes = 64 << 10
	// DefaultSmallSnapshot: snapshots up to this size are compressed in
	// memory before sending; larger ones go through a temporary file, since
	// the length prefix needs the compressed size first.
	DefaultSmallSnapshot = 16 << 20
)

var (
	// ErrMalformed: the peer sent bytes that are not a valid packet.
	ErrMalformed = errors.New("malformed packet")
	// ErrTooLarge: a packet or its decompressed payload exceeds a limit.
	ErrTooLarge = errors.New("packet exceeds the size limit")
)

// Limits bound what a Reader accepts. Zero fields take the defaults.
type Limits struct {
	MaxPacket   uint32 // payload length on the wire
	MaxChange   int64  // decompressed transaction, in memory
	MaxSnapshot int64  // decompressed snapshot, on disk
	TempDir     string // where incoming snapshots are spooled ("" = os.TempDir())
	MaxSCB      int64  // SCB_PUT, SCB_DATA and SCB_VERSIONS payloads, in memory
}

func (l Limits) withDefaults() Limits {
	if l.MaxPacket == 0 {
		l.MaxPacket = DefaultMaxPacket
	}
	if l.MaxChange <= 0 {
		l.MaxChange = DefaultMaxChange
	}
	if l.MaxSnapshot <= 0 {
		l.MaxSnapshot = DefaultMaxSnapshot
	}
	if l.MaxSCB <= 0 {
		l.MaxSCB = DefaultMaxSCB
	}
	return l
}

// Packet is one decoded packet. Which fields are set depends on Type.
type Packet struct {
	Type Type
	// Len is the payload length on the wire.
	Len uint32
	// Version: CHANGE, SNAPSHOT, REWIND, ACK, NACK.
	Version uint32
	// HasVersion is false for a NACK without payload (as the protocol
	// document describes it); true for every other versioned packet.
	HasVersion bool
	// Protocol and Meta: METADATA.
	Protocol uint32
	Meta     lnvault.Metadata
	// Change: CHANGE and SNAPSHOT. A snapshot's reader is valid until the
	// next call to Next or Close.
	Change *lnvault.Change
	// Skipped: a CHANGE or SNAPSHOT that Reader.Admit refused: its payload
	// was discarded unread (Change is nil).
	Skipped bool
	// Stats: COMPACT_RES.
	Stats lnvault.CompactStats

	// Extension packets (ext.go).
	// Features: HELLO and FEATURES (never nil for them).
	Features []string
	// Data: the envelope of SCB_PUT and SCB_DATA (owned by the caller).
	Data []byte
	// Text: SCB_GET's version selector, EXT_ERROR's message.
	Text string
	// SCBVersions: SCB_VERSIONS (never nil for it).
	SCBVersions []SCBVersion
}

// ---------------------------------------------------------------- writing

// Writer encodes packets to w. Each packet up to DefaultSmallSnapshot bytes
// goes out in a single Write call (header and payload built in one reused
// buffer), which matters on the latency-critical append path. A Writer is
// not safe for concurrent use.
type Writer struct {
	w     io.Writer
	buf   []byte // header + payload under construction
	raw   []byte // a transaction's statements joined by NUL
	zw    *zlib.Writer
	level int
	// finalBlock: the level's compressor writes a short payload as one
	// block, which markFinalBlock may then mark final.
	finalBlock bool

	// TempDir is where large outgoing snapshots are compressed.
	TempDir string
	// SmallSnapshot: snapshots up to this many bytes are compressed in memory.
	SmallSnapshot int64
}

// NewWriter returns a Writer with zlib's default compression, as the
// reference implementation uses.
func NewWriter(w io.Writer) *Writer {
	wr, _ := NewWriterLevel(w, zlib.DefaultCompression)
	return wr
}

// NewWriterLevel returns a Writer with the given zlib compression level.
func NewWriterLevel(w io.Writer, level int) (*Writer, error) {
	zw, err := zlib.NewWriterLevel(io.Discard, level)
	if err != nil {
		return nil, fmt.Errorf("zlib level %d: %w", level, err)
	}
	// Levels 2-9 run compress/flate's lazy-matching compressor, which emits
	// a block only every maxFlateBlockTokens tokens, or at Close.
	fb := level == zlib.DefaultCompression || level >= 2 && level <= 9
	return &Writer{w: w, zw: zw, level: level, finalBlock: fb, buf: make([]byte, 0, 4096), SmallSnapshot: DefaultSmallSnapshot}, nil
}

// Reset makes the Writer write to w, keeping its buffers.
func (wr *Writer) Reset(w io.Writer) { wr.w = w }

// appendBuf lets the zlib writer compress straight into wr.buf.
type appendBuf struct{ b *[]byte }

func (a appendBuf) Write(p []byte) (int, error) {
	*a.b = append(*a.b, p...)
	return len(p), nil
}

func putHeader(b []byte, t Type, n int) {
	b[0] = byte(t)
	binary.BigEndian.PutUint32(b[1:5], uint32(n))
}

func (wr *Writer) flush() error {
	_, err := wr.w.Write(wr.buf)
	if cap(wr.buf) > 4<<20 { // do not pin a large snapshot's buffer
		wr.buf = make([]byte, 0, 4096)
	}
	return err
}

// WriteChange sends c as a CHANGE or SNAPSHOT packet.
func (wr *Writer) WriteChange(c *lnvault.Change) error {
	switch c.Kind {
	case lnvault.KindTransaction:
		return wr.writeTransaction(c)
	case lnvault.KindSnapshot:
		return wr.writeSnapshot(c)
	}
	return fmt.Errorf("cannot send change version %d: unknown kind %v", c.Version, c.Kind)
}

func (wr *Writer) writeTransaction(c *lnvault.Change) error {
	var err error
	wr.raw, err = lnvault.JoinStatements(wr.raw[:0], c.Statements)
	if err != nil {
		return fmt.Errorf("change version %d: %w", c.Version, err)
	}
	wr.buf = append(wr.buf[:0], 0, 0, 0, 0, 0, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(wr.buf[5:9], c.Version)
	wr.zw.Reset(appendBuf{&wr.buf})
	if _, err := wr.zw.Write(wr.raw); err != nil {
		return err
	}
	if err := wr.zw.Close(); err != nil {
		return err
	}
	if wr.finalBlock && len(wr.raw) > 0 && len(wr.raw) < singleBlockMax {
		wr.buf = markFinalBlock(wr.buf, 9)
	}
	if len(wr.buf)-HeaderLen > 0xFFFFFFFF {
		return fmt.Errorf("change version %d: %w: compressed payload of %d bytes", c.Version, ErrTooLarge, len(wr.buf)-HeaderLen)
	}
	putHeader(wr.buf, TypeChange, len(wr.buf)-HeaderLen)
	if cap(wr.raw) > 4<<20 {
		wr.raw = nil
	}
	return wr.flush()
}

func (wr *Writer) writeSnapshot(c *lnvault.Change) error {
	if c.Snapshot == nil {
		return fmt.Errorf("snapshot version %d has no data", c.Version)
	}
	src := io.NewSectionReader(c.Snapshot, 0, c.Snapshot.Size())
	if c.Snapshot.Size() <= wr.SmallSnapshot {
		wr.buf = append(wr.buf[:0], 0, 0, 0, 0, 0, 0, 0, 0, 0)
		binary.BigEndian.PutUint32(wr.buf[5:9], c.Version)
		wr.zw.Reset(appendBuf{&wr.buf})
		if _, err := io.Copy(wr.zw, src); err != nil {
			return fmt.Errorf("reading snapshot version %d: %w", c.Version, err)
		}
		if err := wr.zw.Close(); err != nil {
			return err
		}
		putHeader(wr.buf, TypeSnapshot, len(wr.buf)-HeaderLen)
		return wr.flush()
	}
	// Large: compress to a temp file first to learn the length.
	tmp, err := os.CreateTemp(wr.TempDir, "lnvault-send-*.zlib")
	if err != nil {
		return fmt.Errorf("compressing snapshot version %d: %w", c.Version, err)
	}
	defer tmp.Close()
	os.Remove(tmp.Name()) // unlinked: nothing leaks whatever happens
	bw := bufio.NewWriterSize(tmp, 1<<20)
	wr.zw.Reset(bw)
	if _, err := io.Copy(wr.zw, src); err != nil {
		return fmt.Errorf("compressing snapshot version %d: %w", c.Version, err)
	}
	if err := wr.zw.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("compressing snapshot version %d: %w", c.Version, err)
	}
	n, err := tmp.Seek(0, io.SeekCurrent)
	if err != nil {
		return err
	}
	if n+4 > 0xFFFFFFFF {
		return fmt.Errorf("snapshot version %d: %w: %d compressed bytes do not fit the protocol's u32 length", c.Version, ErrTooLarge, n)
	}
	var hdr [9]byte
	putHeader(hdr[:], TypeSnapshot, int(n)+4)
	binary.BigEndian.PutUint32(hdr[5:9], c.Version)
	if _, err := wr.w.Write(hdr[:]); err != nil {
		return err
	}
	if _, err := io.Copy(wr.w, io.NewSectionReader(tmp, 0, n)); err != nil {
		return err
	}
	return nil
}

// WriteVersion sends a packet whose payload is a u32 version: REWIND, ACK,
// NACK, DELETE.
func (wr *Writer) WriteVersion(t Type, version uint32) error {
	wr.buf = append(wr.buf[:0], byte(t), 0, 0, 0, 4, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(wr.buf[5:9], version)
	return wr.flush()
}

// WriteEmpty sends a packet without payload: REQ_METADATA, RESTORE, DONE, COMPACT.
func (wr *Writer) WriteEmpty(t Type) error {
	wr.buf = append(wr.buf[:0], byte(t), 0, 0, 0, 0)
	return wr.flush()
}

// WriteMetadata sends METADATA for protocol version 1.
func (wr *Writer) WriteMetadata(m lnvault.Metadata) error {
	wr.buf = AppendMetadata(wr.buf[:0], Protocol, m)
	return wr.flush()
}

// AppendMetadata appends a whole METADATA packet to dst.
func AppendMetadata(dst []byte, protocol uint32, m lnvault.Metadata) []byte {
	dst = append(dst, byte(TypeMetadata), 0, 0, 0, MetadataLen)
	dst = binary.BigEndian.AppendUint32(dst, protocol)
	dst = binary.BigEndian.AppendUint32(dst, m.Version)
	dst = binary.BigEndian.AppendUint32(dst, m.PrevVersion)
	return binary.BigEndian.AppendUint64(dst, m.VersionCount)
}

// WriteCompactResult sends COMPACT_RES with the statistics as JSON.
func (wr *Writer) WriteCompactResult(s lnvault.CompactStats) error {
	js, err := json.Marshal(s)
	if err != nil {
		return err
	}
	wr.buf = append(wr.buf[:0], 0, 0, 0, 0, 0)
	wr.buf = append(wr.buf, js...)
	putHeader(wr.buf, TypeCompactRes, len(js))
	return wr.flush()
}

// ---------------------------------------------------------------- reading

// Reader decodes packets from a stream. It is not safe for concurrent use.
type Reader struct {
	// Admit, when set, is asked about each CHANGE and SNAPSHOT from its
	// header alone (type and version); a refused one is discarded without
	// being inflated or spooled, and returned with Skipped set. A server
	// refuses a non-writer's changes so: they cost it no memory or disk.
	Admit func(t Type, version uint32) bool

	br    *bufio.Reader
	lim   Limits
	lr    limitedByteReader
	zr    io.ReadCloser
	raw   bytes.Buffer
	spool *os.File // the current snapshot, unlinked
	hdr   [MetadataLen]byte
}

// NewReader returns a Reader of r with the given limits.
func NewReader(r io.Reader, lim Limits) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, 32<<10), lim: lim.withDefaults()}
}

// Reset makes the Reader read from r, keeping its buffers.
// Buffered is how many bytes of the next packets are already read.
func (rd *Reader) Buffered() int { return rd.br.Buffered() }

func (rd *Reader) Reset(r io.Reader) {
	rd.releaseSpool()
	rd.br.Reset(r)
}

// Close releases the spooled snapshot, if any.
func (rd *Reader) Close() error {
	rd.releaseSpool()
	return nil
}

func (rd *Reader) releaseSpool() {
	if rd.spool != nil {
		rd.spool.Close()
		rd.spool = nil
	}
}

// limitedByteReader reads at most n bytes of a packet's payload from br and
// is an io.ByteReader, so the inflater reads exactly the stream and needs no
// buffering of its own.
type limitedByteReader struct {
	br *bufio.Reader
	n  int64
}

func (l *limitedByteReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	k, err := l.br.Read(p)
	l.n -= int64(k)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return k, err
}

func (l *limitedByteReader) ReadByte() (byte, error) {
	if l.n <= 0 {
		return 0, io.EOF
	}
	b, err := l.br.ReadByte()
	if err == nil {
		l.n--
	} else if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return b, err
}

var _ flate.Reader = (*limitedByteReader)(nil)

func malformed(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, a...)...)
}

// Next reads one packet. At a clean end of stream between packets it returns
// io.EOF; a stream cut inside a packet gives an error wrapping
// io.ErrUnexpectedEOF. Any other error means the stream is out of step and
// the connection must be closed.
func (rd *Reader) Next() (Packet, error) {
	rd.releaseSpool()
	var p Packet
	var h [HeaderLen]byte
	if _, err := io.ReadFull(rd.br, h[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return p, fmt.Errorf("reading packet header: %w", err)
		}
		return p, err
	}
	p.Type = Type(h[0])
	p.Len = binary.BigEndian.Uint32(h[1:5])
	n := p.Len
	switch p.Type {
	case TypeChange, TypeSnapshot:
		if n > rd.lim.MaxPacket {
			return p, fmt.Errorf("%w: %v payload of %d bytes, the limit is %d", ErrTooLarge, p.Type, n, rd.lim.MaxPacket)
		}
		if n < 4 {
			return p, malformed("%v payload of %d bytes has no version", p.Type, n)
		}
		if err := rd.fill(4); err != nil {
			return p, err
		}
		p.Version = binary.BigEndian.Uint32(rd.hdr[:4])
		p.HasVersion = true
		if rd.Admit != nil && !rd.Admit(p.Type, p.Version) {
			if _, err := io.CopyN(io.Discard, rd.br, int64(n)-4); err != nil {
				return p, fmt.Errorf("skipping a refused %v payload: %w", p.Type, eofIsUnexpected(err))
			}
			p.Skipped = true
			return p, nil
		}
		rd.lr = limitedByteReader{br: rd.br, n: int64(n) - 4}
		var err error
		if p.Type == TypeChange {
			p.Change, err = rd.readTransaction(p.Version)
		} else {
			p.Change, err = rd.readSnapshot(p.Version)
		}
		return p, err
	case TypeRewind, TypeAck:
		if n != 4 {
			return p, malformed("%v payload must be 4 bytes, got %d", p.Type, n)
		}
		if err := rd.fill(4); err != nil {
			return p, err
		}
		p.Version, p.HasVersion = binary.BigEndian.Uint32(rd.hdr[:4]), true
	case TypeNack:
		switch n {
		case 0:
		case 4:
			if err := rd.fill(4); err != nil {
				return p, err
			}
			p.Version, p.HasVersion = binary.BigEndian.Uint32(rd.hdr[:4]), true
		default:
			return p, malformed("NACK payload must be 0 or 4 bytes, got %d", n)
		}
	case TypeReqMetadata, TypeRestore, TypeDone, TypeCompact:
		if n != 0 {
			return p, malformed("%v must have an empty payload, got %d bytes", p.Type, n)
		}
	case TypeMetadata:
		if n != MetadataLen {
			return p, malformed("METADATA payload must be %d bytes, got %d", MetadataLen, n)
		}
		if err := rd.fill(MetadataLen); err != nil {
			return p, err
		}
		b := rd.hdr[:]
		p.Protocol = binary.BigEndian.Uint32(b[0:4])
		p.Meta = lnvault.Metadata{
			Version:      binary.BigEndian.Uint32(b[4:8]),
			PrevVersion:  binary.BigEndian.Uint32(b[8:12]),
			VersionCount: binary.BigEndian.Uint64(b[12:20]),
		}
	case TypeCompactRes:
		if n > maxCompactRes || n > rd.lim.MaxPacket {
			return p, fmt.Errorf("%w: COMPACT_RES of %d bytes", ErrTooLarge, n)
		}
		js := make([]byte, n)
		if _, err := io.ReadFull(rd.br, js); err != nil {
			return p, fmt.Errorf("reading COMPACT_RES: %w", eofIsUnexpected(err))
		}
		if err := json.Unmarshal(js, &p.Stats); err != nil {
			return p, malformed("COMPACT_RES is not the statistics JSON: %v", err)
		}
	default:
		if p.Type >= extFirst && p.Type <= extLast {
			return p, rd.readExt(&p)
		}
		return p, malformed("unknown packet type 0x%02x (length %d)", uint8(p.Type), n)
	}
	return p, nil
}

func eofIsUnexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func (rd *Reader) fill(n int) error {
	if _, err := io.ReadFull(rd.br, rd.hdr[:n]); err != nil {
		return fmt.Errorf("reading packet payload: %w", eofIsUnexpected(err))
	}
	return nil
}

// inflater returns the reused zlib reader positioned on the payload.
func (rd *Reader) inflater(t Type, version uint32) (io.Reader, error) {
	var err error
	if rd.zr == nil {
		rd.zr, err = zlib.NewReader(&rd.lr)
	} else {
		err = rd.zr.(zlib.Resetter).Reset(&rd.lr, nil)
	}
	if err != nil {
		return nil, rd.zerr(t, version, err)
	}
	return rd.zr, nil
}

func (rd *Reader) zerr(t Type, version uint32, err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) && rd.lr.n > 0 {
		return fmt.Errorf("reading %v version %d: %w", t, version, err) // the connection ended
	}
	return malformed("%v version %d: bad zlib stream: %v", t, version, err)
}

// finish checks that the zlib stream ended exactly at the end of the payload.
func (rd *Reader) finish(t Type, version uint32) error {
	if rd.lr.n != 0 {
		return malformed("%v version %d: %d bytes after the end of the zlib stream", t, version, rd.lr.n)
	}
	return nil
}

func (rd *Reader) readTransaction(version uint32) (*lnvault.Change, error) {
	zr, err := rd.inflater(TypeChange, version)
	if err != nil {
		return nil, err
	}
	rd.raw.Reset()
	max := rd.lim.MaxChange
	k, err := rd.raw.ReadFrom(io.LimitReader(zr, max+1))
	if err != nil {
		return nil, rd.zerr(TypeChange, version, err)
	}
	if k > max {
		return nil, fmt.Errorf("%w: CHANGE version %d decompresses to more than %d bytes", ErrTooLarge, version, max)
	}
	if err := rd.finish(TypeChange, version); err != nil {
		return nil, err
	}
	c := lnvault.NewTransaction(version, lnvault.SplitStatements(rd.raw.Bytes()))
	if rd.raw.Cap() > 4<<20 {
		rd.raw = bytes.Buffer{}
	}
	return c, nil
}

func (rd *Reader) readSnapshot(version uint32) (*lnvault.Change, error) {
	zr, err := rd.inflater(TypeSnapshot, version)
	if err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(rd.lim.TempDir, "lnvault-recv-*.snapshot")
	if err != nil {
		return nil, fmt.Errorf("spooling SNAPSHOT version %d: %w", version, err)
	}
	os.Remove(f.Name()) // unlinked: freed on close, never left behind
	bw := bufio.NewWriterSize(f, 1<<20)
	max := rd.lim.MaxSnapshot
	k, err := io.Copy(bw, io.LimitReader(zr, max+1))
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		f.Close()
		var pe *os.PathError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("spooling SNAPSHOT version %d: %w", version, err)
		}
		return nil, rd.zerr(TypeSnapshot, version, err)
	}
	if k > max {
		f.Close()
		return nil, fmt.Errorf("%w: SNAPSHOT version %d decompresses to more than %d bytes", ErrTooLarge, version, max)
	}
	if err := rd.finish(TypeSnapshot, version); err != nil {
		f.Close()
		return nil, err
	}
	rd.spool = f
	return lnvault.NewSnapshot(version, io.NewSectionReader(f, 0, k)), nil
}
