package sealed

import (
	"encoding/ascii85"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/seal"
)

// Mark is the place and fingerprint of one change of a sealed backup: its
// generation, the index that follows it, its version, and the chain after
// it. The mark of a stream's last change is the backup's head.
type Mark struct {
	Gen     uint64
	Next    uint64
	Version uint32
	Chain   seal.Chain
	Kind    lnvault.Kind
	Count   uint64 // changes streamed up to this one
	Sealed  bool   // false: a plaintext backup (no chain)
}

func (m Mark) String() string {
	if !m.Sealed {
		return fmt.Sprintf("version %d (not encrypted)", m.Version)
	}
	return fmt.Sprintf("version %d (generation %016x, change %d, chain %x)", m.Version, m.Gen, m.Next, m.Chain[:6])
}

// opener is the reading side's state across one stream.
type opener struct {
	b          *Backend
	keys       map[uint64]*seal.Key
	left       map[uint64]bool // generations the stream has moved past
	backup     *seal.BackupID
	started    bool
	sealedSeen bool
	gen, next  uint64
	chain      seal.Chain
	version    uint32
	kind       lnvault.Kind
	count      uint64
	raw, plain []byte
	trail      *[]Mark
}

func (b *Backend) newOpener() *opener {
	return &opener{b: b, keys: map[uint64]*seal.Key{}, left: map[uint64]bool{}, backup: b.want}
}

func (r *opener) mark() Mark {
	return Mark{Gen: r.gen, Next: r.next, Version: r.version, Kind: r.kind, Chain: r.chain, Count: r.count, Sealed: r.sealedSeen}
}

func corrupt(v uint32, format string, args ...any) error {
	return &lnvault.CorruptError{Offset: -1, Version: v, Reason: fmt.Sprintf(format, args...)}
}

// open checks one stored change and returns its plaintext.
func (r *opener) open(c *lnvault.Change) (*lnvault.Change, error) {
	if !lnvault.IsSealed(c) {
		if len(r.b.ids) == 0 && r.b.want == nil && !r.sealedSeen {
			r.version, r.kind, r.count = c.Version, c.Kind, r.count+1
			r.record()
			return c, nil // a backup that is not encrypted
		}
		return nil, corrupt(c.Version, "a plaintext %s in an end-to-end encrypted backup: the node never wrote it (the host, or someone with access to it, put it there)", c.Kind)
	}
	r.sealedSeen = true
	var (
		e    envelope
		body []byte
		base int64
		err  error
	)
	if c.Kind == lnvault.KindTransaction {
		s := c.Statements[0][len(lnvault.SealedPrefix):]
		if r.raw, err = decode85(r.raw, s); err != nil {
			return nil, corrupt(c.Version, "sealed transaction is not valid Ascii85: %v", err)
		}
		e, body, err = parseHeader(r.raw)
	} else {
		e, base, err = readSnapshotHeader(c.Snapshot)
	}
	if err != nil {
		return nil, corrupt(c.Version, "%v", err)
	}
	k, err := r.key(e, c.Version)
	if err != nil {
		return nil, err
	}
	if err := r.place(e, c); err != nil {
		return nil, err
	}
	pos := seal.Position{Index: e.index, Version: c.Version, Kind: byte(c.Kind)}
	var out *lnvault.Change
	if c.Kind == lnvault.KindTransaction {
		if r.plain, err = k.Open(r.plain[:0], pos, body); err != nil {
			return nil, corrupt(c.Version, "%v", err)
		}
		if e.index == 0 {
			r.chain = seal.Chain{}
		}
		r.chain = r.chain.Next(pos, r.plain)
		r.next = e.index + 1
		out = lnvault.NewTransaction(c.Version, lnvault.SplitStatements(r.plain))
	} else {
		sr, chain, err := openSnapshot(k, pos, c.Snapshot, base, c.Snapshot.Size()-base, e.flags&flagPad != 0)
		if err != nil {
			return nil, corrupt(c.Version, "%v", err)
		}
		r.chain, r.next = chain, e.index
		out = lnvault.NewSnapshot(c.Version, io.NewSectionReader(sr, 0, sr.size))
	}
	r.started, r.gen, r.version, r.kind, r.count = true, e.gen, c.Version, c.Kind, r.count+1
	r.record()
	return out, nil
}

func (r *opener) record() {
	if r.trail != nil {
		*r.trail = append(*r.trail, r.mark())
	}
}

