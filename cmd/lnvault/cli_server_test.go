package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lnvault/lnvault/internal/corpus"
)

// The corpus through the plugin harness into socket: → `lnvault server` →
// file backend. A restore through socket: while the server runs gives the
// corpus's final dump, and so does the server's own file once it stopped.
func TestPluginThroughServerCorpus(t *testing.T) {
	dir := t.TempDir()
	fileURL := "file://" + filepath.Join(dir, "node.dbak")
	srv := startServer(t, fileURL, "127.0.0.1:0", "--create")
	reqs := corpus.MustLoad()
	replayThroughPlugin(t, "socket:"+srv.Addr, reqs, nil)
	want := corpus.FinalDumpSHA256()

	viaSocket := filepath.Join(dir, "via-socket.sqlite3")
	r := mustRun(t, "restore", "socket:"+srv.Addr, viaSocket)
	last := reqs[len(reqs)-1].DataVersion
	if !strings.Contains(r.stdout, fmt.Sprintf("version %d", last)) {
		t.Errorf("restore output %q does not name version %d", r.stdout, last)
	}
	if got := dumpOf(t, viaSocket); got != want {
		t.Fatalf("restore through socket: dump %s, want the corpus's %s", got, want)
	}

	srv.stop()
	viaFile := filepath.Join(dir, "via-file.sqlite3")
	mustRun(t, "restore", fileURL, viaFile)
	if got := dumpOf(t, viaFile); got != want {
		t.Fatalf("restore of the server's file: dump %s, want the corpus's %s", got, want)
	}
}
