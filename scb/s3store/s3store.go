// Package s3store keeps static channel backups on S3-compatible object
// storage. Package backends wires it to the scb store scheme "s3", so the same URL
// that names an object-storage backup in backup.lock also names where its
// SCBs go:
//
//	s3://bucket/prefix?endpoint=http://127.0.0.1:7070&region=us-east-1&path-style=true
//
// Each version is one immutable object <prefix>/scb/<sequence, 12 digits>,
// holding the scb envelope byte for byte. The key is the sequence number
// alone, and it is written with a conditional PUT (If-None-Match: *), so two
// writers racing for one number cannot both win: a number is never reused
// and a stored version is never overwritten. The time the version was stored
// travels as object metadata and completes the version id
// ("<seq>-<stored time>", as scb.VersionID formats it). The replica's own
// objects live beside it under the same prefix and ignore scb/.
package s3store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/replica"
	"github.com/lnvault/lnvault/scb"
)

// OpenURL is Open as an scb.StoreOpener (package backends wires it to s3:
// URLs).
func OpenURL(ctx context.Context, rawURL string, opts scb.StoreOptions) (scb.Store, error) {
	st, err := Open(ctx, rawURL, opts)
	if err != nil {
		return nil, err
	}
	return st, nil
}

const (
	// Dir is the folder under the URL's prefix that holds the versions.
	Dir = "scb/"
	// metaStored is the object metadata key (x-amz-meta-lnvault-stored)
	// carrying the stored time, RFC 3339 with nanoseconds.
	metaStored = "lnvault-stored"
	// headLen is how much of each object List reads: the largest envelope
	// header (9 fixed bytes, a 32-byte kind, 56 bytes after it) fits.
	headLen = 128
	// listParallel bounds the ranged GETs of one List.
	listParallel = 8
	// putAttempts bounds the retries of Put when other writers keep taking
	// the next number.
	putAttempts = 20
)

// Store is an scb.Store on an S3 bucket.
type Store struct {
	obj  replica.MetaStore
	log  *slog.Logger
	mu   sync.Mutex // one Put at a time from this handle
	next uint64     // the number the next Put tries; 0: list first
	// now is the clock (tests).
	now func() time.Time
}

// Open opens the SCB store of an s3:// URL. It accepts every parameter the
// replica's URL accepts (retention=... is meaningless here and ignored), so
// a backup.lock destination can be used as is. The bucket must exist.
func Open(ctx context.Context, rawURL string, opts scb.StoreOptions) (*Store, error) {
	if lnvault.Scheme(rawURL) != "s3" {
		return nil, fmt.Errorf("invalid static channel backup URL %q: want s3://BUCKET/PREFIX?endpoint=...", rawURL)
	}
	ost, _, err := replica.ParseURL(ctx, rawURL)
	if err != nil {
		return nil, err
	}
	st, ok := ost.(replica.MetaStore)
	if !ok {
		ost.Close()
		return nil, fmt.Errorf("s3 URL %q opened a store that keeps no object metadata (%s)", rawURL, ost)
	}
	return New(st, opts), nil
}

// New returns the SCB store under Dir of an object store.
func New(st replica.MetaStore, opts scb.StoreOptions) *Store {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Store{obj: st, log: log, now: time.Now}
}

// String names the folder of versions (no credentials: the URL's query is
// left out).
func (s *Store) String() string { return s.obj.String() + "/" + strings.TrimSuffix(Dir, "/") }

// Close releases the store.
func (s *Store) Close() error { return s.obj.Close() }

// Key returns the object key (relative to the URL's prefix) of sequence seq.
func Key(seq uint64) string { return fmt.Sprintf("%s%012d", Dir, seq) }

// ParseKey returns the sequence number of a version's key (relative to the
// URL's prefix); ok is false for any other key.
func ParseKey(key string) (seq uint64, ok bool) {
	name, found := strings.CutPrefix(key, Dir)
	if !found || len(name) != 12 {
		return 0, false
	}
	for i := 0; i < len(name); i++ {
		if name[i] < '0' || name[i] > '9' {
			return 0, false
		}
	}
	seq, err := strconv.ParseUint(name, 10, 64)
	if err != nil || seq == 0 {
		return 0, false
	}
	return seq, true
}

type object struct {
	seq     uint64
	size    int64
	modTime time.Time
}

// objects lists the versions' objects, by sequence number.
func (s *Store) objects(ctx context.Context) ([]object, error) {
	infos, err := s.obj.List(ctx, Dir)
	if err != nil {
		return nil, err
	}
	out := make([]object, 0, len(infos))
	for _, o := range infos {
		seq, ok := ParseKey(o.Key)
		if !ok {
			s.log.Debug("scb: ignoring an object lnvault did not write", "store", s.String(), "key", o.Key)
			continue
		}
		out = append(out, object{seq: seq, size: o.Size, modTime: o.ModTime})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].seq < out[j].seq })
	return out, nil
}

