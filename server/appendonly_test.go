package server_test

import (
	"context"
	"strings"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/server"
)

// An append-only server takes appends and the rewind of the last change,
// and refuses a client's delete, compaction and rebase with a clear error,
// changing nothing.
func TestAppendOnly(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, server.Config{AppendOnly: true})
	changes := corpusChanges(t)[:40]
	w := openSocket(t, ts.url(""), lnvault.OpenOptions{Create: true})
	for _, c := range changes {
		if err := w.Append(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Rewind(ctx); err != nil {
		t.Fatalf("the rewind of the last change: %v", err)
	}
	if err := w.Append(ctx, changes[39]); err != nil {
		t.Fatal(err)
	}
	want := ts.b.Metadata()
	if _, err := w.Compact(ctx); err == nil || !strings.Contains(err.Error(), "append-only") {
		t.Fatalf("compact: %v", err)
	}
	if _, err := w.Rebase(ctx, snapshotOf(t, changes[:30])); err == nil || !strings.Contains(err.Error(), "append-only") {
		t.Fatalf("rebase: %v", err)
	}
	w.Close()
	if err := openSocket(t, ts.url(""), lnvault.OpenOptions{}).Delete(ctx); err == nil || !strings.Contains(err.Error(), "append-only") {
		t.Fatalf("delete: %v", err)
	}
	if m := ts.b.Metadata(); m != want {
		t.Fatalf("the refused requests changed the backup: %+v, want %+v", m, want)
	}
	checkExact(t, openSocket(t, ts.url(""), lnvault.OpenOptions{ReadOnly: true}), changes)
}
