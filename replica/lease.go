package replica

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"syscall"
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
	pidns, _ := os.Readlink("/proc/self/ns/pid")
	h := &leaseHolder{client: c, ttl: ttl, log: log, me: Lease{Owner: newOwnerID(), Host: host, PID: os.Getpid(), PIDNS: pidns, TTL: ttl},
		stop: make(chan struct{}), done: make(chan struct{})}
	for attempt := 0; ; attempt++ {
		cur, etag, err := c.ReadLease(ctx)
		notFound := errors.Is(err, fs.ErrNotExist)
		if err != nil && !notFound {
			return nil, fmt.Errorf("reading the lease of %s: %w", c, err)
		}
		if !notFound {
			if etag, err = h.waitFree(ctx, cur, etag); err != nil {
				return nil, err
			}
		}
		l := h.me
		l.Expires = time.Now().Add(ttl)
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

// waitFree returns once the lease cur (ETag etag) may be taken, with the ETag
// to replace, or ErrLocked while its holder lives. Expires is on the holder's
// clock, so it is compared with this one's only when both run on the same
// host; a lease from another host is free once it went unchanged for its TTL
// on this host's monotonic clock (its holder renews it every TTL/3).
func (h *leaseHolder) waitFree(ctx context.Context, cur Lease, etag string) (string, error) {
	locked := func() error {
		return fmt.Errorf("%s is being written by another lnvault (lease held by %s pid %d, owner %s, expires %s on its clock): stop it, or wait for its lease to expire: %w",
			h.client, cur.Host, cur.PID, cur.Owner, cur.Expires.UTC().Format(time.RFC3339), lnvault.ErrLocked)
	}
	switch {
	case cur.Released:
		return etag, nil
	case cur.Owner == h.me.Owner:
		// This writer's own write, which landed although its answer
		// was lost: its ETag is the one to replace.
		return etag, nil
	case cur.Host == h.me.Host:
		if time.Now().After(cur.Expires) {
			return etag, nil
		}
		if cur.PIDNS != "" && cur.PIDNS == h.me.PIDNS && !processAlive(cur.PID) {
			h.log.Info("the replica's lease was held by a process of this host that is gone: taken over at once",
				"replica", h.client.String(), "pid", cur.PID)
			return etag, nil
		}
		return "", locked()
	}
	ttl := cur.TTL
	if ttl <= 0 {
		ttl = h.ttl
	}
	// A margin for the holder's renewal in flight.
	wait := ttl + ttl/10
	h.log.Warn("the replica's lease is held by another host: waiting to see whether it is renewed (its expiry is on that host's clock, not this one's)",
		"replica", h.client.String(), "holder", cur.Host, "pid", cur.PID, "wait", wait)
	start := time.Now()
	tick := time.NewTicker(min(ttl/6, time.Second))
	defer tick.Stop()
	for time.Since(start) < wait {
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("waiting for the lease of %s held by %s: %w", h.client, cur.Host, ctx.Err())
		case <-tick.C:
		}
		l, tag, err := h.client.ReadLease(ctx)
		if errors.Is(err, fs.ErrNotExist) {
			return "", nil
		}
		if err != nil {
			return "", fmt.Errorf("reading the lease of %s: %w", h.client, err)
		}
		if tag != etag {
			if l.Released {
				return tag, nil
			}
			cur = l
			return "", locked()
		}
	}
	return etag, nil
}

// processAlive tells whether a process of this host has pid. A zombie is
// dead: a plugin killed with lightningd's process group is reparented, and
// stays a zombie where nothing reaps orphans (a container's init).
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !errors.Is(err, fs.ErrNotExist)
	}
	// pid (comm) state ...: comm may hold spaces and parentheses.
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
		switch stat[i+2] {
		case 'Z', 'X', 'x':
			return false
		}
	}
	return true
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
		// A renewal whose answer was lost, retried: the lease then
		// holds this writer's own write.
		cur, curTag, rerr := h.client.ReadLease(ctx)
		if rerr == nil && cur.Owner == h.me.Owner && !cur.Released {
			h.log.Info("replica lease: a renewal landed although its answer was lost", "replica", h.client.String())
			h.etag, h.expires = curTag, cur.Expires
			return nil
		}
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
	l.Released = true
	_, err := h.client.WriteLease(ctx, l, h.etag)
	h.lost = errors.New("lease released")
	return err
}
