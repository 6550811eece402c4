// Package sealed keeps a backup end-to-end encrypted in any lnvault.Backend:
// the node seals each change before it leaves (package seal), the host
// (a backup server, an object store, a disk) stores ciphertext it cannot
// read, forge, reorder or splice, and a restore with the operator's age
// identity opens and checks every change.
//
// What a host sees of a change is its version and kind (it needs them to
// keep the protocol's continuity rules), its generation and index, its
// size in buckets and when it came. A sealed transaction travels as one
// statement, SealedPrefix + Ascii85 (invalid SQL, so a host that tries to
// apply it fails, naming it, rather than building a wrong database); a
// sealed snapshot as SealedSnapshotMagic + header + chunks.
//
// Every start of the node begins a generation: a new random data key,
// wrapped for the recipients and carried by the generation's first change
// and by every snapshot. Within a generation the changes are numbered;
// restore requires the numbers to follow each other (a dropped, repeated or
// reordered change is named), each generation to start at its first change,
// a generation never to come back after another, and one backup id
// throughout. A chain over the plaintexts (seal.Chain) is the head's
// fingerprint: two destinations' heads say whether one is behind the other
// or they forked (Compare).
package sealed

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"filippo.io/age"
	"github.com/lnvault/lnvault/internal/durable"
	"github.com/lnvault/lnvault/seal"
)

// Config is how a node seals: recorded in backup.lock by `lnvault init`.
type Config struct {
	Backup     seal.BackupID
	Recipients []string // age1... public keys
	Pad        bool     // pad changes to size buckets
}

// Session is one generation's data key, shared by every destination the
// node writes in this run so that their chains agree.
type Session struct {
	key *seal.Key
	ks  *keySection
	pad bool

	mu   sync.Mutex
	snap *sharedSnap // the compaction round in progress, if any
}

// sharedSnap is one compaction round's sealed snapshot: the destinations
// of a session compact together (the plugin compacts them in parallel) and
// store the same snapshot, so the node's database is copied and sealed
// once, not once per destination.
type sharedSnap struct {
	ready chan struct{}
	v     uint32
	f     *os.File
	size  int64
	err   error
	refs  int
}

// sharedSnapshot joins the round in progress or starts one with build;
// release ends the caller's share (the last one removes the file).
func (s *Session) sharedSnapshot(build func() (uint32, *os.File, error)) (*sharedSnap, func(), error) {
	s.mu.Lock()
	sn := s.snap
	if sn == nil {
		sn = &sharedSnap{ready: make(chan struct{})}
		s.snap = sn
		sn.refs++
		s.mu.Unlock()
		sn.v, sn.f, sn.err = build()
		if sn.err == nil {
			var st os.FileInfo
			if st, sn.err = sn.f.Stat(); sn.err == nil {
				sn.size = st.Size()
			}
		}
		close(sn.ready)
	} else {
		sn.refs++
		s.mu.Unlock()
		<-sn.ready
	}
	release := func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if sn.refs--; sn.refs == 0 {
			if s.snap == sn {
				s.snap = nil
			}
			if sn.f != nil {
				removeTemp(sn.f)
			}
		}
	}
	if sn.err != nil {
		release()
		return nil, func() {}, sn.err
	}
	return sn, release, nil
}

// NewSession makes a new generation: a random data key wrapped for the
// recipients.
func NewSession(cfg Config) (*Session, error) {
	rs, err := parseRecipients(cfg.Recipients)
	if err != nil {
		return nil, err
	}
	var g [8]byte
	if _, err := rand.Read(g[:]); err != nil {
		return nil, fmt.Errorf("sealed: random generation: %w", err)
	}
	k, err := seal.NewKey(cfg.Backup, binary.BigEndian.Uint64(g[:]))
	if err != nil {
		return nil, err
	}
	w, err := k.Wrap(rs...)
	if err != nil {
		return nil, err
	}
	return &Session{key: k, pad: cfg.Pad, ks: &keySection{backup: cfg.Backup, recipients: cfg.Recipients, wrapped: w}}, nil
}

// Generation is the session's generation number.
func (s *Session) Generation() uint64 { return s.key.Generation() }

func parseRecipients(names []string) ([]age.Recipient, error) {
	if len(names) == 0 {
		return nil, errors.New("an encrypted backup needs at least one age recipient (--encrypt-to age1... or --recipients-file FILE)")
	}
	if len(names) > maxRecipients {
		return nil, fmt.Errorf("%d age recipients: at most %d", len(names), maxRecipients)
	}
	var out []age.Recipient
	for _, n := range names {
		rs, err := age.ParseRecipients(strings.NewReader(n))
		if err != nil || len(rs) != 1 {
			return nil, fmt.Errorf("invalid age recipient %q: %v (expected an age1... public key, e.g. from age-keygen -y)", short(n), err)
		}
		out = append(out, rs[0])
	}
	return out, nil
}

// Recipients collects recipients from --encrypt-to keys and
// --recipients-file files (one per line; blank lines and # comments
// skipped), checked and without duplicates.
func Recipients(keys, files []string) ([]string, error) {
	var all []string
	add := func(s string) { all = append(all, strings.TrimSpace(s)) }
	for _, k := range keys {
		if strings.TrimSpace(k) != "" {
			add(k)
		}
	}
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			return nil, fmt.Errorf("reading recipients file: %w", err)
		}
		sc := bufio.NewScanner(io.LimitReader(fh, 1<<20))
		for sc.Scan() {
			l := strings.TrimSpace(sc.Text())
			if l != "" && !strings.HasPrefix(l, "#") {
				add(l)
			}
		}
		err = sc.Err()
		fh.Close()
		if err != nil {
			return nil, fmt.Errorf("recipients file %s: %w", f, err)
		}
	}
	seen := map[string]bool{}
	var out []string
	for _, r := range all {
		if !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	if _, err := parseRecipients(out); err != nil {
		return nil, err
	}
	return out, nil
}

// NewIdentity writes a new age identity to path (mode 0600, refusing to
// replace a file) and returns its recipient.
func NewIdentity(path string) (string, error) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return "", err
	}
	r := id.Recipient().String()
	data := fmt.Sprintf("# lnvault backup identity: it alone can restore the backups encrypted for\n# public key: %s\n%s\n", r, id.String())
	if err := durable.CreateFile(path, []byte(data), 0o600); err != nil {
		return "", fmt.Errorf("writing the new identity: %w (choose a path where no file is)", err)
	}
	return r, nil
}

// ParseBackupID decodes a backup id as backup.lock records it (hex).
func ParseBackupID(s string) (seal.BackupID, error) {
	var id seal.BackupID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, fmt.Errorf("backup id %q is not %d hex digits", short(s), 2*len(id))
	}
	copy(id[:], b)
	return id, nil
}

func short(s string) string {
	if len(s) > 24 {
		return s[:24] + "..."
	}
	return s
}
