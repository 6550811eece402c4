package server_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/server"
)

type jsonChange struct {
	Version    uint32   `json:"version"`
	Statements []string `json:"statements"`
	Snapshot   int      `json:"snapshot_bytes"`
	SQLite     bool     `json:"sqlite"`
}

// The Python client (written from the protocol document) backs up, rewinds,
// compacts and restores through the lnvault server.
func TestInteropPythonClient(t *testing.T) {
	ts := startServer(t, server.Config{})
	changes := corpusChanges(t)[:300]
	var in []jsonChange
	for _, c := range changes {
		in = append(in, jsonChange{Version: c.Version, Statements: c.Statements})
	}
	dir := t.TempDir()
	js, _ := json.Marshal(in)
	inPath, outPath := filepath.Join(dir, "in.json"), filepath.Join(dir, "out.json")
	os.WriteFile(inPath, js, 0o600)
	host, port, _ := strings.Cut(ts.addr, ":")
	out, err := exec.Command("python3", "testdata/refclient.py", host, port, inPath, outPath).CombinedOutput()
	if err != nil {
		t.Fatalf("python client: %v\n%s", err, out)
	}
	var res struct {
		Compact  lnvault.CompactStats `json:"compact"`
		Restored []jsonChange         `json:"restored"`
	}
	raw, err := os.ReadFile(outPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		t.Fatal(err)
	}
	if res.Compact.Before.BackupSize <= 0 {
		t.Fatalf("compaction stats %+v", res.Compact)
	}
	// After compaction: a snapshot, then the head change, which the client
	// can still rewind.
	r := res.Restored
	if len(r) < 2 || r[0].Snapshot == 0 || !r[0].SQLite || r[len(r)-1].Version != changes[len(changes)-1].Version {
		t.Fatalf("restored %d changes: first %+v", len(r), r[0])
	}
	last := r[len(r)-1]
	if strings.Join(last.Statements, "\x00") != strings.Join(changes[len(changes)-1].Statements, "\x00") {
		t.Fatal("head change differs")
	}
	if h, _ := restoreHash(t, ts.b); h != prefixHash(t, 300) {
		t.Fatalf("restored database %s differs from the direct one", h)
	}
}

// The lnvault socket: backend writes to, rewinds on, compacts on and
// restores from the Python server.
func TestInteropPythonServer(t *testing.T) {
	url := startPythonServer(t)
	ctx := context.Background()
	c := openSocket(t, url, lnvault.OpenOptions{Create: true})
	changes := corpusChanges(t)[:300]
	for _, ch := range changes {
		if err := c.Append(ctx, ch); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Rewind(ctx); err != nil {
		t.Fatal(err)
	}
	if m := c.Metadata(); m.Version != changes[298].Version || m.VersionCount != 299 {
		t.Fatalf("after rewind %+v", m)
	}
	if err := c.Append(ctx, changes[299]); err != nil {
		t.Fatal(err)
	}
	st, err := c.Compact(ctx)
	if err != nil || st.Before.VersionCount != 300 {
		t.Fatalf("compact %+v %v", st, err)
	}
	r := openSocket(t, url, lnvault.OpenOptions{ReadOnly: true})
	checkExact(t, r, changes)
	if _, err := lnvault.Open(ctx, url, lnvault.OpenOptions{Create: true, Logger: testLogger(t)}); err == nil {
		t.Fatal("Create on a server holding changes succeeded")
	}
}
