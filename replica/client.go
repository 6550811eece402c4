package replica

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/scb"
)

// ObjectStore is the little an object storage must do for lnvault: whole-object
// PUT/GET/DELETE under a prefix, a recursive listing and one conditional PUT
// (for the lease), and for snapshot objects, which can be several GiB, a PUT
// from a file, a streaming GET and a GET of the first bytes. Keys are
// relative to the store's prefix and use '/'.
// replica/s3 and replica/dir implement it.
type ObjectStore interface {
	// String names the store for messages (a URL without credentials).
	String() string
	// Put stores data at key, durably, replacing any object there.
	Put(ctx context.Context, key string, data []byte) error
	// PutFile stores the first size bytes of f at key, like Put, reading f
	// with ReadAt (it may read it more than once, e.g. to sign the payload).
	PutFile(ctx context.Context, key string, f *os.File, size int64) error
	// PutIf stores data only if the object's current ETag is match, or, with
	// match "", only if there is no object at key. A failed condition is
	// ErrPrecondition. It returns the new object's ETag.
	PutIf(ctx context.Context, key string, data []byte, match string) (etag string, err error)
	// Get returns an object and its ETag; a missing object is an error that
	// wraps fs.ErrNotExist.
	Get(ctx context.Context, key string) (data []byte, etag string, err error)
	// GetTo is Get streaming the object to w. An error of w is returned as is.
	GetTo(ctx context.Context, key string, w io.Writer) (etag string, err error)
	// GetRange returns the first n bytes of an object (all of it if it is
	// shorter); a missing object is an error that wraps fs.ErrNotExist.
	GetRange(ctx context.Context, key string, n int64) ([]byte, error)
	// List returns every object whose key starts with prefix, sorted by key.
	List(ctx context.Context, prefix string) ([]ObjectInfo, error)
	// Delete removes objects; a key that does not exist is not an error.
	Delete(ctx context.Context, keys ...string) error
	Close() error
}

// MetaStore is an ObjectStore that keeps a little metadata with an object
// (S3's x-amz-meta-*): the SCB store records there when a version was
// stored. Package scb/s3store needs it; replica does not.
type MetaStore interface {
	ObjectStore
	// PutIfAbsentMeta is PutIf(ctx, key, data, "") with meta stored along.
	PutIfAbsentMeta(ctx context.Context, key string, data []byte, meta map[string]string) error
	// GetMeta returns at most the first n bytes of an object and its
	// metadata; a missing object is an error that wraps fs.ErrNotExist.
	GetMeta(ctx context.Context, key string, n int64) ([]byte, map[string]string, error)
}

// ObjectInfo is one entry of a listing.
type ObjectInfo struct {
	Key     string
	Size    int64
	ModTime time.Time
}

// ErrPrecondition: a conditional PUT found another object than expected.
var ErrPrecondition = errors.New("precondition failed: the object changed")

// SnapshotInfo describes a snapshot object: the database after the change of
// index Index (version Version) of its generation.
type SnapshotInfo struct {
	Generation string    `json:"generation"`
	Index      uint64    `json:"index"`
	Version    uint32    `json:"version"`
	Size       int64     `json:"size"`
	Created    time.Time `json:"created"`
	Key        string    `json:"key"`
}

// SegmentInfo describes a segment object: the changes of indexes
// FirstIndex..LastIndex, versions FirstVersion..LastVersion.
type SegmentInfo struct {
	Generation   string    `json:"generation"`
	FirstIndex   uint64    `json:"first_index"`
	LastIndex    uint64    `json:"last_index"`
	FirstVersion uint32    `json:"first_version"`
	LastVersion  uint32    `json:"last_version"`
	Size         int64     `json:"size"`
	Created      time.Time `json:"created"`
	Key          string    `json:"key"`
}

// Generation is everything stored in one generation, sorted by index.
type Generation struct {
	ID        string
	Snapshots []SnapshotInfo
	Segments  []SegmentInfo
	// Rewound lists the indexes of rewound changes (their markers): while
	// the head is the change just before one, it may not be rewound.
	Rewound []uint64
}

