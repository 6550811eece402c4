package file

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/dbapply"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/dumphash"
)

func tempURL(t testing.TB, name string) (string, string) {
	p := filepath.Join(t.TempDir(), name)
	return "file://" + p, p
}

func mustOpen(t testing.TB, url string, opts lnvault.OpenOptions) *Backend {
	t.Helper()
	b, err := Open(context.Background(), url, opts)
	if err != nil {
		t.Fatalf("Open(%s, %+v): %v", url, opts, err)
	}
	return b
}

func appendAll(t testing.TB, b *Backend, reqs []corpus.Request) {
	t.Helper()
	ctx := context.Background()
	for i, r := range reqs {
		if err := b.Append(ctx, r.Change()); err != nil {
			t.Fatalf("Append #%d (version %d): %v", i, r.DataVersion, err)
		}
	}
}

// got is a streamed change with its snapshot bytes read out.
type got struct {
	Version    uint32
	Kind       lnvault.Kind
	Statements []string
	Snapshot   []byte
}

func streamAll(t testing.TB, b lnvault.Backend, from uint32) []got {
	t.Helper()
	out, err := tryStream(b, from)
	if err != nil {
		t.Fatalf("Stream: %v", err)
	}
	return out
}

func tryStream(b lnvault.Backend, from uint32) ([]got, error) {
	var out []got
	err := b.Stream(context.Background(), from, func(c *lnvault.Change) error {
		g := got{Version: c.Version, Kind: c.Kind, Statements: c.Statements}
		if c.Kind == lnvault.KindSnapshot {
			data, err := io.ReadAll(io.NewSectionReader(c.Snapshot, 0, c.Snapshot.Size()))
			if err != nil {
				return err
			}
			g.Snapshot = data
		}
		out = append(out, g)
		return nil
	})
	return out, err
}

func checkSame(t testing.TB, gotC []got, reqs []corpus.Request) {
	t.Helper()
	if len(gotC) != len(reqs) {
		t.Fatalf("streamed %d changes, want %d", len(gotC), len(reqs))
	}
	for i, r := range reqs {
		g := gotC[i]
		if g.Version != r.DataVersion || g.Kind != lnvault.KindTransaction || !slices.Equal(g.Statements, r.Writes) {
			t.Fatalf("change #%d: got version %d kind %v (%d statements), want version %d (%d statements)",
				i, g.Version, g.Kind, len(g.Statements), r.DataVersion, len(r.Writes))
		}
	}
}

