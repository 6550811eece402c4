// Package backendtest is the conformance suite of lnvault.Backend: one set of
// checks of the contract written on that interface, run against every
// backend (file v1 and v2, socket: to lnvault server, s3:// on versitygw,
// dir:, the fakes of unit tests) and against the Python reference server,
// whose known deviations are recorded, and asserted, instead of failing.
package backendtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/dbapply"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/dumphash"
)

// Subject is one backup under test.
type Subject struct {
	// Open opens the backup; the suite passes Create on its first call and
	// ReadOnly for readers. Each call must give a new handle on the same
	// stored backup (a fake may give its one instance again).
	Open func(ctx context.Context, opts lnvault.OpenOptions) (lnvault.Backend, error)
	// Deviations the suite expects of this backend instead of the contract.
	Deviations Deviations
	// Empties: the backend is an lnvault.Emptier (asserted either way).
	Empties bool
}

// Deviations are known departures from the contract. Each one set is
// asserted: if the backend starts to keep the contract, the suite says so.
type Deviations struct {
	// RewindReplaysOld: after a rewind and an append of the same version, a
	// stream yields the rewound change instead of the new one. The reference
	// FileBackend writes in append mode, so its seek back is ignored and its
	// reader stops at the first record of the head's version.
	RewindReplaysOld bool
	// RewindKeepsCount: VersionCount is not lowered by a rewind.
	RewindKeepsCount bool
	// RewindForgotten: a reopen (the server restarted) brings back the
	// metadata of before the rewind: the rewind was not made durable.
	RewindForgotten bool
	// OneClient: a reader cannot connect while the writer is connected.
	OneClient bool
	// CompactResetsCount: a compaction sets VersionCount to the changes
	// left in the log (Version and PrevVersion stay).
	CompactResetsCount bool
	// CompactRefused: Compact fails with lnvault.ErrSealed (an end-to-end
	// encrypted backup, which its host cannot compact).
	CompactRefused bool
}

// compactRefused asserts the CompactRefused deviation and tells whether it
// is set.
func compactRefused(t *testing.T, s Subject, b lnvault.Backend) bool {
	t.Helper()
	if !s.Deviations.CompactRefused {
		return false
	}
	m := b.Metadata()
	if _, err := b.Compact(context.Background()); !errors.Is(err, lnvault.ErrSealed) {
		t.Fatalf("compact of a sealed backup: %v, want lnvault.ErrSealed", err)
	}
	if got := b.Metadata(); got != m {
		t.Fatalf("a refused compaction changed the metadata from %+v to %+v", m, got)
	}
	return true
}

// Changes is the workload: the first n changes of the real node's corpus,
// which open with migrations that repeat a version (PRAGMA foreign_keys).
func Changes(t testing.TB, n int) []*lnvault.Change {
	t.Helper()
	cs, err := corpus.Changes()
	if err != nil {
		t.Fatal(err)
	}
	if n > len(cs) {
		t.Fatalf("corpus holds %d changes, not %d", len(cs), n)
	}
	return cs[:n]
}

// N is how many changes each check appends before it starts; small enough
// for the reference server (~44 ms a change), large enough for a migration.
const N = 40

// Run runs the suite; newSubject gives a fresh, not yet created backup.
func Run(t *testing.T, newSubject func(t *testing.T) Subject) {
	if !dumphash.Available() {
		t.Fatal("the conformance suite compares databases with the sqlite3 command line tool: install it (apt-get install sqlite3)")
	}
	changes := Changes(t, N+4)
	checks := []struct {
		name string
		fn   func(t *testing.T, s Subject, cs []*lnvault.Change)
	}{
		{"AppendStream", checkAppendStream},
		{"StreamFrom", checkStreamFrom},
		{"ReopenKeepsHead", checkReopen},
		{"Rewind", checkRewind},
		{"RewindSurvivesReopen", checkRewindReopen},
		{"RewindAfterCompact", checkRewindAfterCompact},
		{"OutOfOrderRefused", checkOutOfOrder},
		{"SnapshotJumpsAhead", checkSnapshot},
		{"CompactThenStream", checkCompact},
		{"ReaderBesideWriter", checkReader},
		{"EmptyStartsAgain", checkEmpty},
	}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			c.fn(t, newSubject(t), changes)
		})
	}
}

func open(t *testing.T, s Subject, opts lnvault.OpenOptions) lnvault.Backend {
	t.Helper()
	b, err := s.Open(context.Background(), opts)
	if err != nil {
		t.Fatalf("open %+v: %v", opts, err)
	}
	return b
}

