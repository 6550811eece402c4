package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/dbapply"
)

// DefaultParallelism is how many segments a restore downloads at once.
const DefaultParallelism = 8

// Backend is a backup on object storage, used synchronously: every Append is
// one PUT of a one-change segment (of a snapshot object for a snapshot change)
// that has completed when Append returns.
// Request cost: 1 PUT per change; 1 DELETE (+1 GET) per rewind; opening for
// writing costs 1 LIST, 1 GET of the head object and 2 lease requests, then
// one lease PUT every LeaseTTL/3; Compact downloads the log since the last
// snapshot, PUTs one snapshot and DELETEs what retention drops; a restore is
// 1 LIST, 1 GET of the snapshot and 1 GET per segment after it.
type Backend struct {
	client     ReplicaClient
	opts       Options
	log        *slog.Logger
	readOnly   bool
	par        int
	closeStore func() error
	lease      *leaseHolder
	// compactMu: one compaction at a time; it is not held by appends.
	compactMu sync.Mutex

	mu       sync.Mutex
	gen      string // current generation; "" until the first write
	md       lnvault.Metadata
	head     *lnvault.Change // the last change when it is a transaction, for resync
	headSeg  *SegmentInfo    // the newest segment, if it holds the head
	rewound  bool
	lastTime time.Time
	closed   bool
	// unsure: a write failed, and may have been stored all the same (an
	// object store answering 500 after storing the object): the head is
	// reloaded from the store before the next write.
	unsure bool
}

var (
	_ lnvault.Backend        = (*Backend)(nil)
	_ lnvault.VersionAtTimer = (*Backend)(nil)
	_ lnvault.Emptier        = (*Backend)(nil)
)

// OpenBackend opens (or with o.Create, creates) the backup stored by client.
func OpenBackend(ctx context.Context, client ReplicaClient, o lnvault.OpenOptions, opts Options) (*Backend, error) {
	if opts.RetainSnapshots < 1 {
		opts.RetainSnapshots = 1
	}
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = DefaultOptions.LeaseTTL
	}
	b := &Backend{client: client, opts: opts, log: o.Log(), readOnly: o.ReadOnly, par: o.Parallelism}
	if b.par <= 0 {
		b.par = DefaultParallelism
	}
	inv, err := client.Inventory(ctx)
	if err != nil {
		return nil, err
	}
	g := inv.Latest()
	exists := g != nil || inv.Created
	switch {
	case !exists && !o.Create:
		return nil, fmt.Errorf("%w at %s: create it first (lnvault init, or the server's --replicate creates it)", lnvault.ErrNotFound, client)
	case exists && o.Create:
		return nil, fmt.Errorf("%w at %s: use another prefix, or open it without creating", lnvault.ErrExists, client)
	case o.Create && o.ReadOnly:
		return nil, fmt.Errorf("cannot create %s read-only", client)
	}
	if len(inv.Unknown) > 0 {
		b.log.Warn("replica holds objects lnvault did not write; they are ignored", "replica", client.String(), "count", len(inv.Unknown), "first", inv.Unknown[0])
	}
	if !o.ReadOnly {
		if opts.UnsafeNoConditionalWrites {
			b.log.Warn("replica opened without checking that its store honours conditional writes (unsafe-no-conditional-writes): its lease does not keep a second writer out", "replica", client.String())
		} else if err := client.ProbeConditionalWrites(ctx); err != nil {
			return nil, err
		}
		if b.lease, err = acquireLease(ctx, client, opts.LeaseTTL, b.log); err != nil {
			return nil, err
		}
		if o.Create {
			if err := client.CreateMarker(ctx); err != nil {
				b.lease.release(ctx)
				if errors.Is(err, ErrPrecondition) {
					return nil, fmt.Errorf("%w at %s: another lnvault created it just now", lnvault.ErrExists, client)
				}
				return nil, err
			}
		}
		// Look again now that no one else can write.
		if inv, err = client.Inventory(ctx); err != nil {
			b.lease.release(ctx)
			return nil, err
		}
		g = inv.Latest()
	}
	if g != nil {
		if err := b.loadHead(ctx, g); err != nil {
			if b.lease != nil {
				b.lease.release(ctx)
			}
			return nil, err
		}
	}
	return b, nil
}

// loadHead sets the metadata from the newest object of generation g.
func (b *Backend) loadHead(ctx context.Context, g *Generation) error {
	b.gen = g.ID
	b.head, b.headSeg = nil, nil
	var lastSeg *SegmentInfo
	if n := len(g.Segments); n > 0 {
		lastSeg = &g.Segments[n-1]
		for i := range g.Segments { // the highest last index wins
			if g.Segments[i].LastIndex > lastSeg.LastIndex {
				lastSeg = &g.Segments[i]
			}
		}
	}
	var lastSnap *SnapshotInfo
	if n := len(g.Snapshots); n > 0 {
		lastSnap = &g.Snapshots[n-1]
	}
	switch {
	case lastSeg != nil && (lastSnap == nil || lastSeg.LastIndex > lastSnap.Index):
		seg, err := b.client.ReadSegment(ctx, *lastSeg)
		if err != nil {
			return err
		}
		b.md = lnvault.Metadata{Version: seg.LastVersion, PrevVersion: seg.PrevVersion, VersionCount: seg.LastIndex + 1}
		if c := seg.Changes[len(seg.Changes)-1]; c.Kind == lnvault.KindTransaction {
			b.head = c
		}
		s := *lastSeg
		b.headSeg = &s
		b.lastTime = lastSeg.Created
	case lastSnap != nil:
		h, err := b.client.ReadSnapshotHeader(ctx, *lastSnap)
		if err != nil {
			return err
		}
		b.md = lnvault.Metadata{Version: h.LastVersion, PrevVersion: h.PrevVersion, VersionCount: h.LastIndex + 1}
		b.lastTime = lastSnap.Created
	default:
		b.md = lnvault.Metadata{}
	}
	// A rewind's marker keeps the contract across restarts: prev_version
	// 0, and no second rewind until the next append.
	b.rewound = g.HeadRewound(b.md.VersionCount)
	if b.rewound {
		b.md.PrevVersion = 0
	}
	return nil
}

