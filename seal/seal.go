// Package seal is the client-side encryption of database backups: what a
// node sends to a backup host is ciphertext the host cannot read, forge,
// reorder, splice or silently roll back.
//
// The key hierarchy:
//
//   - The operator's age identities (AGE-SECRET-KEY-1...) stay off the node;
//     the node holds only their public recipients (age1...).
//   - Each generation of a backup has a random 32-byte data key (NewKey),
//     stored with the backup wrapped for the recipients (Key.Wrap: an age
//     file holding the key, the backup's id and the generation). Only an
//     identity unwraps it (Unwrap).
//   - From the data key, HKDF-SHA256 derives the sealing key of the changes
//     (XChaCha20-Poly1305).
//
// Each change is sealed (Key.Seal) with a 24-byte nonce never repeated
// under its key (random per key, then counted) and
// associated data binding the backup's id, the generation, the change's
// index in the generation, its version and its kind: a change moved to
// another place, another backup or another generation fails to open, naming
// where it was found. Plaintexts are padded (PaddedLen, Padmé) so
// that sizes say less about what changed.
//
// A Chain hashes a generation's changes in order over their plaintexts and
// places; the head of a backup is its last change, authenticated by its
// seal, with the chain up to it. A host can neither forge a head nor drop
// changes from the middle without the seal, the index or the chain check
// failing. A host can still serve an older, genuine head: restoring from
// several destinations and taking the newest authenticated head (package
// sealed) is what detects that.
package seal

import (
	"bytes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"sync/atomic"

	"filippo.io/age"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/hkdf"
)

// BackupID names one backup (random, chosen at init); it is in the
// associated data of every change, so changes of two backups never mix.
type BackupID [16]byte

// NewBackupID returns a random backup id.
func NewBackupID() (BackupID, error) {
	var id BackupID
	_, err := rand.Read(id[:])
	return id, err
}

// ErrOpen: a sealed change or head does not authenticate at the place it
// was found (tampered with, moved, or of another backup or key).
var ErrOpen = errors.New("sealed data does not authenticate")

// Key is a generation's data key with the keys derived from it.
type Key struct {
	backup BackupID
	gen    uint64
	raw    [32]byte
	aead   cipher.AEAD
	// Nonces: 16 random bytes drawn once per key, then a counter, so none
	// repeats under the key (a rewound change sealed again gets a new one)
	// and the ack path makes no getrandom call.
	nonceBase [16]byte
	nonces    atomic.Uint64
}

// NewKey returns a new random data key for generation gen of backup.
func NewKey(backup BackupID, gen uint64) (*Key, error) {
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, fmt.Errorf("seal: random data key: %w", err)
	}
	return newKey(backup, gen, raw)
}

func newKey(backup BackupID, gen uint64, raw [32]byte) (*Key, error) {
	k := &Key{backup: backup, gen: gen, raw: raw}
	if _, err := rand.Read(k.nonceBase[:]); err != nil {
		return nil, fmt.Errorf("seal: random nonce base: %w", err)
	}
	var sk [chacha20poly1305.KeySize]byte
	kdf := hkdf.New(sha256.New, raw[:], backup[:], []byte("lnvault seal v1 changes"))
	if _, err := io.ReadFull(kdf, sk[:]); err != nil {
		return nil, err
	}
	aead, err := chacha20poly1305.NewX(sk[:])
	if err != nil {
		return nil, err
	}
	k.aead = aead
	return k, nil
}

// Backup is the backup the key belongs to.
func (k *Key) Backup() BackupID { return k.backup }

// Generation is the generation the key seals.
func (k *Key) Generation() uint64 { return k.gen }

// wrapMagic starts a wrapped key's plaintext.
const wrapMagic = "lnvault-data-key-v1\n"

