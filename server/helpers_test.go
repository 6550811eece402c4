package server_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/dbapply"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/dumphash"
	"github.com/lnvault/lnvault/internal/harness"
	"github.com/lnvault/lnvault/server"
	"github.com/lnvault/lnvault/socket"
)

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("LNVAULT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type testServer struct {
	srv     *server.Server
	b       lnvault.Backend
	fileURL string
	addr    string
	done    chan error
	cancel  context.CancelFunc
}

// startServer serves a new file backup on 127.0.0.1 in-process.
func startServer(t testing.TB, cfg server.Config) *testServer {
	t.Helper()
	return startServerOn(t, cfg, "tcp", "127.0.0.1:0")
}

func startServerOn(t testing.TB, cfg server.Config, network, laddr string) *testServer {
	t.Helper()
	dir := t.TempDir()
	fileURL := "file://" + filepath.Join(dir, "backup.dbak")
	b, err := lnvault.Open(context.Background(), fileURL, lnvault.OpenOptions{Create: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	ln, err := net.Listen(network, laddr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{srv: server.New(cfg, b), b: b, fileURL: fileURL, addr: ln.Addr().String(), done: make(chan error, 1), cancel: cancel}
	go func() { ts.done <- ts.srv.Serve(ctx, ln) }()
	t.Cleanup(func() { ts.stop(t) })
	return ts
}

func (ts *testServer) stop(t testing.TB) {
	if ts.cancel == nil {
		return
	}
	ts.cancel()
	ts.cancel = nil
	select {
	case err := <-ts.done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Error("server did not shut down")
	}
	ts.b.Close()
}

func (ts *testServer) url(params string) string {
	u := "socket:" + ts.addr
	if params != "" {
		u += "?" + params
	}
	return u
}

func openSocket(t testing.TB, url string, opts lnvault.OpenOptions) *socket.Backend {
	t.Helper()
	opts.Logger = testLogger(t)
	b, err := socket.Open(context.Background(), url, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func corpusChanges(t testing.TB) []*lnvault.Change {
	t.Helper()
	cs, err := corpus.Changes()
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// appendInBackground appends changes in order from a goroutine. The
// counter says how many were acknowledged so far; the channel gets nil after
// the last, or the first error.
func appendInBackground(c lnvault.Backend, changes []*lnvault.Change) (*atomic.Int64, <-chan error) {
	var appended atomic.Int64
	errc := make(chan error, 1)
	go func() {
		for _, ch := range changes {
			if err := c.Append(context.Background(), ch); err != nil {
				errc <- fmt.Errorf("append %d: %w", ch.Version, err)
				return
			}
			appended.Add(1)
		}
		errc <- nil
	}()
	return &appended, errc
}

// restoreHash streams b into a new SQLite file and returns the dump hash and
// the changes seen.
func restoreHash(t testing.TB, b lnvault.Backend) (string, int) {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "restored.sqlite3")
	a, err := dbapply.Create(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	if err := b.Stream(ctx, 0, func(c *lnvault.Change) error { n++; return a.Apply(ctx, c) }); err != nil {
		a.Close(ctx)
		t.Fatal(err)
	}
	if err := a.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	h, err := dumphash.Of(path)
	if err != nil {
		t.Fatal(err)
	}
	return h, n
}

// streamVersions lists the versions a backend streams.
func streamVersions(t testing.TB, b lnvault.Backend) []uint32 {
	t.Helper()
	var vs []uint32
	if err := b.Stream(context.Background(), 0, func(c *lnvault.Change) error { vs = append(vs, c.Version); return nil }); err != nil {
		t.Fatal(err)
	}
	return vs
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// lnvaultBinary builds the real command once per test run.
func lnvaultBinary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "lnvault-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath, binErr = harness.BuildLnvault(dir)
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// serverProc is `lnvault server` as a subprocess.
type serverProc struct {
	cmd    *exec.Cmd
	stderr *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func startProc(t testing.TB, args ...string) *serverProc {
	t.Helper()
	cmd := exec.Command(lnvaultBinary(t), args...)
	p := &serverProc{cmd: cmd, stderr: &lockedBuffer{}}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return p
}

// waitListening waits until addr accepts connections.
func waitListening(t testing.TB, addr string, p *serverProc) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("server on %s never listened; stderr:\n%s", addr, p.stderr.String())
}

var (
	prefixMu     sync.Mutex
	prefixHashes = map[int]string{}
)

// prefixHash is the dump hash of the first n corpus changes applied directly.
func prefixHash(t testing.TB, n int) string {
	t.Helper()
	prefixMu.Lock()
	defer prefixMu.Unlock()
	if h, ok := prefixHashes[n]; ok {
		return h
	}
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "direct.sqlite3")
	a, err := dbapply.Create(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range corpusChanges(t)[:n] {
		if err := a.Apply(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	h, err := dumphash.Of(path)
	if err != nil {
		t.Fatal(err)
	}
	prefixHashes[n] = h
	return h
}

// checkExact asserts that b streams exactly changes, in order: nothing lost,
// nothing duplicated.
func checkExact(t testing.TB, b lnvault.Backend, changes []*lnvault.Change) {
	t.Helper()
	i := 0
	err := b.Stream(context.Background(), 0, func(c *lnvault.Change) error {
		if i >= len(changes) {
			return fmt.Errorf("extra change version %d after the %d expected", c.Version, len(changes))
		}
		w := changes[i]
		if c.Version != w.Version || c.Kind != w.Kind || strings.Join(c.Statements, "\x00") != strings.Join(w.Statements, "\x00") {
			return fmt.Errorf("change %d: got version %d (%d statements), want version %d (%d statements)", i, c.Version, len(c.Statements), w.Version, len(w.Statements))
		}
		i++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if i != len(changes) {
		t.Fatalf("streamed %d changes, want %d", i, len(changes))
	}
}
