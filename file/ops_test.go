package file

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/corpus"
	"golang.org/x/sys/unix"
)

func TestRewind(t *testing.T) {
	ctx := context.Background()
	reqs := corpus.MustLoad()[:40]
	for _, format := range []int{1, 2} {
		t.Run(fmt.Sprintf("v%d", format), func(t *testing.T) {
			url, path := tempURL(t, "b.dbak")
			b := mustOpen(t, url, lnvault.OpenOptions{Create: true, Format: format})
			appendAll(t, b, reqs)
			sizeBefore := int64(b.hdr.endOffset)
			last := reqs[len(reqs)-1]
			stale := lnvault.NewTransaction(last.DataVersion+1, []string{"SELECT 'STALE-CONTENT-MARKER'"})
			if err := b.Append(ctx, stale); err != nil {
				t.Fatal(err)
			}
			if err := b.Rewind(ctx); err != nil {
				t.Fatal(err)
			}
			want := lnvault.Metadata{Version: last.DataVersion, PrevVersion: 0, VersionCount: uint64(len(reqs))} // the rewound change no longer counts
			if m := b.Metadata(); m != want {
				t.Fatalf("after rewind %+v, want %+v", m, want)
			}
			if err := b.Rewind(ctx); !errors.Is(err, lnvault.ErrRewindTwice) {
				t.Fatalf("second rewind: %v", err)
			}
			if s := fileSize(t, path); s != sizeBefore {
				t.Fatalf("file is %d bytes after the rewind, %d before the rewound append", s, sizeBefore)
			}
			checkSame(t, streamAll(t, b, 0), reqs)
			// The rewind persists across reopen; a second rewind is still refused.
			b.Close()
			b = mustOpen(t, url, lnvault.OpenOptions{})
			if m := b.Metadata(); m != want {
				t.Fatalf("reopened after rewind %+v, want %+v", m, want)
			}
			if err := b.Rewind(ctx); !errors.Is(err, lnvault.ErrRewindTwice) {
				t.Fatalf("rewind after reopen: %v", err)
			}
			fresh := lnvault.NewTransaction(last.DataVersion+1, []string{"SELECT 'fresh'"})
			if err := b.Append(ctx, fresh); err != nil {
				t.Fatal(err)
			}
			all := streamAll(t, b, 0)
			checkSame(t, all[:len(reqs)], reqs)
			if len(all) != len(reqs)+1 || all[len(reqs)].Statements[0] != "SELECT 'fresh'" {
				t.Fatalf("after re-append: %d changes", len(all))
			}
			data, _ := os.ReadFile(path)
			if bytes.Contains(data, []byte("STALE-CONTENT-MARKER")) {
				t.Fatal("the rewound change's bytes are still in the file")
			}
			// Rewinding again is allowed after an append.
			if err := b.Rewind(ctx); err != nil {
				t.Fatal(err)
			}
			b.Close()
		})
	}
}

// A rewind of a repeated version (a migration's PRAGMA payload) goes back to
// the first of the pair.
func TestRewindRepeat(t *testing.T) {
	ctx := context.Background()
	reqs := corpus.MustLoad()[:2] // versions 1, 1
	for _, format := range []int{1, 2} {
		url, _ := tempURL(t, "b.dbak")
		b := mustOpen(t, url, lnvault.OpenOptions{Create: true, Format: format})
		appendAll(t, b, reqs)
		checkSame(t, streamAll(t, b, 0), reqs)
		if err := b.Rewind(ctx); err != nil {
			t.Fatal(err)
		}
		checkSame(t, streamAll(t, b, 0), reqs[:1])
		appendAll(t, b, reqs[1:])
		checkSame(t, streamAll(t, b, 0), reqs)
		b.Close()
	}
}