// Put implements scb.Store. The next number comes from a listing, made once
// and then whenever a conditional PUT finds the number taken (another writer
// got there first): in the steady state a version costs one PUT, and the
// condition, not the listing, is what keeps numbers unique.
func (s *Store) Put(ctx context.Context, env []byte) (scb.Version, error) {
	e, err := scb.DecodeEnvelope(env)
	if err != nil {
		return scb.Version{}, fmt.Errorf("refusing to store an invalid envelope: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for attempt := 0; attempt < putAttempts; attempt++ {
		if s.next == 0 {
			objs, err := s.objects(ctx)
			if err != nil {
				return scb.Version{}, err
			}
			s.next = 1
			if len(objs) > 0 {
				s.next = objs[len(objs)-1].seq + 1
			}
		}
		seq := s.next
		stored := s.now().UTC()
		err = s.putIfAbsent(ctx, Key(seq), env, stored)
		if errors.Is(err, replica.ErrPrecondition) {
			s.log.Debug("scb: sequence number taken by another writer, listing again", "store", s.String(), "seq", seq)
			s.next = 0
			continue
		}
		if err != nil {
			// The PUT may still have landed: the next Put's condition
			// then fails and a listing finds the true next number.
			return scb.Version{}, err
		}
		s.next = seq + 1
		id := scb.VersionID(seq, stored)
		_, t, _ := scb.ParseVersionID(id) // the id's precision
		return versionOf(id, seq, t, e.Header, int64(len(env))), nil
	}
	return scb.Version{}, fmt.Errorf("storing static channel backup in %s: %d attempts lost the race for the next version number to other writers", s, putAttempts)
}

func (s *Store) putIfAbsent(ctx context.Context, key string, data []byte, stored time.Time) error {
	return s.obj.PutIfAbsentMeta(ctx, key, data, map[string]string{metaStored: stored.Format(time.RFC3339Nano)})
}

func versionOf(id string, seq uint64, t time.Time, h scb.Header, size int64) scb.Version {
	return scb.Version{ID: id, Seq: seq, Stored: t, Kind: h.Kind, Created: h.Created, Channels: h.Channels,
		Encrypted: h.Encrypted, PlainSHA256: h.PlainSHA256, Size: size}
}

// DecodeListed builds the Version of one listed object from its first bytes
// (a ranged GET), its size and stored-time metadata (fallback: the listing's
// time). The header is verified (checksum) and its payload length must match
// the object's size; the payload itself is verified when the version is
// fetched. A damaged object yields a Version with Err set.
func DecodeListed(seq uint64, head []byte, size int64, storedMeta string, modTime time.Time) scb.Version {
	stored := modTime.UTC()
	if t, err := time.Parse(time.RFC3339Nano, storedMeta); err == nil {
		stored = t.UTC()
	}
	id := scb.VersionID(seq, stored)
	_, stored, _ = scb.ParseVersionID(id)
	v := scb.Version{ID: id, Seq: seq, Stored: stored, Channels: -1, Size: size}
	h, start, err := scb.DecodeHeader(head)
	if err != nil {
		v.Err = withObject(err, Key(seq))
		return v
	}
	if want := int64(start) + h.PayloadLen + 32; size != want {
		v.Kind = h.Kind
		v.Err = &lnvault.CorruptError{Offset: -1, Object: Key(seq),
			Reason: fmt.Sprintf("object is %d bytes, its header says %d (truncated or extended)", size, want)}
		return v
	}
	return versionOf(id, seq, stored, h, size)
}

func withObject(err error, key string) error {
	var ce *lnvault.CorruptError
	if errors.As(err, &ce) {
		ce.Object = key
	}
	return err
}

// List implements scb.Store: one listing, then a ranged GET of each
// version's header, a few at a time.
func (s *Store) List(ctx context.Context) ([]scb.Version, error) {
	objs, err := s.objects(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]scb.Version, len(objs))
	errs := make([]error, len(objs))
	sem := make(chan struct{}, listParallel)
	var wg sync.WaitGroup
	for i, o := range objs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out[i], errs[i] = s.listed(ctx, o)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

func (s *Store) listed(ctx context.Context, o object) (scb.Version, error) {
	key := Key(o.seq)
	if o.size == 0 {
		return DecodeListed(o.seq, nil, 0, "", o.modTime), nil
	}
	head, meta, err := s.obj.GetMeta(ctx, key, headLen)
	if errors.Is(err, fs.ErrNotExist) {
		// Deleted between the listing and the GET: show it as gone.
		v := DecodeListed(o.seq, nil, o.size, "", o.modTime)
		v.Err = fmt.Errorf("%s vanished while listing", key)
		return v, nil
	}
	if err != nil {
		return scb.Version{}, err
	}
	return DecodeListed(o.seq, head, o.size, meta[metaStored], o.modTime), nil
}

// Get implements scb.Store. The id's sequence number names the object; a
// stored time that differs from the object's means the id is not from this
// store.
func (s *Store) Get(ctx context.Context, id string) ([]byte, error) {
	seq, _, err := scb.ParseVersionID(id)
	if err != nil {
		return nil, err
	}
	key := Key(seq)
	// Bounded by the largest envelope; one cut short fails its checksum.
	data, meta, err := s.obj.GetMeta(ctx, key, scb.MaxPayload+4096)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: no version %s in %s", scb.ErrNoVersion, id, s)
	}
	if err != nil {
		return nil, err
	}
	if m, ok := meta[metaStored]; ok {
		if st, err := time.Parse(time.RFC3339Nano, m); err == nil && scb.VersionID(seq, st) != id {
			return nil, fmt.Errorf("%w: no version %s in %s (version %d there is %s)", scb.ErrNoVersion, id, s, seq, scb.VersionID(seq, st))
		}
	}
	// Without metadata (an object copied by hand) the listing's time made
	// the id, which a GET does not return: the number decides.
	return data, nil
}
