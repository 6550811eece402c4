package server_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/testnet"
	"github.com/lnvault/lnvault/server"
)

func openFileRO(t testing.TB, url string) lnvault.Backend {
	t.Helper()
	b, err := lnvault.Open(context.Background(), url, lnvault.OpenOptions{ReadOnly: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// procServer is `lnvault server` on a fixed loopback port, so that a
// restarted one is found where the client left the dead one.
type procServer struct {
	fileURL, addr string
}

func newProcServer(t testing.TB) procServer {
	return procServer{
		fileURL: "file://" + filepath.Join(t.TempDir(), "backup.dbak"),
		addr:    fmt.Sprintf("127.0.0.1:%d", freePort(t)),
	}
}

// start runs the server (creating the backup the first time) and waits
// until it listens.
func (ps procServer) start(t testing.TB) *serverProc {
	p := startProc(t, "server", "--create", ps.fileURL, ps.addr)
	waitListening(t, ps.addr, p)
	return p
}

// The real server binary is SIGKILLed twice mid-replay and restarted on the
// same port: the client reconnects, and the backup holds every change
// exactly once.
func TestServerKilledAndRestarted(t *testing.T) {
	ps := newProcServer(t)
	fileURL, addr := ps.fileURL, ps.addr
	start := func() *serverProc { return ps.start(t) }
	p := start()
	ctx := context.Background()
	c := openSocket(t, "socket:"+addr+"?retries=40&retry_delay=50ms&timeout=10s", lnvault.OpenOptions{})
	changes := corpusChanges(t)[:1500]
	kills := map[int]bool{400: true, 1000: true}
	var restarted sync.WaitGroup
	for i, ch := range changes {
		if kills[i] {
			// Kill from beside the writer, while appends are in flight.
			restarted.Add(1)
			old := p
			go func() {
				defer restarted.Done()
				time.Sleep(15 * time.Millisecond)
				old.cmd.Process.Signal(syscall.SIGKILL)
				old.cmd.Wait()
				time.Sleep(200 * time.Millisecond)
			}()
			restarted.Wait()
			p = start()
		}
		if err := c.Append(ctx, ch); err != nil {
			t.Fatalf("append %d: %v\nserver stderr:\n%s", ch.Version, err, p.stderr.String())
		}
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("server exit: %v\n%s", err, p.stderr.String())
	}
	checkExact(t, openFileRO(t, fileURL), changes)
}

// SIGTERM while a client writes: every change that was ACKed is in the
// file, the server exits 0.
func TestGracefulShutdownSIGTERM(t *testing.T) {
	ps := newProcServer(t)
	fileURL, addr := ps.fileURL, ps.addr
	p := ps.start(t)
	ctx := context.Background()
	c := openSocket(t, "socket:"+addr+"?retries=0&timeout=5s", lnvault.OpenOptions{})
	changes := corpusChanges(t)
	var ackedN atomic.Int64
	var lastErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, ch := range changes {
			if err := c.Append(ctx, ch); err != nil {
				lastErr = err
				return
			}
			ackedN.Add(1)
		}
	}()
	for ackedN.Load() < 100 {
		time.Sleep(time.Millisecond)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	waitErr := p.cmd.Wait()
	<-done
	acked := int(ackedN.Load())
	t.Logf("acked %d changes; the client then saw: %v", acked, lastErr)
	if waitErr != nil {
		t.Fatalf("server exit: %v\n%s", waitErr, p.stderr.String())
	}
	if acked == 0 || acked == len(changes) {
		t.Fatalf("acked %d of %d: the shutdown did not happen mid-stream", acked, len(changes))
	}
	// Everything acknowledged is there; at most the one in flight beyond.
	b := openFileRO(t, fileURL)
	m := b.Metadata()
	if m.VersionCount < uint64(acked) || m.VersionCount > uint64(acked)+1 {
		t.Fatalf("backup holds %d changes, %d were acknowledged", m.VersionCount, acked)
	}
	checkExact(t, b, changes[:m.VersionCount])
	if !strings.Contains(p.stderr.String(), "shutting down") {
		t.Errorf("no shutdown log:\n%s", p.stderr.String())
	}
}

func TestServerCommandErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"server", "file://" + filepath.Join(dir, "x.dbak"), "0.0.0.0:0"}, "--allow-unauthenticated"},
		{[]string{"server", "file://" + filepath.Join(dir, "none.dbak"), "127.0.0.1:0"}, "pass --create"},
		{[]string{"server", "nope://x", "127.0.0.1:0"}, "unsupported backup URL"},
		{[]string{"server", "file://" + filepath.Join(dir, "x.dbak"), "127.0.0.1"}, "listen address"},
	} {
		p := startProc(t, tc.args...)
		err := p.cmd.Wait()
		out := p.stderr.String()
		if err == nil || !strings.Contains(out, tc.want) || !strings.HasPrefix(out, "lnvault: ") {
			t.Errorf("%v: exit %v, stderr %q; want %q", tc.args, err, out, tc.want)
		}
	}
}

// socks5Proxy is a minimal SOCKS5 server (no auth, CONNECT only) that maps
// host names through a table, as Tor resolves .onion names itself.
type socks5Proxy struct {
	ln    net.Listener
	hosts map[string]string
	mu    sync.Mutex
	seen  []string // requested destinations, as the client sent them
}

func startSOCKS5(t testing.TB, hosts map[string]string) *socks5Proxy {
	p := &socks5Proxy{hosts: hosts}
	p.ln = testnet.Serve(t, "tcp", "127.0.0.1:0", p.handle)
	return p
}