// HeadRewound tells whether a head of headCount changes was left by a
// rewind (the marker of the change after it exists).
func (g *Generation) HeadRewound(headCount uint64) bool {
	return headCount > 0 && slices.Contains(g.Rewound, headCount)
}

// Created is the time of the generation's first object.
func (g *Generation) Created() time.Time {
	var t time.Time
	for _, s := range g.Snapshots {
		if t.IsZero() || s.Created.Before(t) {
			t = s.Created
		}
	}
	for _, s := range g.Segments {
		if t.IsZero() || s.Created.Before(t) {
			t = s.Created
		}
	}
	return t
}

// Updated is the time of the generation's last object.
func (g *Generation) Updated() time.Time {
	var t time.Time
	for _, s := range g.Snapshots {
		if s.Created.After(t) {
			t = s.Created
		}
	}
	for _, s := range g.Segments {
		if s.Created.After(t) {
			t = s.Created
		}
	}
	return t
}

// Size is the bytes stored by the generation.
func (g *Generation) Size() int64 {
	var n int64
	for _, s := range g.Snapshots {
		n += s.Size
	}
	for _, s := range g.Segments {
		n += s.Size
	}
	return n
}

// Inventory is a whole replica, from one listing.
type Inventory struct {
	Generations []*Generation // oldest first
	Unknown     []string      // keys lnvault did not write (ignored)
	Created     bool          // the marker object exists (a backup, maybe still empty)
}

// Latest returns the newest generation, nil if there is none.
func (inv *Inventory) Latest() *Generation {
	if len(inv.Generations) == 0 {
		return nil
	}
	return inv.Generations[len(inv.Generations)-1]
}

// ReplicaClient is the replica's storage, in the shape of litestream's: list
// generations, list/read/write/delete snapshots and segments, and the lease
// that keeps a second writer out.
type ReplicaClient interface {
	String() string
	Inventory(ctx context.Context) (*Inventory, error)
	Generations(ctx context.Context) ([]string, error)
	WriteSnapshotFile(ctx context.Context, gen string, f *os.File, size int64, h Header) (SnapshotInfo, error)
	OpenSnapshot(ctx context.Context, s SnapshotInfo) (Header, *io.SectionReader, func() error, error)
	ReadSnapshotHeader(ctx context.Context, s SnapshotInfo) (Header, error)
	DeleteSnapshots(ctx context.Context, s []SnapshotInfo) error
	WriteSegment(ctx context.Context, gen string, data []byte, h Header) (SegmentInfo, error)
	WriteRewound(ctx context.Context, gen string, idx uint64) error
	DeleteRewound(ctx context.Context, gen string, idxs []uint64) error
	ReadSegment(ctx context.Context, s SegmentInfo) (*Segment, error)
	ReadSegmentHeader(ctx context.Context, s SegmentInfo) (Header, error)
	DeleteSegments(ctx context.Context, s []SegmentInfo) error
	DeleteGeneration(ctx context.Context, gen string) error
	CreateMarker(ctx context.Context) error
	DeleteMarker(ctx context.Context) error
	DeleteLease(ctx context.Context) error
	ProbeConditionalWrites(ctx context.Context) error
	ReadLease(ctx context.Context) (Lease, string, error)
	WriteLease(ctx context.Context, l Lease, match string) (string, error)
}

// Lease is the object that names the one writer of a replica.
type Lease struct {
	Owner string `json:"owner"`
	Host  string `json:"host"`
	PID   int    `json:"pid"`
	// PIDNS names the holder's PID namespace (/proc/self/ns/pid): a pid
	// is only known dead to a process of the same host and namespace.
	PIDNS string `json:"pid_ns,omitempty"`
	// Expires is on the holder's clock: only a process on the same host
	// compares it with its own.
	Expires time.Time `json:"expires"`
	// TTL is how long the lease lasts without renewal: another host takes
	// it over only after seeing it unchanged that long (0: written before
	// lnvault 0.9; the taker's own TTL is used).
	TTL time.Duration `json:"ttl_ns,omitempty"`
	// Released: the holder closed; anyone may take it at once.
	Released bool `json:"released,omitempty"`
}

const (
	leaseKey  = "lease.json"
	markerKey = "lnvault.json" // written once at creation: an empty backup exists
)

