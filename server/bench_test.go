package server_test

import (
	"bytes"
	"compress/zlib"
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/harness"
	"github.com/lnvault/lnvault/server"
	"github.com/lnvault/lnvault/wire"
	"golang.org/x/sys/unix"
)

// refEcho is the floor an Append cannot beat: send the same bytes over a
// loopback TCP connection, have the other side append them to a file and
// fdatasync it, and answer 4 bytes.
type refEcho struct {
	client net.Conn
	done   chan struct{}
}

func startRefEcho(b *testing.B, dir string) *refEcho {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "ref.dat"), os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	r := &refEcho{done: make(chan struct{})}
	go func() {
		defer close(r.done)
		defer f.Close()
		c, err := ln.Accept()
		ln.Close()
		if err != nil {
			return
		}
		defer c.Close()
		var hdr [5]byte
		buf := make([]byte, 0, 1<<16)
		for {
			if _, err := io.ReadFull(c, hdr[:]); err != nil {
				return
			}
			n := binary.BigEndian.Uint32(hdr[1:])
			buf = slices.Grow(buf[:0], int(n))[:n]
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			f.Write(buf)
			unix.Fdatasync(int(f.Fd()))
			c.Write(hdr[1:])
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	r.client = c
	return r
}

// BenchmarkAckLatency measures Append through socket: → server → file
// backend (fdatasync) over loopback, as p50/p99 ratios to a reference
// (loopback round trip + fdatasync of the same bytes) measured in the same
// run. Goal: ≤ 1.3×.
func BenchmarkAckLatency(b *testing.B) {
	ts := startServer(b, server.Config{})
	ctx := context.Background()
	c := openSocket(b, ts.url(""), lnvault.OpenOptions{})
	changes := corpusChanges(b)
	ref := startRefEcho(b, b.TempDir())
	defer func() { ref.client.Close(); <-ref.done }()

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
		t0 := time.Now()
		if err := c.Append(ctx, ch); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := ref.client.Write(packets[k]); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(ref.client, ack[:]); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		if err := direct.Append(ctx, ch); err != nil {
			b.Fatal(err)
		}
		t3 := time.Now()
		app = append(app, t1.Sub(t0))
		refl = append(refl, t2.Sub(t1))
		dir = append(dir, t3.Sub(t2))
	}
	b.StopTimer()
	harness.ReportRatios(b, app, refl, "ref")
	b.ReportMetric(float64(harness.Summarize(dir).P50.Microseconds()), "file-only-p50-µs")
}
