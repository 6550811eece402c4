package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

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

// A backup over its quota refuses the next change with a message saying
// what to do, and stores nothing; a writer over its change rate is slowed
// to it, not refused.
func TestQuotaAndRate(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, server.Config{Quota: server.Quota{QuotaBytes: 20000}})
	changes := corpusChanges(t)
	w := openSocket(t, ts.url(""), lnvault.OpenOptions{Create: true})
	var err error
	n := 0
	for ; n < len(changes); n++ {
		if err = w.Append(ctx, changes[n]); err != nil {
			break
		}
	}
	if err == nil || !strings.Contains(err.Error(), "the quota of this backup is 20000 bytes") || !strings.Contains(err.Error(), "compact it") {
		t.Fatalf("after %d changes: %v, want the quota named", n, err)
	}
	if m := ts.b.Metadata(); m.VersionCount != uint64(n) {
		t.Fatalf("the refused change was stored: %d changes, want %d", m.VersionCount, n)
	}
	w.Close()

	ts = startServer(t, server.Config{Quota: server.Quota{MaxChangeRate: 50}})
	w = openSocket(t, ts.url(""), lnvault.OpenOptions{Create: true})
	start := time.Now()
	for _, c := range changes[:150] {
		if err := w.Append(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	// 150 changes at 50/s with a burst of 100: at least a second.
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Fatalf("150 changes at a limit of 50/s took %v", d)
	}
	ts.srv.SetQuota(server.Quota{})
	start = time.Now()
	for _, c := range changes[150:300] {
		if err := w.Append(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("without a limit 150 changes took %v", d)
	}
}
