package main

import (
	"context"
	"os"
	"path/filepath"
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

func TestCLIDeleteSocketSaysWhere(t *testing.T) {
	assertOneLineError(t, runCLI(t, "delete", "socket:127.0.0.1:1", "--yes"), "on the server's host")
}
