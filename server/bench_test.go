package server_test

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/backends"
	"github.com/lnvault/lnvault/internal/harness"
	"github.com/lnvault/lnvault/server"
	"github.com/lnvault/lnvault/wire"
	"golang.org/x/sys/unix"
)

// refEchoEnv makes the test binary a reference echo process (see TestMain):
// its value is the directory of the file the echo appends to.
const refEchoEnv = "LNVAULT_REF_ECHO_DIR"

func TestMain(m *testing.M) {
	backends.Register()
	if dir := os.Getenv(refEchoEnv); dir != "" {
		if err := runRefEcho(dir); err != nil {
			fmt.Fprintln(os.Stderr, "reference echo:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runRefEcho listens on loopback, prints its address, and serves one
// connection as serveRefEcho does.
func runRefEcho(dir string) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr().String())
	return serveRefEcho(ln, dir)
}

// serveRefEcho is the floor an Append cannot beat: it reads packets framed
// like the protocol's, appends each payload to a file, fdatasyncs it and
// answers 4 bytes. It serves one connection, until the client closes it.
func serveRefEcho(ln net.Listener, dir string) error {
	f, err := os.OpenFile(filepath.Join(dir, "ref.dat"), os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		ln.Close()
		return err
	}
	defer f.Close()
	c, err := ln.Accept()
	ln.Close()
	if err != nil {
		return err
	}
	defer c.Close()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true) // as the server does
	}
	var hdr [5]byte
	buf := make([]byte, 0, 1<<16)
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		n := binary.BigEndian.Uint32(hdr[1:])
		buf = slices.Grow(buf[:0], int(n))[:n]
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		if _, err := f.Write(buf); err != nil {
			return err
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			return err
		}
		if _, err := c.Write(hdr[1:]); err != nil {
			return err
		}
	}
}

// startRefEchoProc runs the reference echo in its own process, as the
// server runs in deployment, and connects to it.
func startRefEchoProc(b *testing.B, dir string) net.Conn {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), refEchoEnv+"="+dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		b.Fatalf("reference echo did not start: %v", err)
	}
	c := dialRef(b, strings.TrimSpace(addr))
	b.Cleanup(func() {
		// Closing the connection ends the echo; a failure it met shows as
		// its exit status.
		c.Close()
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		select {
		case err := <-exited:
			if err != nil {
				b.Errorf("reference echo: %v", err)
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
			b.Error("reference echo did not exit after its connection closed")
		}
	})
	return c
}

// startRefEcho runs the reference echo in this process.
func startRefEcho(b *testing.B, dir string) net.Conn {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- serveRefEcho(ln, dir) }()
	c := dialRef(b, ln.Addr().String())
	b.Cleanup(func() {
		c.Close()
		if err := <-done; err != nil {
			b.Errorf("reference echo: %v", err)
		}
	})
	return c
}

func dialRef(b *testing.B, addr string) net.Conn {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	c.(*net.TCPConn).SetNoDelay(true)
	return c
}

// BenchmarkAckLatency measures Append through socket: → server → file
// backend (fdatasync) over loopback, as p50/p99 ratios to a reference
// (loopback round trip + fdatasync of the same bytes, by a process as
// placed as the server) measured in the same run, interleaved change by
// change. Goal: ≤ 1.3×.
//
// "process" is the deployed shape: the real `lnvault server` binary and the
// reference echo each run as their own process. "inprocess" runs both in
// the benchmark's process, where the client and the server share one Go
// runtime: the server's work after an ACK (lnvault.Idler) then competes
// with the client's wake-up, which no deployment has.
func BenchmarkAckLatency(b *testing.B) {
	// Run one with -bench 'AckLatency/^process$' (a bare "process" also
	// matches "inprocess").
	b.Run("process", func(b *testing.B) {
		fileURL := "file://" + filepath.Join(b.TempDir(), "backup.dbak")
		addr := fmt.Sprintf("127.0.0.1:%d", freePort(b))
		p := startProc(b, "server", "--create", fileURL, addr)
		waitListening(b, addr, p)
		benchAckLatency(b, "socket:"+addr, startRefEchoProc(b, b.TempDir()))
	})
	b.Run("inprocess", func(b *testing.B) {
		ts := startServer(b, server.Config{})
		benchAckLatency(b, ts.url(""), startRefEcho(b, b.TempDir()))
	})
}

func benchAckLatency(b *testing.B, url string, ref net.Conn) {
	ctx := context.Background()
	c := openSocket(b, url, lnvault.OpenOptions{})
	changes := corpusChanges(b)

	// The packets the reference sends are the Append's own encodings: to a
	// loopback server the client sends stored zlib blocks (compress=auto).
	packets := make([][]byte, len(changes))
	var buf bytes.Buffer
	pw, _ := wire.NewWriterLevel(&buf, zlib.NoCompression)
	for i, ch := range changes {
		buf.Reset()
		pw.WriteChange(ch)
		packets[i] = bytes.Clone(buf.Bytes())
	}
	// The file backend alone, to tell the storage's share from the wire's.
	direct, err := lnvault.Open(ctx, "file://"+filepath.Join(b.TempDir(), "direct.dbak"), lnvault.OpenOptions{Create: true, Logger: testLogger(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer direct.Close()
	var ack [4]byte
	var app, refl, dir []time.Duration
	version := uint32(0)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		k := i % len(changes)
		version++
		ch := lnvault.NewTransaction(version, changes[k].Statements)
		// The three take turns at going first: what ran just before shifts
		// the latency of the next fdatasync and round trip on this VM.
		for j := range 3 {
			switch (i + j) % 3 {
			case 0:
				t0 := time.Now()
				if err := c.Append(ctx, ch); err != nil {
					b.Fatal(err)
				}
				app = append(app, time.Since(t0))
			case 1:
				t0 := time.Now()
				if _, err := ref.Write(packets[k]); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(ref, ack[:]); err != nil {
					b.Fatal(err)
				}
				refl = append(refl, time.Since(t0))
			case 2:
				t0 := time.Now()
				if err := direct.Append(ctx, ch); err != nil {
					b.Fatal(err)
				}
				dir = append(dir, time.Since(t0))
			}
		}
	}
	b.StopTimer()
	harness.ReportRatios(b, app, refl, "ref")
	fs := harness.Summarize(dir)
	b.ReportMetric(float64(fs.P50.Microseconds()), "file-only-p50-µs")
	b.ReportMetric(float64(fs.P99.Microseconds()), "file-only-p99-µs")
}
