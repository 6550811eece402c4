// Package dir is a replica.ObjectStore on a local directory: a NAS mount, a
// second disk, or tests. Objects are files under the directory; every write
// goes to a temp file that is fsync'd, renamed into place, and the directory
// fsync'd, so an object is either absent or whole.
package dir

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/durable"
	"github.com/lnvault/lnvault/replica"
	"golang.org/x/sys/unix"
)

// Store keeps objects under Root.
type Store struct {
	Root string
	mu   sync.Mutex // serialises PutIf within the process; flock across processes
}

// New returns a store rooted at root. The directory is created by the first
// write, so that reading a store that does not exist leaves nothing behind.
func New(root string) (*Store, error) {
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("replica directory %q must be an absolute path", root)
	}
	if fi, err := os.Stat(root); err == nil && !fi.IsDir() {
		return nil, fmt.Errorf("replica directory %s is a file: give a directory's path", root)
	}
	return &Store{Root: filepath.Clean(root)}, nil
}

// String is the store's URL (dir:///abs/path), as the operator wrote it.
func (s *Store) String() string { return "dir://" + s.Root }

func (s *Store) path(key string) (string, error) {
	if key == "" || strings.HasPrefix(key, "/") || strings.Contains(key, "\\") {
		return "", fmt.Errorf("invalid object key %q", key)
	}
	for _, p := range strings.Split(key, "/") {
		if p == "" || p == "." || p == ".." || strings.HasPrefix(p, ".tmp-") {
			return "", fmt.Errorf("invalid object key %q", key)
		}
	}
	return filepath.Join(s.Root, filepath.FromSlash(key)), nil
}

// Put writes data at key atomically and durably.
func (s *Store) Put(ctx context.Context, key string, data []byte) error {
	return s.write(ctx, key, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
}

// PutFile copies the first size bytes of src to key, like Put.
func (s *Store) PutFile(ctx context.Context, key string, src *os.File, size int64) error {
	return s.write(ctx, key, func(f *os.File) error {
		n, err := io.Copy(f, io.NewSectionReader(src, 0, size))
		if err == nil && n != size {
			err = fmt.Errorf("%s holds %d bytes, not %d", src.Name(), n, size)
		}
		return err
	})
}

// write creates the object at key with fill: a temp file, fsync'd, renamed
// into place, the directory fsync'd.
func (s *Store) write(ctx context.Context, key string, fill func(*os.File) error) error {
	return s.place(ctx, key, fill, durable.Replace)
}

// create writes data at key only if no object is there, as write does but
// hard-linking the temp file into place: link fails where the name exists,
// so the check and the creation are one step.
func (s *Store) create(ctx context.Context, key string, data []byte) error {
	err := s.place(ctx, key, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	}, durable.Create)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s: %w", key, replica.ErrPrecondition)
	}
	return err
}

// place fills a temp file beside key's path, fsyncs it, and moves it to the
// path with move (durable.Replace or durable.Create, each of which fsyncs
// the directory).
func (s *Store) place(ctx context.Context, key string, fill func(*os.File) error, move func(tmp, path string) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := s.path(key)
	if err != nil {
		return err
	}
	d := filepath.Dir(p)
	if err := durable.MkdirAll("/", s.Root); err != nil {
		return fmt.Errorf("cannot create replica directory: %w", err)
	}
	if err := durable.MkdirAll(s.Root, d); err != nil {
		return err
	}
	tmp, err := durable.WriteTemp(d, ".tmp-*", 0o600, fill)
	if err == nil {
		defer os.Remove(tmp) // gone after a replace or a creation
		err = move(tmp, p)
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", p, err)
	}
	return nil
}

func etag(data []byte) string {
	h := sha256.Sum256(data)
	return hex.EncodeToString(h[:16])
}