// probePrefix holds the objects of ProbeConditionalWrites.
const probePrefix = "probe/"

// ProbeConditionalWrites checks that the store refuses the conditional
// writes that must fail (a creation where an object exists, a replacement
// of an object whose ETag is not the one given): the lease and the
// recognition of a retried upload rest on them, and some S3-compatible
// stores ignore the conditions silently.
func (c *Client) ProbeConditionalWrites(ctx context.Context) error {
	key := probePrefix + newOwnerID()
	defer c.Store.Delete(context.WithoutCancel(ctx), key)
	if _, err := c.Store.PutIf(ctx, key, []byte("1"), ""); err != nil {
		return fmt.Errorf("probing conditional writes on %s: %w", c, err)
	}
	var ignored []string
	if _, err := c.Store.PutIf(ctx, key, []byte("2"), ""); err == nil {
		ignored = append(ignored, "If-None-Match: * (it replaced an existing object)")
	} else if !errors.Is(err, ErrPrecondition) {
		return fmt.Errorf("probing conditional writes on %s: %w", c, err)
	}
	if _, err := c.Store.PutIf(ctx, key, []byte("3"), `"0123456789abcdef0123456789abcdef"`); err == nil {
		ignored = append(ignored, "If-Match (it replaced an object whose ETag did not match)")
	} else if !errors.Is(err, ErrPrecondition) {
		return fmt.Errorf("probing conditional writes on %s: %w", c, err)
	}
	if len(ignored) > 0 {
		return fmt.Errorf("the object store at %s ignores conditional writes: %s. lnvault's lease (one writer per replica) and its recognition of a retried upload rest on them: use a store that honours them (AWS S3, MinIO, versitygw, Ceph RGW and others do), or accept the risk with ?unsafe-no-conditional-writes=1 in the URL",
			c, strings.Join(ignored, "; "))
	}
	return nil
}

// CreateMarker writes the object that says a backup exists at the prefix,
// atomically (a conditional PUT): ErrPrecondition if it is already there.
func (c *Client) CreateMarker(ctx context.Context) error {
	data := fmt.Sprintf(`{"lnvault_replica":1,"created":%q}`, time.Now().UTC().Format(time.RFC3339Nano))
	_, err := c.Store.PutIf(ctx, markerKey, []byte(data), "")
	return err
}

// DeleteMarker removes the object that says a backup exists.
func (c *Client) DeleteMarker(ctx context.Context) error {
	return c.deleteKeys(ctx, []string{markerKey})
}

// DeleteLease removes the lease object (after a Delete: nothing is left to
// guard).
func (c *Client) DeleteLease(ctx context.Context) error { return c.deleteKeys(ctx, []string{leaseKey}) }

// Client implements ReplicaClient over an ObjectStore with lnvault's layout:
//
//	<prefix>/lease.json
//	<prefix>/<gen>/snapshots/<index>_<version>.snap.zst
//	<prefix>/<gen>/segments/<first index>-<last index>_<first version>-<last version>.seg.zst
//	<prefix>/<gen>/rewound/<index>
//
// with fixed-width hex numbers so that keys sort in log order; gen is the
// generation's creation time in hex nanoseconds, so generations sort by age.
// An object's creation time is in its header; the listing's modification
// time stands for it where minutes do not matter (retention).
type Client struct {
	Store ObjectStore
}

// NewClient returns a Client over s.
func NewClient(s ObjectStore) *Client { return &Client{Store: s} }

func (c *Client) String() string { return c.Store.String() }

// NewGenerationID returns a generation id newer than every id in existing.
func NewGenerationID(existing []string, now time.Time) string {
	id := uint64(now.UnixNano())
	for _, g := range existing {
		var v uint64
		if _, err := fmt.Sscanf(g, "%016x", &v); err == nil && v >= id {
			id = v + 1
		}
	}
	return fmt.Sprintf("%016x", id)
}

func validGeneration(g string) bool {
	if len(g) != 16 {
		return false
	}
	for _, r := range g {
		if !strings.ContainsRune("0123456789abcdef", r) {
			return false
		}
	}
	return true
}

