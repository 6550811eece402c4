package scb

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"time"

	"filippo.io/age"
	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/crcio"
)

// The envelope of one stored version, big-endian:
//
//	magic "LNVSCB" | u8 format (1) | u8 flags (bit 0: age-encrypted) |
//	u8 kind length | kind | i64 created (unix ns) | i32 channels (-1 unknown) |
//	[32] SHA-256 of the plaintext (zero when encrypted) | u64 payload length |
//	u32 CRC-32C of everything before it |
//	payload |
//	[32] SHA-256 of the payload as stored
//
// The header is readable without the key, so `scb list` shows kind, time and
// channel count of encrypted versions. The trailing hash covers the payload as
// stored, so a damaged or truncated version is detected without decrypting.
// An encrypted envelope does not carry the plaintext hash: it would let anyone
// holding the store confirm a guessed channel set; age authenticates the
// plaintext instead.
const (
	envMagic      = "LNVSCB"
	envFormat     = 1
	flagEncrypted = 1

	// MaxPayload bounds a version's payload. Real SCBs are kilobytes; the
	// bound keeps a corrupt length field from allocating gigabytes.
	MaxPayload = 64 << 20

	envFixed = len(envMagic) + 1 + 1 + 1 // up to the kind
	envAfter = 8 + 4 + 32 + 8 + 4        // after the kind, CRC included
	envTrail = sha256.Size
	// envMin is the smallest possible envelope (one-byte kind, empty payload).
	envMin = envFixed + 1 + envAfter + envTrail
)

// Header is the clear-text part of an envelope.
type Header struct {
	Kind      Kind
	Created   time.Time
	Channels  int
	Encrypted bool
	// PlainSHA256 is the SHA-256 of the plaintext; zero when Encrypted.
	PlainSHA256 [32]byte
	// PayloadLen is the stored payload's length (ciphertext when Encrypted).
	PayloadLen int64
}

// Envelope is a decoded version: its header and stored payload.
type Envelope struct {
	Header
	Payload []byte
}

// Seal builds the envelope of b, age-encrypted to recipients when there are
// any.
func Seal(b Backup, recipients []age.Recipient) ([]byte, error) {
	if !b.Kind.Valid() {
		return nil, fmt.Errorf("invalid SCB kind %q", b.Kind)
	}
	if len(b.Data) > MaxPayload {
		return nil, fmt.Errorf("static channel backup of %d bytes exceeds the %d byte limit", len(b.Data), MaxPayload)
	}
	h := Header{Kind: b.Kind, Created: b.Taken, Channels: b.Channels}
	if h.Created.IsZero() {
		h.Created = time.Now()
	}
	payload := b.Data
	if len(recipients) > 0 {
		var buf bytes.Buffer
		w, err := age.Encrypt(&buf, recipients...)
		if err != nil {
			return nil, fmt.Errorf("encrypting static channel backup: %w", err)
		}
		if _, err := w.Write(b.Data); err != nil {
			return nil, fmt.Errorf("encrypting static channel backup: %w", err)
		}
		if err := w.Close(); err != nil {
			return nil, fmt.Errorf("encrypting static channel backup: %w", err)
		}
		payload = buf.Bytes()
		h.Encrypted = true
	} else {
		h.PlainSHA256 = sha256.Sum256(b.Data)
	}
	return EncodeEnvelope(h, payload)
}

// EncodeEnvelope serialises h and payload. h.PayloadLen is ignored.
func EncodeEnvelope(h Header, payload []byte) ([]byte, error) {
	if !h.Kind.Valid() {
		return nil, fmt.Errorf("invalid SCB kind %q", h.Kind)
	}
	if len(payload) > MaxPayload {
		return nil, fmt.Errorf("payload of %d bytes exceeds the %d byte limit", len(payload), MaxPayload)
	}
	if h.Channels < -1 || h.Channels > math.MaxInt32 {
		return nil, fmt.Errorf("invalid channel count %d", h.Channels)
	}
	out := make([]byte, 0, envFixed+len(h.Kind)+envAfter+len(payload)+envTrail)
	out = append(out, envMagic...)
	out = append(out, envFormat)
	var flags byte
	if h.Encrypted {
		flags |= flagEncrypted
	}
	out = append(out, flags, byte(len(h.Kind)))
	out = append(out, h.Kind...)
	out = binary.BigEndian.AppendUint64(out, uint64(h.Created.UnixNano()))
	out = binary.BigEndian.AppendUint32(out, uint32(int32(h.Channels)))
	if h.Encrypted {
		out = append(out, make([]byte, 32)...)
	} else {
		out = append(out, h.PlainSHA256[:]...)
	}
	out = binary.BigEndian.AppendUint64(out, uint64(len(payload)))
	out = binary.BigEndian.AppendUint32(out, crcio.Checksum(out))
	out = append(out, payload...)
	sum := sha256.Sum256(payload)
	return append(out, sum[:]...), nil
}

func corrupt(off int64, format string, args ...any) error {
	return &lnvault.CorruptError{Offset: off, Reason: fmt.Sprintf(format, args...)}
}

