package server

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Quota is what one backup a server keeps for someone else may take (a hub's tenant):
// its size, beyond which changes are refused with a clear error, and its
// change rate, beyond which its writer is slowed (throttled, never
// refused: a refused db_write stops a node) so it cannot take the host's
// disk from the others.
type Quota struct {
	QuotaBytes    int64   `json:"quota_bytes,omitempty"`            // 0: none
	MaxChangeRate float64 `json:"max_changes_per_second,omitempty"` // 0: none
}

// limiter keeps a server's size and rate state.
type limiter struct {
	lim  atomic.Pointer[Quota]
	size atomic.Int64 // bytes the backup holds, kept up to date by appends

	mu     sync.Mutex
	tokens float64
	last   time.Time
}

// SetQuota changes the quota (a hub's reload).
func (s *Server) SetQuota(q Quota) { s.limits.lim.Store(&q) }

func (s *Server) initLimits(l Quota) {
	s.limits.lim.Store(&l)
	if s.b != nil {
		s.resized(context.Background())
	}
}

// overQuota says why a change of n bytes may not be stored ("" if it may).
func (s *Server) overQuota(n int64) string {
	l := s.limits.lim.Load()
	if l == nil || l.QuotaBytes <= 0 {
		return ""
	}
	if have := s.limits.size.Load(); have+n > l.QuotaBytes {
		return fmt.Sprintf("not stored: the quota of this backup is %d bytes and it holds %d; compact it (lightning-cli backup-compact), or ask the server's operator for more (lnvault server tenant quota)", l.QuotaBytes, have)
	}
	return ""
}

// throttle waits until the writer may store another change at its rate;
// it returns how long it waited.
func (s *Server) throttle(ctx context.Context) time.Duration {
	l := s.limits.lim.Load()
	if l == nil || l.MaxChangeRate <= 0 {
		return 0
	}
	lm := &s.limits
	lm.mu.Lock()
	now := time.Now()
	burst := max(1, 2*l.MaxChangeRate)
	if lm.last.IsZero() {
		lm.tokens = burst
	} else {
		lm.tokens = min(burst, lm.tokens+now.Sub(lm.last).Seconds()*l.MaxChangeRate)
	}
	lm.last = now
	lm.tokens--
	wait := time.Duration(0)
	if lm.tokens < 0 {
		wait = time.Duration(-lm.tokens / l.MaxChangeRate * float64(time.Second))
	}
	lm.mu.Unlock()
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	}
	return wait
}

// grew and resized keep the size in step with what the backup holds.
func (s *Server) grew(n int64) { s.limits.size.Add(n) }

func (s *Server) resized(ctx context.Context) {
	if st, err := s.b.Status(ctx); err == nil {
		s.limits.size.Store(st.Size)
	}
}