// Metadata returns the head as of the last write (or the opening listing).
func (b *Backend) Metadata() lnvault.Metadata {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.md
}

// Generation is the generation being written.
func (b *Backend) Generation() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.gen
}

// Client is the backend's storage.
func (b *Backend) Client() ReplicaClient { return b.client }

func (b *Backend) writable(ctx context.Context) error {
	if b.closed {
		return errors.New("replica backend is closed")
	}
	if b.readOnly {
		return fmt.Errorf("%s is open read-only", b.client)
	}
	return b.lease.check(ctx)
}

func (b *Backend) ensureGeneration(ctx context.Context) error {
	if b.gen != "" {
		return nil
	}
	gens, err := b.client.Generations(ctx)
	if err != nil {
		return err
	}
	b.gen = NewGenerationID(gens, time.Now())
	return nil
}

// Reload reads the head from the store again.
func (b *Backend) Reload(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.reloadLocked(ctx)
}

func (b *Backend) reloadLocked(ctx context.Context) error {
	inv, err := b.client.Inventory(ctx)
	if err != nil {
		return fmt.Errorf("reading the head of %s again: %w", b.client, err)
	}
	if g := inv.Latest(); g != nil {
		gen, md, head := b.gen, b.md, b.head
		if err := b.loadHead(ctx, g); err != nil {
			return err
		}
		if b.head == nil && b.gen == gen && b.md == md {
			// A snapshot head names no statements; the head this
			// process stored does, and it is still the head.
			b.head = head
		}
	} else {
		b.gen, b.md, b.head, b.headSeg, b.rewound = "", lnvault.Metadata{}, nil, nil, false
	}
	b.unsure = false
	return nil
}

// Append stores c as a one-change segment; it returns when the PUT completed.
func (b *Backend) Append(ctx context.Context, c *lnvault.Change) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.appendLocked(ctx, []*lnvault.Change{c})
}

// AppendBatch stores changes as one segment (the replicator's batches).
func (b *Backend) AppendBatch(ctx context.Context, cs []*lnvault.Change) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.appendLocked(ctx, cs)
}

func (b *Backend) appendLocked(ctx context.Context, cs []*lnvault.Change) (err error) {
	if err := b.writable(ctx); err != nil {
		return err
	}
	if b.unsure {
		before := b.md
		if err := b.reloadLocked(ctx); err != nil {
			return err
		}
		if b.md != before && b.holds(before, cs) {
			b.log.Info("replica: the changes whose upload failed were stored all the same", "replica", b.client.String(), "version", b.md.Version)
			return nil
		}
	}
	defer func() {
		if err != nil {
			b.unsure = true
		}
	}()
	md := b.md
	for _, c := range cs {
		if err := lnvault.CheckNext(md, c.Version, c.Kind); err != nil {
			return err
		}
		md = lnvault.Metadata{Version: c.Version, PrevVersion: md.Version, VersionCount: md.VersionCount + 1}
	}
	if err := b.ensureGeneration(ctx); err != nil {
		return err
	}
	// Runs of transactions become segments; a snapshot change (`lnvault
	// init --lightning-dir` sends the node's database as one) becomes a
	// snapshot object, streamed, never a segment held in memory.
	for len(cs) > 0 {
		n := 1
		if cs[0].Kind != lnvault.KindSnapshot {
			for n < len(cs) && cs[n].Kind != lnvault.KindSnapshot {
				n++
			}
		}
		var err error
		if cs[0].Kind == lnvault.KindSnapshot {
			err = b.appendSnapshot(ctx, cs[0])
		} else {
			err = b.appendSegment(ctx, cs[:n])
		}
		if err != nil {
			return err
		}
		cs = cs[n:]
	}
	return nil
}

// holds tells whether the head is cs appended after before: their upload
// failed, yet stored them.
func (b *Backend) holds(before lnvault.Metadata, cs []*lnvault.Change) bool {
	last := cs[len(cs)-1]
	if b.md.VersionCount != before.VersionCount+uint64(len(cs)) || b.md.Version != last.Version {
		return false
	}
	if last.Kind == lnvault.KindTransaction {
		h := b.head
		return h != nil && h.Kind == last.Kind && slices.Equal(h.Statements, last.Statements)
	}
	return b.head == nil
}

func (b *Backend) appendSegment(ctx context.Context, cs []*lnvault.Change) error {
	data, h, err := EncodeSegment(b.md.VersionCount, b.md.Version, cs, time.Now())
	if err != nil {
		return err
	}
	info, err := b.client.WriteSegment(ctx, b.gen, data, h)
	if err != nil {
		return err
	}
	b.md = lnvault.Metadata{Version: h.LastVersion, PrevVersion: h.PrevVersion, VersionCount: b.md.VersionCount + uint64(len(cs))}
	b.headSeg = &info
	b.head = nil
	if last := cs[len(cs)-1]; last.Kind == lnvault.KindTransaction {
		b.head = last
	}
	b.rewound = false
	b.lastTime = info.Created
	return nil
}

