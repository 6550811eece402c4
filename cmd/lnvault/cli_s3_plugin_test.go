package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/harness"
	"github.com/lnvault/lnvault/internal/s3test"
)

// countObjects counts the objects under bucket/prefix/ whose key contains sub.
func countObjects(t *testing.T, endpoint, bucket, prefix, sub string) int {
	t.Helper()
	p := s3.NewListObjectsV2Paginator(s3test.Client(endpoint), &s3.ListObjectsV2Input{Bucket: aws.String(bucket), Prefix: aws.String(prefix + "/")})
	n := 0
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range page.Contents {
			if strings.Contains(aws.ToString(o.Key), sub) {
				n++
			}
		}
	}
	return n
}

// The whole corpus through the real plugin process (under the lightningd
// simulator, first db_write before init) into an s3:// backup on a real S3
// server (versitygw), synchronously: `lnvault init s3://...` writes
// backup.lock, every db_write is one PUT completed before the plugin answers,
// and `lnvault restore s3://...` gives the corpus's final dump.
func TestPluginCorpusToS3(t *testing.T) {
	ep, bkt := s3test.Start(t) // sets the AWS_* variables the subprocesses inherit
	dir := t.TempDir()
	u := s3test.URL(ep, bkt, "node")
	// No node database: the reference is the corpus's recorded dump, and
	// SQLite under the race detector would dominate the test's time.
	h, err := harness.New(harness.Config{Bin: lnvaultBin, Dir: filepath.Join(dir, "lightning"), NoNodeDB: true})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	mustRun(t, "init", u, "--lightning-dir", h.NetDir(), "--force")
	if lock := readLock(t, h.NetDir()); lock["backend_url"] != u {
		t.Fatalf("backup.lock names %v, want %s", lock["backend_url"], u)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := h.Start(ctx); err != nil {
		t.Fatal(err)
	}
	reqs := corpus.MustLoad()
	start := time.Now()
	if err := h.Replay(ctx, reqs, 1); err != nil {
		t.Fatalf("replay: %v\nplugin stderr: %s", err, h.Stderr())
	}
	st := harness.Summarize(h.Latencies())
	t.Logf("%d db_writes into S3 in %v: ack p50 %v p99 %v max %v", st.N, time.Since(start).Round(time.Millisecond), st.P50, st.P99, st.Max)
	if code, err := h.Stop(ctx); err != nil || code != 0 {
		t.Fatalf("plugin exit %d: %v\nstderr: %s", code, err, h.Stderr())
	}
	if st.N != len(reqs) {
		t.Fatalf("%d db_writes acknowledged, want %d", st.N, len(reqs))
	}

	// Synchronous: one segment object per change.
	if n := countObjects(t, ep, bkt, "node", "/segments/"); n != len(reqs) {
		t.Fatalf("%d segment objects, want %d (one PUT per db_write)", n, len(reqs))
	}
	var status struct {
		Metadata struct {
			Version      uint32 `json:"version"`
			VersionCount uint64 `json:"version_count"`
		} `json:"metadata"`
	}
	r := mustRun(t, "status", u, "--json")
	if err := json.Unmarshal([]byte(r.stdout), &status); err != nil {
		t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	if last := reqs[len(reqs)-1].DataVersion; status.Metadata.Version != last || status.Metadata.VersionCount != uint64(len(reqs)) {
		t.Fatalf("status of %s: %+v, want version %d count %d", u, status.Metadata, last, len(reqs))
	}

	dest := filepath.Join(dir, "restored.sqlite3")
	r = mustRun(t, "restore", u, dest)
	if !strings.Contains(r.stdout, "version 2992") {
		t.Errorf("restore output %q does not name version 2992", r.stdout)
	}
	if got, want := dumpOf(t, dest), corpus.FinalDumpSHA256(); got != want {
		t.Fatalf("restore from %s: dump %s, want the corpus's %s", u, got, want)
	}
}
