package scb

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/durable"
	"golang.org/x/sys/unix"
)

// DirSuffix is appended to a file backup's path to name its SCB folder:
// file:///var/backups/node.dbak keeps SCBs in /var/backups/node.dbak.scb/.
const DirSuffix = ".scb"

// urlPath extracts the local path of file:/// and dir:/// URLs (relative
// paths are taken from the current directory, as the plugin's backup.lock
// allows).
func urlPath(rawURL string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("invalid URL %q: %v", rawURL, err)
	}
	if u.Host != "" && u.Host != "localhost" {
		return "", fmt.Errorf("invalid URL %q: a local path needs three slashes, e.g. %s:///var/backups/x", rawURL, u.Scheme)
	}
	p := u.Path
	if p == "" {
		p = u.Opaque
	}
	if p == "" {
		return "", fmt.Errorf("invalid URL %q: no path", rawURL)
	}
	if u.RawQuery != "" {
		return "", fmt.Errorf("invalid URL %q: %s URLs take no options", rawURL, u.Scheme)
	}
	return filepath.Abs(filepath.Clean(p))
}

func openFileURL(ctx context.Context, rawURL string, opts StoreOptions) (Store, error) {
	p, err := urlPath(rawURL)
	if err != nil {
		return nil, err
	}
	return OpenDir(p+DirSuffix, opts)
}

func openDirURL(ctx context.Context, rawURL string, opts StoreOptions) (Store, error) {
	p, err := urlPath(rawURL)
	if err != nil {
		return nil, err
	}
	return OpenDir(p, opts)
}

// DirStore keeps each version as one file "<id>.<kind>.scb" in a folder.
// Versions are written to a temp file, fsync'd, then hard-linked to their
// final name, which fails rather than overwrite if the name exists; the folder
// is fsync'd before Put returns. A crash leaves at worst a temp file, which
// List ignores and later Puts remove.
type DirStore struct {
	dir string
	log *slog.Logger
	mu  sync.Mutex // one Put at a time from this process
}

// OpenDir opens the folder store at dir.
func OpenDir(dir string, opts StoreOptions) (*DirStore, error) {
	if fi, err := os.Stat(dir); err == nil && !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a directory: a static channel backup store is a folder", dir)
	}
	return &DirStore{dir: dir, log: opts.log()}, nil
}

// Dir is the folder.
func (s *DirStore) Dir() string { return s.dir }

func (s *DirStore) String() string { return s.dir }

// Close releases nothing; it exists for the interface.
func (s *DirStore) Close() error { return nil }

var verName = regexp.MustCompile(`^([0-9]{12}-[0-9]{8}T[0-9]{6}\.[0-9]{9}Z)\.([a-z0-9][a-z0-9-]{0,31})\.scb$`)

const tmpPrefix = ".tmp-"

type dirEntry struct {
	name string
	id   string
	seq  uint64
	t    time.Time
	kind Kind
}

func (s *DirStore) scan() ([]dirEntry, error) {
	des, err := os.ReadDir(s.dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: no static channel backup folder %s", lnvault.ErrNotFound, s.dir)
		}
		return nil, fmt.Errorf("reading static channel backup folder: %w", err)
	}
	var out []dirEntry
	for _, de := range des {
		m := verName.FindStringSubmatch(de.Name())
		if m == nil || !de.Type().IsRegular() {
			continue
		}
		seq, t, err := ParseVersionID(m[1])
		if err != nil {
			continue
		}
		out = append(out, dirEntry{name: de.Name(), id: m[1], seq: seq, t: t, kind: Kind(m[2])})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].seq < out[j].seq })
	return out, nil
}

