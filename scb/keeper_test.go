package scb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeLightningd answers staticbackup with its current channel set, as
// lightningd would over the RPC socket.
type fakeLightningd struct {
	mu    sync.Mutex
	chans map[string]string // channel id -> scb hex
	calls atomic.Int64
	fail  atomic.Bool
}

func scbHex(n int, rev int) string {
	// u64 id, 32-byte channel id, then a body that changes with rev.
	return fmt.Sprintf("%016x%064x%08x", n, n*7919, rev)
}

func (f *fakeLightningd) Call(ctx context.Context, method string, params, result any) error {
	f.calls.Add(1)
	if method != "staticbackup" {
		return fmt.Errorf("unexpected method %s", method)
	}
	if f.fail.Load() {
		return errors.New("lightningd: connection refused")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	res := result.(*struct {
		SCB []string `json:"scb"`
	})
	res.SCB = nil
	for _, h := range f.chans {
		res.SCB = append(res.SCB, h)
	}
	return nil
}

func (f *fakeLightningd) open(n, rev int) {
	f.mu.Lock()
	f.chans[fmt.Sprint(n)] = scbHex(n, rev)
	f.mu.Unlock()
}

func (f *fakeLightningd) close(n int) {
	f.mu.Lock()
	delete(f.chans, fmt.Sprint(n))
	f.mu.Unlock()
}

func (f *fakeLightningd) packed() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	var l []string
	for _, h := range f.chans {
		l = append(l, h)
	}
	set, err := NewCLNSet(l)
	if err != nil {
		panic(err)
	}
	return set.Pack()
}

// flakySwapper fails while down is set.
type flakySwapper struct {
	Swapper
	down     atomic.Bool
	attempts atomic.Int64
}

func (s *flakySwapper) UpdateAndSwap(ctx context.Context, b Backup) error {
	s.attempts.Add(1)
	if s.down.Load() {
		return errors.New("destination unreachable")
	}
	return s.Swapper.UpdateAndSwap(ctx, b)
}

