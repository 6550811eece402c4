package file

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/corpus"
)

func TestCompact(t *testing.T) {
	ctx := context.Background()
	reqs := corpus.MustLoad()
	split := 2000
	for _, format := range []int{1, 2} {
		t.Run(fmt.Sprintf("v%d", format), func(t *testing.T) {
			url, path := tempURL(t, "b.dbak")
			b := mustOpen(t, url, lnvault.OpenOptions{Create: true, Format: format})
			defer b.Close()
			appendAll(t, b, reqs[:split])
			metaBefore := b.Metadata()
			sizeBefore := int64(b.hdr.endOffset) // the file may hold preallocated room past it
			// Changes arrive while the snapshot is being built (the lock is
			// not held then), and the swap copies them over.
			var swap time.Duration
			var swapStart time.Time
			b.compactHook = func(stage string) {
				switch stage {
				case "snapshot-built":
					appendAll(t, b, reqs[split:split+10])
				case "file-written":
					swapStart = time.Now()
				case "before-rename":
					swap = time.Since(swapStart)
				}
			}
			stats, err := b.Compact(ctx)
			if err != nil {
				t.Fatal(err)
			}
			b.compactHook = nil
			t.Logf("compaction %+v, swap under lock %v", stats, swap)
			if stats.Before.VersionCount != uint64(split+10) || stats.After.VersionCount != 12 ||
				stats.Before.BackupSize <= sizeBefore || metaBefore.VersionCount != uint64(split) ||
				stats.After.BackupSize != fileSize(t, path) || stats.After.BackupSize >= stats.Before.BackupSize {
				t.Fatalf("stats %+v (file %d bytes before)", stats, sizeBefore)
			}
			js, _ := json.Marshal(stats)
			if !strings.Contains(string(js), `"before":{"backupsize"`) {
				t.Fatalf("stats JSON %s", js)
			}
			m := b.Metadata()
			want := lnvault.Metadata{Version: reqs[split+9].DataVersion, PrevVersion: reqs[split+8].DataVersion, VersionCount: uint64(split + 10)}
			if m != want {
				t.Fatalf("metadata after compaction %+v, want %+v", m, want)
			}
			all := streamAll(t, b, 0)
			if len(all) != 12 || all[0].Kind != lnvault.KindSnapshot || all[0].Version != reqs[split-2].DataVersion {
				t.Fatalf("after compaction: %d changes, first %v v%d", len(all), all[0].Kind, all[0].Version)
			}
			checkSame(t, all[1:], reqs[split-1:split+10])
			// Appends go on; the head can still be rewound; a second
			// compaction folds the old snapshot in.
			appendAll(t, b, reqs[split+10:])
			if err := b.Rewind(ctx); err != nil {
				t.Fatal(err)
			}
			appendAll(t, b, reqs[len(reqs)-1:])
			if _, err := b.Compact(ctx); err != nil {
				t.Fatal(err)
			}
			b.Close()
			rb := mustOpen(t, url, lnvault.OpenOptions{ReadOnly: true})
			defer rb.Close()
			st, _ := rb.Status(ctx)
			if st.Records != 2 || st.Metadata.VersionCount != uint64(len(reqs)) {
				t.Fatalf("status after second compaction %+v", st)
			}
			if h := restoreDump(t, rb); h != corpus.FinalDumpSHA256() {
				t.Fatalf("restored dump after compaction %s, want %s", h, corpus.FinalDumpSHA256())
			}
			if m, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*compact*")); len(m) != 0 {
				t.Fatalf("temp files left: %v", m)
			}
		})
	}
}

func TestCompactEdgeCases(t *testing.T) {
	ctx := context.Background()
	reqs := corpus.MustLoad()[:30]
	url, path := tempURL(t, "b.dbak")
	b := mustOpen(t, url, lnvault.OpenOptions{Create: true})
	defer b.Close()
	// Nothing to fold: empty, one record.
	for i := 0; i < 2; i++ {
		st, err := b.Compact(ctx)
		if err != nil || st.Before != st.After {
			t.Fatalf("compact of %d records: %+v %v", i, st, err)
		}
		appendAll(t, b, reqs[i:i+1])
	}
	appendAll(t, b, reqs[2:])
	// A rewind while the snapshot is built abandons the compaction.
	b.compactHook = func(stage string) {
		if stage == "snapshot-built" {
			if err := b.Rewind(ctx); err != nil {
				t.Error(err)
			}
		}
	}
	if _, err := b.Compact(ctx); err == nil || !strings.Contains(err.Error(), "rewound") {
		t.Fatalf("compaction with a rewind: %v", err)
	}
	b.compactHook = nil
	checkSame(t, streamAll(t, b, 0), reqs[:len(reqs)-1])
	// After a rewind (no last_record_offset) compaction still finds the head.
	if _, err := b.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	all := streamAll(t, b, 0)
	if len(all) != 2 || all[0].Kind != lnvault.KindSnapshot {
		t.Fatalf("got %d changes", len(all))
	}
	if err := b.Rewind(ctx); err == nil {
		t.Fatal("rewind allowed twice across a compaction")
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
}
