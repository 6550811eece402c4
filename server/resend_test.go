package server_test

import (
	"context"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/server"
)

// slowBackend delays the Append of one version: a disk that stalls.
type slowBackend struct {
	lnvault.Backend
	slowVersion uint32
	delay       time.Duration
	hits        atomic.Int32
}

func (s *slowBackend) Append(ctx context.Context, c *lnvault.Change) error {
	if c.Version == s.slowVersion && s.hits.Add(1) == 1 {
		time.Sleep(s.delay)
	}
	return s.Backend.Append(ctx, c)
}

// A client that times out on a stalled append reconnects and asks for the
// server's head while the old connection's append is still running: it must
// not send the change a second time, and the server must not store it twice
// (it used to: versions 1 2 2, and a restore that replays it twice).
func TestResendAfterTimeoutStoredOnce(t *testing.T) {
	ts := startServer(t, server.Config{})
	ctx := context.Background()
	changes := corpusChanges(t)[:30]
	slow := changes[20].Version
	// Serve the file through a backend that stalls on one version.
	restartServer(t, ts, func(b lnvault.Backend) lnvault.Backend {
		return &slowBackend{Backend: b, slowVersion: slow, delay: 1500 * time.Millisecond}
	})
	c := openSocket(t, ts.url("timeout=300ms&retries=10&retry_delay=50ms"), lnvault.OpenOptions{Create: true})
	for _, ch := range changes {
		if err := c.Append(ctx, ch); err != nil {
			t.Fatalf("append %d: %v", ch.Version, err)
		}
	}
	time.Sleep(2 * time.Second) // let any late append land
	r := openSocket(t, ts.url(""), lnvault.OpenOptions{ReadOnly: true})
	var got []string
	err := r.Stream(ctx, 0, func(ch *lnvault.Change) error {
		got = append(got, strings.Join(ch.Statements, "\x00"))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, ch := range changes {
		want = append(want, strings.Join(ch.Statements, "\x00"))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("the server holds %d changes for %d acknowledged (a change stored twice?)", len(got), len(want))
	}
}

// A byte-identical repeat of the head change from a new connection is a
// resend (its first copy landed after the client gave up on it): it is
// acknowledged and not stored again.
func TestIdenticalRepeatNotStoredTwice(t *testing.T) {
	ts := startServer(t, server.Config{})
	ctx := context.Background()
	changes := corpusChanges(t)[:10]
	c1 := openSocket(t, ts.url(""), lnvault.OpenOptions{Create: true})
	for _, ch := range changes {
		if err := c1.Append(ctx, ch); err != nil {
			t.Fatal(err)
		}
	}
	c1.Close()
	c2 := openSocket(t, ts.url(""), lnvault.OpenOptions{})
	if err := c2.Append(ctx, changes[9]); err != nil {
		t.Fatalf("the resend was refused: %v", err)
	}
	if n := len(streamVersions(t, ts.b)); n != 10 {
		t.Fatalf("the server holds %d changes after a resend of the 10th, want 10", n)
	}
	// A repeat of the version with other statements (a migration's
	// PRAGMA) is still stored.
	pragma := lnvault.NewTransaction(changes[9].Version, []string{"PRAGMA foreign_keys = ON;"})
	if err := c2.Append(ctx, pragma); err != nil {
		t.Fatal(err)
	}
	if n := len(streamVersions(t, ts.b)); n != 11 {
		t.Fatalf("the server holds %d changes after a migration repeat, want 11", n)
	}
}