func fileSize(t *testing.T, p string) int64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func TestLock(t *testing.T) {
	ctx := context.Background()
	reqs := corpus.MustLoad()[:300]
	url, _ := tempURL(t, "b.dbak")
	w := mustOpen(t, url, lnvault.OpenOptions{Create: true})
	_, err := Open(ctx, url, lnvault.OpenOptions{})
	if !errors.Is(err, lnvault.ErrLocked) || !strings.Contains(err.Error(), "another lnvault") {
		t.Fatalf("second writer: %v", err)
	}
	// Readers (another Backend, as another process would) work while the
	// writer appends: every stream is a consistent prefix.
	r := mustOpen(t, url, lnvault.OpenOptions{ReadOnly: true})
	defer r.Close()
	var wg sync.WaitGroup
	done := make(chan struct{})
	var readErr error
	reads := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			all, err := tryStream(r, 0)
			if err == nil {
				if len(all) > len(reqs) {
					err = fmt.Errorf("%d changes", len(all))
				} else {
					for i, g := range all {
						if g.Version != reqs[i].DataVersion || len(g.Statements) != len(reqs[i].Writes) {
							err = fmt.Errorf("change %d differs", i)
							break
						}
					}
				}
			}
			if err != nil {
				readErr = err
				return
			}
			reads++
		}
	}()
	for i, q := range reqs {
		if err := w.Append(ctx, q.Change()); err != nil {
			t.Fatal(err)
		}
		if i%50 == 0 {
			_ = w.Metadata() // concurrent with the reader: -race checks it
		}
	}
	close(done)
	wg.Wait()
	if readErr != nil {
		t.Fatalf("reader during appends: %v", readErr)
	}
	if reads == 0 {
		t.Fatal("the reader never completed a stream")
	}
	w.Close()
	// Released on Close.
	w2 := mustOpen(t, url, lnvault.OpenOptions{})
	w2.Close()
	if err := r.Append(ctx, reqs[0].Change()); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("append on read-only: %v", err)
	}
	if _, err := r.Compact(ctx); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("compact on read-only: %v", err)
	}
}

func TestBadInput(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	foreign := filepath.Join(dir, "foreign.db")
	os.WriteFile(foreign, []byte("SQLite format 3\x00 and then some more bytes to look like a file"), 0o600)
	empty := filepath.Join(dir, "empty.dbak")
	os.WriteFile(empty, nil, 0o600)
	cases := []struct {
		name string
		url  string
		opts lnvault.OpenOptions
		is   error
		msg  string
	}{
		{"missing", "file://" + dir + "/nope.dbak", lnvault.OpenOptions{}, lnvault.ErrNotFound, "lnvault init file://"},
		{"directory", "file://" + dir, lnvault.OpenOptions{}, nil, "is a directory"},
		{"directory slash", "file://" + dir + "/", lnvault.OpenOptions{}, nil, "names a directory"},
		{"foreign", "file://" + foreign, lnvault.OpenOptions{ReadOnly: true}, ErrNotBackup, "not an lnvault/backup-plugin file"},
		{"foreign writer", "file://" + foreign, lnvault.OpenOptions{}, ErrNotBackup, "not an lnvault/backup-plugin file"},
		{"empty", "file://" + empty, lnvault.OpenOptions{ReadOnly: true}, lnvault.ErrCorrupt, "empty"},
		{"relative", "file:backup.dbak", lnvault.OpenOptions{}, nil, "relative path"},
		{"relative dot", "file://./backup.dbak", lnvault.OpenOptions{}, nil, "names the host"},
		{"host", "file://server/var/backup.dbak", lnvault.OpenOptions{}, nil, "names the host"},
		{"query", "file://" + dir + "/b.dbak?sync=0", lnvault.OpenOptions{Create: true}, nil, "query"},
		{"no path", "file://", lnvault.OpenOptions{}, nil, "no absolute path"},
		{"exists", "file://" + foreign, lnvault.OpenOptions{Create: true}, lnvault.ErrExists, "already exists"},
		{"no dir", "file://" + dir + "/missing/b.dbak", lnvault.OpenOptions{Create: true}, nil, "does not exist"},
		{"bad format", "file://" + dir + "/f.dbak", lnvault.OpenOptions{Create: true, Format: 7}, nil, "unknown format"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, err := lnvault.Open(ctx, c.url, c.opts)
			if err == nil {
				b.Close()
				t.Fatalf("no error")
			}
			if c.is != nil && !errors.Is(err, c.is) {
				t.Fatalf("error %v does not wrap %v", err, c.is)
			}
			if !strings.Contains(err.Error(), c.msg) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q: want one line containing %q", err, c.msg)
			}
		})
	}
	// Nothing stored was lost: the foreign file is untouched.
	data, _ := os.ReadFile(foreign)
	if !strings.HasPrefix(string(data), "SQLite format 3") {
		t.Fatal("foreign file modified")
	}
}

func TestUnwritableDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ro")
	os.Mkdir(dir, 0o500)
	if os.Geteuid() == 0 {
		// Root ignores permission bits; /proc/sys refuses new files even to root.
		dir = "/proc/sys"
		if unix.Access(dir, unix.W_OK) == nil {
			t.Skip("no unwritable directory available to root here")
		}
	}
	_, err := Open(context.Background(), "file://"+dir+"/b.dbak", lnvault.OpenOptions{Create: true})
	if err == nil || !strings.Contains(err.Error(), "not writable") {
		t.Fatalf("got %v", err)
	}
	// A file standing where the directory should be.
	notDir := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notDir, nil, 0o600)
	_, err = Open(context.Background(), "file://"+notDir+"/b.dbak", lnvault.OpenOptions{Create: true})
	if err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("got %v", err)
	}
}