// DecodeHeader parses and checks an envelope's header from its first bytes
// (at least HeaderLen of them; the whole envelope works too). It returns the
// header and the offset where the payload starts.
func DecodeHeader(b []byte) (Header, int, error) {
	var h Header
	if len(b) < envFixed+1 {
		return h, 0, corrupt(0, "%d bytes is too short for a static channel backup envelope", len(b))
	}
	if string(b[:len(envMagic)]) != envMagic {
		return h, 0, corrupt(0, "not a lnvault static channel backup (bad magic)")
	}
	if b[6] != envFormat {
		return h, 0, corrupt(6, "envelope format %d is not supported by this lnvault (upgrade it)", b[6])
	}
	flags := b[7]
	if flags&^flagEncrypted != 0 {
		return h, 0, corrupt(7, "unknown envelope flags %#x", flags)
	}
	kl := int(b[8])
	end := envFixed + kl + envAfter
	if len(b) < end {
		return h, 0, corrupt(0, "envelope header truncated (%d of %d bytes)", len(b), end)
	}
	crcAt := end - 4
	if got, want := crcio.Checksum(b[:crcAt]), binary.BigEndian.Uint32(b[crcAt:end]); got != want {
		return h, 0, corrupt(int64(crcAt), "envelope header checksum mismatch")
	}
	h.Kind = Kind(b[envFixed : envFixed+kl])
	if !h.Kind.Valid() {
		return h, 0, corrupt(int64(envFixed), "invalid kind %q", h.Kind)
	}
	p := envFixed + kl
	h.Created = time.Unix(0, int64(binary.BigEndian.Uint64(b[p:]))).UTC()
	p += 8
	h.Channels = int(int32(binary.BigEndian.Uint32(b[p:])))
	if h.Channels < -1 {
		return h, 0, corrupt(int64(p), "invalid channel count %d", h.Channels)
	}
	p += 4
	copy(h.PlainSHA256[:], b[p:p+32])
	p += 32
	n := binary.BigEndian.Uint64(b[p:])
	if n > MaxPayload {
		return h, 0, corrupt(int64(p), "payload length %d exceeds the %d byte limit", n, MaxPayload)
	}
	h.PayloadLen = int64(n)
	h.Encrypted = flags&flagEncrypted != 0
	if h.Encrypted && h.PlainSHA256 != [32]byte{} {
		return h, 0, corrupt(int64(p-32), "encrypted envelope carries a plaintext hash")
	}
	return h, end, nil
}

// DecodeEnvelope parses and fully verifies one stored version: header
// checksum, exact length, payload hash, and for a clear payload its plaintext
// hash. A damaged version is a *lnvault.CorruptError.
func DecodeEnvelope(b []byte) (*Envelope, error) {
	h, start, err := DecodeHeader(b)
	if err != nil {
		return nil, err
	}
	want := int64(start) + h.PayloadLen + envTrail
	if int64(len(b)) != want {
		return nil, corrupt(int64(len(b)), "envelope is %d bytes, its header says %d (truncated or extended)", len(b), want)
	}
	payload := b[start : start+int(h.PayloadLen)]
	sum := sha256.Sum256(payload)
	if !bytes.Equal(sum[:], b[len(b)-envTrail:]) {
		return nil, corrupt(int64(start), "payload checksum mismatch")
	}
	if !h.Encrypted && sum != h.PlainSHA256 {
		return nil, corrupt(int64(start), "payload does not match the plaintext hash in the header")
	}
	if h.Encrypted && !bytes.HasPrefix(payload, []byte("age-encryption.org/")) {
		return nil, corrupt(int64(start), "payload flagged encrypted is not an age file")
	}
	return &Envelope{Header: h, Payload: payload}, nil
}

// Open returns the plaintext, decrypting with identities when the envelope is
// encrypted. It fails with ErrEncrypted when identities are needed and none
// are given, and with ErrWrongIdentity when none matches.
func (e *Envelope) Open(identities []age.Identity) ([]byte, error) {
	if !e.Encrypted {
		return e.Payload, nil
	}
	if len(identities) == 0 {
		return nil, fmt.Errorf("%w with age: give the identity file that matches its recipients (--identity FILE)", ErrEncrypted)
	}
	r, err := age.Decrypt(bytes.NewReader(e.Payload), identities...)
	if err != nil {
		var nm *age.NoIdentityMatchError
		if errors.As(err, &nm) {
			return nil, fmt.Errorf("%w (it was encrypted to other recipients)", ErrWrongIdentity)
		}
		return nil, fmt.Errorf("decrypting static channel backup: %w", err)
	}
	out, err := io.ReadAll(io.LimitReader(r, MaxPayload+1))
	if err != nil {
		return nil, fmt.Errorf("decrypting static channel backup (damaged ciphertext?): %w", err)
	}
	if len(out) > MaxPayload {
		return nil, fmt.Errorf("decrypted static channel backup exceeds the %d byte limit", MaxPayload)
	}
	return out, nil
}
