package server_test

import (
	"context"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/netfault"
	"github.com/lnvault/lnvault/server"
)

// The writer's connection goes half-open (toxiproxy drops the server's ACK
// and holds the close of the client's side from the server, as a NAT that
// forgot the connection does): the client times out, reconnects, finds its
// change stored, and its next change must be accepted on the new connection.
// It used to be refused as a second writer (final: the node stops) until
// TCP keepalive closed the old connection, about 30 s later.
func TestHalfOpenWriterTakenOver(t *testing.T) {
	ts := startServer(t, server.Config{})
	px := netfault.Start(t, ts.addr)
	ctx := context.Background()
	changes := corpusChanges(t)[:20]
	url := "socket:" + px.Addr() + "?timeout=400ms&retries=3&retry_delay=2s"
	c := openSocket(t, url, lnvault.OpenOptions{Create: true})
	for _, ch := range changes[:10] {
		if err := c.Append(ctx, ch); err != nil {
			t.Fatal(err)
		}
	}
	// The old connection: its close never reaches the server, its ACKs
	// never reach the client.
	if err := px.Add(netfault.Toxic{Name: "halfopen", Type: "slow_close", Stream: netfault.Up, Attrs: map[string]any{"delay": 120_000}}); err != nil {
		t.Fatal(err)
	}
	if err := px.Add(netfault.Toxic{Name: "blackhole", Type: "timeout", Stream: netfault.Down, Attrs: map[string]any{"timeout": 0}}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- c.Append(ctx, changes[10]) }()
	// Once the client gave up on the old connection (400 ms), and before it
	// reconnects (2 s after), answers flow again: for the new connection.
	deadline := time.Now().Add(5 * time.Second)
	for ts.b.Metadata().Version != changes[10].Version && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(time.Until(start.Add(1200 * time.Millisecond)))
	if err := px.Remove("blackhole"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("the change whose ACK was lost: %v", err)
	}
	for _, ch := range changes[11:] {
		if err := c.Append(ctx, ch); err != nil {
			t.Fatalf("append %d after the reconnection (the old connection is half-open): %v", ch.Version, err)
		}
	}
	checkExact(t, ts.b, changes)
}
