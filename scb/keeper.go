package scb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Source yields the current complete backup. Core Lightning: a call of
// `staticbackup` (CLNSource); lnd: a stable read of channel.backup
// (FileSource). Fetch is never called concurrently with itself.
type Source interface {
	Fetch(ctx context.Context) (Backup, error)
}

// EventType is what happened to a channel.
type EventType string

const (
	EventOpened       EventType = "opened"
	EventClosed       EventType = "closed"
	EventStateChanged EventType = "state_changed"
	// EventFileChanged: a watched backup file changed (lnd, emergency.recover).
	EventFileChanged EventType = "file_changed"
	// EventRefresh asks for a re-fetch without a channel event (startup,
	// periodic refresh: peer addresses may change).
	EventRefresh EventType = "refresh"
)

// Event is one channel event. The keeper re-fetches the whole set on events,
// so the fields are informational (logs, status).
type Event struct {
	Type      EventType
	ChannelID string
}

// Notifier delivers channel events, like lnd's ChannelNotifier. The CLN plugin
// adapter feeds channel_opened / channel_state_changed notifications; it may
// also just call Keeper.Notify.
type Notifier interface {
	// Subscribe returns the event channel and a cancel function.
	Subscribe(ctx context.Context) (<-chan Event, func(), error)
}

// Config configures a Keeper.
type Config struct {
	Kind     Kind
	Source   Source
	Swappers []Swapper
	// Notifier is optional: Notify works without it.
	Notifier Notifier
	// Debounce: after an event, wait this long for more before fetching
	// (default 500ms). MaxDelay bounds the wait under a steady stream of
	// events (default 5s).
	Debounce time.Duration
	MaxDelay time.Duration
	// RetryMin/RetryMax bound the exponential backoff of a failing source or
	// destination (defaults 1s and 5m).
	RetryMin time.Duration
	RetryMax time.Duration
	// AttemptTimeout bounds one UpdateAndSwap so a hung destination is
	// retried rather than stuck (default 2m).
	AttemptTimeout time.Duration
	// Refresh re-fetches periodically even without events (0: never).
	Refresh time.Duration
	Logger  *slog.Logger
}

// Keeper follows channel events and keeps every destination holding the
// current backup set: lnd's SubSwapper shape, with coalescing of event
// bursts, per-destination retries with backoff, and a Status snapshot. A
// slow or failing destination delays only itself; Notify never blocks.
type Keeper struct {
	cfg  Config
	log  *slog.Logger
	kick chan struct{}

	mu        sync.Mutex
	current   *Backup
	since     time.Time
	events    uint64
	lastEvent time.Time
	lastFetch time.Time
	fetchErr  string
	fetchErrT time.Time
	fetches   uint64
	dests     []*destination
	running   bool
}

type destination struct {
	sw   Swapper
	wake chan struct{}
	st   DestinationStatus
	have [32]byte
	ok   bool // have is known
}

// DestinationStatus is one destination's state in Status.
type DestinationStatus struct {
	Name string `json:"name"`
	// SHA256 is the short hash of the backup it holds ("" unknown).
	SHA256      string    `json:"sha256,omitempty"`
	UpToDate    bool      `json:"up_to_date"`
	Swaps       uint64    `json:"swaps"`
	LastSuccess time.Time `json:"last_success,omitempty"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitempty"`
	// Failures counts consecutive failures; 0 when the last attempt worked.
	Failures  int       `json:"failures"`
	NextRetry time.Time `json:"next_retry,omitempty"`
}

// Status is a snapshot of the keeper for backup-status and logs.
type Status struct {
	Kind      Kind      `json:"kind"`
	SHA256    string    `json:"sha256,omitempty"`
	Channels  int       `json:"channels"`
	Size      int       `json:"size"`
	Since     time.Time `json:"since,omitempty"`
	Events    uint64    `json:"events"`
	LastEvent time.Time `json:"last_event,omitempty"`
	Fetches   uint64    `json:"fetches"`
	LastFetch time.Time `json:"last_fetch,omitempty"`
	// FetchError is the last source error, cleared by a successful fetch.
	FetchError   string              `json:"fetch_error,omitempty"`
	FetchErrorAt time.Time           `json:"fetch_error_at,omitempty"`
	Destinations []DestinationStatus `json:"destinations"`
}

