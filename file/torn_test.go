package file

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/restore"
)

// A power cut can keep the newest header and lose (or tear) the record it
// was written for: one fdatasync covers both, and it never returned, so the
// change was never acknowledged. The backup must open at the change before,
// for the writer (which then stores the change again) and for restore.
func TestTornAppendHeaderOnly(t *testing.T) {
	reqs := corpus.MustLoad()[:40]
	for _, tc := range []struct {
		name string
		tear func(data []byte, recOff, recEnd int64)
	}{
		{"record never reached the disk", func(d []byte, off, end int64) { clear(d[off:end]) }},
		{"record torn after its header", func(d []byte, off, end int64) { clear(d[off+v2RecHdr+(end-off-v2RecHdr)/2 : end]) }},
		{"record's header torn", func(d []byte, off, end int64) { clear(d[off : off+v2RecHdr/2]) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			url, path := tempURL(t, "torn.dbak")
			b := mustOpen(t, url, lnvault.OpenOptions{Create: true, Format: 2, Logger: quietLog()})
			appendAll(t, b, reqs[:39])
			before := b.Metadata()
			appendAll(t, b, reqs[39:])
			recOff, recEnd := int64(b.hdr.lastRecordOffset), int64(b.hdr.endOffset)
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			tc.tear(data, recOff, recEnd)
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}

			// Readers see the state before the lost change.
			r := mustOpen(t, url, lnvault.OpenOptions{ReadOnly: true, Logger: quietLog()})
			if m := r.Metadata(); m != before {
				t.Fatalf("reader: metadata %+v, want %+v (the state before the lost change)", m, before)
			}
			// They cannot tell a lost unacknowledged change from damage
			// to an acknowledged one: after the records they say so, and
			// name the version to restore to.
			n := 0
			err = r.Stream(ctx, 0, func(*lnvault.Change) error { n++; return nil })
			r.Close()
			if n != 39 || !errors.Is(err, lnvault.ErrCorrupt) || !strings.Contains(err.Error(), fmt.Sprintf("--to-version %d", before.Version)) {
				t.Fatalf("reader: streamed %d changes (want 39), then %v (want a corrupt error naming --to-version %d)", n, err, before.Version)
			}
			dest := filepath.Join(t.TempDir(), "r.sqlite3")
			rb := mustOpen(t, url, lnvault.OpenOptions{ReadOnly: true, Logger: quietLog()})
			defer rb.Close()
			if _, err := restore.Restore(ctx, rb, dest, restore.Options{ToVersion: before.Version}); err != nil {
				t.Fatalf("restore --to-version %d: %v", before.Version, err)
			}

			// The writer opens, and the change is stored again.
			w := mustOpen(t, url, lnvault.OpenOptions{Logger: quietLog()})
			if m := w.Metadata(); m != before {
				t.Fatalf("writer: metadata %+v, want %+v", m, before)
			}
			appendAll(t, w, reqs[39:])
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			w2 := mustOpen(t, url, lnvault.OpenOptions{Logger: quietLog()})
			defer w2.Close()
			if m := w2.Metadata(); m.Version != reqs[39].DataVersion || m.VersionCount != before.VersionCount+1 {
				t.Fatalf("after storing the change again: %+v", m)
			}
			var vs []uint32
			if err := w2.Stream(ctx, 0, func(c *lnvault.Change) error { vs = append(vs, c.Version); return nil }); err != nil {
				t.Fatal(err)
			}
			if len(vs) != 40 {
				t.Fatalf("streamed %d changes, want 40", len(vs))
			}
		})
	}
}