func closeB(t *testing.T, b lnvault.Backend) {
	t.Helper()
	if err := b.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}

// created opens a new backup holding cs.
func created(t *testing.T, s Subject, cs []*lnvault.Change) lnvault.Backend {
	t.Helper()
	b := open(t, s, lnvault.OpenOptions{Create: true})
	t.Cleanup(func() { b.Close() })
	if m := b.Metadata(); m != (lnvault.Metadata{}) {
		t.Fatalf("a new backup reports %+v, want zero metadata", m)
	}
	appendAll(t, b, cs)
	return b
}

func appendAll(t *testing.T, b lnvault.Backend, cs []*lnvault.Change) {
	t.Helper()
	for _, c := range cs {
		before := b.Metadata()
		if err := b.Append(context.Background(), c); err != nil {
			t.Fatalf("append %s %d: %v", c.Kind, c.Version, err)
		}
		want := lnvault.Metadata{Version: c.Version, PrevVersion: before.Version, VersionCount: before.VersionCount + 1}
		if got := b.Metadata(); got != want {
			t.Fatalf("after appending %d on %+v: metadata %+v, want %+v", c.Version, before, got, want)
		}
	}
}

// streamed is a change as a stream gave it (a snapshot's bytes are valid only
// during the callback: they are hashed there).
type streamed struct {
	version    uint32
	kind       lnvault.Kind
	statements string
}

func (c streamed) String() string {
	return fmt.Sprintf("%s %d (%d bytes)", c.kind, c.version, len(c.statements))
}

func key(c *lnvault.Change) streamed {
	return streamed{c.Version, c.Kind, strings.Join(c.Statements, "\x00")}
}

func stream(t *testing.T, b lnvault.Backend, from uint32) []streamed {
	t.Helper()
	var out []streamed
	err := b.Stream(context.Background(), from, func(c *lnvault.Change) error {
		out = append(out, key(c))
		return nil
	})
	if err != nil {
		t.Fatalf("stream from %d: %v", from, err)
	}
	return out
}

func keys(cs []*lnvault.Change) []streamed {
	out := make([]streamed, len(cs))
	for i, c := range cs {
		out[i] = key(c)
	}
	return out
}

func wantStream(t *testing.T, what string, got, want []streamed) {
	t.Helper()
	if slices.Equal(got, want) {
		return
	}
	for i := 0; i < len(got) || i < len(want); i++ {
		var g, w any = "nothing", "nothing"
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			t.Fatalf("%s: change %d of the stream is %v, want %v (%d changes, want %d)", what, i, g, w, len(got), len(want))
		}
	}
}

// materialise applies a stream of b to a new database and returns its dump
// hash and version.
func materialise(t *testing.T, b lnvault.Backend) (string, uint32) {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "db.sqlite3")
	a, err := dbapply.Create(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Stream(ctx, 0, func(c *lnvault.Change) error { return a.Apply(ctx, c) }); err != nil {
		a.Close(ctx)
		t.Fatalf("stream to materialise: %v", err)
	}
	v := a.Version()
	if err := a.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	h, err := dumphash.Of(path)
	if err != nil {
		t.Fatal(err)
	}
	return h, v
}

// direct applies cs to a new database: what a backup of cs must restore.
func direct(t *testing.T, cs []*lnvault.Change) (string, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "direct.sqlite3")
	h, err := dumphash.OfReplay(context.Background(), path, cs)
	if err != nil {
		t.Fatal(err)
	}
	return h, path
}

func checkAppendStream(t *testing.T, s Subject, cs []*lnvault.Change) {
	b := created(t, s, cs[:N])
	wantStream(t, "stream from 0", stream(t, b, 0), keys(cs[:N]))
	// ErrStop ends a stream without error.
	n := 0
	err := b.Stream(context.Background(), 0, func(*lnvault.Change) error {
		n++
		if n == 3 {
			return lnvault.ErrStop
		}
		return nil
	})
	if err != nil || n != 3 {
		t.Fatalf("a stream stopped at the third change: %d changes, err %v", n, err)
	}
}

func checkStreamFrom(t *testing.T, s Subject, cs []*lnvault.Change) {
	b := created(t, s, cs[:N])
	for _, from := range []uint32{1, 2, cs[N/2].Version, cs[N-1].Version, cs[N-1].Version + 1} {
		i := slices.IndexFunc(cs[:N], func(c *lnvault.Change) bool { return c.Version >= from })
		var want []streamed
		if i >= 0 {
			want = keys(cs[i:N])
		}
		wantStream(t, fmt.Sprintf("stream from %d", from), stream(t, b, from), want)
	}
}

