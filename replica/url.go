package replica

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lnvault/lnvault"
)

// StoreOpener opens the ObjectStore of a URL; q holds only the parameters the
// store declared when it registered.
type StoreOpener func(ctx context.Context, u *url.URL, q url.Values) (ObjectStore, error)

type storeReg struct {
	params []string
	open   StoreOpener
}

var (
	storesMu sync.RWMutex
	stores   = map[string]storeReg{}
)

// RegisterStore makes an object store available under a URL scheme, with the
// query parameters it understands (besides the replica's own, see Options).
// Package backends calls it for the stores lnvault ships; a scheme
// registered twice panics.
func RegisterStore(scheme string, params []string, open StoreOpener) {
	storesMu.Lock()
	defer storesMu.Unlock()
	if _, dup := stores[scheme]; dup {
		panic("replica: object store registered twice: " + scheme)
	}
	stores[scheme] = storeReg{params: params, open: open}
}

// Options are the replica's own URL parameters.
type Options struct {
	// Retention keeps snapshots (and the segments after them) newer than
	// this, for point-in-time restores; 0 disables the time rule
	// (?retention=72h).
	Retention time.Duration
	// RetainSnapshots is how many of the newest snapshots are always kept
	// (?retain-snapshots=2); at least 1.
	RetainSnapshots int
	// LeaseTTL is how long a writer's lease lasts without renewal
	// (?lease-ttl=30s); a crashed writer blocks a new one this long.
	LeaseTTL time.Duration
	// UnsafeNoConditionalWrites opens a store that ignores conditional
	// writes for writing all the same (?unsafe-no-conditional-writes=1):
	// its lease is then no protection against a second writer, and a
	// retried upload is not recognised.
	UnsafeNoConditionalWrites bool
}

// DefaultOptions: a day of point-in-time history, two snapshots, 30 s leases.
var DefaultOptions = Options{Retention: 24 * time.Hour, RetainSnapshots: 2, LeaseTTL: 30 * time.Second}

var replicaParams = []string{"retention", "retain-snapshots", "lease-ttl", "unsafe-no-conditional-writes"}

// ParseURL opens the store of rawURL (s3://bucket/prefix?..., dir:///path) and
// returns it with the replica options its parameters set. Unknown parameters
// are an error, so that a typo never silently changes behaviour.
func ParseURL(ctx context.Context, rawURL string) (ObjectStore, Options, error) {
	opts := DefaultOptions
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, opts, fmt.Errorf("invalid replica URL %q: %w", rawURL, err)
	}
	storesMu.RLock()
	reg, ok := stores[strings.ToLower(u.Scheme)]
	storesMu.RUnlock()
	if !ok {
		var known []string
		storesMu.RLock()
		for s := range stores {
			known = append(known, s+"://")
		}
		storesMu.RUnlock()
		sort.Strings(known)
		return nil, opts, fmt.Errorf("unsupported replica URL %q: use one of %s", u.Redacted(), strings.Join(known, ", "))
	}
	q := u.Query()
	sq := url.Values{}
	for k, v := range q {
		if len(v) > 1 {
			return nil, opts, fmt.Errorf("parameter %q is given twice in %s URL: keep one", k, u.Scheme)
		}
		switch {
		case slices.Contains(reg.params, k):
			sq[k] = v
		case slices.Contains(replicaParams, k):
		default:
			return nil, opts, fmt.Errorf("unknown parameter %q in %s URL: known parameters are %s", k, u.Scheme, strings.Join(append(slices.Clone(reg.params), replicaParams...), ", "))
		}
	}
	if v := q.Get("retention"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return nil, opts, fmt.Errorf("URL parameter retention=%q: want a duration such as 72h (0 keeps only retain-snapshots)", v)
		}
		opts.Retention = d
	}
	if v := q.Get("retain-snapshots"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return nil, opts, fmt.Errorf("URL parameter retain-snapshots=%q: want a count of at least 1", v)
		}
		opts.RetainSnapshots = n
	}
	if v := q.Get("lease-ttl"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Second {
			return nil, opts, fmt.Errorf("URL parameter lease-ttl=%q: want a duration of at least 1s", v)
		}
		opts.LeaseTTL = d
	}
	switch v := q.Get("unsafe-no-conditional-writes"); v {
	case "", "0", "false":
	case "1", "true":
		opts.UnsafeNoConditionalWrites = true
	default:
		return nil, opts, fmt.Errorf("URL parameter unsafe-no-conditional-writes=%q: want 1 or 0", v)
	}
	st, err := reg.open(ctx, u, sq)
	if err != nil {
		return nil, opts, err
	}
	return st, opts, nil
}

// OpenBackendURL is the lnvault.Opener of replica schemes.
func OpenBackendURL(ctx context.Context, rawURL string, o lnvault.OpenOptions) (lnvault.Backend, error) {
	st, opts, err := ParseURL(ctx, rawURL)
	if err != nil {
		return nil, err
	}
	b, err := OpenBackend(ctx, NewClient(st), o, opts)
	if err != nil {
		st.Close()
		return nil, err
	}
	b.closeStore = st.Close
	return b, nil
}
