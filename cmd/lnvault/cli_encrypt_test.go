package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/harness"
	"github.com/lnvault/lnvault/internal/s3test"
)

// hostBytes is everything a host holds: every file under dirs and every
// object of the bucket.
func hostBytes(t *testing.T, endpoint, bucket string, dirs ...string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, d := range dirs {
		filepath.WalkDir(d, func(p string, e fs.DirEntry, err error) error {
			if err == nil && e.Type().IsRegular() {
				if b, err := os.ReadFile(p); err == nil {
					out[p] = b
				}
			}
			return nil
		})
	}
	if endpoint != "" {
		for k, b := range s3test.Objects(t, endpoint, bucket, "") {
			out["s3://"+bucket+"/"+k] = b
		}
	}
	return out
}

// samples are pieces of the corpus's statements (and so of its blobs) that
// no ciphertext holds by chance.
func samples(reqs []corpus.Request) [][]byte {
	var out [][]byte
	for i := 0; i < len(reqs); i += 7 {
		for _, w := range reqs[i].Writes {
			if len(w) >= 80 {
				out = append(out, []byte(w[len(w)/2-20:len(w)/2+20]))
				break
			}
		}
	}
	return out
}

// An encrypted backup written by the real plugin to every kind of host
// (lnvault server replicating to S3, s3:// direct, dir://, file:): no host
// byte holds a sample of the corpus; restore with the identity gives the
// corpus's final dump from each, and from all at once; without the
// identity the error names the recipient.
func TestEncryptedBackupHostsHoldOnlyCiphertext(t *testing.T) {
	ep, bkt := s3test.Start(t)
	dir := t.TempDir()
	srvDir, dirDest, fileDir := filepath.Join(dir, "server"), filepath.Join(dir, "dirdest"), filepath.Join(dir, "filedest")
	for _, d := range []string{srvDir, fileDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	srv := startServer(t, "file://"+filepath.Join(srvDir, "node.dbak"), "127.0.0.1:0", "--create",
		"--replicate", s3test.URL(ep, bkt, "srv"), "--replicate-interval", "200ms")
	urls := []string{"socket:" + srv.Addr, s3test.URL(ep, bkt, "node"), "dir://" + dirDest, "file://" + filepath.Join(fileDir, "node.dbak")}

	h, err := harness.New(harness.Config{Bin: lnvaultBin, Dir: filepath.Join(dir, "lightning"), NoNodeDB: true})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	const cut = 100 // init seals a snapshot of the node at this version
	replayCorpus(t, filepath.Join(h.NetDir(), "lightningd.sqlite3"), cut)
	idFile := filepath.Join(dir, "lnvault.key")
	r := mustRun(t, append(append([]string{"init"}, urls...), "--lightning-dir", h.NetDir(), "--force", "--new-identity", idFile)...)
	if !strings.Contains(r.stdout, "end-to-end encrypted") || !strings.Contains(r.stdout, "losing it loses the backup") {
		t.Fatalf("init does not say the backup is encrypted and what losing the identity means:\n%s", r.stdout)
	}
	if st, err := os.Stat(idFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("identity file: %v, mode %v; want 0600", err, st.Mode())
	}
	recipient := readLock(t, h.NetDir())["encryption"].(map[string]any)["recipients"].([]any)[0].(string)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := h.Start(ctx); err != nil {
		t.Fatal(err)
	}
	all := corpus.MustLoad()
	var reqs []corpus.Request
	for _, q := range all {
		if q.DataVersion > cut {
			reqs = append(reqs, q)
		}
	}
	if err := h.Replay(ctx, reqs, 1); err != nil {
		t.Fatalf("replay: %v\nplugin stderr: %s", err, h.Stderr())
	}
	if code, err := h.Stop(ctx); err != nil || code != 0 {
		t.Fatalf("plugin exit %d: %v\nstderr: %s", code, err, h.Stderr())
	}
	last := all[len(all)-1].DataVersion
	waitReplica(t, s3test.URL(ep, bkt, "srv"), last, srv)

	held := hostBytes(t, ep, bkt, srvDir, dirDest, fileDir)
	var total int
	for _, b := range held {
		total += len(b)
	}
	probes := samples(all)
	if len(held) < 4 || len(probes) < 100 {
		t.Fatalf("%d host files, %d probes: the test looks at nothing", len(held), len(probes))
	}
	for name, b := range held {
		for _, p := range probes {
			if bytes.Contains(b, p) {
				t.Fatalf("%s holds plaintext of the corpus: %q", name, p)
			}
		}
	}
	// The static channel backups kept beside the database backup are
	// encrypted for the same recipient (envelope flag bit 0).
	scbs := 0
	for name, b := range held {
		if bytes.HasPrefix(b, []byte("LNVSCB")) {
			scbs++
			if len(b) < 8 || b[7]&1 == 0 {
				t.Fatalf("%s: a static channel backup stored unencrypted", name)
			}
		}
	}
	if scbs == 0 {
		t.Fatal("no static channel backup at any host: the SCB check looked at nothing")
	}
	t.Logf("%d host files and objects, %d bytes: none holds any of %d corpus samples; %d SCB versions, all encrypted", len(held), total, len(probes), scbs)

	want := corpus.FinalDumpSHA256()
	for _, u := range append(urls, s3test.URL(ep, bkt, "srv")) {
		r := runCLI(t, "restore", u, filepath.Join(t.TempDir(), "x.sqlite3"))
		assertOneLineError(t, r, "end-to-end encrypted", recipient, "--identity")
		dest := filepath.Join(t.TempDir(), "restored.sqlite3")
		mustRun(t, "restore", "--identity", idFile, u, dest)
		if got := dumpOf(t, dest); got != want {
			t.Fatalf("restore of %s with the identity: dump %s, want %s", u, got, want)
		}
	}
	// Point in time, with the identity: an object store starts at the
	// snapshot before the target, a file streams up to it.
	pit := filepath.Join(t.TempDir(), "pit.sqlite3")
	replayCorpus(t, pit, 1500)
	wantPIT := dumpOf(t, pit)
	for _, u := range []string{urls[1], urls[3]} {
		dest := filepath.Join(t.TempDir(), "restored.sqlite3")
		mustRun(t, "restore", "--identity", idFile, "--to-version", "1500", u, dest)
		if got := dumpOf(t, dest); got != wantPIT {
			t.Fatalf("restore of %s at version 1500 with the identity: dump %s, want %s", u, got, wantPIT)
		}
	}
	dest := filepath.Join(t.TempDir(), "restored.sqlite3")
	r = mustRun(t, append(append([]string{"restore", "--identity", idFile}, urls...), dest)...)
	if got := dumpOf(t, dest); got != want || strings.Contains(r.stderr, "WARNING") {
		t.Fatalf("restore from all destinations: dump %s (want %s), stderr:\n%s", got, want, r.stderr)
	}
	r = mustRun(t, "status", "--identity", idFile, urls[0])
	if !strings.Contains(r.stdout, "authenticated:  version 2992") {
		t.Fatalf("status with the identity does not show the authenticated head:\n%s", r.stdout)
	}
	srv.stop()
}

// The node compacts its encrypted backup (backup-compact) from a copy of
// its own database while db_writes go on, at a file:, an lnvault server and
// s3:// at once; each shrinks, and restores with the identity to the
// node's database.
func TestEncryptedCompactionByTheNode(t *testing.T) {
	ep, bkt := s3test.Start(t)
	dir := t.TempDir()
	replicaURL := s3test.URL(ep, bkt, "srv")
	srv := startServer(t, "file://"+filepath.Join(dir, "server.dbak"), "127.0.0.1:0", "--create",
		"--replicate", replicaURL, "--replicate-interval", "100ms")
	urls := []string{"file://" + filepath.Join(dir, "node.dbak"), "socket:" + srv.Addr, s3test.URL(ep, bkt, "node")}
	h, err := harness.New(harness.Config{Bin: lnvaultBin, Dir: filepath.Join(dir, "lightning")})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	const cut = 100
	replayCorpus(t, h.NodeDBPath(), cut)
	idFile := filepath.Join(dir, "lnvault.key")
	mustRun(t, append(append([]string{"init"}, urls...), "--lightning-dir", h.NetDir(), "--force", "--new-identity", idFile)...)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := h.Start(ctx); err != nil {
		t.Fatal(err)
	}
	var reqs []corpus.Request
	for _, q := range corpus.MustLoad() {
		if q.DataVersion > cut {
			reqs = append(reqs, q)
		}
	}
	half := len(reqs) / 2
	if err := h.Replay(ctx, reqs[:half], 1); err != nil {
		t.Fatalf("replay: %v\nplugin stderr: %s", err, h.Stderr())
	}
	h.ResetLatencies()
	type result struct {
		raw json.RawMessage
		err error
	}
	done := make(chan result, 1)
	go func() {
		raw, err := h.Request(ctx, "backup-compact", nil)
		done <- result{raw, err}
	}()
	if err := h.Replay(ctx, reqs[half:], 1); err != nil {
		t.Fatalf("replay: %v\nplugin stderr: %s", err, h.Stderr())
	}
	res := <-done
	if res.err != nil {
		t.Fatalf("backup-compact: %v\nplugin stderr: %s", res.err, h.Stderr())
	}
	var stats map[string]lnvault.CompactStats
	if err := json.Unmarshal(res.raw, &stats); err != nil {
		t.Fatalf("backup-compact answered %s: %v", res.raw, err)
	}
	for _, u := range urls {
		st, ok := stats[u]
		if !ok || st.After.VersionCount >= st.Before.VersionCount {
			t.Fatalf("%s: compaction stats %+v (present %v), want fewer changes after", u, st, ok)
		}
	}
	lat := harness.Summarize(h.Latencies())
	t.Logf("node compaction beside %d db_writes (ack p50 %v, p99 %v, max %v): %s", lat.N, lat.P50, lat.P99, lat.Max, res.raw)
	if code, err := h.Stop(ctx); err != nil || code != 0 {
		t.Fatalf("plugin exit %d: %v\nstderr: %s", code, err, h.Stderr())
	}
	want := dumpOf(t, h.NodeDBPath())
	if want != corpus.FinalDumpSHA256() {
		t.Fatalf("the node's database is not the corpus's final one")
	}
	// The server's replica is rebased on the node's snapshot too, once it
	// caught up past it.
	last := corpus.MustLoad()[len(corpus.MustLoad())-1].DataVersion
	waitReplica(t, replicaURL, last, srv)
	deadline := time.Now().Add(30 * time.Second)
	for countObjects(t, ep, bkt, "srv", "/snapshots/") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the server's replica holds no snapshot of the node's besides init's:\n%s", srv.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, u := range append(urls, replicaURL) {
		dest := filepath.Join(t.TempDir(), "restored.sqlite3")
		mustRun(t, "restore", "--identity", idFile, u, dest)
		if got := dumpOf(t, dest); got != want {
			t.Fatalf("restore of %s after the node's compaction: dump %s, want %s", u, got, want)
		}
	}
	srv.stop()
}