// PutIf writes data if the current object's ETag is match ("" = absent).
// An flock on <root>/.lease-lock makes the check and the write atomic for
// every process on this machine (and on NFS mounts that honour flock).
func (s *Store) PutIf(ctx context.Context, key string, data []byte, match string) (string, error) {
	if match == "" {
		return etag(data), s.create(ctx, key, data)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	lf, err := os.OpenFile(filepath.Join(s.Root, ".lease-lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return "", err
	}
	defer lf.Close()
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
		return "", fmt.Errorf("locking %s: %w", lf.Name(), err)
	}
	defer unix.Flock(int(lf.Fd()), unix.LOCK_UN)
	cur, tag, err := s.Get(ctx, key)
	_ = cur
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if match != "" {
			return "", fmt.Errorf("%s: %w", key, replica.ErrPrecondition)
		}
	case err != nil:
		return "", err
	case match == "" || tag != match:
		return "", fmt.Errorf("%s: %w", key, replica.ErrPrecondition)
	}
	if err := s.Put(ctx, key, data); err != nil {
		return "", err
	}
	return etag(data), nil
}

// Get reads the object at key.
func (s *Store) Get(ctx context.Context, key string) ([]byte, string, error) {
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	p, err := s.path(key)
	if err != nil {
		return nil, "", err
	}
	if fi, err := os.Stat(p); err == nil && fi.Size() > replica.MaxInMemoryObject {
		return nil, "", fmt.Errorf("%s holds %d bytes, more than lnvault ever writes in such an object (%d): not an lnvault object: %w", p, fi.Size(), replica.MaxInMemoryObject, lnvault.ErrCorrupt)
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, "", err // *PathError wrapping fs.ErrNotExist when missing
	}
	return data, etag(data), nil
}

// GetTo copies the object at key to w.
func (s *Store) GetTo(ctx context.Context, key string, w io.Writer) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	p, err := s.path(key)
	if err != nil {
		return "", err
	}
	f, err := os.Open(p)
	if err != nil {
		return "", err // *PathError wrapping fs.ErrNotExist when missing
	}
	defer f.Close()
	h := sha256.New()
	// Through a plain writer so an error of w comes back as is.
	if _, err := io.Copy(writerFunc(func(b []byte) (int, error) {
		h.Write(b)
		return w.Write(b)
	}), f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)[:16]), nil
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// GetRange reads the first n bytes of the object at key.
func (s *Store) GetRange(ctx context.Context, key string, n int64) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, err := s.path(key)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, n)
	k, err := io.ReadFull(f, buf)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return nil, err
	}
	return buf[:k], nil
}

// List walks the directory for keys starting with prefix.
func (s *Store) List(ctx context.Context, prefix string) ([]replica.ObjectInfo, error) {
	var out []replica.ObjectInfo
	err := filepath.WalkDir(s.Root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.IsDir() || strings.HasPrefix(d.Name(), ".") {
			return nil
		}
		rel, err := filepath.Rel(s.Root, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if !strings.HasPrefix(key, prefix) {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		out = append(out, replica.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", s.Root, err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// Delete removes objects, and their directory when it becomes empty.
func (s *Store) Delete(ctx context.Context, keys ...string) error {
	dirs := map[string]bool{}
	for _, k := range keys {
		p, err := s.path(k)
		if err != nil {
			return err
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		dirs[filepath.Dir(p)] = true
	}
	for d := range dirs {
		if err := durable.SyncDir(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		// Empty generation directories go away (best effort).
		for d != s.Root && strings.HasPrefix(d, s.Root) {
			if os.Remove(d) != nil {
				break
			}
			d = filepath.Dir(d)
		}
	}
	return nil
}

func (s *Store) Close() error { return nil }

// RemoveIfEmpty removes the store's directory once it holds no object (only
// its lock file): after a backup there is deleted, nothing is left behind.
func (s *Store) RemoveIfEmpty() error {
	ents, err := os.ReadDir(s.Root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.Name() != ".lease-lock" {
			return nil
		}
	}
	os.Remove(filepath.Join(s.Root, ".lease-lock"))
	if err := os.Remove(s.Root); err != nil {
		return err
	}
	return durable.SyncDir(filepath.Dir(s.Root))
}

// OpenURL opens the store of a dir:///abs/path URL (a replica.StoreOpener;
// package backends wires it to dir: URLs).
func OpenURL(_ context.Context, u *url.URL, _ url.Values) (replica.ObjectStore, error) {
	if u.Host != "" {
		return nil, fmt.Errorf("dir URL %q: use dir:///absolute/path (three slashes)", u.Redacted())
	}
	return New(u.Path)
}
