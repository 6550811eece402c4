package restore_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/dumphash"
	"github.com/lnvault/lnvault/restore"
)

// TestFileBackendRoundTrip runs Restore and Verify on the real file
// backend in both formats.
func TestFileBackendRoundTrip(t *testing.T) {
	ctx := context.Background()
	for _, format := range []int{1, 2} {
		t.Run(fmt.Sprintf("v%d", format), func(t *testing.T) {
			dir := t.TempDir()
			url, _ := writeCorpusBackup(t, dir, format)
			b, err := lnvault.Open(ctx, url, lnvault.OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			rep, err := restore.Verify(ctx, b)
			if err != nil || !rep.OK() || rep.Changes != 2994 || rep.DataVersion != 2992 {
				t.Fatalf("verify: %+v, %v", rep, err)
			}
			res, err := restore.Restore(ctx, b, dir, restore.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if res.Version != 2992 || res.Path != filepath.Join(dir, restore.DefaultName) {
				t.Fatalf("result %+v", res)
			}
			if !dumphash.Available() {
				t.Fatal("the sqlite3 command line tool is needed (apt-get install sqlite3)")
			}
			got, err := dumphash.Of(res.Path)
			if err != nil {
				t.Fatal(err)
			}
			if got != corpus.FinalDumpSHA256() {
				t.Fatalf("dump %s, want %s", got, corpus.FinalDumpSHA256())
			}
		})
	}
}