var quiet = slog.New(slog.DiscardHandler)

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func latestData(t *testing.T, st Store) []byte {
	t.Helper()
	v, err := Select(context.Background(), st, KindCLN, "")
	if err != nil {
		return nil
	}
	data, _, err := Fetch(context.Background(), st, v, nil)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestKeeperBurstsAndDestinations(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	ln := &fakeLightningd{chans: map[string]string{}}
	ln.open(1, 0)
	ln.open(2, 0)

	storeA, _ := OpenDir(filepath.Join(dir, "a"), StoreOptions{})
	storeB, _ := OpenDir(filepath.Join(dir, "b"), StoreOptions{})
	storeF, _ := OpenDir(filepath.Join(dir, "flaky"), StoreOptions{})
	local := &FileSwapper{Path: filepath.Join(dir, "scb.json"), Keep: 3}
	flaky := &flakySwapper{Swapper: &StoreSwapper{Store: storeF}}
	k, err := New(Config{
		Kind:     KindCLN,
		Source:   CLNSource{RPC: ln},
		Swappers: []Swapper{local, &StoreSwapper{Store: storeA}, &StoreSwapper{Store: storeB}, flaky},
		Debounce: 100 * time.Millisecond,
		MaxDelay: time.Second,
		RetryMin: 10 * time.Millisecond,
		RetryMax: 50 * time.Millisecond,
		Logger:   quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()

	settled := func(want []byte, withFlaky bool) func() bool {
		return func() bool {
			cur, _ := os.ReadFile(local.Path)
			ok := string(cur) == string(want) &&
				string(latestData(t, storeA)) == string(want) &&
				string(latestData(t, storeB)) == string(want)
			if withFlaky {
				ok = ok && string(latestData(t, storeF)) == string(want)
			}
			return ok
		}
	}
	want := ln.packed()
	waitFor(t, "the initial set everywhere", settled(want, true))

	type step struct {
		name string
		do   func()
	}
	bursts := [][]step{
		{{"open 3", func() { ln.open(3, 0) }}, {"open 4", func() { ln.open(4, 0) }}, {"state 1", func() { ln.open(1, 1) }}},
		{{"close 2", func() { ln.close(2) }}, {"state 3", func() { ln.open(3, 1) }}, {"state 3", func() { ln.open(3, 2) }}, {"open 5", func() { ln.open(5, 0) }}},
		{{"close 1", func() { ln.close(1) }}, {"close 3", func() { ln.close(3) }}, {"close 4", func() { ln.close(4) }}, {"close 5", func() { ln.close(5) }}},
		{{"open 6", func() { ln.open(6, 0) }}},
	}
	finals := []string{string(want)}
	for i, burst := range bursts {
		callsBefore := ln.calls.Load()
		for _, s := range burst {
			s.do()
			typ := EventStateChanged
			if s.name[:4] == "open" {
				typ = EventOpened
			} else if s.name[:5] == "close" {
				typ = EventClosed
			}
			k.Notify(Event{Type: typ, ChannelID: s.name})
		}
		want = ln.packed()
		finals = append(finals, string(want))
		waitFor(t, fmt.Sprintf("burst %d everywhere", i), settled(want, true))
		if calls := ln.calls.Load() - callsBefore; calls > 2 {
			t.Errorf("burst %d of %d events made %d staticbackup calls: events not coalesced", i, len(burst), calls)
		}
	}
	// Every burst's set is kept as a version, in order (with coalescing
	// there is one version per burst; a stalled machine may add one).
	vA, _ := storeA.List(ctx)
	j := 0
	for _, v := range vA {
		data, _, err := Fetch(ctx, storeA, v, nil)
		if err != nil {
			t.Fatal(err)
		}
		if j < len(finals) && string(data) == finals[j] {
			j++
		}
	}
	if j != len(finals) || len(vA) > 2*len(finals) {
		t.Fatalf("store A has %d versions holding %d of the %d burst results in order", len(vA), j, len(finals))
	}
	if arch, _ := local.Archived(); len(arch) != 3 {
		t.Fatalf("archive holds %d files, want the 3 newest", len(arch))
	}

	// An unchanged set (open then close within one burst) stores nothing.
	ln.open(7, 0)
	k.Notify(Event{Type: EventOpened})
	ln.close(7)
	k.Notify(Event{Type: EventClosed})
	calls := ln.calls.Load()
	waitFor(t, "the re-fetch", func() bool { return ln.calls.Load() > calls })
	time.Sleep(100 * time.Millisecond)
	if vs, _ := storeA.List(ctx); len(vs) != len(vA) {
		t.Fatalf("unchanged set re-uploaded: %d versions, had %d", len(vs), len(vA))
	}

	// A failing destination is retried and reported; the others go on.
	flaky.down.Store(true)
	ln.open(8, 0)
	k.Notify(Event{Type: EventOpened})
	want = ln.packed()
	waitFor(t, "the healthy destinations", settled(want, false))
	waitFor(t, "retries of the failing destination", func() bool { return flaky.attempts.Load() > 3 })
	var st Status
	var fs DestinationStatus
	waitFor(t, "status of the healthy destinations", func() bool {
		st = k.Status()
		for _, d := range st.Destinations {
			if d.Name == flaky.String() {
				fs = d
			} else if !d.UpToDate {
				return false
			}
		}
		return true
	})
	if fs.Failures == 0 || fs.LastError == "" || fs.UpToDate || st.Healthy() {
		t.Fatalf("failing destination not reported: %+v", fs)
	}
	flaky.down.Store(false)
	waitFor(t, "the failing destination to catch up", settled(want, true))
	waitFor(t, "status to recover", func() bool { return k.Status().Healthy() })

	// A failing source is retried and reported, then recovers.
	ln.fail.Store(true)
	k.Notify(Event{Type: EventStateChanged})
	waitFor(t, "the source error in status", func() bool { return k.Status().FetchError != "" })
	ln.open(9, 0)
	ln.fail.Store(false)
	want = ln.packed()
	waitFor(t, "recovery after the source error", settled(want, true))

	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
}

// Notify never blocks, even when the keeper is not running at all.
func TestNotifyNeverBlocks(t *testing.T) {
	k, err := New(Config{Kind: KindCLN, Source: CLNSource{RPC: &fakeLightningd{}}, Swappers: []Swapper{&FileSwapper{Path: filepath.Join(t.TempDir(), "x")}}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		for i := 0; i < 10000; i++ {
			k.Notify(Event{Type: EventOpened})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Notify blocked")
	}
	if k.Status().Events != 10000 {
		t.Fatal("events not counted")
	}
}

// A restarted keeper does not store an unchanged set again (Resumer).
func TestKeeperResumesWithoutReupload(t *testing.T) {
	dir := t.TempDir()
	ln := &fakeLightningd{chans: map[string]string{}}
	ln.open(1, 0)
	st, _ := OpenDir(filepath.Join(dir, "s"), StoreOptions{})
	local := &FileSwapper{Path: filepath.Join(dir, "scb.json")}
	for run := 0; run < 3; run++ {
		ctx, cancel := context.WithCancel(context.Background())
		k, err := New(Config{Kind: KindCLN, Source: CLNSource{RPC: ln}, Swappers: []Swapper{local, &StoreSwapper{Store: st}}, Debounce: 10 * time.Millisecond, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error)
		go func() { done <- k.Run(ctx) }()
		waitFor(t, "up to date", func() bool { return k.Status().Healthy() })
		cancel()
		<-done
	}
	if vs, _ := st.List(context.Background()); len(vs) != 1 {
		t.Fatalf("%d versions after 3 runs with one set, want 1", len(vs))
	}
	if arch, _ := local.Archived(); len(arch) != 0 {
		t.Fatalf("unchanged local file archived %d times", len(arch))
	}
}

func TestCLNSetPack(t *testing.T) {
	a, b := scbHex(1, 0), scbHex(2, 0)
	s1, err := NewCLNSet([]string{b, a})
	if err != nil {
		t.Fatal(err)
	}
	s2, _ := NewCLNSet([]string{a, b, a})
	if string(s1.Pack()) != string(s2.Pack()) || len(s2) != 2 {
		t.Fatal("packing depends on order or keeps duplicates")
	}
	want := `["` + a + `","` + b + `"]`
	if string(s1.Pack()) != want {
		t.Fatalf("pack = %s, want %s", s1.Pack(), want)
	}
	back, err := ParseCLN(s1.Pack())
	if err != nil || len(back) != 2 {
		t.Fatalf("parse: %v", err)
	}
	if _, err := ParseCLN([]byte(`{"scb": ["` + a + `"]}`)); err != nil {
		t.Fatalf("staticbackup answer: %v", err)
	}
	for _, bad := range []string{`["zz"]`, `[""]`, `{"x":1}`, `nope`} {
		if _, err := ParseCLN([]byte(bad)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", bad, err)
		}
	}
}

func TestCLNEvent(t *testing.T) {
	cases := []struct {
		topic, params string
		ok            bool
		typ           EventType
		id            string
	}{
		{"channel_opened", `{"channel_opened":{"id":"02ab","funding_msat":1000,"funding_txid":"ff00","channel_ready":false}}`, true, EventOpened, "ff00"},
		{"channel_state_changed", `{"channel_state_changed":{"peer_id":"02ab","channel_id":"c1","old_state":"CHANNELD_NORMAL","new_state":"CHANNELD_SHUTTING_DOWN"}}`, true, EventStateChanged, "c1"},
		{"channel_state_changed", `{"channel_state_changed":{"channel_id":"c2","new_state":"ONCHAIN"}}`, true, EventClosed, "c2"},
		{"channel_state_changed", `not json`, true, EventStateChanged, ""},
		{"invoice_payment", `{}`, false, "", ""},
	}
	for _, tc := range cases {
		ev, ok := CLNEvent(tc.topic, json.RawMessage(tc.params))
		if ok != tc.ok || ev.Type != tc.typ || ev.ChannelID != tc.id {
			t.Errorf("%s %s: %+v %v", tc.topic, tc.params, ev, ok)
		}
	}
}

// FuzzParseCLN: whatever ParseCLN accepts packs to a canonical array that
// parses back to the same set.
func FuzzParseCLN(f *testing.F) {
	f.Add([]byte(`["` + scbHex(1, 0) + `","` + scbHex(2, 0) + `"]`))
	f.Add([]byte(`{"scb": ["00ff"]}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"scb": null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		set, err := ParseCLN(b)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v is not ErrInvalid", err)
			}
			return
		}
		packed := set.Pack()
		again, err := ParseCLN(packed)
		if err != nil || string(again.Pack()) != string(packed) {
			t.Fatalf("packed set does not round-trip: %v", err)
		}
	})
}
