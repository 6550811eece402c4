package sealed

import (
	"context"
	"fmt"
	"io"

	"github.com/lnvault/lnvault"
)

// Scan opens and authenticates every change of the backup (snapshots read
// whole) and returns the mark of each, the head last.
func (b *Backend) Scan(ctx context.Context) ([]Mark, error) {
	r := b.newOpener()
	var trail []Mark
	r.trail = &trail
	err := b.inner.Stream(ctx, 0, func(c *lnvault.Change) error {
		p, err := r.open(c)
		if err != nil {
			return err
		}
		if p.Kind == lnvault.KindSnapshot {
			if _, err := io.Copy(io.Discard, io.NewSectionReader(p.Snapshot, 0, p.Snapshot.Size())); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return trail, err
	}
	b.setHead(r.mark())
	return trail, nil
}

// State is how a destination's backup stands to the newest one.
type State string

const (
	Newest State = "newest"
	Same   State = "same"   // the same head as the newest
	Behind State = "behind" // a prefix of the newest: an older head
	Forked State = "forked" // not a prefix of the newest
	// Unknown: behind the newest's oldest change (compacted away), so the
	// chains cannot be compared.
	Unknown State = "behind (unchecked)"
)

// Relation is one destination against the newest.
type Relation struct {
	State  State
	Head   Mark
	Detail string
}

// Compare takes the trails of several destinations of one backup (Scan),
// picks the newest authenticated head (the highest version; a tie with
// another chain is a fork) and says how each other one stands to it.
// newest is -1 when two destinations hold different heads at the highest
// version: no trail can be trusted over the other.
func Compare(trails [][]Mark) (newest int, rel []Relation) {
	rel = make([]Relation, len(trails))
	newest = -1
	for i, t := range trails {
		if len(t) == 0 {
			continue
		}
		if newest < 0 || t[len(t)-1].Version > trails[newest][len(trails[newest])-1].Version {
			newest = i
		}
	}
	if newest < 0 {
		return -1, rel
	}
	nt := trails[newest]
	nh := nt[len(nt)-1]
	rel[newest] = Relation{State: Newest, Head: nh, Detail: "head at " + nh.String()}
	tie := false
	for i, t := range trails {
		if i == newest {
			continue
		}
		if len(t) == 0 {
			rel[i] = Relation{State: Behind, Detail: "empty"}
			continue
		}
		h := t[len(t)-1]
		rel[i] = relate(nt, h)
		if rel[i].State == Forked && h.Version == nh.Version {
			tie = true
		}
	}
	if tie {
		return -1, rel
	}
	return newest, rel
}

func relate(newest []Mark, h Mark) Relation {
	nh := newest[len(newest)-1]
	behind := nh.Version - h.Version
	if !h.Sealed || !nh.Sealed {
		// Without chains only versions tell.
		if behind == 0 {
			return Relation{State: Same, Head: h, Detail: fmt.Sprintf("head at version %d (not encrypted: a fork at the same version cannot be told)", h.Version)}
		}
		return Relation{State: Behind, Head: h, Detail: fmt.Sprintf("head at version %d, %d behind", h.Version, behind)}
	}
	for _, m := range newest {
		if m.Gen == h.Gen && m.Next == h.Next && m.Version == h.Version && m.Kind == h.Kind {
			switch {
			case m.Chain != h.Chain:
				return Relation{State: Forked, Head: h, Detail: fmt.Sprintf("head at %s holds other changes than the newest at that place", h)}
			case behind == 0 && m == nh:
				return Relation{State: Same, Head: h, Detail: "head at " + h.String()}
			}
			return Relation{State: Behind, Head: h, Detail: fmt.Sprintf("head at %s: %d versions behind the newest (the host serves an older backup, or it missed changes)", h, behind)}
		}
	}
	if h.Version < newest[0].Version {
		return Relation{State: Unknown, Head: h, Detail: fmt.Sprintf("head at %s, older than the newest's first change (compacted): %d versions behind", h, behind)}
	}
	return Relation{State: Forked, Head: h, Detail: fmt.Sprintf("head at %s is not in the newest's history: the two forked", h)}
}
