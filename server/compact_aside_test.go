package server_test

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/server"
)

// gatedCompact holds Compact until release is closed.
type gatedCompact struct {
	lnvault.Backend
	started chan struct{}
	release chan struct{}
}

func (g *gatedCompact) Compact(ctx context.Context) (lnvault.CompactStats, error) {
	close(g.started)
	<-g.release
	return g.Backend.Compact(ctx)
}

// A client's compaction must not hold its appends: the socket backend sends
// COMPACT over a second connection (FeatureCompact), so Append goes on over
// the first while the server compacts. With COMPACT on the writer's own
// connection, these appends would wait for the whole compaction.
func TestClientCompactionDoesNotHoldAppends(t *testing.T) {
	ctx := context.Background()
	fb, err := lnvault.Open(ctx, "file://"+filepath.Join(t.TempDir(), "backup.dbak"), lnvault.OpenOptions{Create: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	g := &gatedCompact{Backend: fb, started: make(chan struct{}), release: make(chan struct{})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- server.New(server.Config{Logger: testLogger(t)}, g).Serve(sctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		fb.Close()
	}()

	c := openSocket(t, "socket:"+ln.Addr().String(), lnvault.OpenOptions{})
	changes := corpusChanges(t)[:400]
	for _, ch := range changes[:300] {
		if err := c.Append(ctx, ch); err != nil {
			t.Fatal(err)
		}
	}
	res := make(chan error, 1)
	var st lnvault.CompactStats
	go func() {
		var err error
		st, err = c.Compact(ctx)
		res <- err
	}()
	select {
	case <-g.started:
	case <-time.After(time.Minute):
		t.Fatal("the server never started compacting")
	}
	// The compaction is held: every append must still be acknowledged.
	appended := make(chan error, 1)
	go func() {
		for _, ch := range changes[300:] {
			if err := c.Append(ctx, ch); err != nil {
				appended <- err
				return
			}
		}
		appended <- nil
	}()
	select {
	case err := <-appended:
		if err != nil {
			t.Fatalf("append while the server compacts: %v", err)
		}
	case <-time.After(time.Minute):
		close(g.release)
		t.Fatal("appends waited for the compaction")
	}
	select {
	case err := <-res:
		t.Fatalf("compaction returned before the server finished it: %v", err)
	default:
	}
	close(g.release)
	if err := <-res; err != nil {
		t.Fatal(err)
	}
	if st.Before.VersionCount < 300 || st.After.VersionCount == 0 {
		t.Fatalf("stats %+v", st)
	}
	if m := c.Metadata(); m.Version != changes[399].Version {
		t.Fatalf("client metadata after compaction %+v", m)
	}
	r := openSocket(t, "socket:"+ln.Addr().String(), lnvault.OpenOptions{ReadOnly: true})
	if h, n := restoreHash(t, r); h != prefixHash(t, len(changes)) {
		t.Fatalf("restore after compaction: %s (%d changes)", h, n)
	}
}

// The Python reference server serves one connection at a time: a second
// connection is accepted by the kernel but never answered. Compact must then
// give up on the side connection (after its short HELLO timeout) and compact
// over the writer's connection, as the reference client does.
func TestClientCompactionFallsBackWhenSecondConnectionIsSilent(t *testing.T) {
	ts := startServer(t, server.Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// The first connection is relayed to the real server; later ones are
	// held open in silence.
	silent := make(chan net.Conn, 16)
	defer func() {
		ln.Close()
		for len(silent) > 0 {
			(<-silent).Close()
		}
	}()
	go func() {
		first := true
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !first {
				silent <- c
				continue
			}
			first = false
			up, err := net.Dial("tcp", ts.addr)
			if err != nil {
				c.Close()
				return
			}
			go func() { io.Copy(up, c); up.Close() }()
			go func() { io.Copy(c, up); c.Close() }()
		}
	}()
	ctx := context.Background()
	// A short client timeout: the side connection's silence must still mean
	// "no feature", not a failed compaction.
	c := openSocket(t, "socket:"+ln.Addr().String()+"?timeout=2s", lnvault.OpenOptions{})
	changes := corpusChanges(t)[:50]
	for _, ch := range changes {
		if err := c.Append(ctx, ch); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	st, err := c.Compact(ctx)
	if err != nil {
		t.Fatalf("compaction through the writer's connection: %v", err)
	}
	if took := time.Since(start); took < 1500*time.Millisecond || took > time.Minute {
		t.Fatalf("compaction took %v: the side connection should have been tried for its HELLO timeout first", took)
	}
	if st.Before.VersionCount != 50 {
		t.Fatalf("stats %+v", st)
	}
	// Known now: the next compaction goes straight to the writer's connection.
	start = time.Now()
	if _, err := c.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 1500*time.Millisecond {
		t.Fatalf("second compaction took %v: the silent side connection was tried again", took)
	}
	if err := c.Append(ctx, lnvault.NewTransaction(changes[49].Version+1, []string{"UPDATE vars SET intval = intval + 1 WHERE name = 'data_version'"})); err != nil {
		t.Fatal(err)
	}
}