// appendSnapshot stores a snapshot change as the snapshot object of its index
// in the current generation: the state after it, which is what it is.
func (b *Backend) appendSnapshot(ctx context.Context, c *lnvault.Change) error {
	if c.Snapshot == nil {
		return fmt.Errorf("snapshot change %d without data", c.Version)
	}
	info, err := b.writeSnapshot(ctx, b.gen, b.md.VersionCount, c.Version, b.md.Version, io.NewSectionReader(c.Snapshot, 0, c.Snapshot.Size()))
	if err != nil {
		return err
	}
	b.md = lnvault.Metadata{Version: c.Version, PrevVersion: b.md.Version, VersionCount: b.md.VersionCount + 1}
	b.head, b.headSeg = nil, nil
	b.rewound = false
	b.lastTime = info.Created
	return nil
}

// writeSnapshot encodes db into a temp file and uploads it as the snapshot of
// index idx, version v, of generation gen.
func (b *Backend) writeSnapshot(ctx context.Context, gen string, idx uint64, v, prev uint32, db io.Reader) (SnapshotInfo, error) {
	f, size, h, err := EncodeSnapshotFile(idx, v, prev, db, time.Now())
	if err != nil {
		return SnapshotInfo{}, err
	}
	defer f.Close()
	return b.client.WriteSnapshotFile(ctx, gen, f, size, h)
}

// writeSnapshotFromFile is writeSnapshot of the database file at path.
func (b *Backend) writeSnapshotFromFile(ctx context.Context, gen, path string, idx uint64, v, prev uint32) (SnapshotInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return SnapshotInfo{}, err
	}
	defer f.Close()
	return b.writeSnapshot(ctx, gen, idx, v, prev, f)
}

// Rewind removes the last change: it deletes the newest segment when it holds
// just that change (what Append writes), else it starts a new generation
// whose snapshot is the state before the change, so that no restore can ever
// replay the rewound change.
func (b *Backend) Rewind(ctx context.Context) (err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.writable(ctx); err != nil {
		return err
	}
	if b.unsure {
		if err := b.reloadLocked(ctx); err != nil {
			return err
		}
	}
	defer func() {
		if err != nil {
			b.unsure = true
		}
	}()
	if b.rewound {
		return lnvault.ErrRewindTwice
	}
	if b.md.VersionCount == 0 {
		return fmt.Errorf("%s holds no change to rewind", b.client)
	}
	inv, err := b.client.Inventory(ctx)
	if err != nil {
		return err
	}
	g := generationByID(inv, b.gen)
	if g == nil {
		return fmt.Errorf("generation %s of %s vanished: %w", b.gen, b.client, lnvault.ErrCorrupt)
	}
	headIdx := b.md.VersionCount - 1
	headSeg, headSnaps, before := headObjects(g, headIdx)
	switch {
	case headSeg == nil && len(headSnaps) > 0 && before:
		err = b.dropHeadSnapshots(ctx, g, headIdx, headSnaps)
	case headSeg != nil && headSeg.FirstIndex == headIdx:
		err = b.dropHeadSegment(ctx, g, headIdx, *headSeg)
	case headSeg != nil && headIdx > 0:
		// The head shares its segment with older changes: a new
		// generation whose base snapshot says prev_version 0 itself.
		err = b.restartGeneration(ctx, g, headIdx-1, true)
	default:
		return fmt.Errorf("cannot rewind %s: its head is a snapshot (the change before it is gone): %w", b.client, lnvault.ErrRewindTwice)
	}
	if err != nil {
		return err
	}
	b.rewound = true
	return nil
}

// headObjects returns the segment that ends at the head (index headIdx),
// the snapshots of the head (an appended snapshot change), and whether the
// state before the head is stored (in a snapshot or at a segment's end).
func headObjects(g *Generation, headIdx uint64) (headSeg *SegmentInfo, headSnaps []SnapshotInfo, before bool) {
	for i := range g.Segments {
		if g.Segments[i].LastIndex == headIdx {
			headSeg = &g.Segments[i]
		}
	}
	before = headIdx == 0
	for _, s := range g.Snapshots {
		if s.Index == headIdx {
			headSnaps = append(headSnaps, s)
		}
		before = before || s.Index+1 == headIdx
	}
	for _, s := range g.Segments {
		before = before || s.LastIndex+1 == headIdx
	}
	return headSeg, headSnaps, before
}

// markRewound stores the rewind marker of the head. The marker goes before
// the deletion: a crash between them leaves the head in place (the marker
// applies only to the change before it), and the deletion is done again at
// the next start. Older markers can no longer apply: they go.
func (b *Backend) markRewound(ctx context.Context, g *Generation, headIdx uint64) error {
	if err := b.client.WriteRewound(ctx, g.ID, headIdx); err != nil {
		return fmt.Errorf("storing the rewind of version %d: %w", b.md.Version, err)
	}
	if stale := slices.DeleteFunc(slices.Clone(g.Rewound), func(i uint64) bool { return i == headIdx }); len(stale) > 0 {
		if err := b.client.DeleteRewound(ctx, g.ID, stale); err != nil {
			b.log.Warn("replica: could not delete old rewind markers (harmless)", "replica", b.client.String(), "err", err)
		}
	}
	g.Rewound = []uint64{headIdx}
	return nil
}

