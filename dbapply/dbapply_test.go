package dbapply_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/lnvault/lnvault/dbapply"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/dumphash"
)

// The corpus applied through the Applier gives the node's own dump.
func TestCorpusReplayMatchesDump(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "db.sqlite3")
	a, err := dbapply.Create(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range corpus.MustLoad() {
		if err := a.Apply(ctx, r.Change()); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	if err := dbapply.Check(ctx, path, true); err != nil {
		t.Fatal(err)
	}
	v, err := dbapply.DataVersion(ctx, path)
	if err != nil || v != 2992 {
		t.Fatalf("data_version = %d, %v; want 2992", v, err)
	}
	got, err := dumphash.Of(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != corpus.FinalDumpSHA256() {
		t.Fatalf("dump hash %s, want %s", got, corpus.FinalDumpSHA256())
	}
	snap := filepath.Join(t.TempDir(), "snap.sqlite3")
	sv, err := dbapply.Snapshot(ctx, path, snap)
	if err != nil || sv != 2992 {
		t.Fatalf("snapshot version %d, %v", sv, err)
	}
	if h, _ := dumphash.Of(snap); h != got {
		t.Fatalf("snapshot dump differs")
	}
}

func TestFixStatement(t *testing.T) {
	for in, want := range map[string]string{
		"UPDATE outputs SET status=0, reserved_til=123WHERE prev_out_tx=x'00'": "UPDATE outputs SET status=0, reserved_til=123 WHERE prev_out_tx=x'00'",
		"UPDATE channels SET peer_id=7WHERE channels.id=3":                     "UPDATE channels SET peer_id=7 WHERE channels.id=3",
		"UPDATE vars SET intval = intval + 1 WHERE name = 'data_version'":      "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version'",
	} {
		if got := dbapply.FixStatement(in); got != want {
			t.Errorf("FixStatement(%q) = %q, want %q", in, got, want)
		}
	}
}
