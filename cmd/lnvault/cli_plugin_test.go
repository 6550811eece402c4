package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/harness"
)

func TestDemoCommand(t *testing.T) {
	r := mustRun(t, "demo")
	if !strings.Contains(r.stdout, "demo OK") || !strings.Contains(r.stdout, "restored "+corpus.FinalDumpSHA256()) || !strings.Contains(r.stdout, "the plugin rewinds") {
		t.Fatalf("demo output:\n%s", r.stdout)
	}
}

func TestBenchCommand(t *testing.T) {
	r := mustRun(t, "bench", "--changes", "50", "--size", "800")
	for _, want := range []string{"db_write ack", "raw fdatasync", "ratio", "changes/s"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("bench output lacks %q:\n%s", want, r.stdout)
		}
	}
	r = runCLI(t, "bench", "--size", "10")
	if r.code != 1 || !strings.Contains(r.stderr, "give --changes N") {
		t.Fatalf("bench --size alone: exit %d, %s", r.code, r.stderr)
	}
}

// `lnvault init` writes the backup.lock the plugin reads; the plugin runs both
// as lightningd starts it (LIGHTNINGD_PLUGIN=1) and as `lnvault plugin`.
func TestInitThenPlugin(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  []string
	}{
		{"LIGHTNINGD_PLUGIN=1", nil, nil},
		{"plugin sub-command", []string{"plugin"}, []string{"LIGHTNINGD_PLUGIN="}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			h, err := harness.New(harness.Config{Bin: lnvaultBin, Args: tc.args, Env: tc.env, Dir: filepath.Join(dir, "lightning")})
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			url := "file://" + filepath.Join(dir, "backup.dbak")
			// The harness already serves lightning-rpc, as a running node would.
			mustRun(t, "init", url, "--lightning-dir", h.NetDir(), "--force")
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := h.Start(ctx); err != nil {
				t.Fatal(err)
			}
			reqs := corpus.MustLoad()[:40]
			if err := h.Replay(ctx, reqs, 1); err != nil {
				t.Fatal(err)
			}
			if code, err := h.Stop(ctx); err != nil || code != 0 {
				t.Fatalf("plugin exit %d: %v", code, err)
			}
			r := mustRun(t, "status", url)
			if !strings.Contains(r.stdout, "38") { // data_version of request 40
				t.Fatalf("status after 40 db_writes:\n%s", r.stdout)
			}
		})
	}
}
