package scb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"filippo.io/age"
	"github.com/lnvault/lnvault"
)

// Version describes one stored version of a store.
type Version struct {
	// ID is "<seq, 12 digits>-<stored time, UTC>", e.g.
	// "000000000042-20260102T150405.123456789Z": sequence numbers only grow,
	// so the latest version is the one with the highest Seq, whatever the
	// clocks say.
	ID     string
	Seq    uint64
	Stored time.Time

	// From the envelope header.
	Kind      Kind
	Created   time.Time
	Channels  int
	Encrypted bool
	// PlainSHA256 is zero for encrypted versions.
	PlainSHA256 [32]byte
	// Size is the stored envelope's size in bytes.
	Size int64

	// Err is set when the version is damaged (a *lnvault.CorruptError):
	// List still lists it so the damage is visible.
	Err error
}

// Store keeps immutable versions of static channel backups. Implementations:
// the folder store here (file: and dir: URLs); the backup server (socket:) and
// object storage (s3://) register theirs with RegisterStore.
type Store interface {
	// Put stores env, a complete envelope (see Seal), as a new version with
	// a sequence number above every existing one. It returns only when the
	// version is durable, and never overwrites an existing version.
	// Implementations must check env with DecodeEnvelope first.
	Put(ctx context.Context, env []byte) (Version, error)
	// List returns every version, sorted by Seq ascending. Damaged versions
	// are listed with Err set.
	List(ctx context.Context) ([]Version, error)
	// Get returns the stored envelope bytes of version id (Version.ID).
	// Callers verify them with DecodeEnvelope.
	Get(ctx context.Context, id string) ([]byte, error)
	// String names the store for logs and status (no credentials).
	String() string
	Close() error
}

// StoreOptions are passed to a store opener.
type StoreOptions struct {
	Logger *slog.Logger
}

func (o StoreOptions) log() *slog.Logger {
	if o.Logger != nil {
		return o.Logger
	}
	return slog.Default()
}

// StoreOpener opens the store of one URL scheme.
type StoreOpener func(ctx context.Context, rawURL string, opts StoreOptions) (Store, error)

var (
	storeMu   sync.RWMutex
	storeRegs = map[string]StoreOpener{"file": openFileURL, "dir": openDirURL}
)

// RegisterStore makes a store available under a URL scheme; file: and dir:
// are this package's own and always there. Package backends calls it for
// the others lnvault ships; a scheme registered twice panics.
func RegisterStore(scheme string, open StoreOpener) {
	storeMu.Lock()
	defer storeMu.Unlock()
	if _, dup := storeRegs[scheme]; dup {
		panic("scb: store registered twice: " + scheme)
	}
	storeRegs[scheme] = open
}

// StoreSchemes lists the registered schemes, sorted.
func StoreSchemes() []string {
	storeMu.RLock()
	defer storeMu.RUnlock()
	var out []string
	for s := range storeRegs {
		out = append(out, s+":")
	}
	sort.Strings(out)
	return out
}

// OpenStore opens the SCB store of a destination URL.
func OpenStore(ctx context.Context, rawURL string, opts StoreOptions) (Store, error) {
	scheme := lnvault.Scheme(rawURL)
	storeMu.RLock()
	open := storeRegs[scheme]
	storeMu.RUnlock()
	if open == nil {
		return nil, fmt.Errorf("unsupported static channel backup URL %q: use one of %s (for example file:///var/backups/lightningd.dbak or dir:///var/backups/scb)",
			rawURL, strings.Join(StoreSchemes(), ", "))
	}
	return open(ctx, rawURL, opts)
}

// VersionID formats a version id.
func VersionID(seq uint64, stored time.Time) string {
	return fmt.Sprintf("%012d-%s", seq, stored.UTC().Format(idTimeLayout))
}

const idTimeLayout = "20060102T150405.000000000Z"

// ParseVersionID splits a version id into its sequence number and time.
func ParseVersionID(id string) (uint64, time.Time, error) {
	seqS, tS, ok := strings.Cut(id, "-")
	if !ok || len(seqS) != 12 {
		return 0, time.Time{}, fmt.Errorf("invalid version id %q", id)
	}
	seq, err := strconv.ParseUint(seqS, 10, 64)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("invalid version id %q", id)
	}
	t, err := time.Parse(idTimeLayout, tS)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("invalid version id %q", id)
	}
	return seq, t, nil
}

// Select picks a version of store for `scb get`: kind "" means the only kind
// the store holds; sel "" means the latest of that kind, otherwise a sequence
// number ("42") or a full version id. A damaged latest version is an error
// naming it, never a silent fallback to an older one.
func Select(ctx context.Context, s Store, kind Kind, sel string) (Version, error) {
	vs, err := s.List(ctx)
	if err != nil {
		return Version{}, err
	}
	if kind == "" && sel == "" {
		kinds := map[Kind]bool{}
		var names []string
		for _, v := range vs {
			if v.Kind != "" && !kinds[v.Kind] {
				kinds[v.Kind] = true
				names = append(names, string(v.Kind))
			}
		}
		if len(kinds) > 1 {
			sort.Strings(names)
			return Version{}, fmt.Errorf("%s holds several kinds of static channel backup (%s): choose one with --kind", s, strings.Join(names, ", "))
		}
	}
	var match []Version
	for _, v := range vs {
		if kind == "" || v.Kind == kind || (v.Err != nil && v.Kind == "") {
			match = append(match, v)
		}
	}
	if sel == "" {
		if len(match) == 0 {
			return Version{}, fmt.Errorf("%w in %s", ErrNoVersion, s)
		}
		v := match[len(match)-1]
		if v.Err != nil {
			return v, fmt.Errorf("latest version %s in %s is damaged: %w (pick an older one with --version)", v.ID, s, v.Err)
		}
		return v, nil
	}
	seq, seqErr := strconv.ParseUint(sel, 10, 64)
	for _, v := range vs {
		if v.ID == sel || (seqErr == nil && v.Seq == seq) {
			if kind != "" && v.Kind != kind && v.Err == nil {
				return Version{}, fmt.Errorf("version %s in %s is of kind %s, not %s", v.ID, s, v.Kind, kind)
			}
			if v.Err != nil {
				return v, fmt.Errorf("version %s in %s is damaged: %w", v.ID, s, v.Err)
			}
			return v, nil
		}
	}
	return Version{}, fmt.Errorf("%w: no version %q in %s (see lnvault scb list)", ErrNoVersion, sel, s)
}

// Fetch reads version v of s, verifies it and returns its plaintext.
func Fetch(ctx context.Context, s Store, v Version, identities []age.Identity) ([]byte, *Envelope, error) {
	raw, err := s.Get(ctx, v.ID)
	if err != nil {
		return nil, nil, err
	}
	env, err := DecodeEnvelope(raw)
	if err != nil {
		var ce *lnvault.CorruptError
		if errors.As(err, &ce) {
			ce.Object = v.ID
		}
		return nil, nil, fmt.Errorf("version %s in %s: %w", v.ID, s, err)
	}
	data, err := env.Open(identities)
	if err != nil {
		return nil, env, fmt.Errorf("version %s in %s: %w", v.ID, s, err)
	}
	return data, env, nil
}
