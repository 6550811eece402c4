package clnext_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/backends"
	"github.com/lnvault/lnvault/backupplugin"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/harness"
	"github.com/lnvault/lnvault/internal/s3test"
	"github.com/lnvault/lnvault/scb"
	"github.com/lnvault/lnvault/scb/clnext"
)

// The test binary is also the plugin (the harness starts it with
// LIGHTNINGD_PLUGIN=1), with the SCB extension registered by the import of
// clnext and its timings shortened so the tests are quick.
func TestMain(m *testing.M) {
	backends.Register()
	if os.Getenv("LIGHTNINGD_PLUGIN") == "1" {
		clnext.Debounce = 150 * time.Millisecond
		clnext.RetryMin = 100 * time.Millisecond
		clnext.RetryMax = 400 * time.Millisecond
		clnext.EmergencyPoll = 100 * time.Millisecond
		// alias:///abs/path is the file backup at /abs/path under a scheme
		// that has no SCB store: the extension must skip it.
		lnvault.Register("alias", func(ctx context.Context, rawURL string, opts lnvault.OpenOptions) (lnvault.Backend, error) {
			return lnvault.Open(ctx, "file://"+strings.TrimPrefix(rawURL, "alias://"), opts)
		})
		os.Exit(backupplugin.Main(context.Background(), clnext.New()))
	}
	os.Exit(m.Run())
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

// lightningd's channels as staticbackup reports them: id → revision; the
// entry of a channel changes with its revision (state, peer address).
type channels struct {
	mu   sync.Mutex
	revs map[int]int
	fail bool
}

func (c *channels) set(id, rev int) { c.mu.Lock(); c.revs[id] = rev; c.mu.Unlock() }
func (c *channels) del(id int)      { c.mu.Lock(); delete(c.revs, id); c.mu.Unlock() }

func entry(id, rev int) string {
	return fmt.Sprintf("%016x%064x%08x%s", id, id, rev, strings.Repeat("5c", 40))
}

func (c *channels) entries() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	ids := make([]int, 0, len(c.revs))
	for id := range c.revs {
		ids = append(ids, id)
	}
	// lightningd's order is its own: not sorted, so the pack must sort.
	sort.Sort(sort.Reverse(sort.IntSlice(ids)))
	out := []string{}
	for _, id := range ids {
		out = append(out, entry(id, c.revs[id]))
	}
	return out
}

// packed is what recoverchannel takes for the current set.
func (c *channels) packed(t *testing.T) []byte {
	set, err := scb.NewCLNSet(c.entries())
	if err != nil {
		t.Fatal(err)
	}
	return set.Pack()
}

func (c *channels) handler(json.RawMessage) (any, error) {
	c.mu.Lock()
	fail := c.fail
	c.mu.Unlock()
	if fail {
		return nil, errors.New("staticbackup: injected failure")
	}
	return map[string]any{"scb": c.entries()}, nil
}

// node is a simulated lightningd with file backups in backup.lock.
type node struct {
	t     *testing.T
	dir   string
	paths []string
	h     *harness.Harness
	ch    *channels
	reqs  []corpus.Request
	next  int
}

