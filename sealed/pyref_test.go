package sealed

import (
	"bytes"
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"filippo.io/age"
	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/pyref"
	"github.com/lnvault/lnvault/socket"
)

// The Python reference server stores an encrypted backup as opaque
// statements: what it holds is ciphertext, a restore with the identity is
// exact, and compaction is refused on the node with a clear error instead
// of asking the server to apply ciphertext as SQL.
func TestPythonServerStoresSealedChanges(t *testing.T) {
	ctx := context.Background()
	srv := pyref.StartServer(t)
	k := newKeys(t)
	cs, err := corpus.Changes()
	if err != nil {
		t.Fatal(err)
	}
	cs = cs[:30]
	inner, err := socket.Open(ctx, srv.URL(), lnvault.OpenOptions{Create: true, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	b := New(inner, k.session(t))
	for _, c := range cs {
		if err := b.Append(ctx, c); err != nil {
			t.Fatalf("append %d: %v\n%s", c.Version, err, srv.Log())
		}
	}
	if _, err := b.Compact(ctx); !errors.Is(err, lnvault.ErrSealed) {
		t.Fatalf("compact of an encrypted backup on the reference server: %v, want ErrSealed", err)
	}
	// With the node's database to compact from: the reference server cannot
	// take the snapshot, and the error says so.
	b.SetSnapshotSource(func(ctx context.Context, dst string) (uint32, error) { return replayTo(ctx, dst, cs[:29]) })
	if _, err := b.Compact(ctx); !errors.Is(err, lnvault.ErrSealed) || !errors.Is(err, lnvault.ErrNoRebase) || !strings.Contains(err.Error(), "does not offer it") {
		t.Fatalf("node compaction at the reference server: %v, want ErrSealed naming the server's missing feature", err)
	}
	b.Close()

	held, err := os.ReadFile(srv.File)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		for _, s := range c.Statements {
			if len(s) >= 40 && bytes.Contains(held, []byte(s[:40])) {
				t.Fatalf("the reference server's file holds plaintext: %.40q", s)
			}
		}
	}
	inner, err = socket.Open(ctx, srv.URL(), lnvault.OpenOptions{ReadOnly: true, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	var got []*lnvault.Change
	r := NewReader(inner, []age.Identity{k.id}, &k.cfg.Backup)
	if err := r.Stream(ctx, 0, func(c *lnvault.Change) error {
		got = append(got, lnvault.NewTransaction(c.Version, slices.Clone(c.Statements)))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(cs) {
		t.Fatalf("restored %d changes from the reference server, wrote %d", len(got), len(cs))
	}
	for i := range cs {
		if got[i].Version != cs[i].Version || !slices.Equal(got[i].Statements, cs[i].Statements) {
			t.Fatalf("change %d differs after the reference server", i)
		}
	}
}