// Keys are determined by what an object holds, never by when it was made:
// a retried upload (after a PUT that stored the object but reported an
// error) targets the same key, where conditional creation finds it.
func snapshotKey(gen string, h Header) string {
	return fmt.Sprintf("%s/snapshots/%016x_%08x.snap.zst", gen, h.LastIndex, h.LastVersion)
}

func segmentKey(gen string, h Header) string {
	return fmt.Sprintf("%s/segments/%016x-%016x_%08x-%08x.seg.zst", gen, h.FirstIndex, h.LastIndex, h.FirstVersion, h.LastVersion)
}

// parseSnapshotName parses a snapshot's name; names written before lnvault
// 0.9 end with the creation time (unix microseconds), which is then taken as
// Created (otherwise the listing's modification time is).
func parseSnapshotName(gen, name string) (SnapshotInfo, bool) {
	var s SnapshotInfo
	var us uint64
	switch {
	case !strings.HasSuffix(name, ".snap.zst"):
		return s, false
	case len(name) == 16+1+8+len(".snap.zst"):
		if n, err := fmt.Sscanf(name, "%016x_%08x.snap.zst", &s.Index, &s.Version); err != nil || n != 2 {
			return s, false
		}
	case len(name) == 16+1+8+1+16+len(".snap.zst"):
		if n, err := fmt.Sscanf(name, "%016x_%08x_%016x.snap.zst", &s.Index, &s.Version, &us); err != nil || n != 3 {
			return s, false
		}
		s.Created = time.UnixMicro(int64(us))
	default:
		return s, false
	}
	s.Generation = gen
	return s, true
}

// parseSegmentName parses a segment's name (see parseSnapshotName).
func parseSegmentName(gen, name string) (SegmentInfo, bool) {
	var s SegmentInfo
	var us uint64
	switch {
	case !strings.HasSuffix(name, ".seg.zst"):
		return s, false
	case len(name) == 16+1+16+1+8+1+8+len(".seg.zst"):
		if n, err := fmt.Sscanf(name, "%016x-%016x_%08x-%08x.seg.zst", &s.FirstIndex, &s.LastIndex, &s.FirstVersion, &s.LastVersion); err != nil || n != 4 {
			return s, false
		}
	case len(name) == 16+1+16+1+8+1+8+1+16+len(".seg.zst"):
		if n, err := fmt.Sscanf(name, "%016x-%016x_%08x-%08x_%016x.seg.zst", &s.FirstIndex, &s.LastIndex, &s.FirstVersion, &s.LastVersion, &us); err != nil || n != 5 {
			return s, false
		}
		s.Created = time.UnixMicro(int64(us))
	default:
		return s, false
	}
	if s.LastIndex < s.FirstIndex || s.LastVersion < s.FirstVersion {
		return s, false
	}
	s.Generation = gen
	return s, true
}

