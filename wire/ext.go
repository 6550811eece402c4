package wire

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"
)

// Extension packet types (lnvault peers only; see the package documentation
// for how they stay invisible to reference peers).
const (
	TypeHello       Type = 0x20 // client: the features it wants, space separated
	TypeFeatures    Type = 0x21 // server: the features it offers, space separated
	TypeSCBPut      Type = 0x22 // client: one static channel backup envelope
	TypeSCBList     Type = 0x23 // client: empty
	TypeSCBVersions Type = 0x24 // server: JSON array of SCBVersion
	TypeSCBGet      Type = 0x25 // client: a version id, a kind (its latest version), or empty (the latest)
	TypeSCBData     Type = 0x26 // server: one static channel backup envelope
	TypeExtError    Type = 0x27 // server: why an extension request failed (UTF-8)
	TypeDelete      Type = 0x28 // client: u32, the head version the user agreed to delete
	TypeRebase      Type = 0x29 // client: empty; the next SNAPSHOT on the connection is a rebase
)

// FeatureSCB is the feature a server offers when it keeps static channel
// backups.
const FeatureSCB = "scb"

// FeatureCompact: the server compacts on request from a connection that is
// not the writer's, so a client can compact over a second connection while
// its appends go on over the first (COMPACT blocks the connection it is sent
// on until COMPACT_RES).
const FeatureCompact = "compact"

// FeatureTakeover: the server hands the writer role to a new connection
// naming the same writer token as the writer's connection (see
// WriterTokenPrefix).
const FeatureTakeover = "takeover"

// FeatureDelete: the server deletes the backup it serves on request
// (DELETE, see the package documentation) and goes on serving it empty.
const FeatureDelete = "delete"

// FeatureRebase: the server takes a snapshot built by its client in place
// of the changes up to the snapshot's version (REBASE, then the SNAPSHOT,
// answered with COMPACT_RES or EXT_ERROR), on a connection that is not the
// writer's: the node compacts an end-to-end encrypted backup this way.
const FeatureRebase = "rebase"

// WriterTokenPrefix starts the HELLO feature that names a writer: the
// prefix and 16 lowercase hex digits.
const WriterTokenPrefix = "writer."

// WriterFeature is the HELLO feature naming writer token tok.
func WriterFeature(tok [8]byte) string { return WriterTokenPrefix + hex.EncodeToString(tok[:]) }

// WriterToken is the writer token named among a HELLO's features, "" when
// none is.
func WriterToken(features []string) string {
	for _, f := range features {
		if t, ok := strings.CutPrefix(f, WriterTokenPrefix); ok && len(t) == 16 {
			return t
		}
	}
	return ""
}

const (
	// DefaultMaxSCB bounds an SCB envelope (SCB_PUT, SCB_DATA) and one
	// SCB_VERSIONS packet, which are held in memory. Real static channel
	// backups are kilobytes; a node with thousands of channels stays well
	// under a megabyte.
	DefaultMaxSCB = 16 << 20
	// maxFeatures bounds HELLO and FEATURES.
	maxFeatures = 1024
	// maxSelector bounds SCB_GET's payload (a version id is 39 bytes).
	maxSelector = 128
	// MaxExtError bounds EXT_ERROR's message.
	MaxExtError = 4096
	// SCBVersionsPerPacket is how many versions a server puts in one
	// SCB_VERSIONS packet of a list (a few hundred bytes each).
	SCBVersionsPerPacket = 512
)

const (
	extFirst = TypeHello
	extLast  = TypeRebase
)

// extNames names the extension packet types, from extFirst.
var extNames = [extLast - extFirst + 1]string{
	TypeHello - extFirst: "HELLO", TypeFeatures - extFirst: "FEATURES", TypeSCBPut - extFirst: "SCB_PUT",
	TypeSCBList - extFirst: "SCB_LIST", TypeSCBVersions - extFirst: "SCB_VERSIONS", TypeSCBGet - extFirst: "SCB_GET",
	TypeSCBData - extFirst: "SCB_DATA", TypeExtError - extFirst: "EXT_ERROR", TypeDelete - extFirst: "DELETE",
	TypeRebase - extFirst: "REBASE",
}

