package replica

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/lnvault/lnvault"
)

// leaseHolder keeps the replica's lease object: one writer per prefix. It is
// taken with a conditional PUT (If-None-Match: * when there is none, If-Match
// on the ETag of an expired one), renewed in the background with If-Match on
// its own ETag, and checked before every write: a writer whose lease is gone
// or about to expire stops writing.
type leaseHolder struct {
	client ReplicaClient
	ttl    time.Duration
	log    *slog.Logger
	me     Lease

	mu      sync.Mutex
	etag    string
	expires time.Time
	lost    error

	stop chan struct{}
	done chan struct{}
}

func newOwnerID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func acquireLease(ctx context.Context, c ReplicaClient, ttl time.Duration, log *slog.Logger) (*leaseHolder, error) {
	host, _ := os.Hostname()
	h := &leaseHolder{client: c, ttl: ttl, log: log, me: Lease{Owner: newOwnerID(), Host: host, PID: os.Getpid()},
		stop: make(chan struct{}), done: make(chan struct{})}
	for attempt := 0; ; attempt++ {
		cur, etag, err := c.ReadLease(ctx)
		notFound := errors.Is(err, fs.ErrNotExist)
		if err != nil && !notFound {
			return nil, fmt.Errorf("reading the lease of %s: %w", c, err)
		}
		now := time.Now()
		if !notFound && now.Before(cur.Expires) && cur.Owner != h.me.Owner {
			return nil, fmt.Errorf("%s is being written by another lnvault (lease held by %s pid %d, owner %s, expires %s): stop it, or wait for its lease to expire: %w",
				c, cur.Host, cur.PID, cur.Owner, cur.Expires.UTC().Format(time.RFC3339), lnvault.ErrLocked)
		}
		l := h.me
		l.Expires = now.Add(ttl)
		match := ""
		if !notFound {
			match = etag
		}
		newTag, err := c.WriteLease(ctx, l, match)
		if errors.Is(err, ErrPrecondition) && attempt < 3 {
			continue // someone wrote it between our read and write: look again
		}
		if err != nil {
			return nil, fmt.Errorf("taking the lease of %s: %w", c, err)
		}
		h.etag, h.expires = newTag, l.Expires
		go h.renewLoop()
		return h, nil
	}
}

func (h *leaseHolder) renewLoop() {
	defer close(h.done)
	t := time.NewTicker(h.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), h.ttl/3)
			if err := h.renew(ctx); err != nil {
				h.log.Warn("replica lease renewal failed", "replica", h.client.String(), "err", err)
			}
			cancel()
		}
	}
}

func (h *leaseHolder) renew(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lost != nil {
		return h.lost
	}
	l := h.me
	l.Expires = time.Now().Add(h.ttl)
	tag, err := h.client.WriteLease(ctx, l, h.etag)
	if errors.Is(err, ErrPrecondition) {
		h.lost = fmt.Errorf("lost the lease of %s to another writer: %w", h.client, lnvault.ErrLocked)
		return h.lost
	}
	if err != nil {
		return err
	}
	h.etag, h.expires = tag, l.Expires
	return nil
}

// check returns nil if this writer may write now: its lease has more than a
// third of its time left, after renewing it synchronously if needed.
func (h *leaseHolder) check(ctx context.Context) error {
	h.mu.Lock()
	lost, left := h.lost, time.Until(h.expires)
	h.mu.Unlock()
	if lost != nil {
		return lost
	}
	if left > h.ttl/3 {
		return nil
	}
	if err := h.renew(ctx); err != nil {
		return fmt.Errorf("cannot renew the lease of %s, refusing to write: %w", h.client, err)
	}
	return nil
}

// release stops renewing and marks the lease expired so that the next writer
// need not wait.
func (h *leaseHolder) release(ctx context.Context) error {
	close(h.stop)
	<-h.done
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lost != nil {
		return nil
	}
	l := h.me
	l.Expires = time.Now().Add(-time.Second)
	_, err := h.client.WriteLease(ctx, l, h.etag)
	h.lost = errors.New("lease released")
	return err
}