// restoreDump applies the backup's stream to a fresh database and returns the
// SHA-256 of its dump.
func restoreDump(t testing.TB, b lnvault.Backend) string {
	t.Helper()
	ctx := context.Background()
	db := filepath.Join(t.TempDir(), "restored.sqlite3")
	ap, err := dbapply.Create(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Stream(ctx, 0, func(c *lnvault.Change) error { return ap.Apply(ctx, c) }); err != nil {
		ap.Close(ctx)
		t.Fatalf("Stream into dbapply: %v", err)
	}
	if err := ap.Finish(ctx); err != nil {
		t.Fatalf("restored database fails its checks: %v", err)
	}
	h, err := dumphash.Of(db)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestRoundTrip(t *testing.T) {
	reqs := corpus.MustLoad()
	for _, format := range []int{1, 2} {
		t.Run(fmt.Sprintf("v%d", format), func(t *testing.T) {
			url, path := tempURL(t, "backup.dbak")
			b := mustOpen(t, url, lnvault.OpenOptions{Create: true, Format: format})
			appendAll(t, b, reqs)
			last := reqs[len(reqs)-1]
			m := b.Metadata()
			want := lnvault.Metadata{Version: last.DataVersion, PrevVersion: reqs[len(reqs)-2].DataVersion, VersionCount: uint64(len(reqs))}
			if m != want {
				t.Fatalf("metadata %+v, want %+v", m, want)
			}
			checkSame(t, streamAll(t, b, 0), reqs)
			st, err := b.Status(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if st.Format != fmt.Sprintf("file v%d", format) || st.Records != int64(len(reqs)) || st.Metadata != want || st.LastChange.IsZero() {
				t.Fatalf("status %+v", st)
			}
			if st.Size != int64(b.hdr.endOffset) {
				t.Fatalf("status size %d, records end at %d", st.Size, b.hdr.endOffset)
			}
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			// Close gives back the preallocated room.
			if fi, _ := os.Stat(path); st.Size != fi.Size() {
				t.Fatalf("status size %d, file %d after close", st.Size, fi.Size())
			}
			// Through the registry, read-only, after reopening.
			rb, err := lnvault.Open(context.Background(), url, lnvault.OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer rb.Close()
			if rb.Metadata() != want {
				t.Fatalf("reopened metadata %+v, want %+v", rb.Metadata(), want)
			}
			checkSame(t, streamAll(t, rb, 0), reqs)
			if h := restoreDump(t, rb); h != corpus.FinalDumpSHA256() {
				t.Fatalf("restored dump %s, want %s", h, corpus.FinalDumpSHA256())
			}
			// from: starts at the first change whose version is >= from.
			part := streamAll(t, rb, 1000)
			i := slices.IndexFunc(reqs, func(r corpus.Request) bool { return r.DataVersion >= 1000 })
			checkSame(t, part, reqs[i:])
			// ErrStop ends the stream without error.
			n := 0
			if err := rb.Stream(context.Background(), 0, func(c *lnvault.Change) error {
				n++
				if n == 10 {
					return lnvault.ErrStop
				}
				return nil
			}); err != nil || n != 10 {
				t.Fatalf("ErrStop: n=%d err=%v", n, err)
			}
			// Appending reopened keeps the format.
			wb := mustOpen(t, url, lnvault.OpenOptions{Format: 3 - format})
			defer wb.Close()
			if wb.Format() != format {
				t.Fatalf("reopened format %d, want %d", wb.Format(), format)
			}
			extra := lnvault.NewTransaction(last.DataVersion+1, []string{"UPDATE vars SET intval = intval + 1 WHERE name = 'data_version'"})
			if err := wb.Append(context.Background(), extra); err != nil {
				t.Fatal(err)
			}
			all := streamAll(t, wb, 0)
			if len(all) != len(reqs)+1 || all[len(reqs)].Version != extra.Version {
				t.Fatalf("after reopen+append: %d changes", len(all))
			}
		})
	}
}

func TestVersionChecks(t *testing.T) {
	ctx := context.Background()
	url, _ := tempURL(t, "b.dbak")
	b := mustOpen(t, url, lnvault.OpenOptions{Create: true})
	defer b.Close()
	// The first change of an empty backup may carry any version.
	if err := b.Append(ctx, lnvault.NewTransaction(41, []string{"SELECT 1"})); err != nil {
		t.Fatal(err)
	}
	for _, v := range []uint32{41, 42, 42, 43} { // repeats are stored
		if err := b.Append(ctx, lnvault.NewTransaction(v, []string{fmt.Sprintf("SELECT %d", v)})); err != nil {
			t.Fatalf("append %d: %v", v, err)
		}
	}
	for _, v := range []uint32{42, 45, 0} {
		if err := b.Append(ctx, lnvault.NewTransaction(v, []string{"SELECT 1"})); !errors.Is(err, lnvault.ErrVersion) {
			t.Fatalf("append %d after 43: %v, want ErrVersion", v, err)
		}
	}
	if err := b.Append(ctx, lnvault.NewTransaction(44, []string{"a\x00b"})); err == nil || !strings.Contains(err.Error(), "NUL") {
		t.Fatalf("NUL in a statement: %v", err)
	}
	gotV := []uint32{}
	for _, g := range streamAll(t, b, 0) {
		gotV = append(gotV, g.Version)
	}
	if !slices.Equal(gotV, []uint32{41, 41, 42, 42, 43}) {
		t.Fatalf("versions %v", gotV)
	}
}

func quietLog() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}