// Inventory lists the whole replica with one listing.
func (c *Client) Inventory(ctx context.Context) (*Inventory, error) {
	objs, err := c.Store.List(ctx, "")
	if err != nil {
		return nil, err
	}
	inv := &Inventory{}
	gens := map[string]*Generation{}
	for _, o := range objs {
		if o.Key == leaseKey || strings.HasPrefix(o.Key, "scb/") || strings.HasPrefix(o.Key, probePrefix) ||
			(!strings.Contains(o.Key, "/") && strings.HasSuffix(o.Key, scb.DirSuffix)) {
			// scb/ holds the static channel backups of s3:// (package
			// scb/s3store), *.scb at the top those of dir:// (scb.DirStore).
			continue
		}
		if o.Key == markerKey {
			inv.Created = true
			continue
		}
		parts := strings.Split(o.Key, "/")
		if len(parts) != 3 || !validGeneration(parts[0]) {
			inv.Unknown = append(inv.Unknown, o.Key)
			continue
		}
		g := gens[parts[0]]
		if g == nil {
			g = &Generation{ID: parts[0]}
		}
		switch parts[1] {
		case "snapshots":
			s, ok := parseSnapshotName(g.ID, parts[2])
			if !ok {
				inv.Unknown = append(inv.Unknown, o.Key)
				continue
			}
			s.Size, s.Key = o.Size, o.Key
			if s.Created.IsZero() {
				s.Created = o.ModTime
			}
			g.Snapshots = append(g.Snapshots, s)
		case "segments":
			s, ok := parseSegmentName(g.ID, parts[2])
			if !ok {
				inv.Unknown = append(inv.Unknown, o.Key)
				continue
			}
			s.Size, s.Key = o.Size, o.Key
			if s.Created.IsZero() {
				s.Created = o.ModTime
			}
			g.Segments = append(g.Segments, s)
		case "rewound":
			var idx uint64
			if n, err := fmt.Sscanf(parts[2], "%016x", &idx); err != nil || n != 1 || len(parts[2]) != 16 {
				inv.Unknown = append(inv.Unknown, o.Key)
				continue
			}
			g.Rewound = append(g.Rewound, idx)
		default:
			inv.Unknown = append(inv.Unknown, o.Key)
			continue
		}
		gens[g.ID] = g
	}
	for id, g := range gens {
		if len(g.Snapshots) == 0 && len(g.Segments) == 0 {
			// Markers alone: what an interrupted deletion of the
			// generation left. Nothing to restore from.
			delete(gens, id)
		}
	}
	for _, g := range gens {
		slices.SortFunc(g.Snapshots, func(a, b SnapshotInfo) int {
			if a.Index != b.Index {
				return cmpU64(a.Index, b.Index)
			}
			return a.Created.Compare(b.Created)
		})
		slices.SortFunc(g.Segments, func(a, b SegmentInfo) int {
			if a.FirstIndex != b.FirstIndex {
				return cmpU64(a.FirstIndex, b.FirstIndex)
			}
			return a.Created.Compare(b.Created)
		})
		inv.Generations = append(inv.Generations, g)
	}
	slices.SortFunc(inv.Generations, func(a, b *Generation) int { return strings.Compare(a.ID, b.ID) })
	return inv, nil
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Generations lists the generation ids, oldest first.
func (c *Client) Generations(ctx context.Context) ([]string, error) {
	inv, err := c.Inventory(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(inv.Generations))
	for i, g := range inv.Generations {
		out[i] = g.ID
	}
	return out, nil
}

// WriteSnapshotFile stores a snapshot object encoded by EncodeSnapshotFile
// (size bytes of f), streaming it.
func (c *Client) WriteSnapshotFile(ctx context.Context, gen string, f *os.File, size int64, h Header) (SnapshotInfo, error) {
	key := snapshotKey(gen, h)
	if err := c.Store.PutFile(ctx, key, f, size); err != nil {
		return SnapshotInfo{}, err
	}
	s, _ := parseSnapshotName(gen, key[len(gen)+len("/snapshots/"):])
	s.Size, s.Key, s.Created = size, key, h.Created
	return s, nil
}

// WriteSegment stores an encoded segment object, creating it only if its key
// is free: where a segment is already (a retry of a PUT that stored it but
// failed to say so), it must hold the same changes, and is then kept.
func (c *Client) WriteSegment(ctx context.Context, gen string, data []byte, h Header) (SegmentInfo, error) {
	key := segmentKey(gen, h)
	s, _ := parseSegmentName(gen, key[len(gen)+len("/segments/"):])
	s.Size, s.Key, s.Created = int64(len(data)), key, h.Created
	_, err := c.Store.PutIf(ctx, key, data, "")
	if !errors.Is(err, ErrPrecondition) {
		if err != nil {
			return SegmentInfo{}, err
		}
		return s, nil
	}
	there, err := c.ReadSegment(ctx, s)
	if err != nil {
		return SegmentInfo{}, fmt.Errorf("%s exists already and cannot be read: %w", c.objectName(key), err)
	}
	ours, err := DecodeSegment(data)
	if err != nil {
		return SegmentInfo{}, err
	}
	if !sameChanges(there.Changes, ours.Changes) {
		return SegmentInfo{}, c.corrupt(key, h.FirstVersion, "it holds other changes than the ones being stored at its indexes: two histories in one generation (another writer despite the lease?)")
	}
	s.Created = there.Created
	return s, nil
}

func sameChanges(a, b []*lnvault.Change) bool {
	return slices.EqualFunc(a, b, func(x, y *lnvault.Change) bool {
		return x.Kind == y.Kind && x.Version == y.Version && slices.Equal(x.Statements, y.Statements)
	})
}

// ReadSegmentHeader reads only the header of a segment (one ranged GET), for
// its creation time.
func (c *Client) ReadSegmentHeader(ctx context.Context, s SegmentInfo) (Header, error) {
	data, err := c.Store.GetRange(ctx, s.Key, headerSize)
	if errors.Is(err, fs.ErrNotExist) {
		return Header{}, c.corrupt(s.Key, s.FirstVersion, "the object is missing (deleted while in use?)")
	}
	if err != nil {
		return Header{}, err
	}
	h, err := DecodeHeader(data)
	if err == nil && (h.Type != typeSegment || h.FirstIndex != s.FirstIndex || h.LastIndex != s.LastIndex) {
		err = fmt.Errorf("its header says type %d indexes %d-%d, unlike its name", h.Type, h.FirstIndex, h.LastIndex)
	}
	if err != nil {
		return h, c.corrupt(s.Key, s.FirstVersion, err.Error())
	}
	return h, nil
}

func rewoundKey(gen string, idx uint64) string {
	return fmt.Sprintf("%s/rewound/%016x", gen, idx)
}

// WriteRewound stores the marker of a rewind of the change of index idx: it
// keeps a restarted writer from rewinding the head before it too.
func (c *Client) WriteRewound(ctx context.Context, gen string, idx uint64) error {
	return c.Store.Put(ctx, rewoundKey(gen, idx), []byte(`{"rewound":true}`))
}

// DeleteRewound removes rewind markers that no longer apply.
func (c *Client) DeleteRewound(ctx context.Context, gen string, idxs []uint64) error {
	keys := make([]string, len(idxs))
	for i, idx := range idxs {
		keys[i] = rewoundKey(gen, idx)
	}
	return c.deleteKeys(ctx, keys)
}

func (c *Client) objectName(key string) string {
	return strings.TrimSuffix(c.Store.String(), "/") + "/" + key
}

// corrupt names the object in a CorruptError.
func (c *Client) corrupt(key string, version uint32, reason string) error {
	return &lnvault.CorruptError{Offset: -1, Version: version, Object: c.objectName(key), Reason: reason}
}

func (c *Client) get(ctx context.Context, key string, version uint32) ([]byte, error) {
	data, _, err := c.Store.Get(ctx, key)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, c.corrupt(key, version, "the object is missing (deleted while in use?)")
	}
	return data, err
}

