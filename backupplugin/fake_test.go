package backupplugin

import (
	"context"
	"errors"
	"sync"

	"github.com/lnvault/lnvault"
)

// memBackend is an in-memory lnvault.Backend with failure injection, for
// unit tests of the vault (the process tests use the real file backend).
type memBackend struct {
	mu       sync.Mutex
	changes  []*lnvault.Change
	meta     lnvault.Metadata
	rewound  bool
	failNext error // returned by the next Append
	rewinds  int
	compacts int
}

func (m *memBackend) Metadata() lnvault.Metadata {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.meta
}

func (m *memBackend) Append(ctx context.Context, c *lnvault.Change) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.failNext; err != nil {
		return err
	}
	if err := lnvault.CheckNext(m.meta, c.Version, c.Kind); err != nil {
		return err
	}
	m.changes = append(m.changes, c)
	m.meta = lnvault.Metadata{Version: c.Version, PrevVersion: m.meta.Version, VersionCount: m.meta.VersionCount + 1}
	m.rewound = false
	return nil
}

func (m *memBackend) Rewind(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.rewound {
		return lnvault.ErrRewindTwice
	}
	if len(m.changes) == 0 {
		return errors.New("nothing to rewind")
	}
	m.changes = m.changes[:len(m.changes)-1]
	m.meta.Version = m.meta.PrevVersion
	m.meta.PrevVersion = 0 // nothing may be rewound now (lnvault.Backend)
	m.meta.VersionCount--
	m.rewound = true
	m.rewinds++
	return nil
}

func (m *memBackend) Stream(ctx context.Context, from uint32, fn func(*lnvault.Change) error) error {
	m.mu.Lock()
	cs := append([]*lnvault.Change(nil), m.changes...)
	m.mu.Unlock()
	for _, c := range cs {
		if c.Version < from {
			continue
		}
		if err := fn(c); err != nil {
			if errors.Is(err, lnvault.ErrStop) {
				return nil
			}
			return err
		}
	}
	return nil
}

func (m *memBackend) Compact(ctx context.Context) (lnvault.CompactStats, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.compacts++
	n := uint64(len(m.changes))
	return lnvault.CompactStats{Before: lnvault.SizeStats{BackupSize: int64(n), VersionCount: n}, After: lnvault.SizeStats{BackupSize: 2, VersionCount: 2}}, nil
}

func (m *memBackend) Status(ctx context.Context) (lnvault.Status, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return lnvault.Status{Format: "mem", Metadata: m.meta, Records: int64(len(m.changes))}, nil
}

func (m *memBackend) Close() error { return nil }

func (m *memBackend) versions() []uint32 {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []uint32
	for _, c := range m.changes {
		out = append(out, c.Version)
	}
	return out
}