// dropHeadSnapshots rewinds a head that is an appended snapshot.
func (b *Backend) dropHeadSnapshots(ctx context.Context, g *Generation, headIdx uint64, snaps []SnapshotInfo) error {
	if err := b.markRewound(ctx, g, headIdx); err != nil {
		return err
	}
	if err := b.client.DeleteSnapshots(ctx, snaps); err != nil {
		return err
	}
	g.Snapshots = slices.DeleteFunc(g.Snapshots, func(s SnapshotInfo) bool { return s.Index == headIdx })
	return b.headAfterDrop(ctx, g)
}

// dropHeadSegment rewinds a head that is alone in its segment.
func (b *Backend) dropHeadSegment(ctx context.Context, g *Generation, headIdx uint64, seg SegmentInfo) error {
	if err := b.markRewound(ctx, g, headIdx); err != nil {
		return err
	}
	if err := b.client.DeleteSegments(ctx, []SegmentInfo{seg}); err != nil {
		return err
	}
	g.Segments = slices.DeleteFunc(g.Segments, func(s SegmentInfo) bool { return s.Key == seg.Key })
	g.Snapshots = slices.DeleteFunc(g.Snapshots, func(s SnapshotInfo) bool { return s.Index >= headIdx })
	return b.headAfterDrop(ctx, g)
}

// headAfterDrop loads the new head (its prev_version is in the object
// before it) of what is left of g.
func (b *Backend) headAfterDrop(ctx context.Context, g *Generation) error {
	if len(g.Segments) == 0 && len(g.Snapshots) == 0 {
		b.md, b.head, b.headSeg = lnvault.Metadata{}, nil, nil
		return nil
	}
	return b.loadHead(ctx, g)
}

// restartGeneration starts a new generation whose base is the state after
// the change of index idx of generation g.
func (b *Backend) restartGeneration(ctx context.Context, g *Generation, idx uint64, rewound bool) error {
	var prev, last uint32
	var n uint64
	path, cleanup, err := materialize(ctx, func(fn func(*lnvault.Change) error) error {
		return b.streamPlan(ctx, g, planNewest(idx), idx, func(c *lnvault.Change) error {
			prev, last = last, c.Version
			n++
			return fn(c)
		})
	})
	if err != nil {
		return err
	}
	defer cleanup()
	if n < 2 || rewound {
		prev = 0
	}
	return b.newGenerationFromFile(ctx, path, idx, last, prev)
}

// newGenerationFromFile writes the database at path as the snapshot that
// opens a new generation, at index idx and version v.
func (b *Backend) newGenerationFromFile(ctx context.Context, path string, idx uint64, v, prev uint32) error {
	gens, err := b.client.Generations(ctx)
	if err != nil {
		return err
	}
	gen := NewGenerationID(append(gens, b.gen), time.Now())
	info, err := b.writeSnapshotFromFile(ctx, gen, path, idx, v, prev)
	if err != nil {
		b.unsure = true
		return err
	}
	b.log.Info("replica: new generation", "replica", b.client.String(), "generation", gen, "version", v)
	b.gen = gen
	b.md = lnvault.Metadata{Version: v, PrevVersion: prev, VersionCount: idx + 1}
	b.head, b.headSeg = nil, nil
	b.lastTime = info.Created
	return nil
}

func generationByID(inv *Inventory, id string) *Generation {
	for _, g := range inv.Generations {
		if g.ID == id {
			return g
		}
	}
	return nil
}