// OpenSnapshot downloads and verifies a snapshot through temp files, with
// memory that does not grow with the database, and returns the database as
// a reader over an unlinked temp file; closing (the returned func) frees it.
func (c *Client) OpenSnapshot(ctx context.Context, s SnapshotInfo) (Header, *io.SectionReader, func() error, error) {
	h, raw, size, err := decodeSnapshotStream(func(w io.Writer) error {
		_, err := c.Store.GetTo(ctx, s.Key, w)
		return err
	})
	if err != nil {
		var oe *objectError
		switch {
		case errors.Is(err, fs.ErrNotExist):
			err = c.corrupt(s.Key, s.Version, "the object is missing (deleted while in use?)")
		case errors.As(err, &oe):
			err = c.corrupt(s.Key, s.Version, oe.Error())
		}
		return h, nil, nil, err
	}
	if h.LastIndex != s.Index || h.LastVersion != s.Version {
		raw.Close()
		return h, nil, nil, c.corrupt(s.Key, s.Version, fmt.Sprintf("its header says index %d version %d, its name index %d version %d", h.LastIndex, h.LastVersion, s.Index, s.Version))
	}
	return h, io.NewSectionReader(raw, 0, size), raw.Close, nil
}

// ReadSnapshotHeader reads only the header of a snapshot (one ranged GET):
// its metadata, not verified by the checksum, which covers the body.
func (c *Client) ReadSnapshotHeader(ctx context.Context, s SnapshotInfo) (Header, error) {
	data, err := c.Store.GetRange(ctx, s.Key, headerSize)
	if errors.Is(err, fs.ErrNotExist) {
		return Header{}, c.corrupt(s.Key, s.Version, "the object is missing (deleted while in use?)")
	}
	if err != nil {
		return Header{}, err
	}
	h, err := DecodeHeader(data)
	if err == nil {
		err = checkSnapshotHeader(h)
	}
	if err != nil {
		return h, c.corrupt(s.Key, s.Version, err.Error())
	}
	if h.LastIndex != s.Index || h.LastVersion != s.Version {
		return h, c.corrupt(s.Key, s.Version, fmt.Sprintf("its header says index %d version %d, its name index %d version %d", h.LastIndex, h.LastVersion, s.Index, s.Version))
	}
	return h, nil
}