func checkReopen(t *testing.T, s Subject, cs []*lnvault.Change) {
	b := created(t, s, cs[:N])
	m := b.Metadata()
	closeB(t, b)
	b = open(t, s, lnvault.OpenOptions{})
	defer b.Close()
	if got := b.Metadata(); got != m {
		t.Fatalf("after close and open: metadata %+v, was %+v", got, m)
	}
	wantStream(t, "stream after reopen", stream(t, b, 0), keys(cs[:N]))
	appendAll(t, b, cs[N:N+1])
	wantStream(t, "stream after reopen and append", stream(t, b, 0), keys(cs[:N+1]))
}

// other is a change of the same version as c with different statements: what
// lightningd sends after a crash that lost the first one.
func other(c *lnvault.Change) *lnvault.Change {
	st := append(slices.Clone(c.Statements), fmt.Sprintf("INSERT INTO vars (name, intval) VALUES ('lnvault-conformance', %d);", c.Version))
	return lnvault.NewTransaction(c.Version, st)
}

// rewound checks the metadata right after a rewind of the head of cs.
func rewound(t *testing.T, s Subject, b lnvault.Backend, before lnvault.Metadata, cs []*lnvault.Change) {
	t.Helper()
	want := lnvault.Metadata{Version: cs[len(cs)-2].Version, PrevVersion: 0, VersionCount: before.VersionCount - 1}
	if s.Deviations.RewindKeepsCount {
		want.VersionCount = before.VersionCount
	}
	if got := b.Metadata(); got != want {
		t.Fatalf("after a rewind of %+v: metadata %+v, want %+v", before, got, want)
	}
}

func secondRewind(t *testing.T, b lnvault.Backend, when string) {
	t.Helper()
	m := b.Metadata()
	err := b.Rewind(context.Background())
	switch {
	case err == nil:
		t.Fatalf("a second rewind %s succeeded: it would drop a committed change", when)
	case !errors.Is(err, lnvault.ErrRewindTwice):
		t.Fatalf("a second rewind %s: %v, want ErrRewindTwice", when, err)
	}
	if got := b.Metadata(); got != m {
		t.Fatalf("a refused rewind %s changed the metadata from %+v to %+v", when, m, got)
	}
}

func checkRewind(t *testing.T, s Subject, cs []*lnvault.Change) {
	ctx := context.Background()
	b := created(t, s, cs[:N])
	before := b.Metadata()
	if err := b.Rewind(ctx); err != nil {
		t.Fatalf("rewind: %v", err)
	}
	rewound(t, s, b, before, cs[:N])
	if !s.Deviations.RewindReplaysOld {
		wantStream(t, "stream after a rewind", stream(t, b, 0), keys(cs[:N-1]))
	}
	secondRewind(t, b, "in a row")
	// lightningd sends the version again, with what it really committed.
	redo := other(cs[N-1])
	appendAll(t, b, []*lnvault.Change{redo})
	want := append(keys(cs[:N-1]), key(redo))
	got := stream(t, b, 0)
	if s.Deviations.RewindReplaysOld {
		if slices.Equal(got, want) {
			t.Fatal("deviation gone: the stream after rewind+append now yields the new change; drop RewindReplaysOld")
		}
		wantStream(t, "stream after rewind+append (known deviation: the rewound change, not the new one)", got, keys(cs[:N]))
		t.Log("known deviation: after rewind+append the stream replays the rewound change instead of the new one")
	} else {
		wantStream(t, "stream after rewind+append", got, want)
	}
	// After an append, the new head may be rewound again.
	before = b.Metadata()
	if err := b.Rewind(ctx); err != nil {
		t.Fatalf("rewind after rewind+append: %v", err)
	}
	rewound(t, s, b, before, append(slices.Clone(cs[:N-1]), redo))
}