func (p *socks5Proxy) handle(c net.Conn) {
	buf := make([]byte, 262)
	if _, err := io.ReadFull(c, buf[:2]); err != nil || buf[0] != 5 {
		return
	}
	if _, err := io.ReadFull(c, buf[:buf[1]]); err != nil {
		return
	}
	c.Write([]byte{5, 0}) // no authentication
	if _, err := io.ReadFull(c, buf[:4]); err != nil || buf[1] != 1 {
		return
	}
	var host string
	switch buf[3] {
	case 1:
		io.ReadFull(c, buf[:4])
		host = net.IP(buf[:4]).String()
	case 3:
		io.ReadFull(c, buf[:1])
		n := int(buf[0])
		io.ReadFull(c, buf[:n])
		host = string(buf[:n])
	case 4:
		io.ReadFull(c, buf[:16])
		host = net.IP(buf[:16]).String()
	default:
		return
	}
	io.ReadFull(c, buf[:2])
	port := binary.BigEndian.Uint16(buf[:2])
	p.mu.Lock()
	p.seen = append(p.seen, fmt.Sprintf("%s:%d", host, port))
	p.mu.Unlock()
	if mapped, ok := p.hosts[host]; ok {
		host = mapped
	}
	up, err := net.Dial("tcp", net.JoinHostPort(host, fmt.Sprint(port)))
	if err != nil {
		c.Write([]byte{5, 4, 0, 1, 0, 0, 0, 0, 0, 0}) // host unreachable
		return
	}
	defer up.Close()
	c.Write([]byte{5, 0, 0, 1, 127, 0, 0, 1, 0, 0})
	go io.Copy(up, c)
	io.Copy(c, up)
}

// The server reached by host name through a SOCKS5 proxy that resolves the
// name itself (as Tor does for .onion).
func TestSOCKS5(t *testing.T) {
	ts := startServer(t, server.Config{})
	_, port, _ := net.SplitHostPort(ts.addr)
	px := startSOCKS5(t, map[string]string{"backup.test": "127.0.0.1"})
	url := fmt.Sprintf("socket:backup.test:%s?proxy=socks5:%s", port, px.ln.Addr())
	ctx := context.Background()
	c := openSocket(t, url, lnvault.OpenOptions{})
	changes := corpusChanges(t)[:100]
	for _, ch := range changes {
		if err := c.Append(ctx, ch); err != nil {
			t.Fatal(err)
		}
	}
	checkExact(t, c, changes) // Stream goes through the proxy too
	px.mu.Lock()
	seen := append([]string(nil), px.seen...)
	px.mu.Unlock()
	if len(seen) < 2 || seen[0] != "backup.test:"+port {
		t.Fatalf("proxy saw %v: the name must be resolved by the proxy", seen)
	}
	// Without the proxy the name does not resolve.
	if _, err := lnvault.Open(ctx, fmt.Sprintf("socket:backup.test:%s?connect_timeout=2s&retries=0", port), lnvault.OpenOptions{Logger: testLogger(t)}); err == nil {
		t.Fatal("backup.test resolved without the proxy")
	}
	// A dead proxy is a clear error naming it.
	_, err := lnvault.Open(ctx, fmt.Sprintf("socket:backup.test:%s?proxy=socks5:127.0.0.1:%d", port, freePort(t)), lnvault.OpenOptions{Logger: testLogger(t)})
	if err == nil || !strings.Contains(err.Error(), "SOCKS5 proxy") {
		t.Fatalf("dead proxy: %v", err)
	}
}

// The real server is SIGKILLed many times, each after a random stretch of
// appends (LNVAULT_LONG=1: 100 kills), so some kills land between receiving
// a change and acknowledging it, some after storing it: through every
// restart the client reconnects and tells stored from unstored changes, and
// the backup ends holding the whole replay exactly once, in order.
func TestServerKilledAtRandom(t *testing.T) {
	kills := 12
	if os.Getenv("LNVAULT_LONG") == "1" {
		kills = 100
	}
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))

	ps := newProcServer(t)
	fileURL, addr := ps.fileURL, ps.addr
	cur := ps.start(t)
	c := openSocket(t, "socket:"+addr+"?retries=60&retry_delay=20ms&timeout=10s", lnvault.OpenOptions{})
	changes := corpusChanges(t)
	appended, errc := appendInBackground(c, changes)
	done := 0
	for ; done < kills && appended.Load() < int64(len(changes)); done++ {
		// After 1-25 more acknowledged appends, and a random part of one
		// append's time more, so the kill lands anywhere in an append.
		// Counted in appends, not time, so every kill happens within the
		// replay however fast the disk is (100 × 25 < 2,994).
		at := appended.Load() + 1 + int64(rng.IntN(25))
		for appended.Load() < at && len(errc) == 0 {
			time.Sleep(100 * time.Microsecond)
		}
		time.Sleep(time.Duration(rng.IntN(1000)) * time.Microsecond)
		cur.cmd.Process.Signal(syscall.SIGKILL)
		cur.cmd.Wait()
		cur = ps.start(t)
	}
	if err := <-errc; err != nil {
		t.Fatalf("after %d kills: %v\nstderr:\n%s", done, err, cur.stderr.String())
	}
	if done != kills {
		t.Fatalf("only %d of %d kills happened before the replay ended", done, kills)
	}
	t.Logf("%d kills during %d appends", done, len(changes))
	cur.cmd.Process.Signal(syscall.SIGTERM)
	cur.cmd.Wait()
	checkExact(t, openFileRO(t, fileURL), changes)
}
