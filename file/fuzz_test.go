package file

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lnvault/lnvault"
)

// FuzzOpenStream feeds arbitrary bytes as a backup file of either format: no
// panic, no unbounded allocation (lengths are capped by the file size), and
// every failure after a successful open is a CorruptError. A writer that
// accepts the file must then append and stream back what it appended.
func FuzzOpenStream(f *testing.F) {
	for _, format := range []int{1, 2} {
		data, _ := smallFile(f, format)
		f.Add(data)
		f.Add(data[:len(data)-5])
	}
	f.Fuzz(fuzzBody)
}

func fuzzBody(t *testing.T, data []byte) {
	{
		ctx := context.Background()
		path := filepath.Join(fuzzDir(t), "f.dbak")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		url := "file://" + path
		opts := lnvault.OpenOptions{ReadOnly: true, Logger: quietLog()}
		if b, err := Open(ctx, url, opts); err == nil {
			err := b.Stream(ctx, 0, func(c *lnvault.Change) error {
				if c.Kind == lnvault.KindSnapshot {
					_, err := io.Copy(io.Discard, io.NewSectionReader(c.Snapshot, 0, c.Snapshot.Size()))
					return err
				}
				return nil
			})
			if err != nil && !errors.Is(err, lnvault.ErrCorrupt) {
				t.Fatalf("stream error is not ErrCorrupt: %v", err)
			}
			if _, err := b.Status(ctx); err != nil && !errors.Is(err, lnvault.ErrCorrupt) {
				t.Fatalf("status error is not ErrCorrupt: %v", err)
			}
			b.Close()
		}
		opts.ReadOnly = false
		w, err := Open(ctx, url, opts)
		if err != nil {
			return
		}
		defer w.Close()
		m := w.Metadata()
		c := lnvault.NewTransaction(m.Version+1, []string{"SELECT 'fuzz'"})
		if m.Version == ^uint32(0) {
			c.Version = m.Version
		}
		if err := w.Append(ctx, c); err != nil {
			t.Fatalf("append to an accepted file: %v", err)
		}
		var last *lnvault.Change
		err = w.Stream(ctx, 0, func(c *lnvault.Change) error { last = c; return nil })
		if err == nil && (last == nil || last.Version != c.Version || fmt.Sprint(last.Statements) != fmt.Sprint(c.Statements)) {
			t.Fatalf("stream after append ends with %+v", last)
		}
		if err != nil && !errors.Is(err, lnvault.ErrCorrupt) {
			t.Fatalf("stream error is not ErrCorrupt: %v", err)
		}
	}
}

// smallFile is a small backup (small seeds keep the fuzzer's minimisation
// short): a snapshot record (not a real database) and a few transactions.
func smallFile(t testing.TB, format int) ([]byte, []int64) {
	t.Helper()
	ctx := context.Background()
	url, path := tempURL(t, "small.dbak")
	b := mustOpen(t, url, lnvault.OpenOptions{Create: true, Format: format})
	snap := []byte(strings.Repeat("snapshot ", 8))
	if err := b.Append(ctx, lnvault.NewSnapshot(1, io.NewSectionReader(bytes.NewReader(snap), 0, int64(len(snap))))); err != nil {
		t.Fatal(err)
	}
	var offs []int64
	for _, v := range []uint32{1, 2, 2, 3} { // a repeated version too
		offs = append(offs, int64(b.hdr.endOffset))
		c := lnvault.NewTransaction(v, []string{fmt.Sprintf("INSERT INTO t VALUES (%d)", v), "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version'"})
		if err := b.Append(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	b.Close()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data, offs
}

// fuzzDir is a temp directory on tmpfs when there is one: the writer half of
// the fuzz target fsyncs, and the fuzzer's minimisation runs it thousands of
// times.
func fuzzDir(t *testing.T) string {
	if d, err := os.MkdirTemp("/dev/shm", "lnvault-fuzz-"); err == nil {
		t.Cleanup(func() { os.RemoveAll(d) })
		return d
	}
	return t.TempDir()
}
