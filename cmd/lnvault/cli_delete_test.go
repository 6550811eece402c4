package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/s3test"
)

// initWithData creates a backup at url holding a snapshot of a small node.
func initWithData(t *testing.T, url string) {
	t.Helper()
	ldir := t.TempDir()
	replayCorpus(t, filepath.Join(ldir, "lightningd.sqlite3"), 10)
	mustRun(t, "init", url, "--lightning-dir", ldir, "--force")
}

func TestCLIDeleteFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "node.dbak")
	url := "file://" + path
	initWithData(t, url)
	for _, tc := range []struct{ name, input, want string }{
		{"no answer", "", "pass --yes"},
		{"not yes", "no\n", "the answer was not yes"},
	} {
		r := runCLIWithInput(t, tc.input, "delete", url)
		if r.code == 0 || !strings.Contains(r.stderr, "lnvault: not deleted") || !strings.Contains(r.stderr, tc.want) {
			t.Fatalf("%s: exit %d, stderr %q; want a refusal naming %q", tc.name, r.code, r.stderr, tc.want)
		}
		if !strings.Contains(r.stderr, "delete the backup "+url+": version 1") {
			t.Errorf("%s: the question does not say what would be deleted: %q", tc.name, r.stderr)
		}
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("%s: the backup is gone although deletion was not confirmed: %v", tc.name, err)
		}
	}

	// A writer holds it: refused, even with --yes.
	w, err := lnvault.Open(context.Background(), url, lnvault.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertOneLineError(t, runCLI(t, "delete", url, "--yes"), "not deleted", "stop the writer")
	w.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("deleted while a writer held it: %v", err)
	}

	r := mustRun(t, "delete", url, "--yes")
	if !strings.Contains(r.stdout, "deleted "+url) {
		t.Errorf("stdout %q", r.stdout)
	}
	r = runCLIWithInput(t, "yes\n", "delete", url)
	assertOneLineError(t, r, "nothing to delete")
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("the backup file is still there: %v", err)
	}
	// The URL is free again.
	initWithData(t, url)
}

func TestCLIDeleteConfirmedOnStdin(t *testing.T) {
	path := filepath.Join(t.TempDir(), "node.dbak")
	url := "file://" + path
	initWithData(t, url)
	if r := runCLIWithInput(t, "YES\n", "delete", url); r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("the backup file is still there: %v", err)
	}
}

func TestCLIDeleteS3(t *testing.T) {
	ep, bkt := s3test.Start(t)
	url := s3test.URL(ep, bkt, "node")
	initWithData(t, url)
	w, err := lnvault.Open(context.Background(), url, lnvault.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	assertOneLineError(t, runCLI(t, "delete", url, "--yes"), "not deleted", "stop the writer")
	w.Close()
	mustRun(t, "delete", url, "--yes")
	assertOneLineError(t, runCLI(t, "status", url), "lnvault init")
	initWithData(t, url)
	if r := mustRun(t, "status", url); !strings.Contains(r.stdout, "1") {
		t.Fatalf("status after a new init: %s", r.stdout)
	}
}

// delete socket: asks lnvault server to delete the backup it serves and its
// --replicate replica: refused while the node's plugin is the writer, then
// done; the server goes on serving it empty and a new init starts there.
func TestCLIDeleteSocket(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	rep := "dir://" + filepath.Join(dir, "replica")
	srv := startServer(t, "file://"+filepath.Join(dir, "node.dbak"), "127.0.0.1:0", "--create", "--replicate", rep, "--replicate-interval", "100ms")
	url := "socket:" + srv.Addr
	initWithData(t, url)
	head := waitReplica(t, rep, 10, srv) // initWithData: the corpus up to version 10

	w, err := lnvault.Open(ctx, url, lnvault.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	next := lnvault.NewTransaction(head.Version+1, []string{"UPDATE vars SET intval=intval+1 WHERE name='data_version'"})
	if err := w.Append(ctx, next); err != nil { // now it is the writer, as lightningd's plugin is
		t.Fatal(err)
	}
	assertOneLineError(t, runCLI(t, "delete", url, "--yes"), "not deleted", "another connection is the writer")
	w.Close()
	if md := waitReplica(t, rep, head.Version+1, srv); md.VersionCount == 0 {
		t.Fatalf("replica %+v", md)
	}

	r := mustRun(t, "delete", url, "--yes")
	if !strings.Contains(r.stdout, "deleted "+url) || !strings.Contains(r.stdout, "serving it empty") {
		t.Errorf("stdout %q", r.stdout)
	}
	if r := mustRun(t, "status", url); !regexp.MustCompile(`(?m)^version:\s+0$`).MatchString(r.stdout) || !regexp.MustCompile(`(?m)^version count:\s+0$`).MatchString(r.stdout) {
		t.Errorf("status after delete: %s", r.stdout)
	}
	if md, gens := replicaHead(t, rep); md != (lnvault.Metadata{}) || len(gens) != 0 {
		t.Fatalf("the replica still holds %+v in generations %v", md, gens)
	}
	initWithData(t, url)
	waitReplica(t, rep, 10, srv)
	srv.stop()
}
