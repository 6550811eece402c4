package main

// `lnvault server --replicate s3://...` as a subprocess on a real S3 server
// (versitygw): the corpus through the plugin and the socket: backend, the
// replica restored after the lag drains, a SIGKILL of the server while it
// replicates, and the replication gauges on --metrics-addr.

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/backupplugin"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/harness"
	"github.com/lnvault/lnvault/internal/s3test"
	"github.com/lnvault/lnvault/replica"
)

// lockedBuf collects a subprocess's output.
type lockedBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// serverProc is a running `lnvault server`.
type serverProc struct {
	t           *testing.T
	cmd         *exec.Cmd
	log         *lockedBuf
	exited      chan struct{}
	code        int
	Addr        string // where it serves the backup
	MetricsAddr string // where it serves /metrics, if asked
}

var (
	listeningRe = regexp.MustCompile(`msg="backup server listening" .*addr=(\S+)`)
	metricsRe   = regexp.MustCompile(`msg="metrics listening" .*addr=(\S+)`)
)

// startServer runs `lnvault server args...` and waits until it listens
// (a restarted server may first wait for its dead predecessor's lease).
func startServer(t *testing.T, args ...string) *serverProc {
	t.Helper()
	cmd := exec.Command(lnvaultBin, append([]string{"server"}, args...)...)
	cmd.Env = append(os.Environ(), "LIGHTNINGD_PLUGIN=")
	p := &serverProc{t: t, cmd: cmd, log: &lockedBuf{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.log, p.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		cmd.Wait()
		p.code = cmd.ProcessState.ExitCode()
		close(p.exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.exited
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		out := p.log.String()
		if m := listeningRe.FindStringSubmatch(out); m != nil {
			p.Addr = m[1]
			if m := metricsRe.FindStringSubmatch(out); m != nil {
				p.MetricsAddr = m[1]
			}
			return p
		}
		select {
		case <-p.exited:
			t.Fatalf("lnvault server %v exited with %d before listening:\n%s", args, p.code, out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("lnvault server %v is not listening after 60s:\n%s", args, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *serverProc) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// stop sends SIGTERM and requires a clean exit.
func (p *serverProc) stop() {
	p.t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(60 * time.Second):
		p.t.Fatalf("server did not stop within 60s of SIGTERM:\n%s", p.log.String())
	}
	if p.code != 0 {
		p.t.Fatalf("server exited with %d after SIGTERM:\n%s", p.code, p.log.String())
	}
}

// scrape fetches /metrics and returns the lnvault_replica_* samples by
// metric name (the tests run one replica).
func (p *serverProc) scrape() map[string]float64 {
	p.t.Helper()
	if p.MetricsAddr == "" {
		p.t.Fatal("the server was started without --metrics-addr")
	}
	resp, err := http.Get("http://" + p.MetricsAddr + "/metrics")
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		p.t.Fatalf("/metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "lnvault_replica_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		name := line[:i]
		if j := strings.IndexByte(name, '{'); j >= 0 {
			if !strings.Contains(name[j:], `replica="s3://`) {
				p.t.Fatalf("sample without the replica label: %q", line)
			}
			name = name[:j]
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			p.t.Fatalf("bad sample %q: %v", line, err)
		}
		out[name] = v
	}
	if err := sc.Err(); err != nil {
		p.t.Fatal(err)
	}
	return out
}

// replicaHead opens the replica read-only (no lease) and returns its head.
func replicaHead(t *testing.T, u string) (lnvault.Metadata, []string) {
	t.Helper()
	ctx := context.Background()
	b, err := lnvault.Open(ctx, u, lnvault.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("opening the replica %s: %v", u, err)
	}
	defer b.Close()
	gens, err := b.(*replica.Backend).Client().Generations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return b.Metadata(), gens
}

// waitReplica polls the replica until its head is at version want.
func waitReplica(t *testing.T, u string, want uint32, srv *serverProc) lnvault.Metadata {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		md, _ := replicaHead(t, u)
		if md.Version == want {
			return md
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica still at %+v 60s later, want version %d; server log:\n%s", md, want, srv.log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// replayThroughPlugin runs the real plugin under the lightningd simulator
// with backup.lock naming backendURL and sends reqs (the first before init).
// progress, if not nil, is called with the number of acknowledged db_writes
// while the replay runs.
func replayThroughPlugin(t *testing.T, backendURL string, reqs []corpus.Request, progress func(int)) {
	t.Helper()
	h, err := harness.New(harness.Config{Bin: lnvaultBin, Dir: filepath.Join(t.TempDir(), "lightning"), NoNodeDB: true})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := backupplugin.WriteLock(h.NetDir(), backupplugin.Lock{BackendURL: backendURL}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := h.Start(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- h.Replay(ctx, reqs, 1) }()
	var replayErr error
	if progress != nil {
		tick := time.NewTicker(5 * time.Millisecond)
	watch:
		for {
			select {
			case replayErr = <-done:
				break watch
			case <-tick.C:
				progress(len(h.Latencies()))
			}
		}
		tick.Stop()
	} else {
		replayErr = <-done
	}
	if replayErr != nil {
		t.Fatalf("replay: %v\nplugin stderr:\n%s", replayErr, h.Stderr())
	}
	if code, err := h.Stop(ctx); err != nil || code != 0 {
		t.Fatalf("plugin exit %d: %v\nstderr:\n%s", code, err, h.Stderr())
	}
	if n := len(h.Latencies()); n != len(reqs) {
		t.Fatalf("%d db_writes acknowledged, want %d", n, len(reqs))
	}
}

// The corpus through the plugin into `lnvault server --replicate s3://...`
// (backup.lock names socket:HOST:PORT): once the replica caught up, a
// restore from S3 alone, while the server still runs, gives the corpus's
// final dump, and the metrics show no lag.
func TestServerReplicateCorpusToS3(t *testing.T) {
	ep, bkt := s3test.Start(t)
	dir := t.TempDir()
	u := s3test.URL(ep, bkt, "srv")
	srv := startServer(t, "file://"+filepath.Join(dir, "node.dbak"), "127.0.0.1:0", "--create",
		"--replicate", u, "--replicate-interval", "200ms", "--metrics-addr", "127.0.0.1:0")

	reqs := corpus.MustLoad()
	start := time.Now()
	replayThroughPlugin(t, "socket:"+srv.Addr, reqs, nil)
	last := reqs[len(reqs)-1].DataVersion
	md := waitReplica(t, u, last, srv)
	t.Logf("corpus through plugin → server → S3; replica caught up %v after the start: %+v", time.Since(start).Round(time.Millisecond), md)
	if md.VersionCount != uint64(len(reqs)) {
		t.Fatalf("replica holds %d changes, want %d", md.VersionCount, len(reqs))
	}
	m := srv.scrape()
	if m["lnvault_replica_lag_versions"] != 0 || m["lnvault_replica_version"] != float64(last) || m["lnvault_replica_upload_errors_total"] != 0 {
		t.Fatalf("metrics after the lag drained: %v", m)
	}

	dest := filepath.Join(dir, "restored.sqlite3")
	mustRun(t, "restore", u, dest)
	if got, want := dumpOf(t, dest), corpus.FinalDumpSHA256(); got != want {
		t.Fatalf("restore from the replica: dump %s, want the corpus's %s", got, want)
	}
	srv.stop()
}

// The server is SIGKILLed while the plugin writes to it and the replicator
// ships; restarted with the same flags, it takes the lease of its dead
// predecessor (same host, its pid gone) at once, resumes
// the replica's generation, the plugin's socket: client reconnects and the
// replay completes; the replica converges to the corpus's final dump.
func TestServerReplicateKilled(t *testing.T) {
	ep, bkt := s3test.Start(t)
	dir := t.TempDir()
	// A short lease: were the killed server's pid not known dead, its
	// lease would block the restarted one until it expires.
	u := s3test.URL(ep, bkt, "kill", "lease-ttl=2s")
	local := "file://" + filepath.Join(dir, "node.dbak")
	srv := startServer(t, local, "127.0.0.1:0", "--create", "--replicate", u, "--replicate-interval", "50ms")
	// Same flags, but the port the first run got.
	args := []string{local, srv.Addr, "--create", "--replicate", u, "--replicate-interval", "50ms"}

	reqs := corpus.MustLoad()
	var (
		killedAt = -1
		srv2     *serverProc
		atKill   lnvault.Metadata
	)
	replayThroughPlugin(t, "socket:"+srv.Addr+"?retries=30&retry_delay=200ms", reqs, func(acked int) {
		if killedAt >= 0 || acked < 1500 {
			return
		}
		// Mid-replay: a db_write is probably in flight, and the
		// replicator has changes queued.
		srv.kill()
		killedAt = acked
		atKill, _ = replicaHead(t, u)
		// The plugin keeps retrying its db_write meanwhile.
		srv2 = startServer(t, args...)
	})
	if killedAt < 0 {
		t.Fatal("the replay ended before the server was killed")
	}
	t.Logf("killed after %d acknowledged db_writes; the replica then held %+v", killedAt, atKill)
	if atKill.VersionCount == 0 || atKill.VersionCount >= uint64(len(reqs)) {
		t.Fatalf("replica at the kill: %+v, want a partial replica", atKill)
	}
	if !strings.Contains(srv2.log.String(), "held by a process of this host that is gone: taken over at once") {
		t.Errorf("the restarted server did not take the lease of its dead predecessor at once:\n%s", srv2.log.String())
	}

	last := reqs[len(reqs)-1].DataVersion
	md := waitReplica(t, u, last, srv2)
	_, gens := replicaHead(t, u)
	if md.VersionCount != uint64(len(reqs)) || len(gens) != 1 {
		t.Fatalf("replica %+v in generations %v; want %d changes in 1 generation (resumed, not restarted)", md, gens, len(reqs))
	}
	dest := filepath.Join(dir, "restored.sqlite3")
	mustRun(t, "restore", u, dest)
	if got, want := dumpOf(t, dest), corpus.FinalDumpSHA256(); got != want {
		t.Fatalf("restore from the replica after the kill: dump %s, want the corpus's %s", got, want)
	}
	srv2.stop()
}

// cutProxy forwards TCP connections to target until cut: then it closes
// every connection and refuses new ones (a network partition to S3).
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]struct{}
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	t.Cleanup(func() {
		ln.Close()
		p.setCut(true)
	})
	go p.serve()
	return p
}

func (p *cutProxy) Addr() string { return p.ln.Addr().String() }

func (p *cutProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *cutProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *cutProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			continue
		}
		go func() {
			defer p.untrack(c)
			up, err := net.Dial("tcp", p.target)
			if err != nil || !p.track(up) {
				return
			}
			defer p.untrack(up)
			go func() {
				io.Copy(up, c)
				up.Close()
			}()
			io.Copy(c, up)
		}()
	}
}

func (p *cutProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for c := range p.conns {
			c.Close()
		}
	}
}

// The replication gauges on --metrics-addr: zero lag once shipped; while S3
// is unreachable the node's changes are still acknowledged and the gauges
// show the lag in versions and seconds (growing) and the failed uploads;
// once S3 is back the lag drains to zero, the last upload time moves on, and
// the replica restores what the node wrote.
func TestServerReplicaMetrics(t *testing.T) {
	ep, bkt := s3test.Start(t)
	proxy := newCutProxy(t, strings.TrimPrefix(ep, "http://"))
	dir := t.TempDir()
	viaProxy := s3test.URL("http://"+proxy.Addr(), bkt, "metrics")
	direct := s3test.URL(ep, bkt, "metrics")
	srv := startServer(t, "file://"+filepath.Join(dir, "node.dbak"), "127.0.0.1:0", "--create",
		"--replicate", viaProxy, "--replicate-interval", "100ms", "--metrics-addr", "127.0.0.1:0")

	ctx := context.Background()
	cl, err := lnvault.Open(ctx, "socket:"+srv.Addr, lnvault.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	reqs := corpus.MustLoad()[:60]
	appendAll := func(rs []corpus.Request) {
		t.Helper()
		for _, r := range rs {
			if err := cl.Append(ctx, r.Change()); err != nil {
				t.Fatalf("append %d: %v", r.DataVersion, err)
			}
		}
	}
	// waitFor scrapes until ok, or fails with the last scrape.
	waitFor := func(what string, ok func(m map[string]float64) bool) map[string]float64 {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			m := srv.scrape()
			if ok(m) {
				return m
			}
			if time.Now().After(deadline) {
				t.Fatalf("metrics never showed %s; last: %v\nserver log:\n%s", what, m, srv.log.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	m := srv.scrape()
	for _, name := range []string{"lnvault_replica_lag_versions", "lnvault_replica_lag_seconds", "lnvault_replica_version",
		"lnvault_replica_pending_changes", "lnvault_replica_catching_up", "lnvault_replica_last_upload_timestamp_seconds", "lnvault_replica_upload_errors_total"} {
		if _, ok := m[name]; !ok {
			t.Fatalf("/metrics lacks %s: %v", name, m)
		}
	}

	appendAll(reqs[:20])
	v20 := reqs[19].DataVersion
	m = waitFor("the first 20 changes shipped", func(m map[string]float64) bool {
		return m["lnvault_replica_version"] == float64(v20) && m["lnvault_replica_lag_versions"] == 0 && m["lnvault_replica_lag_seconds"] == 0
	})
	firstUpload := m["lnvault_replica_last_upload_timestamp_seconds"]
	if firstUpload < float64(time.Now().Add(-time.Minute).Unix()) || m["lnvault_replica_upload_errors_total"] != 0 {
		t.Fatalf("after the first upload: %v", m)
	}

	// S3 unreachable: the node's changes are still acknowledged at once.
	proxy.setCut(true)
	cutAt := time.Now()
	appendAll(reqs[20:])
	v60 := reqs[59].DataVersion
	m = waitFor("failed uploads", func(m map[string]float64) bool { return m["lnvault_replica_upload_errors_total"] >= 1 })
	if m["lnvault_replica_version"] != float64(v20) || m["lnvault_replica_lag_versions"] != float64(v60-v20) || m["lnvault_replica_lag_seconds"] <= 0 {
		t.Fatalf("while S3 is unreachable: %v, want replica version %d and lag %d versions, >0 s", m, v20, v60-v20)
	}
	time.Sleep(300 * time.Millisecond)
	m2 := srv.scrape()
	if m2["lnvault_replica_lag_seconds"] <= m["lnvault_replica_lag_seconds"] || m2["lnvault_replica_lag_versions"] != float64(v60-v20) {
		t.Fatalf("the lag does not grow while S3 is unreachable: %v then %v", m, m2)
	}
	if max := time.Since(cutAt).Seconds(); m2["lnvault_replica_lag_seconds"] > max {
		t.Fatalf("lag %v s, but the oldest unshipped change is at most %v s old", m2["lnvault_replica_lag_seconds"], max)
	}

	proxy.setCut(false)
	reconnected := time.Now()
	m = waitFor("the lag drained", func(m map[string]float64) bool {
		return m["lnvault_replica_lag_versions"] == 0 && m["lnvault_replica_lag_seconds"] == 0 && m["lnvault_replica_catching_up"] == 0
	})
	if m["lnvault_replica_version"] != float64(v60) || m["lnvault_replica_last_upload_timestamp_seconds"] < float64(reconnected.Unix()) || m["lnvault_replica_upload_errors_total"] < 1 {
		t.Fatalf("after S3 came back: %v", m)
	}
	t.Logf("lag drained %v after S3 came back, after %v failed upload rounds", time.Since(reconnected).Round(time.Millisecond), m["lnvault_replica_upload_errors_total"])

	ref := filepath.Join(dir, "ref.sqlite3")
	replayCorpus(t, ref, v60)
	dest := filepath.Join(dir, "restored.sqlite3")
	mustRun(t, "restore", direct, dest)
	if got, want := dumpOf(t, dest), dumpOf(t, ref); got != want {
		t.Fatalf("restore from the replica: dump %s, want %s", got, want)
	}
	if err := cl.Close(); err != nil {
		t.Fatal(err)
	}
	srv.stop()
}

// A second server replicating to the prefix a live server writes waits one
// lease TTL for the lease (as after a crash), then refuses with one line
// naming the holder: a live writer renews its lease, so it is never taken.
func TestServerReplicateLockedByLiveWriter(t *testing.T) {
	ep, bkt := s3test.Start(t)
	dir := t.TempDir()
	u := s3test.URL(ep, bkt, "shared", "lease-ttl=1s")
	first := startServer(t, "file://"+filepath.Join(dir, "a.dbak"), "127.0.0.1:0", "--create", "--replicate", u)
	start := time.Now()
	r := runCLI(t, "server", "file://"+filepath.Join(dir, "b.dbak"), "127.0.0.1:0", "--create", "--replicate", u)
	waited := time.Since(start)
	if r.code == 0 || !strings.Contains(r.stderr, "lnvault: --replicate: s3://"+bkt+"/shared is being written by another lnvault") ||
		!strings.Contains(r.stderr, "waiting for its lease to expire") {
		t.Fatalf("second server: exit %d\n%s", r.code, r.stderr)
	}
	if waited < time.Second || waited > 20*time.Second {
		t.Fatalf("the second server gave up after %v, want about lease-ttl + 5s", waited)
	}
	// The first one still writes its replica.
	cl, err := lnvault.Open(context.Background(), "socket:"+first.Addr, lnvault.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range corpus.MustLoad()[:10] {
		if err := cl.Append(context.Background(), q.Change()); err != nil {
			t.Fatal(err)
		}
	}
	cl.Close()
	waitReplica(t, u, corpus.MustLoad()[9].DataVersion, first)
	first.stop()
}
