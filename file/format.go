package file

import (
	_ "embed"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/klauspost/compress/zstd"
	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/crcio"
	"github.com/lnvault/lnvault/internal/zpool"
)

// Layout constants of both formats. See the package documentation.
const (
	headerSize  = 512
	v1DataStart = 512
	v2DataStart = 2 * headerSize
	v1RecHdr    = 9
	v2RecHdr    = 20
	v2CRCOffset = headerSize - 4

	codecRaw  = 0
	codecZstd = 1 // zstd, no dictionary (snapshots)
	codecDict = 2 // zstd with the built-in dictionary clnDict (transactions, as earlier lnvault releases wrote them; read only)

	dictID   = 1 // the zstd dictionary ID of clnDict
	dictSize = 32 << 10

	// maxTxRaw bounds the decompressed size of one transaction record so a
	// damaged or hostile file cannot make a reader allocate without limit.
	// Core Lightning transactions are kilobytes; the largest seen is 20 KiB.
	maxTxRaw = 256 << 20
)

// clnDict is a raw zstd dictionary of Core Lightning's SQL statement
// templates (literals blanked), part of format 2: transactions are a few
// hundred bytes each, too short for zstd to learn their vocabulary alone.
//
//go:embed cln-sql-v1.dict
var clnDict []byte

// header is the decoded header of either format. Fields that format 1 lacks
// (seq, lastChange, recordCount) are zero there.
type header struct {
	format           uint32
	version          uint32
	endOffset        uint64
	prevVersion      uint32
	lastRecordOffset uint64
	versionCount     uint64
	seq              uint64
	lastChange       int64
	recordCount      uint64
}

func (h header) meta() lnvault.Metadata {
	return lnvault.Metadata{Version: h.version, PrevVersion: h.prevVersion, VersionCount: h.versionCount}
}

// encode writes h into b[:512] in h.format's layout (for format 2 with its
// checksum).
func (h header) encode(b []byte) {
	b = b[:headerSize]
	clear(b)
	be := binary.BigEndian
	be.PutUint32(b[0:], h.format)
	be.PutUint32(b[4:], h.version)
	be.PutUint64(b[8:], h.endOffset)
	be.PutUint32(b[16:], h.prevVersion)
	be.PutUint64(b[20:], h.lastRecordOffset)
	be.PutUint64(b[28:], h.versionCount)
	if h.format == 1 {
		return
	}
	be.PutUint64(b[36:], h.seq)
	be.PutUint64(b[44:], uint64(h.lastChange))
	be.PutUint64(b[52:], h.recordCount)
	be.PutUint32(b[v2CRCOffset:], crcio.Checksum(b[:v2CRCOffset]))
}

func decodeCommon(b []byte) header {
	be := binary.BigEndian
	return header{
		format:           be.Uint32(b[0:]),
		version:          be.Uint32(b[4:]),
		endOffset:        be.Uint64(b[8:]),
		prevVersion:      be.Uint32(b[16:]),
		lastRecordOffset: be.Uint64(b[20:]),
		versionCount:     be.Uint64(b[28:]),
	}
}

// slotState classifies one format-2 header slot.
type slotState int

const (
	slotValid slotState = iota
	slotZero            // never written
	slotBad             // damaged (or torn, or cut short)
)

// decodeV2 decodes a format-2 header slot. b may be shorter than 512 bytes
// when the file is cut inside the slot.
func decodeV2(b []byte) (header, slotState, string) {
	if len(b) < headerSize {
		return header{}, slotBad, fmt.Sprintf("header slot cut short (%d of %d bytes)", len(b), headerSize)
	}
	allZero := true
	for _, c := range b[:headerSize] {
		if c != 0 {
			allZero = false
			break
		}
	}
	if allZero {
		return header{}, slotZero, "never written"
	}
	want := binary.BigEndian.Uint32(b[v2CRCOffset:])
	if got := crcio.Checksum(b[:v2CRCOffset]); got != want {
		return header{}, slotBad, fmt.Sprintf("header checksum mismatch (stored %08x, computed %08x)", want, got)
	}
	h := decodeCommon(b)
	if h.format != 2 {
		return header{}, slotBad, fmt.Sprintf("header format %d in a format 2 slot", h.format)
	}
	be := binary.BigEndian
	h.seq = be.Uint64(b[36:])
	h.lastChange = int64(be.Uint64(b[44:]))
	h.recordCount = be.Uint64(b[52:])
	return h, slotValid, ""
}

// recHdr is a format-2 record header.
type recHdr struct {
	storedLen uint32
	version   uint32
	typ       uint8
	codec     uint8
	rawLen    uint32
	crc       uint32
}

func (r recHdr) put(b []byte) {
	be := binary.BigEndian
	be.PutUint32(b[0:], r.storedLen)
	be.PutUint32(b[4:], r.version)
	b[8] = r.typ
	b[9] = r.codec
	b[10], b[11] = 0, 0
	be.PutUint32(b[12:], r.rawLen)
	be.PutUint32(b[16:], r.crc)
}

func parseRecHdr(b []byte) recHdr {
	be := binary.BigEndian
	return recHdr{
		storedLen: be.Uint32(b[0:]),
		version:   be.Uint32(b[4:]),
		typ:       b[8],
		codec:     b[9],
		rawLen:    be.Uint32(b[12:]),
		crc:       be.Uint32(b[16:]),
	}
}

// check validates the fields a checksum cannot vouch for on its own.
func (r recHdr) check(b []byte) error {
	if b[10] != 0 || b[11] != 0 {
		return errors.New("reserved record header bytes are not zero")
	}
	if r.typ != uint8(lnvault.KindTransaction) && r.typ != uint8(lnvault.KindSnapshot) {
		return fmt.Errorf("unknown record type %d", r.typ)
	}
	switch r.codec {
	case codecRaw:
		if r.rawLen != r.storedLen {
			return fmt.Errorf("raw record with stored length %d but raw length %d", r.storedLen, r.rawLen)
		}
	case codecZstd, codecDict:
		if r.typ == uint8(lnvault.KindTransaction) && r.rawLen > maxTxRaw {
			return fmt.Errorf("transaction of %d bytes exceeds the %d byte limit", r.rawLen, maxTxRaw)
		}
	default:
		return fmt.Errorf("unknown codec %d", r.codec)
	}
	return nil
}

// recordCRC is the record checksum: CRC-32C of the stored payload followed by
// the first 16 bytes of the record header. The payload comes first so that a
// snapshot can be compressed in one streaming pass and its header (which
// holds the compressed length) filled in afterwards.
func recordCRC(payloadCRC uint32, hdr []byte) uint32 {
	return crcio.Update(payloadCRC, hdr[:16])
}

// The transaction decoders: the CLN dictionary (codec 2, which lnvault
// wrote before transactions were stored raw), no zstd checksum (the record
// CRC covers it).
var (
	decoders = zpool.NewDecoders(4,
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderDictRaw(dictID, clnDict),
		zstd.WithDecodeAllCapLimit(true),
		zstd.WithDecoderMaxMemory(maxTxRaw),
		zstd.WithDecoderMaxWindow(64<<20))
)