// ReadSegment downloads and verifies a segment.
func (c *Client) ReadSegment(ctx context.Context, s SegmentInfo) (*Segment, error) {
	data, err := c.get(ctx, s.Key, s.FirstVersion)
	if err != nil {
		return nil, err
	}
	seg, err := DecodeSegment(data)
	if err != nil {
		return nil, c.corrupt(s.Key, s.FirstVersion, err.Error())
	}
	if seg.FirstIndex != s.FirstIndex || seg.LastIndex != s.LastIndex || seg.FirstVersion != s.FirstVersion || seg.LastVersion != s.LastVersion {
		return nil, c.corrupt(s.Key, s.FirstVersion, fmt.Sprintf("its header says indexes %d-%d versions %d-%d, unlike its name",
			seg.FirstIndex, seg.LastIndex, seg.FirstVersion, seg.LastVersion))
	}
	return seg, nil
}

// DeleteSnapshots removes snapshot objects.
func (c *Client) DeleteSnapshots(ctx context.Context, s []SnapshotInfo) error {
	keys := make([]string, len(s))
	for i := range s {
		keys[i] = s[i].Key
	}
	return c.deleteKeys(ctx, keys)
}

// DeleteSegments removes segment objects.
func (c *Client) DeleteSegments(ctx context.Context, s []SegmentInfo) error {
	keys := make([]string, len(s))
	for i := range s {
		keys[i] = s[i].Key
	}
	return c.deleteKeys(ctx, keys)
}

func (c *Client) deleteKeys(ctx context.Context, keys []string) error {
	const batch = 1000 // S3 DeleteObjects limit
	for len(keys) > 0 {
		n := min(batch, len(keys))
		if err := c.Store.Delete(ctx, keys[:n]...); err != nil {
			return err
		}
		keys = keys[n:]
	}
	return nil
}

// DeleteGeneration removes every object of a generation.
func (c *Client) DeleteGeneration(ctx context.Context, gen string) error {
	if !validGeneration(gen) {
		return fmt.Errorf("%q is not a generation id", gen)
	}
	objs, err := c.Store.List(ctx, gen+"/")
	if err != nil {
		return err
	}
	keys := make([]string, len(objs))
	for i, o := range objs {
		keys[i] = o.Key
	}
	return c.deleteKeys(ctx, keys)
}

// ReadLease returns the lease and its ETag; no lease is fs.ErrNotExist.
func (c *Client) ReadLease(ctx context.Context) (Lease, string, error) {
	var l Lease
	data, etag, err := c.Store.Get(ctx, leaseKey)
	if err != nil {
		return l, "", err
	}
	if err := json.Unmarshal(data, &l); err != nil {
		// A damaged lease must not lock a replica forever: it reads as
		// expired, and its ETag lets one writer replace it.
		return Lease{Owner: "unreadable lease", Released: true}, etag, nil
	}
	return l, etag, nil
}

// WriteLease writes the lease if its ETag is still match ("" for none).
func (c *Client) WriteLease(ctx context.Context, l Lease, match string) (string, error) {
	data, err := json.Marshal(l)
	if err != nil {
		return "", err
	}
	return c.Store.PutIf(ctx, leaseKey, data, match)
}

// parallel runs fn(i) for i in [0,n) with at most p at a time; it stops at
// the first error and returns it.
func parallel(ctx context.Context, n, p int, fn func(ctx context.Context, i int) error) error {
	if p < 1 {
		p = 1
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
		next  = make(chan int)
	)
	for range min(p, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := fn(ctx, i); err != nil {
					once.Do(func() { first = err; cancel() })
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		select {
		case next <- i:
		case <-ctx.Done():
			i = n
		}
	}
	close(next)
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return first
}