// Healthy tells whether the last fetch worked and every destination holds the
// current backup.
func (s Status) Healthy() bool {
	if s.FetchError != "" || s.SHA256 == "" {
		return false
	}
	for _, d := range s.Destinations {
		if !d.UpToDate {
			return false
		}
	}
	return true
}

// New checks cfg and returns a keeper; Run starts it.
func New(cfg Config) (*Keeper, error) {
	if cfg.Source == nil {
		return nil, errors.New("scb: keeper needs a source")
	}
	if len(cfg.Swappers) == 0 {
		return nil, errors.New("scb: keeper needs at least one destination")
	}
	if !cfg.Kind.Valid() {
		return nil, fmt.Errorf("scb: invalid kind %q", cfg.Kind)
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = 500 * time.Millisecond
	}
	if cfg.MaxDelay < cfg.Debounce {
		cfg.MaxDelay = max(5*time.Second, cfg.Debounce)
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = time.Second
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = max(5*time.Minute, cfg.RetryMin)
	}
	if cfg.AttemptTimeout <= 0 {
		cfg.AttemptTimeout = 2 * time.Minute
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	k := &Keeper{cfg: cfg, log: log.With("scb", string(cfg.Kind)), kick: make(chan struct{}, 1)}
	for _, sw := range cfg.Swappers {
		k.dests = append(k.dests, &destination{sw: sw, wake: make(chan struct{}, 1), st: DestinationStatus{Name: sw.String()}})
	}
	return k, nil
}

// Notify records an event and schedules a re-fetch. It never blocks: events
// arriving before the fetch are coalesced into it.
func (k *Keeper) Notify(ev Event) {
	k.mu.Lock()
	k.events++
	k.lastEvent = time.Now()
	k.mu.Unlock()
	k.log.Debug("scb: event", "type", ev.Type, "channel", ev.ChannelID)
	select {
	case k.kick <- struct{}{}:
	default:
	}
}

// Status returns a snapshot.
func (k *Keeper) Status() Status {
	k.mu.Lock()
	defer k.mu.Unlock()
	s := Status{Kind: k.cfg.Kind, Channels: -1, Events: k.events, LastEvent: k.lastEvent,
		Fetches: k.fetches, LastFetch: k.lastFetch, FetchError: k.fetchErr, FetchErrorAt: k.fetchErrT}
	if k.current != nil {
		s.SHA256 = ShortHash(k.current.SHA256)
		s.Channels = k.current.Channels
		s.Size = len(k.current.Data)
		s.Since = k.since
	}
	for _, d := range k.dests {
		ds := d.st
		if d.ok {
			ds.SHA256 = ShortHash(d.have)
		}
		ds.UpToDate = k.current != nil && d.ok && d.have == k.current.SHA256
		s.Destinations = append(s.Destinations, ds)
	}
	return s
}

// Current returns the backup the keeper last fetched, if any.
func (k *Keeper) Current() (Backup, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.current == nil {
		return Backup{}, false
	}
	return *k.current, true
}

// Run fetches once at once, then after every burst of events, and keeps the
// destinations up to date, until ctx ends. It returns ctx's error.
func (k *Keeper) Run(ctx context.Context) error {
	k.mu.Lock()
	if k.running {
		k.mu.Unlock()
		return errors.New("scb: keeper already running")
	}
	k.running = true
	k.mu.Unlock()

	var wg sync.WaitGroup
	defer wg.Wait()
	// Cancelled before wg.Wait runs (defers run last-in first-out), so an
	// early return cannot leave the destination goroutines waiting forever.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, d := range k.dests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k.destLoop(ctx, d)
		}()
	}
	if k.cfg.Notifier != nil {
		evs, cancel, err := k.cfg.Notifier.Subscribe(ctx)
		if err != nil {
			return fmt.Errorf("scb: subscribing to channel events: %w", err)
		}
		defer cancel()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case ev, ok := <-evs:
					if !ok {
						return
					}
					k.Notify(ev)
				}
			}
		}()
	}
	k.fetchLoop(ctx)
	return context.Cause(ctx)
}