// SCBVersion is the metadata of one stored static channel backup version, as
// SCB_VERSIONS carries it (see scb.Version).
type SCBVersion struct {
	ID        string    `json:"id"`
	Seq       uint64    `json:"seq"`
	Stored    time.Time `json:"stored"`
	Kind      string    `json:"kind"`
	Created   time.Time `json:"created"`
	Channels  int       `json:"channels"`
	Encrypted bool      `json:"encrypted"`
	// PlainSHA256 is the hex SHA-256 of the plaintext, "" when encrypted.
	PlainSHA256 string `json:"plain_sha256,omitempty"`
	Size        int64  `json:"size"`
	// Error says why a damaged version cannot be used; "" when intact.
	Error string `json:"error,omitempty"`
}

// validFeature: lowercase letters, digits, '.', '_' and '-', at most 32.
func validFeature(s string) bool {
	if len(s) == 0 || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || i > 0 && (c == '.' || c == '_' || c == '-')) {
			return false
		}
	}
	return true
}

// WriteFeatures sends HELLO or FEATURES with the given feature names.
func (wr *Writer) WriteFeatures(t Type, features []string) error {
	if t != TypeHello && t != TypeFeatures {
		return fmt.Errorf("WriteFeatures: %v is not HELLO or FEATURES", t)
	}
	wr.buf = append(wr.buf[:0], 0, 0, 0, 0, 0)
	for i, f := range features {
		if !validFeature(f) {
			return fmt.Errorf("invalid feature name %q", f)
		}
		if i > 0 {
			wr.buf = append(wr.buf, ' ')
		}
		wr.buf = append(wr.buf, f...)
	}
	if len(wr.buf)-HeaderLen > maxFeatures {
		return fmt.Errorf("%w: %v of %d bytes", ErrTooLarge, t, len(wr.buf)-HeaderLen)
	}
	putHeader(wr.buf, t, len(wr.buf)-HeaderLen)
	return wr.flush()
}

// WriteSCB sends SCB_PUT or SCB_DATA carrying one envelope. The envelope is
// not checked here: the receiver decodes it fully.
func (wr *Writer) WriteSCB(t Type, envelope []byte) error {
	if t != TypeSCBPut && t != TypeSCBData {
		return fmt.Errorf("WriteSCB: %v is not SCB_PUT or SCB_DATA", t)
	}
	if len(envelope) > DefaultMaxSCB {
		return fmt.Errorf("%w: static channel backup envelope of %d bytes (the protocol's limit is %d)", ErrTooLarge, len(envelope), DefaultMaxSCB)
	}
	wr.buf = append(wr.buf[:0], 0, 0, 0, 0, 0)
	wr.buf = append(wr.buf, envelope...)
	putHeader(wr.buf, t, len(envelope))
	return wr.flush()
}

