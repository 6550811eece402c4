// Package lnvault holds the domain types shared by every part of lnvault: a
// change of a Core Lightning database, a backup's metadata, the Backend
// interface that every storage implements, and the registry that opens a
// backend from its URL.
package lnvault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// Kind tells a transaction from a snapshot. The values are the record types of
// the reference file format.
type Kind uint8

const (
	KindTransaction Kind = 1
	KindSnapshot    Kind = 2
)

func (k Kind) String() string {
	switch k {
	case KindTransaction:
		return "transaction"
	case KindSnapshot:
		return "snapshot"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Change is one entry of a backup's log.
//
// Version is Core Lightning's data_version after the change. A transaction
// carries the SQL statements (literals inlined) that lead there; a snapshot
// carries the whole database file at that version.
type Change struct {
	Version    uint32
	Kind       Kind
	Statements []string

	// Snapshot is the database file of a snapshot change. A SectionReader so
	// that several destinations can read it in parallel (io.NewSectionReader
	// over it) and so that a large snapshot can live on disk, not in RAM. When
	// a backend streams a change to a callback, Snapshot is valid only until
	// the callback returns.
	Snapshot *io.SectionReader
}

// NewTransaction returns a transaction change.
func NewTransaction(version uint32, statements []string) *Change {
	return &Change{Version: version, Kind: KindTransaction, Statements: statements}
}

// JoinStatements appends a transaction's payload, as the file format and the
// wire protocol store it (statements joined by NUL, no trailing NUL), to
// dst. A statement containing NUL cannot be represented.
func JoinStatements(dst []byte, stmts []string) ([]byte, error) {
	for i, s := range stmts {
		if strings.IndexByte(s, 0) >= 0 {
			return dst, fmt.Errorf("statement %d contains a NUL byte, which the format uses as separator", i)
		}
		if i > 0 {
			dst = append(dst, 0)
		}
		dst = append(dst, s...)
	}
	return dst, nil
}

// SplitStatements splits a transaction payload (JoinStatements) at NUL
// bytes. An empty payload is a transaction without statements.
func SplitStatements(b []byte) []string {
	if len(b) == 0 {
		return nil
	}
	s := string(b) // one allocation; the statements are substrings of it
	out := make([]string, 0, bytes.Count(b, []byte{0})+1)
	for {
		i := strings.IndexByte(s, 0)
		if i < 0 {
			return append(out, s)
		}
		out = append(out, s[:i])
		s = s[i+1:]
	}
}

// NewSnapshot returns a snapshot change whose bytes are read from r.
func NewSnapshot(version uint32, r *io.SectionReader) *Change {
	return &Change{Version: version, Kind: KindSnapshot, Snapshot: r}
}

// Metadata is what a backup knows about its head, as in the reference: the
// last stored version, the one before it (for a single rewind) and how many
// changes were stored.
type Metadata struct {
	Version      uint32 `json:"version"`
	PrevVersion  uint32 `json:"prev_version"`
	VersionCount uint64 `json:"version_count"`
}

// SizeStats is one side of a compaction's statistics, in the reference's JSON
// shape.
type SizeStats struct {
	BackupSize   int64  `json:"backupsize"`
	VersionCount uint64 `json:"version_count"`
}

// CompactStats is the result of a compaction, in the reference's JSON shape:
// {"before": {"backupsize", "version_count"}, "after": {...}}.
type CompactStats struct {
	Before SizeStats `json:"before"`
	After  SizeStats `json:"after"`
}

// Status describes a backup for `lnvault status` and `backup-status`.
type Status struct {
	URL        string    `json:"url"`
	Format     string    `json:"format"` // e.g. "file v2", "socket", "s3"
	Metadata   Metadata  `json:"metadata"`
	Records    int64     `json:"records"`     // changes currently in the log
	Size       int64     `json:"size_bytes"`  // bytes used by the backup
	LastChange time.Time `json:"last_change"` // zero when unknown
}

// Backend is one storage of a backup. Implementations are safe for one
// writer; Metadata, Status and Stream may be called while it appends.
//
// The contract every backend keeps (package backendtest checks it):
//
//   - After an Append of version v on a head at version h, Metadata is
//     {Version: v, PrevVersion: h, VersionCount: one more}.
//   - After a Rewind, Metadata is {Version: the version before the rewound
//     change, PrevVersion: 0, VersionCount: one less}, and Stream no longer
//     yields the rewound change. PrevVersion 0 says that nothing may be
//     rewound: a second Rewind fails with ErrRewindTwice until the next
//     Append.
//   - All of it is durable: after Close and a new Open, Metadata, Stream and
//     the refusal of a second Rewind are what they were. (A backend that
//     forgot its rewind would let a restarted node that lost state rewind a
//     committed change.)
//   - Compact changes neither Metadata nor what Stream materialises, and the
//     head can still be rewound after it.
//   - An Append whose version does not follow the head (CheckNext) fails
//     with ErrVersion and stores nothing.
type Backend interface {
	// Metadata returns the head of the backup as of the last Append/Rewind.
	Metadata() Metadata

	// Append stores c after the head. It returns only when c is durable
	// (fsync'd, acknowledged by the server, or the PUT completed). A change
	// whose version repeats the head's version (a migration's PRAGMA
	// foreign_keys payload) is stored like any other.
	Append(ctx context.Context, c *Change) error

	// Rewind removes the last change, durably. Only one rewind is allowed in
	// a row; a second returns ErrRewindTwice.
	Rewind(ctx context.Context) error

	// Stream calls fn for every change needed to materialise the database,
	// in order, starting with the first change whose version is >= from
	// (0: everything). A snapshot replaces everything before it. Returning
	// ErrStop from fn ends the stream without error. A damaged backup yields
	// an error (see CorruptError), never a silently shortened stream.
	Stream(ctx context.Context, from uint32, fn func(*Change) error) error

	// Compact replaces the log up to (not including) the head change with a
	// snapshot; the head stays a separate change so it can still be rewound.
	Compact(ctx context.Context) (CompactStats, error)

	// Status describes the backup.
	Status(ctx context.Context) (Status, error)

	Close() error
}

// Idler is implemented by backends that can do, while their writer waits for
// the next change, work that would otherwise fall on the next Append (the
// file backend resets its compressor's tables). Writers call Idle after
// acknowledging a change when no other request is waiting; it must be cheap
// and never block on the backend's lock.
type Idler interface {
	Idle()
}

// Deleter is implemented by backends that can remove the backup they hold
// (`lnvault delete`). Delete is called on a backend opened for writing, so a
// writer that holds the backup (its lock or lease) keeps it; it removes the
// changes and what marks the backup as existing, leaves the static channel
// backups kept beside it, and closes the backend.
type Deleter interface {
	Delete(ctx context.Context) error
}

// Emptier is implemented by backends that can drop every change and stay
// open for writing, empty at version 0. A backup server empties the backup
// it serves when a client deletes it (`lnvault delete socket:...`): it goes
// on serving, and `lnvault init` can start a new backup there.
type Emptier interface {
	Empty(ctx context.Context) error
}

// Rebaser is implemented by backends that can take a snapshot built
// elsewhere in place of the start of their log: the node compacts an
// end-to-end encrypted backup, whose host cannot read its changes, with a
// snapshot of its own database.
type Rebaser interface {
	// Rebase replaces every change up to the last one of version
	// snap.Version with snap and keeps the later ones; at least the head
	// must come after it (so it can still be rewound). Metadata does not
	// change. Like Compact it runs beside Append.
	Rebase(ctx context.Context, snap *Change) (CompactStats, error)
}

// VersionAtTimer is implemented by backends that know when each change was
// stored (object storage), for point-in-time restores (`--to-time`).
type VersionAtTimer interface {
	// VersionAt returns the last version stored at or before t.
	VersionAt(ctx context.Context, t time.Time) (uint32, error)
}

// TargetStreamer is implemented by backends that can start a stream at the
// newest snapshot at or before a target version (object storage keeps old
// snapshots), so a point-in-time restore need not start at the newest one.
type TargetStreamer interface {
	// StreamTo calls fn, in order, for the changes that materialise the
	// database at target, possibly followed by later ones (the caller
	// stops with ErrStop).
	StreamTo(ctx context.Context, target uint32, fn func(*Change) error) error
}

// Errors shared by backends. Wrap them with %w so callers can use errors.Is.
var (
	// ErrStop ends a Stream early without error.
	ErrStop = errors.New("stop")
	// ErrNotFound: there is no backup at the URL.
	ErrNotFound = errors.New("no backup found")
	// ErrExists: Create was asked for a backup that already exists.
	ErrExists = errors.New("backup already exists")
	// ErrLocked: another writer holds the backup.
	ErrLocked = errors.New("backup is in use by another writer")
	// ErrRewindTwice: a second rewind in a row.
	ErrRewindTwice = errors.New("cannot rewind more than one change")
	// ErrVersion: a change whose version does not follow the head.
	ErrVersion = errors.New("version does not follow the backup's head")
	// ErrCorrupt: the backup is damaged. Usually wrapped in a *CorruptError.
	ErrCorrupt = errors.New("backup is corrupt")
	// ErrNoRebase: the storage cannot take a snapshot built by the node
	// (Rebaser), e.g. a backup server that does not offer it.
	ErrNoRebase = errors.New("this storage cannot take a snapshot from the node")
)

// The marks of an end-to-end encrypted backup (package sealed), here so that
// any part that meets one (a host's compaction, a restore without the
// identity) can name it instead of failing on it as SQL or as a database.
const (
	// SealedPrefix starts the one statement of a sealed transaction. It is
	// not SQL: a host applying it fails rather than building a wrong
	// database.
	SealedPrefix = "LNVAULT-SEALED-V1 "
	// SealedSnapshotMagic starts the bytes of a sealed snapshot.
	SealedSnapshotMagic = "LNVAULT-SEALED-SNAPSHOT-V1\n"
)

// ErrSealed: the backup is end-to-end encrypted; only a holder of the age
// identity it was made for can read it, and only the node can compact it.
var ErrSealed = errors.New("the backup is end-to-end encrypted")

// IsSealed tells whether a change is sealed (package sealed).
func IsSealed(c *Change) bool {
	switch c.Kind {
	case KindTransaction:
		return len(c.Statements) == 1 && strings.HasPrefix(c.Statements[0], SealedPrefix)
	case KindSnapshot:
		if c.Snapshot == nil {
			return false
		}
		var b [len(SealedSnapshotMagic)]byte
		n, _ := c.Snapshot.ReadAt(b[:], 0)
		return n == len(b) && string(b[:]) == SealedSnapshotMagic
	}
	return false
}

// CorruptError names where a backup is damaged.
type CorruptError struct {
	Offset  int64  // byte offset of the bad record or header (-1 if not a file)
	Version uint32 // version of the bad record, or of the last good one, 0 if unknown
	Object  string // object name for object storage, "" for files
	Reason  string
}

func (e *CorruptError) Error() string {
	where := ""
	switch {
	case e.Object != "":
		where = fmt.Sprintf(" in object %s", e.Object)
	case e.Offset >= 0:
		where = fmt.Sprintf(" at offset %d", e.Offset)
	}
	v := ""
	if e.Version != 0 {
		v = fmt.Sprintf(" (version %d)", e.Version)
	}
	return fmt.Sprintf("backup is corrupt%s%s: %s", where, v, e.Reason)
}

func (e *CorruptError) Unwrap() error { return ErrCorrupt }

// CheckNext tells whether a change of version next and kind may follow a head
// at version head. The next version, or a repeat of the head (migrations send
// their PRAGMA foreign_keys payload with the previous data_version), is
// allowed; the first change of an empty backup (head 0) may carry any version
// because init can snapshot a database at any data_version; and a snapshot may
// jump ahead of the head: it is the whole database at its version, so it needs
// nothing before it (the plugin heals a gap of commits that escaped the hook
// that way).
func CheckNext(head Metadata, next uint32, kind Kind) error {
	if head.Version == 0 && head.VersionCount == 0 {
		return nil
	}
	if Follows(head.Version, next, kind) {
		return nil
	}
	return fmt.Errorf("%w: head is %d, got %s %d", ErrVersion, head.Version, kind, next)
}

// Follows is the one rule of version continuity, for writers and readers
// alike: a change of version next and kind may come right after one of
// version prev if it is the next version, a repeat (migrations send their
// PRAGMA foreign_keys payload with the previous data_version), or a snapshot
// further ahead.
func Follows(prev, next uint32, kind Kind) bool {
	return next == prev+1 || next == prev || (kind == KindSnapshot && next > prev)
}

// IsPragmaOnly tells whether a db_write carries only `PRAGMA foreign_keys`
// statements: table-rebuild migrations send them outside any transaction,
// with the data_version of the last committed transaction (not a new one).
// Replaying one needs lightningd's boundaries: SQLite ignores the pragma
// inside a transaction.
func IsPragmaOnly(writes []string) bool {
	if len(writes) == 0 {
		return false
	}
	for _, w := range writes {
		s := strings.ToLower(strings.Join(strings.Fields(w), " "))
		if !strings.HasPrefix(s, "pragma foreign_keys") {
			return false
		}
	}
	return true
}
