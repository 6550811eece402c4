package backupplugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/shadow"
)

// Destination is one backend the plugin writes every change to.
type Destination struct {
	URL     string
	Backend lnvault.Backend

	mu        sync.Mutex
	lastErr   error
	lastErrAt time.Time
	// sealedNoCompact: an encrypted backup whose storage cannot take the
	// node's snapshot (lnvault.ErrSealed); compactions skip it.
	sealedNoCompact error
}

func (d *Destination) setErr(err error) {
	d.mu.Lock()
	d.lastErr, d.lastErrAt = err, time.Now()
	d.mu.Unlock()
}

// Thresholds of automatic compaction; 0 disables one.
type Thresholds struct {
	Size    int64 // backup size in bytes
	Changes int64 // changes appended since the last compaction
}

// Vault writes each change to every destination and enforces the first-write
// rule. Write is called by one goroutine (the db_write hook); Compact and
// Status may run concurrently with it.
type Vault struct {
	dests []*Destination
	log   *slog.Logger

	wmu      sync.Mutex // serialises Write (one db_write at a time anyway)
	started  bool
	shadowOK bool // the shadow was aligned at the first write
	last     uint32
	failed   error // sticky: after a failed change no later one is accepted

	lat latencies

	healCfg   HealConfig
	lastHeal  atomic.Pointer[HealReport]
	lastWrite atomic.Int64 // unix nanoseconds of the last db_write answered
	writes    atomic.Int64 // db_writes handled

	auto        atomic.Pointer[Thresholds]
	compacting  atomic.Bool
	compactWG   sync.WaitGroup
	size        atomic.Int64 // estimated bytes of the largest destination
	sizeAfter   atomic.Int64 // size right after the last compaction
	sinceCompat atomic.Int64 // changes since the last compaction
	retryAt     atomic.Int64 // unix nanoseconds before which no automatic compaction starts
	lastCompact atomic.Pointer[CompactReport]

	shadow *shadow.Shadow // nil: none (an encrypted backup has one)
}

// SetShadow makes the vault keep sh, a plaintext copy of the node's
// database, in step with every change (aligned at the first write, fed off
// the ack path). Call it before the first Write.
func (v *Vault) SetShadow(sh *shadow.Shadow) { v.shadow = sh }

// NewVault returns a vault over dests, which it does not open or close.
func NewVault(ctx context.Context, dests []*Destination, log *slog.Logger) *Vault {
	v := &Vault{dests: dests, log: log}
	v.auto.Store(&Thresholds{})
	var size int64
	for _, d := range dests {
		if st, err := d.Backend.Status(ctx); err == nil && st.Size > size {
			size = st.Size
		}
	}
	v.size.Store(size)
	v.sizeAfter.Store(size)
	return v
}

// SetHeal sets how a gap between the node and its backup is healed at the
// first write. Call it before the first Write.
func (v *Vault) SetHeal(c HealConfig) { v.healCfg = c }

// LastHeal is the last heal of this run, nil when none.
func (v *Vault) LastHeal() *HealReport { return v.lastHeal.Load() }