// key returns the data key of e's generation, unwrapping it when e carries
// it.
func (r *opener) key(e envelope, v uint32) (*seal.Key, error) {
	if e.key == nil {
		if k := r.keys[e.gen]; k != nil {
			return k, nil
		}
		if len(r.b.ids) == 0 {
			return nil, fmt.Errorf("%w: give the age identity it was made for (--identity FILE)", lnvault.ErrSealed)
		}
		return nil, corrupt(v, "the change comes without the key of its generation %016x: the generation's first change is missing", e.gen)
	}
	ks := e.key
	if r.backup == nil {
		id := ks.backup
		r.backup = &id
	} else if ks.backup != *r.backup {
		return nil, corrupt(v, "a change of backup %x among the changes of backup %x: two backups were spliced, or the wrong backup is at this place", ks.backup, *r.backup)
	}
	if k := r.keys[e.gen]; k != nil {
		return k, nil
	}
	if len(r.b.ids) == 0 {
		return nil, fmt.Errorf("%w for %s: give one of their age identities (--identity FILE, the file `lnvault init --new-identity` wrote or an age-keygen key file)", lnvault.ErrSealed, recipientList(ks.recipients))
	}
	k, err := seal.Unwrap(ks.wrapped, ks.backup, e.gen, r.b.ids...)
	if errors.Is(err, seal.ErrOpen) {
		return nil, corrupt(v, "%v", err)
	}
	if err != nil {
		return nil, fmt.Errorf("%w for %s, and no identity given opens it (%v): give one of theirs with --identity FILE", lnvault.ErrSealed, recipientList(ks.recipients), err)
	}
	r.keys[e.gen] = k
	return k, nil
}

// place checks that e comes where the stream is: the next index of the
// same generation, or the start of a new one.
func (r *opener) place(e envelope, c *lnvault.Change) error {
	v := c.Version
	if r.started && e.gen == r.gen {
		switch {
		case e.index < r.next:
			return corrupt(v, "change %d of generation %016x comes again after change %d: a change was replayed, or two were swapped", e.index, e.gen, r.next-1)
		case e.index > r.next:
			return corrupt(v, "changes %d to %d of generation %016x are missing before this one: dropped from the middle", r.next, e.index-1, e.gen)
		}
		return nil
	}
	if r.left[e.gen] {
		return corrupt(v, "generation %016x comes back after generation %016x: changes were reordered, or two copies spliced", e.gen, r.gen)
	}
	// The stream may begin at a snapshot that stands for the changes
	// before it; any other generation starts at its first change.
	if e.index != 0 && (r.started || c.Kind != lnvault.KindSnapshot) {
		return corrupt(v, "generation %016x starts at its change %d: the %d before it are missing", e.gen, e.index, e.index)
	}
	if r.started {
		r.left[r.gen] = true
	}
	r.chain = seal.Chain{}
	return nil
}

// decode85 decodes an Ascii85 statement into buf (reused). A 'z' stands
// for four zero bytes, so the output can be four times the input.
func decode85(buf []byte, s string) ([]byte, error) {
	if cap(buf) < 4*len(s) {
		buf = make([]byte, 4*len(s))
	}
	buf = buf[:cap(buf)]
	n, m, err := ascii85.Decode(buf, []byte(s), true)
	if err == nil && m != len(s) {
		err = fmt.Errorf("%d of %d characters decoded", m, len(s))
	}
	return buf[:n], err
}

// readSnapshotHeader decodes a sealed snapshot's header and returns where
// its chunks start.
func readSnapshotHeader(ra *io.SectionReader) (envelope, int64, error) {
	m := int64(len(lnvault.SealedSnapshotMagic))
	h := make([]byte, headerLen+4)
	n, _ := ra.ReadAt(h, m)
	if n < headerLen {
		return envelope{}, 0, fmt.Errorf("%w: sealed snapshot of %d bytes", errEnvelope, ra.Size())
	}
	h = h[:n]
	if h[16]&flagKey != 0 {
		if n < headerLen+4 {
			return envelope{}, 0, fmt.Errorf("%w: key section cut short", errEnvelope)
		}
		kl := binary.BigEndian.Uint32(h[headerLen:])
		if kl > maxKeySection {
			return envelope{}, 0, fmt.Errorf("%w: key section of %d bytes", errEnvelope, kl)
		}
		h = append(h[:headerLen+4], make([]byte, kl)...)
		if n, _ := ra.ReadAt(h[headerLen+4:], m+headerLen+4); n < int(kl) {
			return envelope{}, 0, fmt.Errorf("%w: key section cut short", errEnvelope)
		}
	} else {
		h = h[:headerLen]
	}
	e, rest, err := parseHeader(h)
	if err != nil {
		return envelope{}, 0, err
	}
	return e, m + int64(len(h)-len(rest)), nil
}