// validSelector: printable ASCII without spaces (a version id or a kind).
func validSelector(s string) bool {
	if len(s) > maxSelector {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// WriteSCBGet sends SCB_GET: sel is a version id, a kind, or "" for the
// latest version.
func (wr *Writer) WriteSCBGet(sel string) error {
	if !validSelector(sel) {
		return fmt.Errorf("invalid static channel backup version %q", sel)
	}
	wr.buf = append(wr.buf[:0], 0, 0, 0, 0, 0)
	wr.buf = append(wr.buf, sel...)
	putHeader(wr.buf, TypeSCBGet, len(sel))
	return wr.flush()
}

// WriteSCBVersions sends one SCB_VERSIONS packet.
func (wr *Writer) WriteSCBVersions(vs []SCBVersion) error {
	if vs == nil {
		vs = []SCBVersion{}
	}
	js, err := json.Marshal(vs)
	if err != nil {
		return fmt.Errorf("encoding SCB_VERSIONS: %w", err)
	}
	if len(js) > DefaultMaxSCB {
		return fmt.Errorf("%w: SCB_VERSIONS of %d bytes: send fewer versions per packet", ErrTooLarge, len(js))
	}
	wr.buf = append(wr.buf[:0], 0, 0, 0, 0, 0)
	wr.buf = append(wr.buf, js...)
	putHeader(wr.buf, TypeSCBVersions, len(js))
	return wr.flush()
}

// ExtErrorText makes msg fit EXT_ERROR: valid UTF-8, one line, at most
// MaxExtError bytes.
func ExtErrorText(msg string) string {
	msg = strings.ToValidUTF8(msg, "?")
	msg = strings.NewReplacer("\r", " ", "\n", " ").Replace(msg)
	if len(msg) > MaxExtError {
		cut := MaxExtError
		for cut > 0 && !utf8.RuneStart(msg[cut]) {
			cut--
		}
		msg = msg[:cut]
	}
	return msg
}

// WriteExtError sends EXT_ERROR with msg, made to fit by ExtErrorText.
func (wr *Writer) WriteExtError(msg string) error {
	msg = ExtErrorText(msg)
	wr.buf = append(wr.buf[:0], 0, 0, 0, 0, 0)
	wr.buf = append(wr.buf, msg...)
	putHeader(wr.buf, TypeExtError, len(msg))
	return wr.flush()
}

// readExt decodes the payload of an extension packet whose header is in p.
func (rd *Reader) readExt(p *Packet) error {
	n := int64(p.Len)
	if n > int64(rd.lim.MaxPacket) {
		return fmt.Errorf("%w: %v payload of %d bytes, the limit is %d", ErrTooLarge, p.Type, n, rd.lim.MaxPacket)
	}
	var max int64
	switch p.Type {
	case TypeHello, TypeFeatures:
		max = maxFeatures
	case TypeSCBPut, TypeSCBData, TypeSCBVersions:
		max = rd.lim.MaxSCB
	case TypeSCBList, TypeRebase:
		max = 0
	case TypeSCBGet:
		max = maxSelector
	case TypeExtError:
		max = MaxExtError
	case TypeDelete:
		if n != 4 {
			return malformed("DELETE payload must be 4 bytes, got %d", n)
		}
		max = 4
	default:
		return malformed("unknown packet type 0x%02x (length %d)", uint8(p.Type), n)
	}
	if n > max {
		if max == 0 {
			return malformed("%v must have an empty payload, got %d bytes", p.Type, n)
		}
		return fmt.Errorf("%w: %v payload of %d bytes, the limit is %d", ErrTooLarge, p.Type, n, max)
	}
	// Grow with what actually arrives: a peer announcing a large length and
	// sending nothing costs no memory.
	var buf bytes.Buffer
	buf.Grow(int(min(n, 64<<10)))
	if _, err := io.CopyN(&buf, rd.br, n); err != nil {
		return fmt.Errorf("reading %v payload: %w", p.Type, eofIsUnexpected(err))
	}
	b := buf.Bytes()
	switch p.Type {
	case TypeHello, TypeFeatures:
		if len(b) == 0 {
			p.Features = []string{}
			return nil
		}
		p.Features = strings.Split(string(b), " ")
		for _, f := range p.Features {
			if !validFeature(f) {
				return malformed("%v: invalid feature name %q", p.Type, f)
			}
		}
	case TypeSCBPut, TypeSCBData:
		p.Data = b
	case TypeDelete:
		p.Version, p.HasVersion = binary.BigEndian.Uint32(b), true
	case TypeSCBGet:
		if !validSelector(string(b)) {
			return malformed("SCB_GET: invalid version %q", b)
		}
		p.Text = string(b)
	case TypeExtError:
		if !utf8.Valid(b) {
			return malformed("EXT_ERROR message is not UTF-8")
		}
		p.Text = string(b)
	case TypeSCBVersions:
		if err := json.Unmarshal(b, &p.SCBVersions); err != nil {
			return malformed("SCB_VERSIONS is not a JSON list of versions: %v", err)
		}
		if p.SCBVersions == nil {
			return malformed("SCB_VERSIONS is null, not a list")
		}
	}
	return nil
}