func checkRewindReopen(t *testing.T, s Subject, cs []*lnvault.Change) {
	ctx := context.Background()
	b := created(t, s, cs[:N])
	before := b.Metadata()
	if err := b.Rewind(ctx); err != nil {
		t.Fatalf("rewind: %v", err)
	}
	m := b.Metadata()
	closeB(t, b)
	b = open(t, s, lnvault.OpenOptions{})
	defer b.Close()
	if s.Deviations.RewindForgotten {
		if got := b.Metadata(); got != before {
			t.Fatalf("known deviation: after a rewind and a restart the metadata should be back at %+v, it is %+v", before, got)
		}
		t.Logf("known deviation: the rewind is forgotten by a restart: metadata back at %+v (was %+v after the rewind)", before, m)
		return
	}
	if got := b.Metadata(); got != m {
		t.Fatalf("after a rewind, close and open: metadata %+v, was %+v", got, m)
	}
	rewound(t, s, b, before, cs[:N])
	secondRewind(t, b, "after close and open")
	if !s.Deviations.RewindReplaysOld {
		wantStream(t, "stream after a rewind, close and open", stream(t, b, 0), keys(cs[:N-1]))
	}
	redo := other(cs[N-1])
	appendAll(t, b, []*lnvault.Change{redo})
	if !s.Deviations.RewindReplaysOld {
		wantStream(t, "stream after rewind, reopen, append", stream(t, b, 0), append(keys(cs[:N-1]), key(redo)))
	}
}

func checkRewindAfterCompact(t *testing.T, s Subject, cs []*lnvault.Change) {
	ctx := context.Background()
	b := created(t, s, cs[:N])
	if compactRefused(t, s, b) {
		return
	}
	if _, err := b.Compact(ctx); err != nil {
		t.Fatalf("compact: %v", err)
	}
	before := b.Metadata()
	if err := b.Rewind(ctx); err != nil {
		t.Fatalf("rewind of the head after a compaction: %v", err)
	}
	rewound(t, s, b, before, cs[:N])
	if s.Deviations.RewindReplaysOld {
		return
	}
	h, v := materialise(t, b)
	want, _ := direct(t, cs[:N-1])
	if h != want || v != cs[N-2].Version {
		t.Fatalf("after compact and rewind: database at %d hashes %s, want %d %s", v, h, cs[N-2].Version, want)
	}
}

func checkOutOfOrder(t *testing.T, s Subject, cs []*lnvault.Change) {
	ctx := context.Background()
	b := created(t, s, cs[:N])
	m := b.Metadata()
	for _, v := range []uint32{m.Version + 2, m.Version - 1} {
		err := b.Append(ctx, lnvault.NewTransaction(v, []string{"UPDATE vars SET intval = intval WHERE name = 'data_version';"}))
		if !errors.Is(err, lnvault.ErrVersion) {
			t.Fatalf("append of version %d on head %d: %v, want ErrVersion", v, m.Version, err)
		}
		if got := b.Metadata(); got != m {
			t.Fatalf("a refused append changed the metadata from %+v to %+v", m, got)
		}
	}
	wantStream(t, "stream after refused appends", stream(t, b, 0), keys(cs[:N]))
}

// checkSnapshot appends what healing appends: the node's database as a
// snapshot, several versions ahead of the head.
func checkSnapshot(t *testing.T, s Subject, cs []*lnvault.Change) {
	b := created(t, s, cs[:N-3])
	want, path := direct(t, cs[:N])
	snap, err := snapshotChange(path, cs[N-1].Version)
	if err != nil {
		t.Fatal(err)
	}
	appendAll(t, b, []*lnvault.Change{snap})
	appendAll(t, b, cs[N:N+1])
	h, v := materialise(t, b)
	wantAll, _ := direct(t, cs[:N+1])
	if h != wantAll || v != cs[N].Version {
		t.Fatalf("after a snapshot at %d and one change: database at %d hashes %s, want %d %s (snapshot alone %s)", cs[N-1].Version, v, h, cs[N].Version, wantAll, want)
	}
	closeB(t, b)
	b = open(t, s, lnvault.OpenOptions{})
	defer b.Close()
	if h2, _ := materialise(t, b); h2 != h {
		t.Fatalf("after reopen the database hashes %s, was %s", h2, h)
	}
}

