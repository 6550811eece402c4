package restore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"time"

	"github.com/lnvault/lnvault"
)

// fakeBackend is an in-memory lnvault.Backend for unit tests: it holds a
// log of changes and can be told to fail the stream at a given change, or to
// lie about its head.
type fakeBackend struct {
	md      lnvault.Metadata
	changes []fakeChange
	rewound bool

	failAt  int   // index of the change whose read fails (-1: none)
	failErr error // the error Stream returns there
}

type fakeChange struct {
	version uint32
	kind    lnvault.Kind
	stmts   []string
	snap    []byte
}

func newFake() *fakeBackend { return &fakeBackend{failAt: -1} }

func (f *fakeBackend) Metadata() lnvault.Metadata { return f.md }

func (f *fakeBackend) Append(_ context.Context, c *lnvault.Change) error {
	if err := lnvault.CheckNext(f.md, c.Version, c.Kind); err != nil {
		return err
	}
	fc := fakeChange{version: c.Version, kind: c.Kind, stmts: c.Statements}
	if c.Kind == lnvault.KindSnapshot {
		b, err := io.ReadAll(io.NewSectionReader(c.Snapshot, 0, c.Snapshot.Size()))
		if err != nil {
			return err
		}
		fc.snap = b
	}
	f.changes = append(f.changes, fc)
	f.md = lnvault.Metadata{Version: c.Version, PrevVersion: f.md.Version, VersionCount: f.md.VersionCount + 1}
	f.rewound = false
	return nil
}

func (f *fakeBackend) Rewind(context.Context) error {
	if len(f.changes) == 0 || f.rewound {
		return lnvault.ErrRewindTwice
	}
	f.rewound = true
	f.changes = f.changes[:len(f.changes)-1]
	f.md = lnvault.Metadata{Version: f.md.PrevVersion, VersionCount: f.md.VersionCount - 1}
	return nil
}

func (f *fakeBackend) Stream(ctx context.Context, from uint32, fn func(*lnvault.Change) error) error {
	start := 0
	for i, c := range f.changes {
		if c.kind == lnvault.KindSnapshot {
			start = i
		}
	}
	for i := start; i < len(f.changes); i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		if i == f.failAt {
			return f.failErr
		}
		c := f.changes[i]
		if c.version < from {
			continue
		}
		ch := &lnvault.Change{Version: c.version, Kind: c.kind, Statements: c.stmts}
		if c.kind == lnvault.KindSnapshot {
			ch.Snapshot = io.NewSectionReader(bytes.NewReader(c.snap), 0, int64(len(c.snap)))
		}
		if err := fn(ch); err != nil {
			if errors.Is(err, lnvault.ErrStop) {
				return nil
			}
			return err
		}
	}
	return nil
}

// Compact keeps the log as it is: what it streams is unchanged, as the
// contract asks of a compaction.
func (f *fakeBackend) Compact(context.Context) (lnvault.CompactStats, error) {
	n := uint64(len(f.changes))
	return lnvault.CompactStats{Before: lnvault.SizeStats{VersionCount: n}, After: lnvault.SizeStats{VersionCount: n}}, nil
}

func (f *fakeBackend) Status(context.Context) (lnvault.Status, error) {
	return lnvault.Status{URL: "fake:", Format: "fake", Metadata: f.md, Records: int64(len(f.changes)), LastChange: time.Time{}}, nil
}

func (f *fakeBackend) Close() error { return nil }