// materialize applies a stream of changes to a new database file in a temp
// directory, checks it, and returns its path.
func materialize(ctx context.Context, stream func(fn func(*lnvault.Change) error) error) (string, func(), error) {
	dir, err := os.MkdirTemp("", "lnvault-replica-*")
	if err != nil {
		return "", nil, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	path := filepath.Join(dir, "snapshot.sqlite3")
	a, err := dbapply.Create(ctx, path)
	if err != nil {
		cleanup()
		return "", nil, err
	}
	if err := stream(func(c *lnvault.Change) error { return a.Apply(ctx, c) }); err != nil {
		a.Close(ctx)
		cleanup()
		return "", nil, err
	}
	if err := a.Finish(ctx); err != nil {
		cleanup()
		return "", nil, fmt.Errorf("building a snapshot: %w", err)
	}
	return path, cleanup, nil
}

// A plan is where a stream starts: a snapshot, or the generation's first
// segment (index 0) when the generation began from an empty database.
type planFunc func(g *Generation) *SnapshotInfo

// planNewest picks the newest snapshot at or before index idx.
func planNewest(idx uint64) planFunc {
	return func(g *Generation) *SnapshotInfo {
		var best *SnapshotInfo
		for i := range g.Snapshots {
			if s := &g.Snapshots[i]; s.Index <= idx && (best == nil || s.Index > best.Index) {
				best = s
			}
		}
		return best
	}
}

// planVersion picks the newest snapshot whose version is at most v (or below
// v when strict).
func planVersion(v uint32, strict bool) planFunc {
	return func(g *Generation) *SnapshotInfo {
		var best *SnapshotInfo
		for i := range g.Snapshots {
			s := &g.Snapshots[i]
			ok := s.Version <= v
			if strict {
				ok = s.Version < v
			}
			if ok && (best == nil || s.Index > best.Index) {
				best = s
			}
		}
		return best
	}
}

// chain returns the segments that follow base (or index 0) without gap up
// to index `to`, or an error naming the first object where continuity breaks.
func (b *Backend) chain(g *Generation, base *SnapshotInfo, to uint64) ([]SegmentInfo, error) {
	next := uint64(0)
	if base != nil {
		next = base.Index + 1
	}
	var out []SegmentInfo
	var prevKey string
	if base != nil {
		prevKey = base.Key
	}
	c := b
	for i, s := range g.Segments {
		if next > to {
			break
		}
		if s.LastIndex < next {
			continue // covered by the base
		}
		if i+1 < len(g.Segments) && g.Segments[i+1].FirstIndex == s.FirstIndex && s.FirstIndex >= next {
			return nil, c.corrupt(g.Segments[i+1].Key, s.FirstVersion, fmt.Sprintf("it starts at index %d like %s: two histories in one generation", s.FirstIndex, s.Key))
		}
		if s.FirstIndex < next {
			if base != nil && prevKey == base.Key {
				// Straddles the base snapshot: its changes after the
				// base are needed, the ones before are skipped.
				out = append(out, s)
				next = s.LastIndex + 1
				prevKey = s.Key
				continue
			}
			return nil, c.corrupt(s.Key, s.FirstVersion, fmt.Sprintf("it overlaps %s (starts at index %d, expected %d)", prevKey, s.FirstIndex, next))
		}
		if s.FirstIndex > next {
			what := "the generation's start"
			if prevKey != "" {
				what = prevKey
			}
			return nil, c.corrupt(s.Key, s.FirstVersion, fmt.Sprintf("it starts at index %d but %s ends at index %d: segment(s) for indexes %d-%d are missing",
				s.FirstIndex, what, next-1+boolU64(prevKey == ""), next, s.FirstIndex-1))
		}
		out = append(out, s)
		next = s.LastIndex + 1
		prevKey = s.Key
	}
	return out, nil
}

func (b *Backend) corrupt(key string, v uint32, reason string) error {
	return &lnvault.CorruptError{Offset: -1, Version: v, Object: b.client.String() + "/" + key, Reason: reason}
}

func boolU64(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// genHead is the highest index stored in g, and false if g is empty.
func genHead(g *Generation) (uint64, bool) {
	var hi uint64
	ok := false
	for _, s := range g.Segments {
		if !ok || s.LastIndex > hi {
			hi, ok = s.LastIndex, true
		}
	}
	for _, s := range g.Snapshots {
		if !ok || s.Index > hi {
			hi, ok = s.Index, true
		}
	}
	return hi, ok
}

// streamPlan delivers the base picked by plan and the segments after it, up
// to index `to`, downloading segments in parallel and delivering in order.
func (b *Backend) streamPlan(ctx context.Context, g *Generation, plan planFunc, to uint64, fn func(*lnvault.Change) error) error {
	base := plan(g)
	if base == nil && (len(g.Segments) == 0 || g.Segments[0].FirstIndex != 0) {
		first := "nothing"
		if len(g.Segments) > 0 {
			first = g.Segments[0].Key
		}
		return &lnvault.CorruptError{Offset: -1, Object: b.client.String() + "/" + g.ID,
			Reason: fmt.Sprintf("no snapshot covers the requested point and the generation's oldest segment (%s) does not start it: the history was compacted away by retention; restore a later version", first)}
	}
	segs, err := b.chain(g, base, to)
	if err != nil {
		return err
	}
	end := uint64(0)
	if base != nil {
		end = base.Index
	}
	if n := len(segs); n > 0 {
		end = segs[n-1].LastIndex
	}
	if end < to {
		return &lnvault.CorruptError{Offset: -1, Object: b.client.String() + "/" + g.ID,
			Reason: fmt.Sprintf("the generation's objects end at index %d but its head is index %d: segments are missing", end, to)}
	}
	var last uint32
	delivered := false
	if base != nil {
		_, db, closeDB, err := b.client.OpenSnapshot(ctx, *base)
		if err != nil {
			return err
		}
		err = fn(lnvault.NewSnapshot(base.Version, db))
		closeDB()
		if err != nil {
			return err
		}
		last, delivered = base.Version, true
	}
	return b.fetchOrdered(ctx, segs, func(si SegmentInfo, seg *Segment) error {
		for i, c := range seg.Changes {
			idx := seg.FirstIndex + uint64(i)
			if base != nil && idx <= base.Index {
				continue
			}
			if idx > to {
				return lnvault.ErrStop
			}
			if delivered {
				if !lnvault.Follows(last, c.Version, c.Kind) {
					return &lnvault.CorruptError{Offset: -1, Version: c.Version, Object: b.client.String() + "/" + si.Key,
						Reason: fmt.Sprintf("version %d follows version %d: changes are missing", c.Version, last)}
				}
			}
			if err := fn(c); err != nil {
				return err
			}
			last, delivered = c.Version, true
		}
		return nil
	})
}

// fetchOrdered downloads segs with b.par workers, keeping at most 4*par
// downloaded ahead of the consumer, and calls fn in order. fn returning
// ErrStop ends it without error.
func (b *Backend) fetchOrdered(ctx context.Context, segs []SegmentInfo, fn func(SegmentInfo, *Segment) error) error {
	if len(segs) == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type slot struct {
		seg  *Segment
		err  error
		done chan struct{}
	}
	slots := make([]slot, len(segs))
	for i := range slots {
		slots[i].done = make(chan struct{})
	}
	window := make(chan struct{}, 4*b.par)
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(b.par, len(segs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				slots[i].seg, slots[i].err = b.client.ReadSegment(ctx, segs[i])
				close(slots[i].done)
			}
		}()
	}
	go func() {
		defer close(work)
		for i := range segs {
			select {
			case window <- struct{}{}:
			case <-ctx.Done():
				return
			}
			select {
			case work <- i:
			case <-ctx.Done():
				return
			}
		}
	}()
	var err error
	for i := range segs {
		select {
		case <-slots[i].done:
		case <-ctx.Done():
			err = ctx.Err()
		}
		if err != nil {
			break
		}
		if err = slots[i].err; err != nil {
			break
		}
		err = fn(segs[i], slots[i].seg)
		slots[i].seg = nil
		<-window
		if err != nil {
			break
		}
	}
	cancel()
	wg.Wait()
	if errors.Is(err, lnvault.ErrStop) {
		return nil
	}
	return err
}

// Stream delivers the newest snapshot of the latest generation and every
// change after it (from > 0: the changes whose version is >= from, starting
// from the newest snapshot below from).
func (b *Backend) Stream(ctx context.Context, from uint32, fn func(*lnvault.Change) error) error {
	g, head, err := b.latest(ctx)
	if err != nil || g == nil {
		return err
	}
	plan := planNewest(head)
	if from > 0 {
		plan = planVersion(from, true)
	}
	err = b.streamPlan(ctx, g, plan, head, func(c *lnvault.Change) error {
		if c.Version < from {
			return nil
		}
		return fn(c)
	})
	if errors.Is(err, lnvault.ErrStop) {
		return nil
	}
	return err
}

// StreamTo is Stream for a restore to version target: it starts from the
// newest snapshot at or before target (not the newest one), so that any
// version still covered by retention can be restored. Delivery goes on past
// target; the caller stops when it sees a later version.
func (b *Backend) StreamTo(ctx context.Context, target uint32, fn func(*lnvault.Change) error) error {
	g, head, err := b.latest(ctx)
	if err != nil || g == nil {
		return err
	}
	err = b.streamPlan(ctx, g, planVersion(target, false), head, fn)
	if errors.Is(err, lnvault.ErrStop) {
		return nil
	}
	return err
}

func (b *Backend) latest(ctx context.Context) (*Generation, uint64, error) {
	inv, err := b.client.Inventory(ctx)
	if err != nil {
		return nil, 0, err
	}
	g := inv.Latest()
	if g == nil {
		return nil, 0, nil
	}
	head, _ := genHead(g)
	return g, head, nil
}

// VersionAt returns the last version stored at or before t in the latest
// generation, from the creation times in the objects' headers (this host's
// clock when it wrote them, not the store's): a binary search over the
// segments, which are created in index order, and every snapshot's.
func (b *Backend) VersionAt(ctx context.Context, t time.Time) (uint32, error) {
	g, _, err := b.latest(ctx)
	if err != nil {
		return 0, err
	}
	if g == nil {
		return 0, fmt.Errorf("%s holds no backup", b.client)
	}
	var best uint64
	var v uint32
	found := false
	var searchErr error
	after := sort.Search(len(g.Segments), func(i int) bool {
		if searchErr != nil {
			return true
		}
		h, err := b.client.ReadSegmentHeader(ctx, g.Segments[i])
		searchErr = err
		return err != nil || h.Created.After(t)
	})
	if searchErr != nil {
		return 0, searchErr
	}
	if after > 0 {
		s := g.Segments[after-1]
		best, v, found = s.LastIndex, s.LastVersion, true
	}
	for _, s := range g.Snapshots {
		h, err := b.client.ReadSnapshotHeader(ctx, s)
		if err != nil {
			return 0, err
		}
		if !h.Created.After(t) && (!found || s.Index > best) {
			best, v, found = s.Index, s.Version, true
		}
	}
	if !found {
		return 0, fmt.Errorf("no change of %s was stored at or before %s: its current history (generation %s) starts at %s",
			b.client, t.UTC().Format(time.RFC3339Nano), g.ID, g.Created().UTC().Format(time.RFC3339Nano))
	}
	return v, nil
}

// Compact writes a snapshot of the state before the head change (so the head
// can still be rewound), then applies retention.
//
// Appends go on meanwhile: the write lock is held only to read the head.
// The snapshot covers an index before the head, which appends never change
// and a rewind (one at a time, each followed by an append before the next)
// never reaches; retention deletes only what a kept snapshot covers.
func (b *Backend) Compact(ctx context.Context) (lnvault.CompactStats, error) {
	b.compactMu.Lock()
	defer b.compactMu.Unlock()
	var st lnvault.CompactStats
	b.mu.Lock()
	err := b.writable(ctx)
	gen, md := b.gen, b.md
	b.mu.Unlock()
	if err != nil {
		return st, err
	}
	inv, err := b.client.Inventory(ctx)
	if err != nil {
		return st, err
	}
	st.Before = sizeStats(inv)
	g := generationByID(inv, gen)
	if g != nil && md.VersionCount >= 2 {
		idx := md.VersionCount - 2
		newest := planNewest(idx)(g)
		if newest == nil || newest.Index < idx {
			if err := b.snapshotAt(ctx, g, idx); err != nil {
				return st, err
			}
		}
	}
	if err := b.applyRetention(ctx, gen, time.Now()); err != nil {
		return st, err
	}
	if inv, err = b.client.Inventory(ctx); err != nil {
		return st, err
	}
	st.After = sizeStats(inv)
	return st, nil
}

// Rebase stores snap, a snapshot the node built of its own database (an
// end-to-end encrypted backup cannot be compacted here), as the snapshot
// of the current generation at the last change of its version, and applies
// retention: restores start from it. The head must come after it.
func (b *Backend) Rebase(ctx context.Context, snap *lnvault.Change) (lnvault.CompactStats, error) {
	b.compactMu.Lock()
	defer b.compactMu.Unlock()
	var st lnvault.CompactStats
	if snap.Kind != lnvault.KindSnapshot || snap.Snapshot == nil {
		return st, fmt.Errorf("rebase: a rebase takes a snapshot, not a %s", snap.Kind)
	}
	b.mu.Lock()
	err := b.writable(ctx)
	gen, md := b.gen, b.md
	b.mu.Unlock()
	if err != nil {
		return st, err
	}
	v := snap.Version
	if md.Version <= v {
		return st, fmt.Errorf("rebase at version %d: the head is at version %d and must stay a change of its own; rebase after the next change", v, md.Version)
	}
	inv, err := b.client.Inventory(ctx)
	if err != nil {
		return st, err
	}
	st.Before = sizeStats(inv)
	g := generationByID(inv, gen)
	if g == nil {
		return st, fmt.Errorf("rebase: generation %s is gone from %s", gen, b.client)
	}
	idx, prev, err := b.lastIndexOf(ctx, g, v)
	if err != nil {
		return st, err
	}
	if _, err := b.writeSnapshot(ctx, gen, idx, v, prev, io.NewSectionReader(snap.Snapshot, 0, snap.Snapshot.Size())); err != nil {
		return st, err
	}
	if err := b.applyRetention(ctx, gen, time.Now()); err != nil {
		return st, err
	}
	if inv, err = b.client.Inventory(ctx); err != nil {
		return st, err
	}
	st.After = sizeStats(inv)
	return st, nil
}

// lastIndexOf finds the index of the last change of version v in g, and
// the version of the change before it: from the segments' names when v ends
// one (each change is a segment when the node writes synchronously), else
// from the segment it falls in (a replicator's batches).
func (b *Backend) lastIndexOf(ctx context.Context, g *Generation, v uint32) (uint64, uint32, error) {
	var (
		found bool
		idx   uint64
		prev  uint32
	)
	for i, s := range g.Segments {
		switch {
		case s.FirstVersion <= v && v < s.LastVersion:
			seg, err := b.client.ReadSegment(ctx, s)
			if err != nil {
				return 0, 0, err
			}
			p := uint32(0)
			if i > 0 {
				p = g.Segments[i-1].LastVersion
			}
			for j, c := range seg.Changes {
				if c.Version > v {
					break
				}
				if c.Version == v {
					found, idx, prev = true, s.FirstIndex+uint64(j), p
				}
				p = c.Version
			}
			if !found {
				return 0, 0, fmt.Errorf("rebase at version %d: segment %s spans it but holds no change of it", v, s.Key)
			}
			return idx, prev, nil
		case s.LastVersion == v && (!found || s.LastIndex > idx):
			found, idx = true, s.LastIndex
			prev = v
			if s.FirstIndex == s.LastIndex && i > 0 {
				prev = g.Segments[i-1].LastVersion
			}
		}
	}
	if !found {
		return 0, 0, fmt.Errorf("rebase at version %d: no change of that version in the current generation", v)
	}
	return idx, prev, nil
}

// snapshotAt writes a snapshot of generation g at index idx.
func (b *Backend) snapshotAt(ctx context.Context, g *Generation, idx uint64) error {
	var prev, last uint32
	var n int
	path, cleanup, err := materialize(ctx, func(fn func(*lnvault.Change) error) error {
		return b.streamPlan(ctx, g, planNewest(idx), idx, func(c *lnvault.Change) error {
			if c.Kind == lnvault.KindSnapshot {
				n = 0
			}
			prev, last = last, c.Version
			n++
			return fn(c)
		})
	})
	if err != nil {
		return err
	}
	defer cleanup()
	if n < 2 {
		// The base snapshot's own prev_version is in its header.
		if s := planNewest(idx)(g); s != nil && s.Index == idx {
			if h, err := b.client.ReadSnapshotHeader(ctx, *s); err == nil {
				prev = h.PrevVersion
			}
		}
	}
	_, err = b.writeSnapshotFromFile(ctx, g.ID, path, idx, last, prev)
	return err
}

// sizeStats counts the latest generation: the changes a restore replays
// (its newest snapshot and the changes after it) and the bytes stored in all
// generations.
func sizeStats(inv *Inventory) lnvault.SizeStats {
	var st lnvault.SizeStats
	for _, g := range inv.Generations {
		st.BackupSize += g.Size()
	}
	if g := inv.Latest(); g != nil {
		head, _ := genHead(g)
		if s := planNewest(head)(g); s != nil {
			st.VersionCount = head - s.Index + 1
		} else {
			st.VersionCount = head + 1
		}
	}
	return st
}

// applyRetention deletes what is no longer needed: snapshots beyond the
// newest RetainSnapshots that are older than Retention, the segments the
// oldest kept snapshot covers (older than Retention), and older generations
// once the current one has its own base and they are older than Retention.
// Nothing is deleted that a kept snapshot does not cover.
func (b *Backend) applyRetention(ctx context.Context, gen string, now time.Time) error {
	inv, err := b.client.Inventory(ctx)
	if err != nil {
		return err
	}
	cut := now.Add(-b.opts.Retention)
	old := func(t time.Time) bool { return b.opts.Retention == 0 || t.Before(cut) }
	g := generationByID(inv, gen)
	if g == nil || inv.Latest() != g {
		return nil
	}
	// Older generations: the current one restores on its own.
	for _, og := range inv.Generations {
		if og != g && old(og.Updated()) {
			if err := b.client.DeleteGeneration(ctx, og.ID); err != nil {
				return err
			}
			b.log.Info("replica retention: deleted generation", "replica", b.client.String(), "generation", og.ID)
		}
	}
	if len(g.Snapshots) == 0 {
		return nil
	}
	keepFrom := len(g.Snapshots) - b.opts.RetainSnapshots
	if keepFrom < 0 {
		keepFrom = 0
	}
	for keepFrom > 0 && !old(g.Snapshots[keepFrom-1].Created) {
		keepFrom--
	}
	oldest := g.Snapshots[keepFrom]
	var segs []SegmentInfo
	for _, s := range g.Segments {
		if s.LastIndex <= oldest.Index && old(s.Created) {
			segs = append(segs, s)
		}
	}
	// Segments first: a crash in between leaves an extra snapshot, never a
	// snapshot-less hole.
	if err := b.client.DeleteSegments(ctx, segs); err != nil {
		return err
	}
	if err := b.client.DeleteSnapshots(ctx, g.Snapshots[:keepFrom]); err != nil {
		return err
	}
	if len(segs) > 0 || keepFrom > 0 {
		b.log.Info("replica retention", "replica", b.client.String(), "deleted_segments", len(segs), "deleted_snapshots", keepFrom, "oldest_snapshot_version", oldest.Version)
	}
	return nil
}

// Status describes the replica.
func (b *Backend) Status(ctx context.Context) (lnvault.Status, error) {
	inv, err := b.client.Inventory(ctx)
	if err != nil {
		return lnvault.Status{}, err
	}
	ss := sizeStats(inv)
	st := lnvault.Status{URL: b.client.String(), Format: "replica", Metadata: b.Metadata(), Records: int64(ss.VersionCount), Size: ss.BackupSize}
	if g := inv.Latest(); g != nil {
		st.LastChange = g.Updated()
	}
	return st, nil
}

// headChange is the head transaction as stored (nil when the generation
// starts with a snapshot of the head, or after a rewind).
func (b *Backend) headChange() *lnvault.Change {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.head
}

// restartFrom starts a new generation with a snapshot of the database file at
// path (version last, previous version before); head is that version's
// transaction, if it was one.
func (b *Backend) restartFrom(ctx context.Context, path string, last, before uint32, head *lnvault.Change) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.writable(ctx); err != nil {
		return err
	}
	if err := b.newGenerationFromFile(ctx, path, b.md.VersionCount, last, before); err != nil {
		return err
	}
	b.head = head
	return nil
}

