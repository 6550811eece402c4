package scb

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// lnd's packed multi (chanbackup/multi.go, crypto.go) is
// nonce(24) || XChaCha20-Poly1305(version(1) || u32 count || singles) with a
// 16-byte tag: without the node's key only its size and shape can be checked.
const (
	lndNonce = 24
	lndTag   = 16
	// LNDMinMulti is lnd's NilMultiSizePacked: nonce, tag, version byte and a
	// zero channel count. lnd writes exactly this when there are no channels.
	LNDMinMulti = lndNonce + lndTag + 1 + 4

	// CLNEmergencyMin: emergency.recover is a libsodium secretstream
	// (XChaCha20-Poly1305): a 24-byte header then at least one 17-byte tagged
	// message. (Assumption from libsodium's constants; a smaller file cannot
	// be a whole one.)
	CLNEmergencyMin = 24 + 17
)

// ValidateLND checks that data can be a whole lnd packed multi-channel
// backup: at least LNDMinMulti bytes, within MaxPayload, and neither the
// random nonce nor the authentication tag all zero (a file pre-sized and not
// yet filled in, or zero-padded, ends or starts with zeros; a real one has
// those odds at 2^-128).
func ValidateLND(data []byte) error {
	return validateSealed(data, LNDMinMulti, lndNonce, lndTag, "lnd channel.backup")
}

// ValidateCLNEmergency checks that data can be a whole emergency.recover.
func ValidateCLNEmergency(data []byte) error {
	return validateSealed(data, CLNEmergencyMin, 24, 16, "Core Lightning emergency.recover")
}

func validateSealed(data []byte, minLen, head, tail int, what string) error {
	switch {
	case len(data) == 0:
		return fmt.Errorf("%w: %s is empty", ErrInvalid, what)
	case len(data) < minLen:
		return fmt.Errorf("%w: %s is %d bytes, a whole one has at least %d", ErrInvalid, what, len(data), minLen)
	case len(data) > MaxPayload:
		return fmt.Errorf("%w: %s is %d bytes, more than the %d byte limit", ErrInvalid, what, len(data), MaxPayload)
	}
	if isText(data) {
		// Ciphertext of this size is printable text with odds below 1e-19.
		return fmt.Errorf("%w: %s is text, not encrypted binary data (wrong file or kind?)", ErrInvalid, what)
	}
	zero := make([]byte, max(head, tail))
	if bytes.Equal(data[:head], zero[:head]) {
		return fmt.Errorf("%w: %s starts with %d zero bytes where its random nonce belongs (partly written?)", ErrInvalid, what, head)
	}
	if bytes.Equal(data[len(data)-tail:], zero[:tail]) {
		return fmt.Errorf("%w: %s ends with %d zero bytes where its authentication tag belongs (partly written?)", ErrInvalid, what, tail)
	}
	return nil
}

func isText(b []byte) bool {
	for _, c := range b {
		if (c < 0x20 || c > 0x7e) && c != '\n' && c != '\r' && c != '\t' {
			return false
		}
	}
	return true
}

// Validate checks data as a whole backup of kind, and returns its channel
// count (-1 when unknown).
func Validate(kind Kind, data []byte) (int, error) {
	switch kind {
	case KindLNDMulti:
		return -1, ValidateLND(data)
	case KindCLNEmergency:
		return -1, ValidateCLNEmergency(data)
	case KindCLN:
		set, err := ParseCLN(data)
		if err != nil {
			return 0, err
		}
		return len(set), nil
	}
	return 0, fmt.Errorf("unknown SCB kind %q", kind)
}

// ErrUnstable: the file changed while it was read; it is being written.
var ErrUnstable = errors.New("backup file is being written (changed between two reads)")

// fileID is what tells two states of a file apart without reading it.
type fileID struct {
	size  int64
	mtime time.Time
	ino   uint64
	ctime int64
}

