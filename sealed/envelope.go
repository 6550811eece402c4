package sealed

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/lnvault/lnvault/seal"
)

// The envelope is what a host sees of a sealed change, in the clear: the
// generation and index (bound into the AEAD's associated data, so a host
// that edits them only breaks the change), and, on a generation's first
// change and on every snapshot, the key section: the backup's id, the
// recipients' public keys (so a restore without the identity can name
// them) and the data key wrapped for them.
//
//	gen u64 | index u64 | flags u8 | [keyLen u32 | key section] | sealed bytes
//	key section: backup id [16] | n u8 | n × (len u16 | age1...) | wrapped
const (
	flagKey = 1 << 0 // a key section follows
	flagPad = 1 << 1 // the change was padded to a size bucket (snapshots: their last chunk)

	headerLen     = 8 + 8 + 1
	maxKeySection = 64 << 10
	maxRecipients = 64
)

// envelope is a decoded header.
type envelope struct {
	gen, index uint64
	flags      byte
	key        *keySection // nil when the change carries none
}

// keySection is the data key of a generation as stored with the backup.
type keySection struct {
	backup     seal.BackupID
	recipients []string
	wrapped    []byte
}

func appendHeader(dst []byte, e envelope) []byte {
	dst = binary.BigEndian.AppendUint64(dst, e.gen)
	dst = binary.BigEndian.AppendUint64(dst, e.index)
	flags := e.flags &^ flagKey
	if e.key != nil {
		flags |= flagKey
	}
	dst = append(dst, flags)
	if e.key == nil {
		return dst
	}
	lenAt := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	dst = append(dst, e.key.backup[:]...)
	dst = append(dst, byte(len(e.key.recipients)))
	for _, r := range e.key.recipients {
		dst = binary.BigEndian.AppendUint16(dst, uint16(len(r)))
		dst = append(dst, r...)
	}
	dst = append(dst, e.key.wrapped...)
	binary.BigEndian.PutUint32(dst[lenAt:], uint32(len(dst)-lenAt-4))
	return dst
}

// errEnvelope names a header that cannot be decoded.
var errEnvelope = errors.New("not a sealed change")

// parseHeader decodes the header at the start of b and returns it with
// the rest of b (the sealed bytes). It never allocates more than b holds.
func parseHeader(b []byte) (envelope, []byte, error) {
	if len(b) < headerLen {
		return envelope{}, nil, fmt.Errorf("%w: %d bytes, shorter than its header", errEnvelope, len(b))
	}
	e := envelope{gen: binary.BigEndian.Uint64(b), index: binary.BigEndian.Uint64(b[8:]), flags: b[16]}
	if e.flags&^(flagKey|flagPad) != 0 {
		return envelope{}, nil, fmt.Errorf("%w: unknown flags %#x (written by a newer lnvault?)", errEnvelope, e.flags)
	}
	b = b[headerLen:]
	if e.flags&flagKey == 0 {
		return e, b, nil
	}
	if len(b) < 4 {
		return envelope{}, nil, fmt.Errorf("%w: key section cut short", errEnvelope)
	}
	n := binary.BigEndian.Uint32(b)
	if n > maxKeySection || int(n) > len(b)-4 {
		return envelope{}, nil, fmt.Errorf("%w: key section of %d bytes in %d", errEnvelope, n, len(b)-4)
	}
	ks, rest := b[4:4+n], b[4+n:]
	k, err := parseKeySection(ks)
	if err != nil {
		return envelope{}, nil, err
	}
	e.key = k
	return e, rest, nil
}

func parseKeySection(b []byte) (*keySection, error) {
	if len(b) < 16+1 {
		return nil, fmt.Errorf("%w: key section of %d bytes", errEnvelope, len(b))
	}
	k := &keySection{}
	copy(k.backup[:], b)
	n := int(b[16])
	if n == 0 || n > maxRecipients {
		return nil, fmt.Errorf("%w: key section names %d recipients", errEnvelope, n)
	}
	b = b[17:]
	for range n {
		if len(b) < 2 {
			return nil, fmt.Errorf("%w: recipient list cut short", errEnvelope)
		}
		l := int(binary.BigEndian.Uint16(b))
		if l > len(b)-2 {
			return nil, fmt.Errorf("%w: recipient of %d bytes in %d", errEnvelope, l, len(b)-2)
		}
		r := string(b[2 : 2+l])
		if !printable(r) {
			return nil, fmt.Errorf("%w: a recipient is not printable text", errEnvelope)
		}
		k.recipients = append(k.recipients, r)
		b = b[2+l:]
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: key section without a wrapped key", errEnvelope)
	}
	k.wrapped = b
	return k, nil
}

func printable(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < 0x21 || r > 0x7e {
			return false
		}
	}
	return true
}

// recipientList is how error messages name the recipients.
func recipientList(rs []string) string {
	if len(rs) == 0 {
		return "(none recorded)"
	}
	return strings.Join(rs, ", ")
}