// Delete removes the backup: every generation, then the creation marker,
// then it releases the lease, closes and removes the lease. The static channel backups (scb/)
// and objects lnvault did not write stay.
func (b *Backend) Delete(ctx context.Context) error {
	n, unlock, err := b.emptyLocking(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	// The marker goes last: an interrupted delete still reads as a backup
	// (with fewer changes) and can be deleted again.
	if err := b.client.DeleteMarker(ctx); err != nil {
		return fmt.Errorf("deleting %s: %w", b.client, err)
	}
	b.log.Info("replica deleted", "replica", b.client.String(), "generations", n)
	if err := b.closeLocked(); err != nil {
		return err
	}
	// Released and with no backup left to guard, the lease goes too.
	if err := b.client.DeleteLease(ctx); err != nil {
		return err
	}
	if c, ok := b.client.(*Client); ok {
		if r, ok := c.Store.(emptyRemover); ok {
			return r.RemoveIfEmpty()
		}
	}
	return nil
}

// Empty deletes every generation and stays open for writing, empty at
// version 0; the creation marker and the lease stay. A compaction in progress
// is waited for.
func (b *Backend) Empty(ctx context.Context) error {
	n, unlock, err := b.emptyLocking(ctx)
	if err != nil {
		return err
	}
	unlock()
	b.log.Info("replica emptied", "replica", b.client.String(), "generations", n)
	return nil
}

// emptyLocking takes the compaction lock (a compaction would write into a
// deleted generation) and the write lock, if the backend may write, and
// deletes every generation; it returns how many there were and, on
// success, how to release the locks.
func (b *Backend) emptyLocking(ctx context.Context) (n int, unlock func(), err error) {
	b.compactMu.Lock()
	b.mu.Lock()
	unlock = func() {
		b.mu.Unlock()
		b.compactMu.Unlock()
	}
	if err := b.writable(ctx); err != nil {
		unlock()
		return 0, nil, err
	}
	if n, err = b.deleteGenerations(ctx); err != nil {
		b.unsure = true // the next write reads again what is left
		unlock()
		return 0, nil, err
	}
	b.gen, b.md, b.head, b.headSeg, b.rewound, b.unsure = "", lnvault.Metadata{}, nil, nil, false, false
	return n, unlock, nil
}

// deleteGenerations deletes every generation and returns how many there were.
func (b *Backend) deleteGenerations(ctx context.Context) (int, error) {
	gens, err := b.client.Generations(ctx)
	if err != nil {
		return 0, fmt.Errorf("listing %s: %w", b.client, err)
	}
	for _, g := range gens {
		if err := b.client.DeleteGeneration(ctx, g); err != nil {
			return 0, fmt.Errorf("deleting generation %s of %s: %w", g, b.client, err)
		}
	}
	return len(gens), nil
}

// emptyRemover is a store whose root is a directory (dir:), removed once
// empty.
type emptyRemover interface{ RemoveIfEmpty() error }

// Close releases the lease.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closeLocked()
}

func (b *Backend) closeLocked() error {
	if b.closed {
		return nil
	}
	b.closed = true
	var errs []error
	if b.lease != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		errs = append(errs, b.lease.release(ctx))
		cancel()
	}
	if b.closeStore != nil {
		errs = append(errs, b.closeStore())
	}
	return errors.Join(errs...)
}