func statID(path string) (fileID, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileID{}, err
	}
	id := fileID{size: fi.Size(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.ino = st.Ino
		id.ctime = st.Ctim.Nano()
	}
	return id, nil
}

// readOnce returns the content with the file's identity before and after
// the read; they differ if it changed meanwhile.
func readOnce(path string) ([]byte, fileID, error) {
	before, err := statID(path)
	if err != nil {
		return nil, fileID{}, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fileID{}, err
	}
	defer f.Close()
	if openForWrite(f) {
		return nil, fileID{}, fmt.Errorf("%w: another process has it open for writing", ErrUnstable)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxPayload+1))
	if err != nil {
		return nil, fileID{}, err
	}
	after, err := statID(path)
	if err != nil {
		return nil, fileID{}, err
	}
	if before != after {
		return nil, fileID{}, ErrUnstable
	}
	return data, after, nil
}

// openForWrite tells whether some process holds f open for writing, when the
// kernel can say: a read lease is granted only if there is no writer. Leases
// need the file's owner (or CAP_LEASE) and a local file system; when they are
// not available this reports false and the two-read check alone decides. The
// lease is dropped at once, so a writer opening the file meanwhile waits for
// microseconds, not for the lease-break timeout.
func openForWrite(f *os.File) bool {
	fd := int(f.Fd())
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_RDLCK); err != nil {
		return errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EBUSY)
	}
	unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_UNLCK)
	return false
}

// ReadStable reads path twice, settle apart, and returns its content only if
// size, mtime, inode, ctime and content hash are the same both times: a file
// written in place is not shipped until it has been still for settle.
func ReadStable(ctx context.Context, path string, settle time.Duration) ([]byte, error) {
	a, ida, err := readOnce(path)
	if err != nil {
		return nil, err
	}
	t := time.NewTimer(settle)
	select {
	case <-ctx.Done():
		t.Stop()
		return nil, ctx.Err()
	case <-t.C:
	}
	b, idb, err := readOnce(path)
	if err != nil {
		return nil, err
	}
	if ida != idb || sha256.Sum256(a) != sha256.Sum256(b) {
		return nil, ErrUnstable
	}
	return b, nil
}

// FileSource reads a backup file another program maintains (lnd's
// channel.backup, Core Lightning's emergency.recover) and yields it only
// when it is stable and valid for Kind.
type FileSource struct {
	Path string
	Kind Kind
	// Settle is the quiet time between the two reads (default 300ms).
	Settle time.Duration
}

// Fetch implements Source.
func (s *FileSource) Fetch(ctx context.Context) (Backup, error) {
	settle := s.Settle
	if settle <= 0 {
		settle = 300 * time.Millisecond
	}
	data, err := ReadStable(ctx, s.Path, settle)
	if err != nil {
		return Backup{}, fmt.Errorf("reading %s: %w", s.Path, err)
	}
	n, err := Validate(s.Kind, data)
	if err != nil {
		return Backup{}, fmt.Errorf("%s: %w", s.Path, err)
	}
	return NewBackup(s.Kind, data, n), nil
}

// WatchFile polls path every interval and notifies k whenever its size,
// mtime, inode or ctime change (lnd replaces channel.backup by rename, which
// changes the inode; an in-place writer changes size or mtime). It returns
// when ctx ends. Polling rather than inotify keeps it working on network
// file systems and bind mounts.
func WatchFile(ctx context.Context, path string, interval time.Duration, k *Keeper, log *slog.Logger) error {
	if interval <= 0 {
		interval = time.Second
	}
	if log == nil {
		log = slog.Default()
	}
	var last fileID
	var lastErr string
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		id, err := statID(path)
		switch {
		case err != nil:
			if err.Error() != lastErr {
				log.Warn("scb: cannot stat watched file", "path", path, "err", err)
				lastErr = err.Error()
			}
		case id != last:
			// Also on the first sight of the file: if it appeared after the
			// keeper's first fetch, this is what gets it fetched.
			lastErr = ""
			k.Notify(Event{Type: EventFileChanged})
			last = id
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
