package restore_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/backends"
	"github.com/lnvault/lnvault/internal/dumphash"
	"github.com/lnvault/lnvault/restore"
)

// Tests open URLs: wire the storage in, as the binary does.
func TestMain(m *testing.M) {
	backends.Register()
	os.Exit(m.Run())
}

// TestFileBackendRoundTrip runs Restore and Verify on the real file backend
// in both formats: a snapshot then transactions, restored to the latest
// version and to a mid version, equal to a direct replay. (The whole corpus
// through the real binary is cmd/lnvault's acceptance test.)
func TestFileBackendRoundTrip(t *testing.T) {
	ctx := context.Background()
	const head, mid = 500, 420
	for _, format := range []int{1, 2} {
		t.Run(fmt.Sprintf("v%d", format), func(t *testing.T) {
			dir := t.TempDir()
			url := "file://" + filepath.Join(dir, "b.dbak")
			w, err := lnvault.Open(ctx, url, lnvault.OpenOptions{Create: true, Format: format})
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range restore.FixtureChanges(t, head) {
				if err := w.Append(ctx, c); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}

			b, err := lnvault.Open(ctx, url, lnvault.OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			rep, err := restore.Verify(ctx, b)
			if err != nil || !rep.OK() || rep.FirstVersion != restore.FixtureSnap || rep.DataVersion != head || rep.Snapshots != 1 {
				t.Fatalf("verify: %+v, %v", rep, err)
			}
			for _, to := range []uint32{0, mid} {
				d := t.TempDir()
				res, err := restore.Restore(ctx, b, d, restore.Options{ToVersion: to})
				if err != nil {
					t.Fatal(err)
				}
				want := uint32(head)
				if to != 0 {
					want = to
				}
				if res.Version != want || res.Path != filepath.Join(d, restore.DefaultName) {
					t.Fatalf("result %+v, want version %d", res, want)
				}
				ref := filepath.Join(t.TempDir(), "ref")
				restore.FixtureReplay(t, ref, want)
				if hashOf(t, res.Path) != hashOf(t, ref) {
					t.Fatalf("restore at %d differs from a direct replay", want)
				}
			}
		})
	}
}

func hashOf(t *testing.T, path string) string {
	t.Helper()
	if !dumphash.Available() {
		t.Fatal("the sqlite3 command line tool is needed (apt-get install sqlite3)")
	}
	h, err := dumphash.Of(path)
	if err != nil {
		t.Fatal(err)
	}
	return h
}
