package backupplugin

import (
	"errors"
	"fmt"

	"github.com/lnvault/lnvault"
)

// Action is what the first db_write after a start does to a destination.
type Action int

const (
	// Append: the backup is at the node's committed version.
	Append Action = iota
	// RewindAppend: the backup holds one change lightningd never committed
	// (it crashed between our answer and its commit); remove it, then append.
	RewindAppend
)

func (a Action) String() string {
	switch a {
	case RewindAppend:
		return "rewind+append"
	case Heal:
		return "heal+append"
	}
	return "append"
}

// The reasons of the reference plugin, naming lightningd.
var (
	ErrLostState = errors.New("lightningd seems to have lost some state (failed restore?). Emergency shutdown.")
	ErrOutOfDate = errors.New("Backup is out of date, we cannot continue safely. Emergency shutdown.")
)

// FirstWrite decides what the first db_write after a start does to a
// destination whose head is m. d is the write's data_version.
//
// The node's committed version N is d-1 for a transaction and d for a
// migration's PRAGMA-only write (which does not bump data_version). Then, as
// in the reference: the backup at N goes on; a backup one change ahead whose
// previous version is N holds an uncommitted change and is rewound; a backup
// further ahead means the node lost state; a backup behind is out of date. An
// empty backup (fresh init without a database) accepts any first version.
func FirstWrite(m lnvault.Metadata, d uint32, writes []string) (Action, error) {
	if m.Version == 0 && m.VersionCount == 0 {
		return Append, nil
	}
	n := committedVersion(d, writes)
	b, p := int64(m.Version), int64(m.PrevVersion)
	switch {
	case b == n:
		return Append, nil
	case p == n && b == n+1:
		return RewindAppend, nil
	case p > n || b > n+1:
		return 0, fmt.Errorf("%w (backup at version %d, previous %d; first write %d)", ErrLostState, b, p, d)
	default:
		return 0, fmt.Errorf("%w (backup at version %d, previous %d; first write %d)", ErrOutOfDate, b, p, d)
	}
}