// runPlugin replays reqs through the real plugin in dir (one run of the
// node: one generation of the encrypted backup).
func runPlugin(t *testing.T, dir string, reqs []corpus.Request) {
	t.Helper()
	h, err := harness.New(harness.Config{Bin: lnvaultBin, Dir: dir, NoNodeDB: true})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := h.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Replay(ctx, reqs, 1); err != nil {
		t.Fatalf("replay: %v\nplugin stderr: %s", err, h.Stderr())
	}
	if code, err := h.Stop(ctx); err != nil || code != 0 {
		t.Fatalf("plugin exit %d: %v\nstderr: %s", code, err, h.Stderr())
	}
}

// A host that serves an older copy of an encrypted backup is named by
// verify (exit 2) and by a restore from several destinations, which takes
// the newest; a host that alters a change is named by restore, which
// writes nothing.
func TestEncryptedDestinationBehindOrAltered(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.dbak"), filepath.Join(dir, "b.dbak")
	node := filepath.Join(dir, "lightning")
	netDir := filepath.Join(node, "regtest")
	if err := os.MkdirAll(netDir, 0o700); err != nil {
		t.Fatal(err)
	}
	const cut = 100
	replayCorpus(t, filepath.Join(netDir, "lightningd.sqlite3"), cut)
	idFile := filepath.Join(dir, "id.key")
	mustRun(t, "init", "file://"+a, "file://"+b, "--format", "1", "--lightning-dir", netDir, "--force", "--new-identity", idFile)
	var reqs []corpus.Request
	for _, q := range corpus.MustLoad() {
		if q.DataVersion > cut {
			reqs = append(reqs, q)
		}
	}
	half := len(reqs) / 2
	runPlugin(t, node, reqs[:half])
	old, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	runPlugin(t, node, reqs[half:])
	// b's host rolls back to the copy it kept.
	if err := os.WriteFile(b, old, 0o600); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, "verify", "--identity", idFile, "file://"+a, "file://"+b)
	if r.code != 2 || !strings.Contains(r.stderr, "file://"+b+" is BEHIND") || !strings.Contains(r.stdout, "newest: file://"+a) {
		t.Fatalf("verify of a destination rolled back: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	dest := filepath.Join(t.TempDir(), "restored.sqlite3")
	r = mustRun(t, "restore", "--identity", idFile, "file://"+b, "file://"+a, dest)
	if !strings.Contains(r.stderr, "WARNING: file://"+b+" is BEHIND") || !strings.Contains(r.stderr, "versions behind") {
		t.Fatalf("restore from both does not name the one behind:\n%s", r.stderr)
	}
	t.Logf("restore from both:\n%s", r.stderr)
	if got := dumpOf(t, dest); got != corpus.FinalDumpSHA256() {
		t.Fatalf("restore from both: dump %s, want the newest's %s", got, corpus.FinalDumpSHA256())
	}

	// a's host alters one byte of a sealed change in the middle.
	data, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(data[len(data)/2:], []byte(lnvault.SealedPrefix)) + len(data)/2 + len(lnvault.SealedPrefix) + 100
	data[at]++
	if err := os.WriteFile(a, data, 0o600); err != nil {
		t.Fatal(err)
	}
	dest = filepath.Join(t.TempDir(), "x.sqlite3")
	r = runCLI(t, "restore", "--identity", idFile, "file://"+a, dest)
	assertOneLineError(t, r, "backup is corrupt")
	t.Logf("restore of an altered change: %s", r.stderr)
	if _, err := os.Stat(dest); err == nil {
		t.Fatal("a restore of an altered backup left a database")
	}
}
