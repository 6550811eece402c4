package server_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/backendtest"
	"github.com/lnvault/lnvault/server"
	"github.com/lnvault/lnvault/socket"
)

// socket: to lnvault server keeps the Backend contract, also across restarts
// of the server: every writer's open after the first restarts it on its
// address, so the server's store must have kept what it acknowledged.
func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backendtest.Subject {
		ts := startServer(t, server.Config{})
		opened := false
		return backendtest.Subject{Open: func(ctx context.Context, o lnvault.OpenOptions) (lnvault.Backend, error) {
			if !o.ReadOnly {
				if opened {
					restartServer(t, ts, nil)
				}
				opened = true
			}
			o.Logger = testLogger(t)
			return socket.Open(ctx, ts.url(""), o)
		}}
	})
}

// restartServer stops ts and serves its backup file again on the same
// address, as a restarted `lnvault server` would; wrap, if not nil, wraps
// the reopened store.
func restartServer(t *testing.T, ts *testServer, wrap func(lnvault.Backend) lnvault.Backend) {
	t.Helper()
	ts.stop(t)
	var b lnvault.Backend
	b, err := lnvault.Open(context.Background(), ts.fileURL, lnvault.OpenOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("reopening the server's store: %v", err)
	}
	if wrap != nil {
		b = wrap(b)
	}
	var ln net.Listener
	for try := 0; ; try++ {
		if ln, err = net.Listen("tcp", ts.addr); err == nil || try == 50 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts.srv = server.New(server.Config{Logger: testLogger(t)}, b)
	ts.b, ts.cancel, ts.done = b, cancel, make(chan error, 1)
	go func() { ts.done <- ts.srv.Serve(ctx, ln) }()
}