func checkCompact(t *testing.T, s Subject, cs []*lnvault.Change) {
	ctx := context.Background()
	b := created(t, s, cs[:N])
	m := b.Metadata()
	want, _ := direct(t, cs[:N])
	if compactRefused(t, s, b) {
		return
	}
	if _, err := b.Compact(ctx); err != nil {
		t.Fatalf("compact: %v", err)
	}
	got := b.Metadata()
	if s.Deviations.CompactResetsCount && got != m {
		t.Logf("known deviation: compaction set the version count from %d to %d", m.VersionCount, got.VersionCount)
		got.VersionCount = m.VersionCount
	}
	if got != m {
		t.Fatalf("compaction changed the metadata from %+v to %+v", m, got)
	}
	if h, v := materialise(t, b); h != want || v != m.Version {
		t.Fatalf("after compaction: database at %d hashes %s, want %d %s", v, h, m.Version, want)
	}
	// The head is still its own change: a stream from it gives just that.
	if got := stream(t, b, m.Version); len(got) == 0 || got[len(got)-1] != key(cs[N-1]) {
		t.Fatalf("after compaction a stream from the head %d gives %v", m.Version, got)
	}
	appendAll(t, b, cs[N:N+2])
	closeB(t, b)
	b = open(t, s, lnvault.OpenOptions{})
	defer b.Close()
	want2, _ := direct(t, cs[:N+2])
	if h, v := materialise(t, b); h != want2 || v != cs[N+1].Version {
		t.Fatalf("after compaction, appends and reopen: database at %d hashes %s, want %d %s", v, h, cs[N+1].Version, want2)
	}
}

// checkEmpty: an Emptier's Empty leaves a backup at version 0 with nothing
// to stream, still open for writing; it takes any first version, as a new
// backup does, and what follows survives a reopen.
func checkEmpty(t *testing.T, s Subject, cs []*lnvault.Change) {
	ctx := context.Background()
	b := created(t, s, cs[:N])
	e, ok := b.(lnvault.Emptier)
	if ok != s.Empties {
		t.Fatalf("the backend is an Emptier: %v; the subject says %v", ok, s.Empties)
	}
	if !ok {
		return // asserted above: it does not claim to empty
	}
	if err := e.Empty(ctx); err != nil {
		t.Fatalf("empty: %v", err)
	}
	if m := b.Metadata(); m != (lnvault.Metadata{}) {
		t.Fatalf("after Empty the metadata is %+v, want zero", m)
	}
	if got := stream(t, b, 0); len(got) != 0 {
		t.Fatalf("after Empty a stream gives %v", got)
	}
	appendAll(t, b, cs[:N/2])
	closeB(t, b)
	b = open(t, s, lnvault.OpenOptions{})
	defer b.Close()
	wantStream(t, "after Empty, appends and a reopen", stream(t, b, 0), keys(cs[:N/2]))
	if m := b.Metadata(); m.Version != cs[N/2-1].Version || m.VersionCount != uint64(N/2) {
		t.Fatalf("after Empty, appends and a reopen the metadata is %+v, want version %d with %d changes", m, cs[N/2-1].Version, N/2)
	}
}

func checkReader(t *testing.T, s Subject, cs []*lnvault.Change) {
	ctx := context.Background()
	w := created(t, s, cs[:N])
	if s.Deviations.OneClient {
		// Nothing reads beside the writer: read after it.
		t.Log("known deviation: one client at a time; the reader opens after the writer closed")
		closeB(t, w)
	}
	r, err := s.Open(ctx, lnvault.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("open read-only beside the writer: %v", err)
	}
	defer r.Close()
	wantStream(t, "reader's stream", stream(t, r, 0), keys(cs[:N]))
	if err := r.Append(ctx, cs[N]); err == nil {
		t.Fatal("a read-only backend appended")
	}
	if s.Deviations.OneClient {
		return
	}
	appendAll(t, w, cs[N:N+1])
	wantStream(t, "reader's stream after the writer appended", stream(t, r, 0), keys(cs[:N+1]))
}

// snapshotChange reads the database at path into a snapshot change.
func snapshotChange(path string, v uint32) (*lnvault.Change, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return lnvault.NewSnapshot(v, io.NewSectionReader(bytes.NewReader(data), 0, int64(len(data)))), nil
}

// Fake makes subjects of an in-memory backend: every Open gives the same
// instance (its state lives as long as it does, as a durable one would) and
// a read-only Open gives a view of it that refuses writes.
func Fake(newBackend func() lnvault.Backend) func(t *testing.T) Subject {
	return func(t *testing.T) Subject {
		b := newBackend()
		return Subject{Open: func(_ context.Context, o lnvault.OpenOptions) (lnvault.Backend, error) {
			if o.ReadOnly {
				return readOnly{b}, nil
			}
			return b, nil
		}}
	}
}

var errReadOnly = errors.New("backendtest: opened read-only")

type readOnly struct{ lnvault.Backend }

func (readOnly) Append(context.Context, *lnvault.Change) error { return errReadOnly }
func (readOnly) Rewind(context.Context) error                  { return errReadOnly }
func (readOnly) Compact(context.Context) (lnvault.CompactStats, error) {
	return lnvault.CompactStats{}, errReadOnly
}
func (readOnly) Close() error { return nil }
