package lnvault

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
)

// OpenOptions are the knobs common to every backend.
type OpenOptions struct {
	// Create makes a new, empty backup; it fails with ErrExists if there is
	// one. Without Create, a missing backup is ErrNotFound.
	Create bool
	// Format selects the on-disk format for new backups where the backend has
	// several (file: 1 = reference format, 2 = checksummed; 0 = default).
	Format int
	// ReadOnly opens for Stream/Status/Metadata only: no lock is taken and
	// Append, Rewind and Compact fail.
	ReadOnly bool
	// Parallelism bounds concurrent downloads where a backend can fetch in
	// parallel (object storage restores); 0 means the backend's default.
	Parallelism int
	// Logger receives the backend's logs; nil means slog.Default().
	Logger *slog.Logger
}

// Log returns the logger to use.
func (o OpenOptions) Log() *slog.Logger {
	if o.Logger != nil {
		return o.Logger
	}
	return slog.Default()
}

// Opener opens the backend of one URL scheme. rawURL is the whole URL as the
// user gave it.
type Opener func(ctx context.Context, rawURL string, opts OpenOptions) (Backend, error)

var (
	registryMu sync.RWMutex
	registry   = map[string]Opener{}
)

// Register makes a backend available under scheme (e.g. "file", "socket",
// "s3"). Package backends calls it for every storage lnvault ships (its
// Register lists them); a scheme registered twice panics.
func Register(scheme string, open Opener) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[scheme]; dup {
		panic("lnvault: backend registered twice: " + scheme)
	}
	registry[scheme] = open
}

// Scheme returns the part of rawURL before the first ':'.
func Scheme(rawURL string) string {
	i := strings.IndexByte(rawURL, ':')
	if i <= 0 {
		return ""
	}
	return strings.ToLower(rawURL[:i])
}

// Schemes lists the registered schemes, sorted.
func Schemes() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	out := make([]string, 0, len(registry))
	for s := range registry {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// Open opens the backup at rawURL with the backend registered for its scheme.
func Open(ctx context.Context, rawURL string, opts OpenOptions) (Backend, error) {
	scheme := Scheme(rawURL)
	registryMu.RLock()
	open := registry[scheme]
	registryMu.RUnlock()
	if open == nil && len(Schemes()) == 0 {
		return nil, fmt.Errorf("cannot open %q: no storage is wired into this program (it must call backends.Register)", rawURL)
	}
	if open == nil {
		return nil, fmt.Errorf("unsupported backup URL %q: use one of %s (for example file:///var/backups/lightningd.dbak)",
			rawURL, strings.Join(exampleSchemes(), ", "))
	}
	return open(ctx, rawURL, opts)
}

func exampleSchemes() []string {
	s := Schemes()
	for i, v := range s {
		s[i] = v + ":"
	}
	return s
}