// Put implements Store.
func (s *DirStore) Put(ctx context.Context, env []byte) (Version, error) {
	e, err := DecodeEnvelope(env)
	if err != nil {
		return Version{}, fmt.Errorf("refusing to store an invalid envelope: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return Version{}, err
	}
	if err := s.ensureDir(); err != nil {
		return Version{}, fmt.Errorf("creating static channel backup folder: %w", err)
	}
	s.removeStaleTemps()

	tmp, err := durable.WriteTemp(s.dir, tmpPrefix+"*", 0o600, func(f *os.File) error { _, err := f.Write(env); return err })
	if err != nil {
		return Version{}, fmt.Errorf("storing static channel backup in %s: %w", s.dir, err)
	}
	defer os.Remove(tmp)

	// The sequence number is taken under an exclusive lock of the folder:
	// names carry a time too, so link(2)'s no-overwrite alone would not stop
	// two processes from using one number.
	unlock, err := lockDir(s.dir)
	if err != nil {
		return Version{}, err
	}
	defer unlock()
	for attempt := 0; attempt < 100; attempt++ {
		ents, err := s.scan()
		if err != nil {
			return Version{}, err
		}
		var seq uint64 = 1
		if len(ents) > 0 {
			seq = ents[len(ents)-1].seq + 1
		}
		now := time.Now()
		id := VersionID(seq, now)
		name := id + "." + string(e.Kind) + ".scb"
		// link(2) never replaces an existing name: another writer that took
		// this sequence number makes us retry with the next one.
		if err := durable.Create(tmp, filepath.Join(s.dir, name)); err != nil {
			var le *os.LinkError
			if errors.Is(err, fs.ErrExist) && errors.As(err, &le) {
				continue
			}
			return Version{}, fmt.Errorf("storing static channel backup in %s: %w", s.dir, err)
		}
		_, t, _ := ParseVersionID(id)
		return versionFromHeader(id, seq, t, e.Header, int64(len(env))), nil
	}
	return Version{}, fmt.Errorf("storing static channel backup in %s: too many concurrent writers", s.dir)
}

// removeStaleTemps deletes temp files left by a crash. Only old ones: a
// concurrent writer in another process may be using a fresh one.
func (s *DirStore) removeStaleTemps() {
	des, err := os.ReadDir(s.dir)
	if err != nil {
		return
	}
	for _, de := range des {
		if !strings.HasPrefix(de.Name(), tmpPrefix) {
			continue
		}
		if fi, err := de.Info(); err == nil && time.Since(fi.ModTime()) > 10*time.Minute {
			os.Remove(filepath.Join(s.dir, de.Name()))
		}
	}
}

func versionFromHeader(id string, seq uint64, t time.Time, h Header, size int64) Version {
	return Version{ID: id, Seq: seq, Stored: t, Kind: h.Kind, Created: h.Created, Channels: h.Channels,
		Encrypted: h.Encrypted, PlainSHA256: h.PlainSHA256, Size: size}
}

// List implements Store. Every version is read and verified: SCBs are small.
func (s *DirStore) List(ctx context.Context) ([]Version, error) {
	ents, err := s.scan()
	if err != nil {
		return nil, err
	}
	out := make([]Version, 0, len(ents))
	for _, de := range ents {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		v := Version{ID: de.id, Seq: de.seq, Stored: de.t, Kind: de.kind, Channels: -1}
		b, err := os.ReadFile(filepath.Join(s.dir, de.name))
		if err != nil {
			v.Err = fmt.Errorf("reading %s: %w", de.name, err)
			out = append(out, v)
			continue
		}
		v.Size = int64(len(b))
		e, err := DecodeEnvelope(b)
		if err != nil {
			var ce *lnvault.CorruptError
			if errors.As(err, &ce) {
				ce.Object = de.name
			}
			v.Err = err
			out = append(out, v)
			continue
		}
		if e.Kind != de.kind {
			v.Err = &lnvault.CorruptError{Offset: -1, Object: de.name, Reason: fmt.Sprintf("file name says kind %s, envelope says %s", de.kind, e.Kind)}
			out = append(out, v)
			continue
		}
		out = append(out, versionFromHeader(de.id, de.seq, de.t, e.Header, v.Size))
	}
	return out, nil
}

// Get implements Store.
func (s *DirStore) Get(ctx context.Context, id string) ([]byte, error) {
	if _, _, err := ParseVersionID(id); err != nil {
		return nil, err
	}
	ents, err := s.scan()
	if err != nil {
		return nil, err
	}
	for _, de := range ents {
		if de.id == id {
			return os.ReadFile(filepath.Join(s.dir, de.name))
		}
	}
	return nil, fmt.Errorf("%w: no version %s in %s", ErrNoVersion, id, s.dir)
}

// lockDir takes an exclusive flock on "<dir>/.lock", waiting for it.
func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("locking %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}

// ensureDir creates the store's folder on first use; its parent must exist
// (a mistyped path should fail, not grow a tree). The parent is fsync'd so the
// new folder survives a crash.
func (s *DirStore) ensureDir() error {
	if fi, err := os.Stat(s.dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory", s.dir)
		}
		return nil
	}
	parent := filepath.Dir(s.dir)
	if fi, err := os.Stat(parent); err != nil || !fi.IsDir() {
		return fmt.Errorf("folder %s does not exist: create it first", parent)
	}
	if err := os.Mkdir(s.dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return durable.SyncDir(parent)
}
