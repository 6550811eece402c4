// Package durable is the one home of lnvault's crash-safe file operations:
// a directory fsync, and the temp file + fsync + rename (or link) +
// directory fsync that puts a whole file in place so that a crash leaves the
// old content or the new, never a part. Every package that writes a file
// other than by appending to an open backup goes through here.
package durable

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// SyncDir fsyncs a directory, so that the creations, renames and removals of
// names in it survive a crash.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync of directory %s: %w", dir, err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync of directory %s: %w", dir, err)
	}
	return nil
}

// SyncFile fsyncs the file at path.
func SyncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync of %s: %w", path, err)
	}
	return nil
}

// TempPattern is the temp-file pattern for a file that will become path:
// hidden, beside it, named after it.
func TempPattern(path string) string { return "." + filepath.Base(path) + ".tmp-*" }

// WriteTemp creates a temp file in dir (os.CreateTemp's pattern), with mode
// perm, fills it, fsyncs and closes it, and returns its path. On error the
// temp file is gone.
func WriteTemp(dir, pattern string, perm fs.FileMode, fill func(*os.File) error) (string, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", err
	}
	name := f.Name()
	if perm != 0o600 { // CreateTemp's mode
		err = f.Chmod(perm)
	}
	if err == nil {
		err = fill(f)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return "", err
	}
	return name, nil
}

// Replace moves the fsync'd temp file tmp over path and fsyncs path's
// directory. On error tmp is removed.
func Replace(tmp, path string) error {
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// Create gives the fsync'd temp file tmp the name path only if no file has
// it (a hard link fails where the name exists, so the check and the creation
// are one step: an *os.LinkError matching fs.ErrExist), removes tmp and
// fsyncs the directory. If the link fails, tmp is left to the caller.
func Create(tmp, path string) error {
	if err := os.Link(tmp, path); err != nil {
		return err
	}
	if err := os.Remove(tmp); err != nil {
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// WriteFile replaces path with data, atomically and durably.
func WriteFile(path string, data []byte, perm fs.FileMode) error {
	tmp, err := WriteTemp(filepath.Dir(path), TempPattern(path), perm, writer(data))
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := Replace(tmp, path); err != nil {
		return fmt.Errorf("replacing %s: %w", path, err)
	}
	return nil
}

// CreateFile writes data to path, atomically and durably, only if path does
// not exist (an error matching fs.ErrExist if it does).
func CreateFile(path string, data []byte, perm fs.FileMode) error {
	tmp, err := WriteTemp(filepath.Dir(path), TempPattern(path), perm, writer(data))
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := Create(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("creating %s: %w", path, err)
	}
	return nil
}

func writer(data []byte) func(*os.File) error {
	return func(f *os.File) error {
		_, err := f.Write(data)
		return err
	}
}

// MkdirAll creates dir and its missing parents below root (mode 0700), and
// fsyncs each parent it changed, so that every new directory entry survives
// a crash. root itself must exist.
func MkdirAll(root, dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir && strings.HasPrefix(parent, root) {
		if err := MkdirAll(root, parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return SyncDir(parent)
}
