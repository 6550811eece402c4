package server_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/lnvault/lnvault/backupplugin"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/dumphash"
	"github.com/lnvault/lnvault/internal/harness"
	"github.com/lnvault/lnvault/internal/pyref"
	"github.com/lnvault/lnvault/server"
)

// The real reference plugin (backup.py), driven as lightningd drives it,
// backs up to lnvault server over its own socket client; then both the
// real reference client (backup-cli restore) and lnvault restore the
// server's backup, and both equal the node's database. (The other
// direction, lnvault's client against the real reference server, is
// TestConformancePythonServer and flakylink's campaign.)
func TestRealReferencePluginToLnvaultServer(t *testing.T) {
	d := pyref.Need(t)
	ts := startServer(t, server.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	h, err := harness.New(harness.Config{Bin: pyref.Plugin(d), Dir: filepath.Join(t.TempDir(), "node")})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := backupplugin.WriteLock(h.NetDir(), backupplugin.Lock{BackendURL: ts.url("")}); err != nil {
		t.Fatal(err)
	}
	if err := h.Start(ctx); err != nil {
		t.Fatal(err)
	}
	reqs := corpus.MustLoad()[:250] // ~44 ms a change: the reference's two sends without TCP_NODELAY
	for i, r := range reqs {
		if _, err := h.Write(ctx, fmt.Sprintf("ref#%d", i), r.DataVersion, r.Writes); err != nil {
			t.Fatalf("db_write %d through the reference plugin: %v\n%s", i, err, h.Stderr())
		}
	}
	if _, err := h.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	want, err := dumphash.Of(h.NodeDBPath())
	if err != nil {
		t.Fatal(err)
	}
	byRef := filepath.Join(t.TempDir(), "ref-restored.sqlite3")
	if _, err := pyref.CLI(ctx, d, "restore", ts.url(""), byRef); err != nil {
		t.Fatal(err)
	}
	if got, err := dumphash.Of(byRef); err != nil || got != want {
		t.Fatalf("backup-cli restore from lnvault server: %v (hash differs: %v)", err, got != want)
	}
	if got, n := restoreHash(t, ts.b); got != want || n != len(reqs) {
		t.Fatalf("lnvault's restore of what the reference plugin sent: %d changes (want %d), hash equal %v", n, len(reqs), got == want)
	}
}