// Wrap returns the data key encrypted for recipients (an age file), with
// the backup id and the generation inside, so a wrapped key moved to
// another backup or generation is refused by Unwrap.
func (k *Key) Wrap(recipients ...age.Recipient) ([]byte, error) {
	if len(recipients) == 0 {
		return nil, errors.New("seal: wrapping a data key needs at least one age recipient")
	}
	var buf bytes.Buffer
	w, err := age.Encrypt(&buf, recipients...)
	if err != nil {
		return nil, fmt.Errorf("seal: wrapping the data key: %w", err)
	}
	var p []byte
	p = append(p, wrapMagic...)
	p = append(p, k.backup[:]...)
	p = binary.BigEndian.AppendUint64(p, k.gen)
	p = append(p, k.raw[:]...)
	if _, err := w.Write(p); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Unwrap recovers the data key of generation gen of backup from wrapped
// with one of identities.
func Unwrap(wrapped []byte, backup BackupID, gen uint64, identities ...age.Identity) (*Key, error) {
	if len(identities) == 0 {
		return nil, errors.New("seal: this backup is encrypted: give the age identity it was made for (--identity FILE)")
	}
	r, err := age.Decrypt(bytes.NewReader(wrapped), identities...)
	if err != nil {
		return nil, fmt.Errorf("seal: unwrapping the data key of generation %016x: %w", gen, err)
	}
	p, err := io.ReadAll(io.LimitReader(r, 256))
	if err != nil {
		return nil, fmt.Errorf("seal: unwrapping the data key of generation %016x: %w", gen, err)
	}
	n := len(wrapMagic)
	if len(p) != n+16+8+32 || string(p[:n]) != wrapMagic {
		return nil, fmt.Errorf("seal: the wrapped key of generation %016x is not an lnvault data key", gen)
	}
	var id BackupID
	copy(id[:], p[n:])
	g := binary.BigEndian.Uint64(p[n+16:])
	if id != backup || g != gen {
		return nil, fmt.Errorf("%w: the data key found for generation %016x of backup %x is the key of generation %016x of backup %x", ErrOpen, gen, backup, g, id)
	}
	var raw [32]byte
	copy(raw[:], p[n+24:])
	return newKey(backup, gen, raw)
}

// Position is where a sealed change belongs: its index in the generation
// (0, 1, 2, ... in the order stored), its version and its kind. A large
// change (a snapshot) is sealed in chunks: Chunk counts them from 0 and More
// is set on every chunk but the last, so a truncated or reordered one fails
// to open.
type Position struct {
	Index   uint64
	Version uint32
	Kind    byte
	Chunk   uint32
	More    bool
}

func (k *Key) ad(dst []byte, pos Position) []byte {
	dst = append(dst, "lnvault change v1"...)
	dst = append(dst, k.backup[:]...)
	dst = binary.BigEndian.AppendUint64(dst, k.gen)
	dst = binary.BigEndian.AppendUint64(dst, pos.Index)
	dst = binary.BigEndian.AppendUint32(dst, pos.Version)
	dst = append(dst, pos.Kind)
	dst = binary.BigEndian.AppendUint32(dst, pos.Chunk)
	if pos.More {
		return append(dst, 1)
	}
	return append(dst, 0)
}

// Overhead is what sealing adds to a padded plaintext: the nonce and the tag.
const Overhead = chacha20poly1305.NonceSizeX + chacha20poly1305.Overhead

// lenPrefix is the plaintext length sealed in front of it (the padding is
// cut at Open).
const lenPrefix = 4

// PaddedLen is the size n bytes of plaintext (with their length prefix)
// are padded to: 256 bytes at least, then Padmé (Nikitin et al., "Reducing
// Metadata Leakage from Encrypted Files and Communication with PURBs",
// 2019): the length rounded up so that it keeps only its top
// floor(log2(floor(log2 L)))+1 bits, which hides all but O(log log L) bits of
// the size at a cost of at most 12 % (powers of two would cost up to 100 %,
// and a db_write's ack pays for every byte). With padding off, only the
// prefix is added.
func PaddedLen(n int, pad bool) int {
	n += lenPrefix
	if !pad {
		return n
	}
	const small = 256
	if n <= small {
		return small
	}
	e := bits.Len(uint(n)) - 1 // floor(log2 n)
	s := bits.Len(uint(e))     // floor(log2 e) + 1
	mask := 1<<(e-s) - 1
	return (n + mask) &^ mask
}

// Seal appends the sealed plaintext at pos to dst: nonce, then the
// ciphertext of the length-prefixed, padded plaintext with its tag.
func (k *Key) Seal(dst []byte, pos Position, plaintext []byte, pad bool) ([]byte, error) {
	if uint64(len(plaintext)) > 1<<31 {
		return nil, fmt.Errorf("seal: a change of %d bytes is too large to seal", len(plaintext))
	}
	start := len(dst)
	padded := PaddedLen(len(plaintext), pad)
	dst = grow(dst, chacha20poly1305.NonceSizeX+padded+chacha20poly1305.Overhead)
	nonce := dst[start : start+chacha20poly1305.NonceSizeX]
	copy(nonce, k.nonceBase[:])
	binary.BigEndian.PutUint64(nonce[16:], k.nonces.Add(1))
	body := dst[start+chacha20poly1305.NonceSizeX : start+chacha20poly1305.NonceSizeX+padded]
	binary.BigEndian.PutUint32(body, uint32(len(plaintext)))
	copy(body[lenPrefix:], plaintext)
	clear(body[lenPrefix+len(plaintext):])
	var adBuf [64]byte
	out := k.aead.Seal(body[:0], nonce, body, k.ad(adBuf[:0], pos))
	return dst[:start+chacha20poly1305.NonceSizeX+len(out)], nil
}

// Open appends to dst the plaintext of sealed, which must have been sealed
// at pos with this key; anything else is an ErrOpen naming pos.
func (k *Key) Open(dst []byte, pos Position, sealed []byte) ([]byte, error) {
	if len(sealed) < Overhead+lenPrefix {
		return nil, fmt.Errorf("%w: change %d (version %d) of generation %016x is %d bytes, too short to be sealed", ErrOpen, pos.Index, pos.Version, k.gen, len(sealed))
	}
	nonce, ct := sealed[:chacha20poly1305.NonceSizeX], sealed[chacha20poly1305.NonceSizeX:]
	var adBuf [64]byte
	start := len(dst)
	out, err := k.aead.Open(dst, nonce, ct, k.ad(adBuf[:0], pos))
	if err != nil {
		return nil, fmt.Errorf("%w: change %d (version %d) of generation %016x was altered, moved from another place, or sealed with another key", ErrOpen, pos.Index, pos.Version, k.gen)
	}
	body := out[start:]
	n := binary.BigEndian.Uint32(body)
	if uint64(n) > uint64(len(body)-lenPrefix) {
		return nil, fmt.Errorf("%w: change %d (version %d): sealed length %d exceeds its %d bytes", ErrOpen, pos.Index, pos.Version, n, len(body)-lenPrefix)
	}
	copy(out[start:], body[lenPrefix:lenPrefix+int(n)])
	return out[:start+int(n)], nil
}

func grow(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b[:len(b)+n]
	}
	nb := make([]byte, len(b)+n, len(b)+n+len(b)/4)
	copy(nb, b)
	return nb
}

// Chain hashes a generation's changes in order, over their plaintexts and
// positions: Chain{}.Next(p0, c0).Next(p1, c1)... It is the same at every
// destination a change was sealed for (nonces differ, plaintexts do not), so
// two destinations' heads tell whether one is a prefix of the other or they
// forked; a dropped, repeated or replaced change changes it. Only a holder
// of the data key can compute it.
type Chain [sha256.Size]byte

// Next is the chain after the change plaintext at pos.
func (c Chain) Next(pos Position, plaintext []byte) Chain {
	h := sha256.New()
	h.Write(c[:])
	var n [8 + 4 + 1 + 8]byte
	binary.BigEndian.PutUint64(n[:], pos.Index)
	binary.BigEndian.PutUint32(n[8:], pos.Version)
	n[12] = pos.Kind
	binary.BigEndian.PutUint64(n[13:], uint64(len(plaintext)))
	h.Write(n[:])
	h.Write(plaintext)
	var out Chain
	h.Sum(out[:0])
	return out
}