// LastWrite is when the last db_write was handled (zero before any).
func (v *Vault) LastWrite() time.Time {
	if n := v.lastWrite.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// Writes is how many db_writes were handled.
func (v *Vault) Writes() int64 { return v.writes.Load() }

// SetAutoCompact sets the automatic compaction thresholds.
func (v *Vault) SetAutoCompact(t Thresholds) { v.auto.Store(&t) }

// Destinations returns the destinations.
func (v *Vault) Destinations() []*Destination { return v.dests }

// parallel runs fn for every destination at once (directly for one) and
// returns the errors joined, each naming its destination.
func (v *Vault) parallel(fn func(d *Destination) error) error {
	if len(v.dests) == 1 {
		d := v.dests[0]
		if err := fn(d); err != nil {
			d.setErr(err)
			return fmt.Errorf("%s: %w", d.URL, err)
		}
		return nil
	}
	errs := make([]error, len(v.dests))
	var wg sync.WaitGroup
	for i, d := range v.dests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(d); err != nil {
				d.setErr(err)
				errs[i] = fmt.Errorf("%s: %w", d.URL, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Write makes the change of one db_write durable at every destination. It
// returns nil only when every destination holds it. After an error the vault
// refuses every later change: lightningd must stop and restart, and the next
// first write puts every destination back in line.
func (v *Vault) Write(ctx context.Context, version uint32, writes []string) error {
	v.wmu.Lock()
	defer v.wmu.Unlock()
	if v.failed != nil {
		return fmt.Errorf("refusing db_write %d after an earlier failure (%v); restart lightningd", version, v.failed)
	}
	start := time.Now()
	c := lnvault.NewTransaction(version, writes)
	var err error
	if !v.started {
		err = v.first(ctx, c)
	} else if !lnvault.Follows(v.last, version, lnvault.KindTransaction) {
		err = fmt.Errorf("%w: db_write data_version %d after %d", lnvault.ErrVersion, version, v.last)
	} else {
		err = v.append(ctx, c)
	}
	if err != nil {
		v.failed = err
		return err
	}
	v.started, v.last = true, version
	if v.shadow != nil && v.shadowOK {
		v.shadow.Add(c)
	}
	v.lat.add(time.Since(start))
	v.writes.Add(1)
	v.lastWrite.Store(time.Now().UnixNano())
	v.afterAppend(ctx, writes)
	return nil
}

// Idle lets every destination that can prepare for the next change do so
// (lnvault.Idler); the plugin calls it after answering a db_write when
// lightningd has sent nothing else yet.
func (v *Vault) Idle() {
	for _, d := range v.dests {
		if i, ok := d.Backend.(lnvault.Idler); ok {
			i.Idle()
		}
	}
}

func (v *Vault) first(ctx context.Context, c *lnvault.Change) error {
	actions := make([]Action, len(v.dests))
	heads := make([]lnvault.Metadata, len(v.dests))
	var empty, nonEmpty []string
	var behind []*Destination
	var behindHeads []lnvault.Metadata
	for i, d := range v.dests {
		m := d.Backend.Metadata()
		heads[i] = m
		if m.Version == 0 && m.VersionCount == 0 {
			empty = append(empty, d.URL)
		} else {
			nonEmpty = append(nonEmpty, fmt.Sprintf("%s (version %d)", d.URL, m.Version))
		}
		a, err := FirstWrite(m, c.Version, c.Statements)
		if errors.Is(err, ErrOutOfDate) && !v.healCfg.Disabled {
			a, err = Heal, nil
			behind = append(behind, d)
			behindHeads = append(behindHeads, m)
		}
		if err != nil {
			if errors.Is(err, ErrOutOfDate) {
				err = fmt.Errorf("%w; healing is turned off in %s (\"heal\": false): remove that to have lnvault store the node's database as a snapshot, or re-initialise the backup with lightningd stopped (lnvault init)", err, LockFile)
			}
			return fmt.Errorf("%s: %w", d.URL, err)
		}
		actions[i] = a
		v.log.Info("first write", "destination", d.URL, "backup_version", m.Version,
			"prev_version", m.PrevVersion, "data_version", c.Version, "action", a.String())
	}
	if len(empty) > 0 && len(nonEmpty) > 0 {
		return fmt.Errorf("destinations disagree: %v are empty while %v hold changes; initialise the empty ones from the node's database (lnvault init) before starting", empty, nonEmpty)
	}
	err := v.parallel(func(d *Destination) error {
		for i := range v.dests {
			if v.dests[i] == d && actions[i] == RewindAppend {
				v.log.Warn("last change was not committed by lightningd, rewinding it", "destination", d.URL)
				if err := d.Backend.Rewind(ctx); err != nil {
					return fmt.Errorf("rewinding the uncommitted change: %w", err)
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(behind) > 0 {
		n := uint32(committedVersion(c.Version, c.Statements)) // > a head, so >= 1
		rep, err := v.heal(ctx, n, c.Version, behind, behindHeads)
		if err != nil {
			return fmt.Errorf("%w (backup at version %d; lightningd committed %d): healing the gap failed: %w", ErrOutOfDate, behindHeads[0].Version, n, err)
		}
		v.lastHeal.Store(rep)
		v.log.Warn(fmt.Sprintf("healed a gap: %d committed change(s) after version %d never reached the backup (lightningd wrote them after lnvault stopped, or ran without it); stored the node's database at version %d as a snapshot", rep.Missing, rep.BackupVersion, n),
			"backup_version", rep.BackupVersion, "node_version", n, "versions_missing", rep.Missing,
			"database", rep.Database, "read_ms", rep.ReadMs, "took_ms", rep.TookMs, "destinations", strings.Join(rep.Destinations, ", "))
	}
	v.alignShadow(ctx, c)
	return v.append(ctx, c)
}

// alignShadow brings the shadow to the node's committed version before the
// first change is appended, while lightningd waits for the answer (so its
// database can be read without racing a commit). A failure only leaves
// this run without node compaction of an encrypted backup.
func (v *Vault) alignShadow(ctx context.Context, c *lnvault.Change) {
	if v.shadow == nil || v.healCfg.DBPath == nil {
		return
	}
	db, err := v.healCfg.DBPath()
	if err == nil {
		err = v.shadow.Align(ctx, uint32(committedVersion(c.Version, c.Statements)), db)
	}
	if err != nil {
		v.log.Warn("no shadow copy of the node's database in this run: the encrypted backup is not compacted until the next start", "shadow", v.shadow.Path(), "err", err)
		return
	}
	v.shadowOK = true
}

func (v *Vault) append(ctx context.Context, c *lnvault.Change) error {
	done := make([]atomic.Bool, len(v.dests))
	err := v.parallel(func(d *Destination) error {
		if err := d.Backend.Append(ctx, c); err != nil {
			return err
		}
		for i := range v.dests {
			if v.dests[i] == d {
				done[i].Store(true)
			}
		}
		return nil
	})
	if err == nil {
		return nil
	}
	// lightningd will not commit this change: take it back where it was
	// stored so the destinations keep agreeing with the node. Best effort:
	// the first-write rule does it at the next start otherwise.
	for i, d := range v.dests {
		if done[i].Load() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			if rerr := d.Backend.Rewind(rctx); rerr != nil {
				v.log.Warn("could not take back the change at a destination that stored it; the next start will", "destination", d.URL, "version", c.Version, "err", rerr)
			} else {
				v.log.Info("took back the change at a destination that stored it", "destination", d.URL, "version", c.Version)
			}
			cancel()
		}
	}
	return fmt.Errorf("change %d is not durable at every destination: %w", c.Version, err)
}

func (v *Vault) afterAppend(ctx context.Context, writes []string) {
	n := int64(9) // record header of the file format
	for _, w := range writes {
		n += int64(len(w)) + 1
	}
	size := v.size.Add(n)
	changes := v.sinceCompat.Add(1)
	t := v.auto.Load()
	due := (t.Changes > 0 && changes >= t.Changes) ||
		(t.Size > 0 && size >= t.Size && size >= 2*v.sizeAfter.Load())
	if !due || v.compacting.Load() || time.Now().UnixNano() < v.retryAt.Load() {
		return
	}
	v.compactWG.Add(1)
	go func() {
		defer v.compactWG.Done()
		v.log.Info("automatic compaction", "size", size, "changes_since_last", changes)
		_, err := v.Compact(context.WithoutCancel(ctx))
		switch {
		case errors.Is(err, errNoneCompactable):
			v.auto.Store(&Thresholds{})
			v.log.Warn("automatic compaction is off for this run", "err", err)
		case err != nil && !errors.Is(err, ErrCompacting):
			// Not again at the very next change: a failing destination
			// (or an encrypted backup's shadow not ready) would make
			// every db_write start one.
			v.retryAt.Store(time.Now().Add(AutoCompactRetry).UnixNano())
			v.log.Warn("automatic compaction failed; trying again later", "err", err, "retry_in", AutoCompactRetry.String())
		}
	}()
}

// AutoCompactRetry is how long automatic compaction waits after a failure;
// a variable for tests.
var AutoCompactRetry = time.Minute

// errNoneCompactable: no destination can be compacted in this run.
var errNoneCompactable = errors.New("no destination can be compacted")

// ErrCompacting is returned when a compaction is asked for while one runs.
var ErrCompacting = errors.New("a compaction is already running; try again when it ends")

// CompactReport is the outcome of a compaction at every destination.
type CompactReport struct {
	Stats map[string]lnvault.CompactStats
	Errs  map[string]string
	Start time.Time
	Took  time.Duration
}

// Compact compacts every destination in parallel, concurrently with Write.
func (v *Vault) Compact(ctx context.Context) (*CompactReport, error) {
	if !v.compacting.CompareAndSwap(false, true) {
		return nil, ErrCompacting
	}
	defer v.compacting.Store(false)
	rep := &CompactReport{Stats: map[string]lnvault.CompactStats{}, Errs: map[string]string{}, Start: time.Now()}
	var mu sync.Mutex
	err := v.parallel(func(d *Destination) error {
		d.mu.Lock()
		skip := d.sealedNoCompact
		d.mu.Unlock()
		if skip != nil {
			mu.Lock()
			rep.Errs[d.URL] = "not compacted: " + skip.Error()
			mu.Unlock()
			return nil
		}
		st, err := d.Backend.Compact(ctx)
		if errors.Is(err, lnvault.ErrSealed) {
			// Asking again at every change would only repeat it: skipped
			// from now on, not a failure of the others' compaction.
			d.mu.Lock()
			d.sealedNoCompact = err
			d.mu.Unlock()
			v.log.Warn("this destination of the encrypted backup is not compacted in this run", "destination", d.URL, "err", err)
			mu.Lock()
			rep.Errs[d.URL] = "not compacted: " + err.Error()
			mu.Unlock()
			return nil
		}
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			rep.Errs[d.URL] = err.Error()
			return err
		}
		rep.Stats[d.URL] = st
		return nil
	})
	if err == nil && len(rep.Stats) == 0 && len(rep.Errs) > 0 {
		var msgs []string
		for u, e := range rep.Errs {
			msgs = append(msgs, u+": "+e)
		}
		sort.Strings(msgs)
		err = fmt.Errorf("%w (%w): %s", errNoneCompactable, lnvault.ErrSealed, strings.Join(msgs, "; "))
	}
	rep.Took = time.Since(rep.Start)
	var after int64
	for _, st := range rep.Stats {
		after = max(after, st.After.BackupSize)
	}
	if err == nil {
		v.sinceCompat.Store(0)
		v.size.Store(after)
		v.sizeAfter.Store(after)
	}
	v.lastCompact.Store(rep)
	if err != nil {
		return rep, fmt.Errorf("compaction: %w", err)
	}
	v.log.Info("compaction done", "took", rep.Took.Round(time.Millisecond).String())
	return rep, nil
}

// Wait waits for a running automatic compaction.
func (v *Vault) Wait() { v.compactWG.Wait() }

// DestStatus is one destination in backup-status.
type DestStatus struct {
	URL          string `json:"url"`
	OK           bool   `json:"ok"`
	Version      uint32 `json:"version"`
	PrevVersion  uint32 `json:"prev_version"`
	VersionCount uint64 `json:"version_count"`
	Format       string `json:"format,omitempty"`
	Records      int64  `json:"records"`
	SizeBytes    int64  `json:"size_bytes"`
	Error        string `json:"error,omitempty"`
	LastError    string `json:"last_error,omitempty"`
	LastErrorAt  string `json:"last_error_at,omitempty"`
}

// StatusReport is the answer of backup-status.
type StatusReport struct {
	Version      uint32          `json:"version"`
	Started      bool            `json:"started"`
	Failed       string          `json:"failed,omitempty"`
	Destinations []DestStatus    `json:"destinations"`
	Acks         int64           `json:"acks"`
	LastAckMs    float64         `json:"last_ack_ms"`
	P50AckMs     float64         `json:"p50_ack_ms"`
	P99AckMs     float64         `json:"p99_ack_ms"`
	MaxAckMs     float64         `json:"max_ack_ms"`
	BackupSize   int64           `json:"backup_size"`
	Compacting   bool            `json:"compacting"`
	SinceCompact int64           `json:"changes_since_compaction"`
	AutoCompact  Thresholds      `json:"auto_compact"`
	LastCompact  *CompactSummary `json:"last_compaction,omitempty"`
	LastHeal     *HealReport     `json:"last_heal,omitempty"`
	Extensions   map[string]any  `json:"extensions,omitempty"`
}

// CompactSummary is the last compaction in backup-status.
type CompactSummary struct {
	At     string                          `json:"at"`
	TookMs float64                         `json:"took_ms"`
	Stats  map[string]lnvault.CompactStats `json:"stats,omitempty"`
	Errors map[string]string               `json:"errors,omitempty"`
}

// Status reports the vault and every destination.
func (v *Vault) Status(ctx context.Context) StatusReport {
	v.wmu.Lock()
	r := StatusReport{Version: v.last, Started: v.started}
	if v.failed != nil {
		r.Failed = v.failed.Error()
	}
	v.wmu.Unlock()
	r.Acks, r.LastAckMs, r.P50AckMs, r.P99AckMs, r.MaxAckMs = v.lat.summary()
	r.Compacting = v.compacting.Load()
	r.SinceCompact = v.sinceCompat.Load()
	r.AutoCompact = *v.auto.Load()
	r.LastHeal = v.lastHeal.Load()
	if c := v.lastCompact.Load(); c != nil {
		r.LastCompact = &CompactSummary{At: c.Start.UTC().Format(time.RFC3339), TookMs: ms(c.Took), Stats: c.Stats, Errors: c.Errs}
	}
	for _, d := range v.dests {
		m := d.Backend.Metadata()
		ds := DestStatus{URL: d.URL, OK: true, Version: m.Version, PrevVersion: m.PrevVersion, VersionCount: m.VersionCount}
		if st, err := d.Backend.Status(ctx); err != nil {
			ds.OK, ds.Error = false, err.Error()
		} else {
			ds.Format, ds.Records, ds.SizeBytes = st.Format, st.Records, st.Size
			r.BackupSize = max(r.BackupSize, st.Size)
		}
		d.mu.Lock()
		if d.lastErr != nil {
			ds.LastError, ds.LastErrorAt = d.lastErr.Error(), d.lastErrAt.UTC().Format(time.RFC3339)
			if r.Failed != "" {
				ds.OK = false
			}
		}
		d.mu.Unlock()
		r.Destinations = append(r.Destinations, ds)
	}
	return r
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// latencies keeps the last ack latencies for backup-status.
type latencies struct {
	mu   sync.Mutex
	ring [4096]time.Duration
	n    int64
	last time.Duration
	max  time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.ring[l.n%int64(len(l.ring))] = d
	l.n++
	l.last = d
	l.max = max(l.max, d)
	l.mu.Unlock()
}

func (l *latencies) summary() (n int64, last, p50, p99, mx float64) {
	l.mu.Lock()
	k := min(l.n, int64(len(l.ring)))
	s := append([]time.Duration(nil), l.ring[:k]...)
	n, last, mx = l.n, ms(l.last), ms(l.max)
	l.mu.Unlock()
	if k == 0 {
		return
	}
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return n, last, ms(s[int(float64(k-1)*0.50)]), ms(s[int(float64(k-1)*0.99)]), mx
}