func newNode(t *testing.T, opts map[string]any, urls ...string) *node {
	t.Helper()
	dir := t.TempDir()
	n := &node{t: t, dir: dir, ch: &channels{revs: map[int]int{}}, reqs: corpus.MustLoad()}
	if len(urls) == 0 {
		urls = []string{"file://" + filepath.Join(dir, "a.dbak")}
	}
	for _, u := range urls {
		path := u[strings.Index(u, "://")+3:]
		b, err := lnvault.Open(context.Background(), "file://"+path, lnvault.OpenOptions{Create: true, Format: 2})
		if err != nil {
			t.Fatal(err)
		}
		b.Close()
		n.paths = append(n.paths, path)
	}
	h, err := harness.New(harness.Config{Bin: os.Args[0], Dir: filepath.Join(dir, "node"), Options: opts,
		RPC: map[string]harness.RPCHandler{"staticbackup": n.ch.handler}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	n.h = h
	if err := backupplugin.WriteLock(h.NetDir(), backupplugin.Lock{BackendURL: urls[0], BackendURLs: urls[1:]}); err != nil {
		t.Fatal(err)
	}
	return n
}

// start starts the plugin, sends two db_writes before init (as lightningd
// does) and init.
func (n *node) start() {
	n.t.Helper()
	if err := n.h.Start(ctx(n.t)); err != nil {
		n.t.Fatal(err)
	}
	n.writes(2)
	if err := n.h.Init(ctx(n.t)); err != nil {
		n.t.Fatal(err)
	}
}

// writes sends the next k corpus db_writes; each must be answered
// "continue" (Write checks), and quickly.
func (n *node) writes(k int) {
	n.t.Helper()
	for i := 0; i < k; i++ {
		r := n.reqs[n.next]
		n.next++
		lat, err := n.h.Write(ctx(n.t), r.ID, r.DataVersion, r.Writes)
		if err != nil {
			n.t.Fatal(err)
		}
		if lat > 5*time.Second {
			n.t.Fatalf("db_write %d took %v", r.DataVersion, lat)
		}
	}
}

func (n *node) notifyOpened(id int) {
	n.t.Helper()
	err := n.h.Notify("channel_opened", map[string]any{"channel_opened": map[string]any{
		"id": "02" + strings.Repeat("11", 32), "funding_msat": 100000000, "funding_txid": fmt.Sprintf("%064x", id), "channel_ready": false}})
	if err != nil {
		n.t.Fatal(err)
	}
}

func (n *node) notifyState(id int, state string) {
	n.t.Helper()
	err := n.h.Notify("channel_state_changed", map[string]any{"channel_state_changed": map[string]any{
		"peer_id": "02" + strings.Repeat("11", 32), "channel_id": fmt.Sprintf("%064x", id), "short_channel_id": "103x1x0",
		"timestamp": "2026-01-02T15:04:05.000Z", "old_state": "CHANNELD_AWAITING_LOCKIN", "new_state": state, "cause": "user", "message": "test"}})
	if err != nil {
		n.t.Fatal(err)
	}
}

func (n *node) status() (backupplugin.StatusReport, clnext.Status) {
	n.t.Helper()
	raw, err := n.h.Request(ctx(n.t), "backup-status", nil)
	if err != nil {
		n.t.Fatal(err)
	}
	var st backupplugin.StatusReport
	var ext struct {
		Extensions struct {
			SCB clnext.Status `json:"scb"`
		} `json:"extensions"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		n.t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &ext); err != nil {
		n.t.Fatal(err)
	}
	return st, ext.Extensions.SCB
}

func (n *node) store(i int) *scb.DirStore {
	st, err := scb.OpenDir(n.paths[i]+scb.DirSuffix, scb.StoreOptions{})
	if err != nil {
		n.t.Fatal(err)
	}
	return st
}

// versions returns the plaintexts of every version of kind in backup i's
// SCB folder, oldest first.
func (n *node) versions(i int, kind scb.Kind, ids ...age.Identity) [][]byte {
	n.t.Helper()
	st := n.store(i)
	vs, err := st.List(context.Background())
	if err != nil {
		return nil
	}
	var out [][]byte
	for _, v := range vs {
		if v.Kind != kind {
			continue
		}
		data, _, err := scb.Fetch(context.Background(), st, v, ids)
		if err != nil {
			n.t.Fatalf("version %s of %s: %v", v.ID, st, err)
		}
		out = append(out, data)
	}
	return out
}

func (n *node) localCopy() []byte {
	b, _ := os.ReadFile(filepath.Join(n.h.NetDir(), clnext.DefaultLocalCopy))
	return b
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitHealthy waits until every SCB destination is up to date: the keeper
// marks them after its last store, a moment after the first copy is visible.
func waitHealthy(t *testing.T, n *node) {
	t.Helper()
	waitFor(t, "a healthy SCB status", func() bool { _, ext := n.status(); return ext.Healthy })
}

func last(vs [][]byte) []byte {
	if len(vs) == 0 {
		return nil
	}
	return vs[len(vs)-1]
}

// Bursts of channel events: one staticbackup call per burst, and after each
// burst every destination (each backup's SCB folder and the local copy) holds
// the new set, every earlier set still kept as a version; db_write keeps
// being answered throughout.
func TestBurstsReachEveryDestination(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	n := newNode(t, nil, "file://"+filepath.Join(dir, "a.dbak"), "file://"+filepath.Join(dir, "b.dbak"))
	n.ch.set(1, 0)
	n.start()
	var sets [][]byte
	want := n.ch.packed(t)
	sets = append(sets, want)
	check := func(what string) {
		t.Helper()
		waitFor(t, what, func() bool {
			return bytes.Equal(last(n.versions(0, scb.KindCLN)), want) &&
				bytes.Equal(last(n.versions(1, scb.KindCLN)), want) &&
				bytes.Equal(n.localCopy(), want)
		})
	}
	check("the initial set at every destination")
	if calls := n.h.RPCCalls("staticbackup"); calls != 1 {
		t.Fatalf("%d staticbackup calls after init, want 1", calls)
	}

	bursts := []func(){
		func() { // two channels opened
			n.ch.set(2, 0)
			n.ch.set(3, 0)
			for _, id := range []int{2, 3} {
				n.notifyOpened(id)
				n.notifyState(id, "CHANNELD_AWAITING_LOCKIN")
			}
		},
		func() { // they lock in, a state change per channel, repeated
			for r := 1; r <= 3; r++ {
				for _, id := range []int{1, 2, 3} {
					n.ch.set(id, r)
					n.notifyState(id, "CHANNELD_NORMAL")
				}
			}
		},
		func() { // one closes
			n.ch.del(2)
			n.notifyState(2, "CLOSINGD_COMPLETE")
			n.notifyState(2, "FUNDING_SPEND_SEEN")
			n.notifyState(2, "ONCHAIN")
		},
	}
	for i, burst := range bursts {
		before := n.h.RPCCalls("staticbackup")
		burst()
		n.writes(3) // db_writes interleaved with the burst
		want = n.ch.packed(t)
		sets = append(sets, want)
		check(fmt.Sprintf("burst %d's set at every destination", i))
		// Coalesced: one call for the burst (a second one if the burst
		// straddled the debounce), never one per event.
		if calls := n.h.RPCCalls("staticbackup") - before; calls < 1 || calls > 2 {
			t.Fatalf("burst %d: %d staticbackup calls", i, calls)
		}
	}
	// Events that do not change the set store nothing new.
	_, ext := n.status()
	fetched := ext.CLN.Fetches
	n.notifyState(1, "CHANNELD_NORMAL")
	waitFor(t, "the refetch", func() bool { _, s := n.status(); return s.CLN.Fetches > fetched })

	for i := range n.paths {
		got := n.versions(i, scb.KindCLN)
		if len(got) != len(sets) {
			t.Fatalf("backup %d holds %d versions, want %d", i, len(got), len(sets))
		}
		for j := range sets {
			if !bytes.Equal(got[j], sets[j]) {
				t.Fatalf("backup %d version %d = %s, want %s", i, j, got[j], sets[j])
			}
		}
	}
	arch, _ := filepath.Glob(filepath.Join(n.h.NetDir(), clnext.DefaultLocalCopy+".archive", "*"))
	if len(arch) != len(sets)-1 {
		t.Fatalf("local copy archive holds %d versions, want %d", len(arch), len(sets)-1)
	}

	waitHealthy(t, n)
	st, ext := n.status()
	if len(st.Destinations) != 2 || ext.State != "running" || !ext.Healthy || ext.Encrypted || ext.CLN == nil {
		t.Fatalf("backup-status: %+v %+v", st, ext)
	}
	if len(ext.CLN.Destinations) != 3 || ext.CLN.Channels != 2 {
		t.Fatalf("scb destinations: %+v", ext.CLN)
	}
	for _, d := range ext.CLN.Destinations {
		if !d.UpToDate || d.Swaps != uint64(len(sets)) || d.Failures != 0 {
			t.Fatalf("destination %+v", d)
		}
	}
	if ext.EmergencyWaiting == "" || ext.Emergency != nil {
		t.Fatalf("emergency.recover: %+v", ext)
	}
	// The manifest documents the options and subscriptions.
	m, _ := json.Marshal(n.h.Manifest())
	for _, s := range []string{clnext.OptEncryptTo, clnext.OptRecipientsFile, clnext.OptLocalCopy, "channel_opened", "channel_state_changed"} {
		if !bytes.Contains(m, []byte(s)) {
			t.Fatalf("manifest lacks %s: %s", s, m)
		}
	}
	code, err := n.h.Stop(ctx(t))
	if err != nil || code != 0 {
		t.Fatalf("stop: %d %v", code, err)
	}

	// A restart with an unchanged set stores nothing new.
	n.start()
	waitFor(t, "the first fetch after restart", func() bool { _, s := n.status(); return s.CLN != nil && s.CLN.Healthy() })
	for i := range n.paths {
		if got := len(n.versions(i, scb.KindCLN)); got != len(sets) {
			t.Fatalf("after restart backup %d holds %d versions, want %d", i, got, len(sets))
		}
	}
}

// A destination that cannot store (its SCB folder's name is taken by a
// file) is retried and reported; db_write and the other destinations go on;
// once fixed it catches up with the current set.
func TestFailingDestinationDoesNotBlock(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	n := newNode(t, nil, "file://"+filepath.Join(dir, "a.dbak"), "file://"+filepath.Join(dir, "b.dbak"))
	blocker := n.paths[1] + scb.DirSuffix
	if err := os.WriteFile(blocker, []byte("in the way"), 0o600); err != nil {
		t.Fatal(err)
	}
	n.ch.set(1, 0)
	n.start()
	want := n.ch.packed(t)
	waitFor(t, "the healthy destination", func() bool { return bytes.Equal(last(n.versions(0, scb.KindCLN)), want) })
	waitFor(t, "a failure reported", func() bool {
		_, ext := n.status()
		for _, d := range ext.CLN.Destinations {
			if strings.Contains(d.Name, "b.dbak") && d.Failures >= 2 && strings.Contains(d.LastError, "not a directory") && !d.UpToDate {
				return true
			}
		}
		return false
	})
	// While it fails: channel events and db_writes go on.
	for r := 1; r <= 3; r++ {
		n.ch.set(r+1, 0)
		n.notifyOpened(r + 1)
		start := time.Now()
		n.writes(5)
		if d := time.Since(start); d > 10*time.Second {
			t.Fatalf("5 db_writes took %v while a SCB destination fails", d)
		}
	}
	want = n.ch.packed(t)
	waitFor(t, "the new set at the healthy destination", func() bool { return bytes.Equal(last(n.versions(0, scb.KindCLN)), want) })
	st, ext := n.status()
	if ext.Healthy || !st.Destinations[1].OK {
		t.Fatalf("status while the SCB folder fails: %+v %+v", st.Destinations, ext)
	}

	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the failed destination to catch up", func() bool { return bytes.Equal(last(n.versions(1, scb.KindCLN)), want) })
	waitFor(t, "healthy", func() bool { _, ext := n.status(); return ext.Healthy })
	// staticbackup failing is reported too, and recovers.
	n.ch.mu.Lock()
	n.ch.fail = true
	n.ch.mu.Unlock()
	n.notifyOpened(9)
	waitFor(t, "the fetch error reported", func() bool {
		_, ext := n.status()
		return strings.Contains(ext.CLN.FetchError, "injected failure") && !ext.Healthy
	})
	n.writes(2)
	n.ch.mu.Lock()
	n.ch.fail = false
	n.ch.mu.Unlock()
	n.notifyOpened(9)
	waitFor(t, "recovery from the fetch error", func() bool { _, ext := n.status(); return ext.Healthy })
}

// emergency.recover is shipped once it appears and whenever it changes.
func TestEmergencyRecoverShipped(t *testing.T) {
	t.Parallel()
	n := newNode(t, nil)
	n.start()
	em := filepath.Join(n.h.NetDir(), clnext.EmergencyFile)
	var shipped [][]byte
	for i := 0; i < 3; i++ {
		data := make([]byte, 200+i*73)
		rand.Read(data)
		data[0], data[len(data)-1] = 0xff, 0xff // never a zero nonce or tag
		// lightningd replaces it by rename; write it the same way.
		tmp := em + ".tmp"
		if err := os.WriteFile(tmp, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, em); err != nil {
			t.Fatal(err)
		}
		shipped = append(shipped, data)
		waitFor(t, fmt.Sprintf("emergency.recover %d shipped", i), func() bool {
			cp, _ := os.ReadFile(filepath.Join(n.h.NetDir(), clnext.DefaultEmergencyCopy))
			return bytes.Equal(last(n.versions(0, scb.KindCLNEmergency)), data) && bytes.Equal(cp, data)
		})
		n.writes(2)
	}
	got := n.versions(0, scb.KindCLNEmergency)
	if len(got) != len(shipped) {
		t.Fatalf("%d emergency.recover versions, want %d", len(got), len(shipped))
	}
	// The staticbackup set is there too, as its own kind.
	if v := n.versions(0, scb.KindCLN); len(v) != 1 || string(v[0]) != "[]" {
		t.Fatalf("cln-scb versions: %q", v)
	}
	_, ext := n.status()
	if ext.Emergency == nil || !ext.Emergency.Healthy() || ext.EmergencyWaiting != "" || !ext.Healthy {
		t.Fatalf("status: %+v", ext)
	}
}

// Encryption options: the destinations hold only ciphertext, the local copy
// the plain set; the right identity gets the set back.
func TestEncryptedDestinations(t *testing.T) {
	t.Parallel()
	id1, _ := age.GenerateX25519Identity()
	id2, _ := age.GenerateX25519Identity()
	dir := t.TempDir()
	rfile := filepath.Join(dir, "recipients.txt")
	os.WriteFile(rfile, []byte("# backup key 2\n"+id2.Recipient().String()+"\n"), 0o600)
	n := newNode(t, map[string]any{clnext.OptEncryptTo: id1.Recipient().String(), clnext.OptRecipientsFile: rfile})
	n.ch.set(1, 0)
	n.ch.set(2, 0)
	n.start()
	want := n.ch.packed(t)
	waitFor(t, "the encrypted set", func() bool { return bytes.Equal(last(n.versions(0, scb.KindCLN, id1)), want) })
	if got := last(n.versions(0, scb.KindCLN, id2)); !bytes.Equal(got, want) {
		t.Fatal("the recipients-file key cannot decrypt")
	}
	files, _ := filepath.Glob(filepath.Join(n.paths[0]+scb.DirSuffix, "*.scb"))
	for _, f := range files {
		raw, _ := os.ReadFile(f)
		if bytes.Contains(raw, []byte(entry(1, 0))) || bytes.Contains(raw, []byte(strings.Repeat("5c", 40))) {
			t.Fatalf("%s holds plaintext", f)
		}
	}
	vs, _ := n.store(0).List(context.Background())
	if len(vs) != 1 || !vs[0].Encrypted || vs[0].Channels != 2 {
		t.Fatalf("versions: %+v", vs)
	}
	if !bytes.Equal(n.localCopy(), want) {
		t.Fatal("the local copy is not the plain set")
	}
	waitHealthy(t, n)
	_, ext := n.status()
	if !ext.Encrypted || !ext.Healthy {
		t.Fatalf("status: %+v", ext)
	}
}

// A bad recipient disables the SCB extension (never a plaintext fallback),
// loudly, without stopping the node or its database backups.
func TestBadRecipientDisablesOnlySCB(t *testing.T) {
	t.Parallel()
	n := newNode(t, map[string]any{clnext.OptEncryptTo: "age1notakey"})
	n.ch.set(1, 0)
	n.start()
	n.writes(3)
	st, ext := n.status()
	if ext.State != "disabled" || !strings.Contains(ext.Error, "age recipient") || ext.Healthy || !st.Destinations[0].OK {
		t.Fatalf("status: %+v %+v", st, ext)
	}
	if !n.h.LogsContain("age recipient") {
		t.Fatalf("no log about the bad recipient: %v", n.h.Logs())
	}
	time.Sleep(300 * time.Millisecond)
	if n.h.RPCCalls("staticbackup") != 0 || n.versions(0, scb.KindCLN) != nil || n.localCopy() != nil {
		t.Fatal("a disabled extension stored something")
	}
}

// A destination whose scheme has no SCB store is skipped (logged once,
// listed in status); the others get the set.
func TestSchemeWithoutStoreSkipped(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	n := newNode(t, nil, "file://"+filepath.Join(dir, "a.dbak"), "alias://"+filepath.Join(dir, "b.dbak"))
	n.ch.set(1, 0)
	n.start()
	want := n.ch.packed(t)
	// The keeper marks its destinations up to date after the last store, so
	// wait for health too, not only for the first destination's copy.
	waitFor(t, "the set", func() bool {
		if !bytes.Equal(last(n.versions(0, scb.KindCLN)), want) {
			return false
		}
		_, ext := n.status()
		return ext.Healthy
	})
	_, ext := n.status()
	if len(ext.Skipped) != 1 || !strings.HasPrefix(ext.Skipped[0].URL, "alias://") || len(ext.CLN.Destinations) != 2 || !ext.Healthy {
		t.Fatalf("status: %+v", ext)
	}
	count := 0
	for _, l := range n.h.Logs() {
		if strings.Contains(l.Message, "skip a destination") {
			count++
		}
	}
	if count != 1 {
		t.Fatalf("%d skip logs, want 1", count)
	}
	if _, err := os.Stat(n.paths[1] + scb.DirSuffix); err == nil {
		t.Fatal("the skipped destination got an SCB folder")
	}
}

// An object-storage destination in backup.lock: the database changes go to
// the replica, the SCBs to <prefix>/scb/ of the same URL.
func TestS3Destination(t *testing.T) {
	ep, bkt := s3test.Start(t) // the plugin process inherits the AWS_* variables
	url := s3test.URL(ep, bkt, "node")
	b, err := lnvault.Open(ctx(t), url, lnvault.OpenOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	dir := t.TempDir()
	n := &node{t: t, dir: dir, ch: &channels{revs: map[int]int{}}, reqs: corpus.MustLoad()}
	h, err := harness.New(harness.Config{Bin: os.Args[0], Dir: filepath.Join(dir, "node"),
		RPC: map[string]harness.RPCHandler{"staticbackup": n.ch.handler}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	n.h = h
	if err := backupplugin.WriteLock(h.NetDir(), backupplugin.Lock{BackendURL: url}); err != nil {
		t.Fatal(err)
	}
	n.ch.set(1, 0)
	n.start()
	st, err := scb.OpenStore(ctx(t), url, scb.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	latest := func() []byte {
		v, err := scb.Select(context.Background(), st, scb.KindCLN, "")
		if err != nil {
			return nil
		}
		data, _, err := scb.Fetch(context.Background(), st, v, nil)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	for r := 1; r <= 2; r++ {
		want := n.ch.packed(t)
		waitFor(t, "the set on S3", func() bool { return bytes.Equal(latest(), want) })
		n.ch.set(r+1, 0)
		n.notifyOpened(r + 1)
		n.writes(3)
	}
	want := n.ch.packed(t)
	waitFor(t, "the last set on S3", func() bool { return bytes.Equal(latest(), want) })
	vs, err := st.List(ctx(t))
	if err != nil || len(vs) != 3 {
		t.Fatalf("%d versions on S3 (%v), want 3", len(vs), err)
	}
	waitHealthy(t, n)
	stat, ext := n.status()
	if !stat.Destinations[0].OK || !ext.Healthy || len(ext.CLN.Destinations) != 2 {
		t.Fatalf("status: %+v %+v", stat, ext)
	}
	if code, err := n.h.Stop(ctx(t)); err != nil || code != 0 {
		t.Fatalf("stop: %d %v", code, err)
	}
	// Restarted with the set unchanged: the replica and the SCBs resume,
	// and no new version is stored.
	n.start()
	n.writes(2)
	waitFor(t, "healthy after restart", func() bool { _, ext := n.status(); return ext.Healthy })
	if vs, err := st.List(ctx(t)); err != nil || len(vs) != 3 {
		t.Fatalf("after restart %d versions on S3 (%v), want 3", len(vs), err)
	}
}
