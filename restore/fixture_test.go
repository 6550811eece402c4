package restore

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/dbapply"
	"github.com/lnvault/lnvault/internal/corpus"
)

// FixtureSnap is the version of the fixture snapshot. Applying the corpus's
// first versions (the schema migrations) is the slow part of a replay, more
// so under -race; most tests start from a snapshot taken after them.
const FixtureSnap = 300

var fixture struct {
	once sync.Once
	snap []byte
	err  error
}

// FixtureSnapshot returns the bytes of the database after a direct replay of
// the corpus up to FixtureSnap, built once per test binary.
func FixtureSnapshot(t testing.TB) []byte {
	t.Helper()
	fixture.once.Do(func() {
		dir, err := os.MkdirTemp("", "lnvault-restore-fixture-")
		if err != nil {
			fixture.err = err
			return
		}
		defer os.RemoveAll(dir)
		p := filepath.Join(dir, "snap.sqlite3")
		ctx := context.Background()
		a, err := dbapply.Create(ctx, p)
		if err != nil {
			fixture.err = err
			return
		}
		for _, r := range corpus.MustLoad() {
			if r.DataVersion > FixtureSnap {
				break
			}
			if fixture.err = a.Apply(ctx, r.Change()); fixture.err != nil {
				return
			}
		}
		if fixture.err = a.Finish(ctx); fixture.err != nil {
			return
		}
		fixture.snap, fixture.err = os.ReadFile(p)
	})
	if fixture.err != nil {
		t.Fatal(fixture.err)
	}
	return fixture.snap
}

// FixtureChanges returns the fixture snapshot as a change followed by every
// corpus change after it up to upTo.
func FixtureChanges(t testing.TB, upTo uint32) []*lnvault.Change {
	t.Helper()
	snap := FixtureSnapshot(t)
	out := []*lnvault.Change{lnvault.NewSnapshot(FixtureSnap, io.NewSectionReader(bytesReaderAt(snap), 0, int64(len(snap))))}
	for _, r := range corpus.MustLoad() {
		if r.DataVersion > FixtureSnap && r.DataVersion <= upTo {
			out = append(out, r.Change())
		}
	}
	return out
}

type bytesReaderAt []byte

func (b bytesReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// FixtureReplay writes to path the database a direct dbapply replay of the
// corpus cut at upTo (>= FixtureSnap) gives: the fixture snapshot plus the
// changes after it, applied without any backend.
func FixtureReplay(t testing.TB, path string, upTo uint32) {
	t.Helper()
	ctx := context.Background()
	a, err := dbapply.Create(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range FixtureChanges(t, upTo) {
		if err := a.Apply(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Finish(ctx); err != nil {
		t.Fatal(err)
	}
}

// fixtureFake is a fake backend holding FixtureChanges(upTo).
func fixtureFake(t testing.TB, upTo uint32) *fakeBackend {
	t.Helper()
	f := newFake()
	for _, c := range FixtureChanges(t, upTo) {
		if err := f.Append(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	}
	return f
}
