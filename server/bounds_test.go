package server_test

import (
	"context"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/server"
	"github.com/lnvault/lnvault/wire"
)

// A connection that is not the writer sends a change that inflates to
// 128 MiB (twice the default change limit) while the writer writes: it is
// refused from its header (NACK) without being inflated, and the writer is
// served meanwhile. It used to be inflated up to the limit (64 MiB held)
// before the writer rule refused it.
func TestNonWriterChangeNotInflated(t *testing.T) {
	ts := startServer(t, server.Config{})
	ctx := context.Background()
	w := openSocket(t, ts.url(""), lnvault.OpenOptions{})
	changes := corpusChanges(t)[:200]
	for _, c := range changes[:100] {
		if err := w.Append(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	bomb := rawPacket(0x01, append([]byte{0, 0, 0, 101}, zlibBomb(t, 128<<20)...))
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range 3 {
		conn, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		go conn.Write(bomb)
		p, err := wire.NewReader(conn, wire.Limits{}).Next()
		conn.Close()
		if err != nil || p.Type != wire.TypeNack {
			t.Fatalf("the non-writer's change was answered %v, %v; want NACK", p.Type, err)
		}
	}
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 16<<20 {
		t.Fatalf("refusing three bombs allocated %d MiB: they were inflated", grew>>20)
	}
	for _, c := range changes[100:] {
		if err := w.Append(ctx, c); err != nil {
			t.Fatalf("the writer after the bombs: %v", err)
		}
	}
	checkExact(t, ts.b, changes)
}

// Connections beyond MaxConns are closed at once; the writer keeps being
// served, and a slot freed is taken again.
func TestConnectionCap(t *testing.T) {
	ts := startServer(t, server.Config{MaxConns: 5})
	ctx := context.Background()
	w := openSocket(t, ts.url(""), lnvault.OpenOptions{})
	changes := corpusChanges(t)[:40]
	if err := w.Append(ctx, changes[0]); err != nil {
		t.Fatal(err)
	}
	var idle []net.Conn
	for range 4 {
		c, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
		defer c.Close()
	}
	// The server counts a connection once it has accepted it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, rerr := c.Read(make([]byte, 1))
		c.Close()
		if rerr != nil && !isTimeout(rerr) {
			break // closed by the server: the cap holds
		}
		if time.Now().After(deadline) {
			t.Fatal("a sixth connection was kept open")
		}
	}
	for _, c := range changes[1:20] {
		if err := w.Append(ctx, c); err != nil {
			t.Fatalf("the writer at the cap: %v", err)
		}
	}
	idle[0].Close()
	time.Sleep(100 * time.Millisecond)
	r := openSocket(t, ts.url(""), lnvault.OpenOptions{ReadOnly: true})
	if _, err := r.Status(ctx); err != nil {
		t.Fatalf("a connection after a slot was freed: %v", err)
	}
	for _, c := range changes[20:] {
		if err := w.Append(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	checkExact(t, ts.b, changes)
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