func (k *Keeper) fetchLoop(ctx context.Context) {
	timer := time.NewTimer(0) // the first fetch happens at once
	defer timer.Stop()
	var (
		pending bool      // an event is waiting for the debounce
		first   time.Time // first pending event
		backoff = k.cfg.RetryMin
		refresh <-chan time.Time
	)
	if k.cfg.Refresh > 0 {
		t := time.NewTicker(k.cfg.Refresh)
		defer t.Stop()
		refresh = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-refresh:
			k.Notify(Event{Type: EventRefresh})
		case <-k.kick:
			now := time.Now()
			if !pending {
				pending, first = true, now
			}
			// Debounce: each event pushes the fetch back, up to MaxDelay
			// after the first one so a steady stream still gets backed up.
			// A new event also cuts a source retry's backoff short: the file
			// or the node changed, so the next try has a new chance.
			wait := min(k.cfg.Debounce, time.Until(first.Add(k.cfg.MaxDelay)))
			resetTimer(timer, max(wait, 0))
		case <-timer.C:
			pending = false
			if err := k.fetchOnce(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				k.log.Warn("scb: fetching the current backup failed, will retry", "err", err, "retry_in", backoff)
				resetTimer(timer, backoff)
				backoff = min(backoff*2, k.cfg.RetryMax)
				continue
			}
			backoff = k.cfg.RetryMin
		}
	}
}

func resetTimer(t *time.Timer, d time.Duration) {
	t.Stop()
	select {
	case <-t.C:
	default:
	}
	t.Reset(d)
}

func (k *Keeper) fetchOnce(ctx context.Context) error {
	b, err := k.cfg.Source.Fetch(ctx)
	now := time.Now()
	k.mu.Lock()
	k.fetches++
	k.lastFetch = now
	if err != nil {
		k.fetchErr, k.fetchErrT = err.Error(), now
		k.mu.Unlock()
		return err
	}
	if b.Kind == "" {
		b.Kind = k.cfg.Kind
	}
	if b.Kind != k.cfg.Kind {
		k.fetchErr, k.fetchErrT = fmt.Sprintf("source returned kind %s, keeper is for %s", b.Kind, k.cfg.Kind), now
		k.mu.Unlock()
		return errors.New(k.fetchErr)
	}
	k.fetchErr = ""
	changed := k.current == nil || k.current.SHA256 != b.SHA256
	if changed {
		k.current = &b
		k.since = now
	}
	k.mu.Unlock()
	if changed {
		k.log.Info("scb: backup changed", "channels", b.Channels, "size", len(b.Data), "sha256", ShortHash(b.SHA256))
		for _, d := range k.dests {
			select {
			case d.wake <- struct{}{}:
			default:
			}
		}
	}
	return nil
}

// destLoop keeps one destination up to date: it stores the current backup
// whenever it differs from what the destination holds, retrying with backoff.
func (k *Keeper) destLoop(ctx context.Context, d *destination) {
	if r, ok := d.sw.(Resumer); ok {
		if sum, known, err := r.StoredSHA256(ctx, k.cfg.Kind); err == nil && known {
			k.mu.Lock()
			d.have, d.ok = sum, true
			k.mu.Unlock()
		}
	}
	backoff := k.cfg.RetryMin
	for {
		k.mu.Lock()
		cur := k.current
		need := cur != nil && (!d.ok || d.have != cur.SHA256)
		k.mu.Unlock()
		if !need {
			select {
			case <-ctx.Done():
				return
			case <-d.wake:
				continue
			}
		}
		actx, acancel := context.WithTimeout(ctx, k.cfg.AttemptTimeout)
		err := d.sw.UpdateAndSwap(actx, *cur)
		acancel()
		now := time.Now()
		k.mu.Lock()
		if err == nil {
			d.have, d.ok = cur.SHA256, true
			d.st.Swaps++
			d.st.LastSuccess = now
			d.st.Failures = 0
			d.st.NextRetry = time.Time{}
			backoff = k.cfg.RetryMin
			k.mu.Unlock()
			k.log.Debug("scb: destination updated", "dest", d.st.Name, "sha256", ShortHash(cur.SHA256))
			continue
		}
		if ctx.Err() != nil {
			k.mu.Unlock()
			return
		}
		d.st.Failures++
		d.st.LastError = err.Error()
		d.st.LastErrorAt = now
		d.st.NextRetry = now.Add(backoff)
		failures := d.st.Failures
		k.mu.Unlock()
		k.log.Warn("scb: storing the backup failed, will retry", "dest", d.st.Name, "err", err, "failures", failures, "retry_in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(backoff*2, k.cfg.RetryMax)
	}
}
