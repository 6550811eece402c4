package scb

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"filippo.io/age"
	"github.com/lnvault/lnvault/internal/durable"
)

// Swapper replaces one stored copy of the backup. UpdateAndSwap must be
// atomic: after a crash at any point the destination holds the previous
// complete backup or the new complete one, never a mix.
type Swapper interface {
	UpdateAndSwap(ctx context.Context, b Backup) error
	// String names the destination in logs and status.
	String() string
}

// Resumer is implemented by swappers that can tell what they already hold,
// so that a restarted keeper does not store an unchanged set again.
type Resumer interface {
	// StoredSHA256 returns the SHA-256 of the plaintext of kind currently
	// held; ok is false when unknown (nothing stored, or encrypted).
	StoredSHA256(ctx context.Context, kind Kind) (sum [32]byte, ok bool, err error)
}

// FileSwapper keeps the backup in one local file, in the exact form recovery
// takes (Backup.Data), swapped with temp file + fsync + rename + directory
// fsync. The version it replaces is hard-linked into an archive folder
// "<file>.archive/" first, of which the newest Keep are kept.
type FileSwapper struct {
	Path string
	// Keep bounds the archive; 0 means DefaultArchiveKeep, <0 disables it.
	Keep int

	mu sync.Mutex
}

// DefaultArchiveKeep is how many replaced versions a FileSwapper keeps.
const DefaultArchiveKeep = 20

func (s *FileSwapper) String() string { return "file " + s.Path }

func (s *FileSwapper) archiveDir() string { return s.Path + ".archive" }

func (s *FileSwapper) tempPattern() string { return "." + filepath.Base(s.Path) + ".tmp-*" }

// StoredSHA256 implements Resumer.
func (s *FileSwapper) StoredSHA256(ctx context.Context, kind Kind) ([32]byte, bool, error) {
	b, err := os.ReadFile(s.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return [32]byte{}, false, nil
	}
	if err != nil {
		return [32]byte{}, false, err
	}
	return sha256.Sum256(b), true, nil
}

// UpdateAndSwap implements Swapper.
func (s *FileSwapper) UpdateAndSwap(ctx context.Context, b Backup) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	dir := filepath.Dir(s.Path)
	// Leftovers of a crash mid-swap; one writer per file is assumed.
	if old, _ := filepath.Glob(filepath.Join(dir, s.tempPattern())); len(old) > 0 {
		for _, f := range old {
			os.Remove(f)
		}
	}
	cur, err := os.ReadFile(s.Path)
	switch {
	case err == nil:
		if bytes.Equal(cur, b.Data) {
			return nil
		}
		if s.Keep >= 0 {
			// Prune first too, so that crashes between archiving and the
			// final prune cannot grow the archive past its bound.
			s.prune(1)
			if err := s.archive(); err != nil {
				return fmt.Errorf("archiving %s: %w", s.Path, err)
			}
		}
	case errors.Is(err, fs.ErrNotExist):
	default:
		return fmt.Errorf("reading %s: %w", s.Path, err)
	}
	tmp, err := durable.WriteTemp(dir, s.tempPattern(), 0o600, func(f *os.File) error { _, err := f.Write(b.Data); return err })
	if err != nil {
		return fmt.Errorf("writing %s: %w", s.Path, err)
	}
	if err := durable.Replace(tmp, s.Path); err != nil {
		return fmt.Errorf("replacing %s: %w", s.Path, err)
	}
	if s.Keep >= 0 {
		s.prune(0)
	}
	return nil
}

// archive hard-links the current file into the archive folder: the link keeps
// the old content after the rename replaces the name, at no copying cost.
func (s *FileSwapper) archive() error {
	ad := s.archiveDir()
	if err := os.Mkdir(ad, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	} else if err == nil {
		if err := durable.SyncDir(filepath.Dir(ad)); err != nil {
			return err
		}
	}
	base := filepath.Base(s.Path) + "." + time.Now().UTC().Format("20060102T150405.000000000Z")
	name := filepath.Join(ad, base)
	for i := 1; ; i++ {
		err := os.Link(s.Path, name)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrExist) || i > 100 {
			return err
		}
		name = filepath.Join(ad, fmt.Sprintf("%s.%d", base, i))
	}
	return durable.SyncDir(ad)
}

// Archived lists the archive's files, oldest first.
func (s *FileSwapper) Archived() ([]string, error) {
	des, err := os.ReadDir(s.archiveDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	prefix := filepath.Base(s.Path) + "."
	var out []string
	for _, de := range des {
		if strings.HasPrefix(de.Name(), prefix) && de.Type().IsRegular() {
			out = append(out, filepath.Join(s.archiveDir(), de.Name()))
		}
	}
	// Names carry a fixed-width UTC time, so name order is time order.
	sort.Strings(out)
	return out, nil
}

// prune removes the oldest archived files so that room more can be added
// within the bound.
func (s *FileSwapper) prune(room int) {
	keep := s.Keep
	if keep == 0 {
		keep = DefaultArchiveKeep
	}
	keep -= room
	files, err := s.Archived()
	if err != nil || len(files) <= keep {
		return
	}
	for _, f := range files[:len(files)-keep] {
		os.Remove(f)
	}
}

// StoreSwapper writes every backup as a new immutable version of a Store,
// age-encrypted to Recipients when there are any.
type StoreSwapper struct {
	Store      Store
	Recipients []age.Recipient
}

func (s *StoreSwapper) String() string { return s.Store.String() }

// UpdateAndSwap implements Swapper.
func (s *StoreSwapper) UpdateAndSwap(ctx context.Context, b Backup) error {
	env, err := Seal(b, s.Recipients)
	if err != nil {
		return err
	}
	_, err = s.Store.Put(ctx, env)
	return err
}

// StoredSHA256 implements Resumer: the latest intact version of kind, when it
// is not encrypted (an encrypted version does not reveal its plaintext hash,
// so the keeper stores the current set once after a restart).
func (s *StoreSwapper) StoredSHA256(ctx context.Context, kind Kind) ([32]byte, bool, error) {
	if len(s.Recipients) > 0 {
		return [32]byte{}, false, nil
	}
	vs, err := s.Store.List(ctx)
	if err != nil {
		return [32]byte{}, false, nil // a missing store is simply empty
	}
	for i := len(vs) - 1; i >= 0; i-- {
		v := vs[i]
		if v.Kind != kind {
			continue
		}
		if v.Err != nil || v.Encrypted {
			return [32]byte{}, false, nil
		}
		return v.PlainSHA256, true, nil
	}
	return [32]byte{}, false, nil
}
