// Package flakylink runs network-fault campaigns: the real plugin binary, as
// lightningd drives it, backs the corpus up to a remote destination through
// toxiproxy, which injects latency and jitter, bandwidth limits, black holes,
// resets, responses cut off after the server handled the request, cut
// mid-packet, slices, links going down and half-open connections. Each run
// ends in a restore that must equal the node's database (every acknowledged
// change once, nothing else), and each db_write's wait is checked against
// the configured timeout plus one reconnection.
package flakylink

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/backends"
	"github.com/lnvault/lnvault/backupplugin"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/dumphash"
	"github.com/lnvault/lnvault/internal/harness"
	"github.com/lnvault/lnvault/internal/netfault"
	"github.com/lnvault/lnvault/internal/pyref"
	"github.com/lnvault/lnvault/internal/s3test"
	"github.com/lnvault/lnvault/restore"
)

var lnvaultBin string

func TestMain(m *testing.M) {
	backends.Register()
	s3test.SetProcessEnv() // the campaigns run in parallel
	os.Exit(harness.RunWithLnvault(m, "lnv-fl-", &lnvaultBin))
}

// faultCount is how many faults a campaign injects per pairing: 30, 300
// with LNVAULT_LONG=1, or LNVAULT_FAULTS.
func faultCount() int {
	if n, err := strconv.Atoi(os.Getenv("LNVAULT_FAULTS")); err == nil && n > 0 {
		return n
	}
	if os.Getenv("LNVAULT_LONG") == "1" {
		return 300
	}
	return 30
}

// Campaign settings: short timeouts so that a campaign fits in CI; the bound
// on a db_write's wait scales with them.
const (
	sockTimeout = time.Second
	sockDelay   = 100 * time.Millisecond
	s3Timeout   = time.Second
	sockParams  = "timeout=1s&retry_delay=100ms&retries=8"
	// slack covers a loaded CI machine's scheduling and the plugin's own
	// work (the node database commit, the log notifications).
	slack = time.Second
)

// fault is one kind of network trouble on one link.
type fault struct {
	name string
	// run injects the fault on px and returns once it is over.
	run func(ctx context.Context, px *netfault.Proxy, rng *rand.Rand) error
	// halfOpen: the server never sees the old connection close, which the
	// reference server (one connection at a time) cannot survive.
	halfOpen bool
}

func hold(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func between(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(rng.Int64N(int64(hi-lo)+1))
}

// toxicFor applies toxics for a while, then removes them.
func toxicFor(d func(rng *rand.Rand) time.Duration, ts ...func(rng *rand.Rand) netfault.Toxic) func(context.Context, *netfault.Proxy, *rand.Rand) error {
	return func(ctx context.Context, px *netfault.Proxy, rng *rand.Rand) error {
		var names []string
		for _, f := range ts {
			t := f(rng)
			if err := px.Add(t); err != nil {
				return err
			}
			names = append(names, t.Name)
		}
		hold(ctx, d(rng))
		for _, n := range names {
			if err := px.Remove(n); err != nil {
				return err
			}
		}
		return nil
	}
}

// faults is the catalogue; timeout is the client's.
func faults(timeout time.Duration) []fault {
	short := func(rng *rand.Rand) time.Duration { return between(rng, 100*time.Millisecond, 300*time.Millisecond) }
	second := func(rng *rand.Rand) time.Duration { return between(rng, 500*time.Millisecond, 1500*time.Millisecond) }
	return []fault{
		{name: "latency 50-300 ms with jitter", run: toxicFor(second, func(rng *rand.Rand) netfault.Toxic {
			return netfault.Toxic{Name: "latency", Type: "latency", Stream: netfault.Down,
				Attrs: map[string]any{"latency": 50 + rng.IntN(250), "jitter": 50}}
		})},
		{name: "bandwidth 128 KB/s", run: toxicFor(second, func(*rand.Rand) netfault.Toxic {
			return netfault.Toxic{Name: "bandwidth", Type: "bandwidth", Stream: netfault.Up, Attrs: map[string]any{"rate": 128}}
		})},
		{name: "black hole shorter than the timeout", run: toxicFor(func(rng *rand.Rand) time.Duration {
			return between(rng, timeout/4, timeout*3/4)
		}, func(*rand.Rand) netfault.Toxic {
			return netfault.Toxic{Name: "blackhole", Type: "timeout", Stream: netfault.Up, Attrs: map[string]any{"timeout": 0}}
		})},
		{name: "reset at a random point of a request", run: toxicFor(short, func(rng *rand.Rand) netfault.Toxic {
			return netfault.Toxic{Name: "reset", Type: "reset_peer", Stream: netfault.Up, Attrs: map[string]any{"timeout": rng.IntN(20)}}
		})},
		{name: "response cut off after the server handled the request", run: toxicFor(short, func(*rand.Rand) netfault.Toxic {
			return netfault.Toxic{Name: "cutreply", Type: "reset_peer", Stream: netfault.Down, Attrs: map[string]any{"timeout": 0}}
		})},
		{name: "response cut mid-packet", run: toxicFor(short, func(rng *rand.Rand) netfault.Toxic {
			return netfault.Toxic{Name: "limit", Type: "limit_data", Stream: netfault.Down, Attrs: map[string]any{"bytes": 1 + rng.IntN(30)}}
		})},
		{name: "requests sliced into small pieces", run: toxicFor(second, func(*rand.Rand) netfault.Toxic {
			return netfault.Toxic{Name: "slicer", Type: "slicer", Stream: netfault.Up, Attrs: map[string]any{"average_size": 8, "size_variation": 6, "delay": 200}}
		})},
		{name: "link down (connections refused)", run: func(ctx context.Context, px *netfault.Proxy, rng *rand.Rand) error {
			px.Down()
			hold(ctx, between(rng, 200*time.Millisecond, 800*time.Millisecond))
			return px.Up()
		}},
		{name: "half-open connection", halfOpen: true, run: func(ctx context.Context, px *netfault.Proxy, rng *rand.Rand) error {
			// The answer in flight is lost and the server never sees
			// the old connection close (a NAT that forgot it).
			if err := px.Add(netfault.Toxic{Name: "halfopen", Type: "slow_close", Stream: netfault.Up, Attrs: map[string]any{"delay": 600_000}}); err != nil {
				return err
			}
			if err := px.Add(netfault.Toxic{Name: "lostreply", Type: "timeout", Stream: netfault.Down, Attrs: map[string]any{"timeout": 0}}); err != nil {
				return err
			}
			hold(ctx, 150*time.Millisecond)
			if err := px.Remove("lostreply"); err != nil {
				return err
			}
			hold(ctx, timeout+500*time.Millisecond)
			return px.Remove("halfopen")
		}},
	}
}

// pairing is a destination behind faulty links.
type pairing struct {
	url     string             // backup.lock's URL, through the proxies
	proxies []*netfault.Proxy  // the links faults go on
	waitOn  []bool             // whether a fault on that link delays db_writes
	faults  []fault            // the catalogue for this pairing
	bound   time.Duration      // max wait of a db_write
	finish  func(t *testing.T) // after the plugin stopped: stop servers
	restore []string           // URLs that must restore the node's database
}

// workload is the corpus, then CLN-shaped writes that carry on from it.
func workload(n int) []corpus.Request {
	reqs := corpus.MustLoad()
	if need := n*150 + 300; need > len(reqs) {
		last := reqs[len(reqs)-1].DataVersion
		reqs = append(reqs, harness.Synthetic(last+1, need-len(reqs), 400, false, 3)...)
	}
	return reqs
}

type waits struct {
	byFault map[string][]time.Duration
	failed  map[string]int
	count   map[string]int
}

// campaign drives the plugin through n faults into p.
func campaign(t *testing.T, p pairing, n int) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 13))
	t.Logf("seed %d, %d faults", seed, n)
	h, err := harness.New(harness.Config{Bin: lnvaultBin, Dir: filepath.Join(t.TempDir(), "node")})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := backupplugin.WriteLock(h.NetDir(), backupplugin.Lock{BackendURL: p.url}); err != nil {
		t.Fatal(err)
	}
	if err := h.Start(ctx); err != nil {
		t.Fatal(err)
	}
	reqs := workload(n)
	next := 0
	var acked []uint32
	w := waits{byFault: map[string][]time.Duration{}, failed: map[string]int{}, count: map[string]int{}}
	// write sends the next db_write; an error is what lightningd dies of:
	// it is started again (once the fault is over) and sends it again.
	write := func(label string, faultDone <-chan struct{}) {
		if next == len(reqs) {
			t.Fatalf("the workload of %d changes ran out", len(reqs))
		}
		r := reqs[next]
		start := time.Now()
		_, err := h.Write(ctx, fmt.Sprintf("%s#%d", label, next), r.DataVersion, r.Writes)
		d := time.Since(start)
		if err != nil {
			w.failed[label]++
			t.Logf("a db_write under %q failed after %v (lightningd would restart): %v", label, d.Round(time.Millisecond), err)
			if faultDone != nil {
				<-faultDone
			}
			h.Kill()
			if err := h.Start(ctx); err != nil {
				t.Fatalf("restarting the plugin after %q: %v; logs %v", label, err, h.Logs())
			}
			return
		}
		w.byFault[label] = append(w.byFault[label], d)
		acked = append(acked, r.DataVersion)
		next++
	}
	for f := 0; f < n; f++ {
		if next > len(reqs)-200 {
			t.Fatalf("the workload ran out after %d of %d faults", f, n)
		}
		for k := 1 + rng.IntN(4); k > 0; k-- {
			write("no fault", nil)
		}
		ft := p.faults[rng.IntN(len(p.faults))]
		link := rng.IntN(len(p.proxies))
		label := ft.name
		if len(p.proxies) > 1 {
			label = fmt.Sprintf("%s (link %d)", ft.name, link+1)
		}
		w.count[label]++
		done := make(chan struct{})
		frng := rand.New(rand.NewPCG(rng.Uint64(), 1))
		var ferr error
		go func() {
			defer close(done)
			ferr = ft.run(ctx, p.proxies[link], frng)
		}()
		wl := label
		if !p.waitOn[link] {
			wl = "no fault"
		}
		// A busy node: a db_write every few tens of milliseconds.
		for running := true; running; {
			write(wl, done)
			select {
			case <-done:
				running = false
			case <-time.After(time.Duration(10+rng.IntN(30)) * time.Millisecond):
			}
		}
		<-done
		if ferr != nil {
			t.Fatalf("injecting %q: %v", label, ferr)
		}
		write(wl, nil) // the first write after it: the reconnection
	}
	if _, err := h.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if p.finish != nil {
		p.finish(t)
	}
	// Every acknowledged change, once, and nothing else, at every
	// destination.
	want, err := dumphash.Of(h.NodeDBPath())
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range p.restore {
		checkRestore(ctx, t, u, acked, want)
	}
	report(t, w, p.bound)
}

func checkRestore(ctx context.Context, t *testing.T, u string, acked []uint32, want string) {
	t.Helper()
	b, err := lnvault.Open(ctx, u, lnvault.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("opening %s after the campaign: %v", u, err)
	}
	defer b.Close()
	var got []uint32
	if err := b.Stream(ctx, 0, func(c *lnvault.Change) error { got = append(got, c.Version); return nil }); err != nil {
		t.Fatalf("streaming %s: %v", u, err)
	}
	// A stream from a snapshot (a compacted replica) starts later: the
	// versions it holds must be the tail of the acknowledged ones.
	if len(got) > len(acked) || !slices.Equal(got, acked[len(acked)-len(got):]) {
		t.Fatalf("%s holds %d changes (%s) for %d acknowledged (%s): a change lost, duplicated or not acknowledged",
			u, len(got), span(got), len(acked), span(acked))
	}
	dest := filepath.Join(t.TempDir(), "restored.sqlite3")
	if _, err := restore.Restore(ctx, b, dest, restore.Options{}); err != nil {
		t.Fatalf("restoring %s: %v", u, err)
	}
	h, err := dumphash.Of(dest)
	if err != nil {
		t.Fatal(err)
	}
	if h != want {
		t.Fatalf("the restore of %s differs from the node's database", u)
	}
}

func span(vs []uint32) string {
	if len(vs) == 0 {
		return "none"
	}
	return fmt.Sprintf("versions %d..%d", vs[0], vs[len(vs)-1])
}

// report logs the waits per fault and fails on a write that failed, or that
// waited longer under a fault than bound plus the longest wait without one
// in the same run (the disk's fsync and the machine's load, which no link
// fault explains).
func report(t *testing.T, w waits, bound time.Duration) {
	t.Helper()
	noise := harness.Summarize(w.byFault["no fault"]).Max
	t.Logf("the longest db_write without a fault: %v; a fault may add at most %v", noise.Round(time.Millisecond), bound)
	var names []string
	for n := range w.byFault {
		names = append(names, n)
	}
	for _, m := range []map[string]int{w.failed, w.count} {
		for n := range m {
			if _, ok := w.byFault[n]; !ok && !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	sort.Strings(names)
	var lines []string
	total, failed := 0, 0
	for _, n := range names {
		st := harness.Summarize(w.byFault[n])
		total += st.N
		failed += w.failed[n]
		lines = append(lines, fmt.Sprintf("%-62s faults %3d  writes %4d  failed %d  p99 %6v  max %6v",
			n, w.count[n], st.N, w.failed[n], st.P99.Round(time.Millisecond), st.Max.Round(time.Millisecond)))
		if n != "no fault" && st.Max > bound+noise {
			t.Errorf("under %q a db_write waited %v, more than the timeout plus one reconnection (%v) over the longest wait without a fault (%v)",
				n, st.Max.Round(time.Millisecond), bound, noise.Round(time.Millisecond))
		}
	}
	t.Logf("db_write waits per fault type:\n%s", strings.Join(lines, "\n"))
	t.Logf("%d acknowledged changes, %d db_writes failed: 0 lost, 0 duplicated", total, failed)
	if failed > 0 {
		t.Errorf("%d db_writes failed (lightningd would have stopped) under faults shorter than the retry budget", failed)
	}
}

func without(fs []fault, drop func(fault) bool) []fault {
	return slices.DeleteFunc(slices.Clone(fs), drop)
}

// socket: → lnvault server (a file store).
func TestFlakyLinkLnvaultServer(t *testing.T) {
	t.Parallel()
	srv := harness.NewServerProc(t, lnvaultBin, "file://"+filepath.Join(t.TempDir(), "store.dbak"))
	srv.Start(true)
	px := netfault.Start(t, srv.Addr)
	campaign(t, pairing{
		url:     "socket:" + px.Addr() + "?" + sockParams,
		proxies: []*netfault.Proxy{px}, waitOn: []bool{true},
		faults:  faults(sockTimeout),
		bound:   sockTimeout + sockDelay + slack,
		finish:  func(t *testing.T) { srv.Stop(30 * time.Second) },
		restore: []string{srv.URL},
	}, faultCount())
}

// socket: → the real Python reference server. It serves one connection at a
// time and never learns of a half-open one: that fault is left out (the
// reference cannot survive it; lnvault server can).
func TestFlakyLinkPythonServer(t *testing.T) {
	t.Parallel()
	py := pyref.StartServer(t)
	px := netfault.Start(t, py.Addr)
	campaign(t, pairing{
		url:     "socket:" + px.Addr() + "?" + sockParams,
		proxies: []*netfault.Proxy{px}, waitOn: []bool{true},
		faults:  without(faults(sockTimeout), func(f fault) bool { return f.halfOpen }),
		bound:   sockTimeout + sockDelay + slack,
		restore: []string{py.URL()},
	}, faultCount())
}

// s3:// synchronous: the S3 client → versitygw.
func TestFlakyLinkS3(t *testing.T) {
	t.Parallel()
	endpoint, bucket := s3test.Start(t)
	px := netfault.Start(t, strings.TrimPrefix(endpoint, "http://"))
	u := s3test.URL("http://"+px.Addr(), bucket, "node", "timeout=1s")
	if out, err := exec.Command(lnvaultBin, "init", u).CombinedOutput(); err != nil {
		t.Fatalf("lnvault init %s: %v\n%s", u, err, out)
	}
	campaign(t, pairing{
		url:     u,
		proxies: []*netfault.Proxy{px}, waitOn: []bool{true},
		faults: faults(s3Timeout),
		// The SDK's retry pauses up to 2 s after a failed attempt.
		bound:   s3Timeout + 2*time.Second + slack,
		restore: []string{s3test.URL(endpoint, bucket, "node")},
	}, faultCount())
}

// socket: → lnvault server --replicate s3://: faults on the plugin's link
// (db_writes wait) and on the server's link to S3 (the replica lags and
// must catch up, never stuck).
func TestFlakyLinkServerReplicateS3(t *testing.T) {
	t.Parallel()
	endpoint, bucket := s3test.Start(t)
	s3px := netfault.Start(t, strings.TrimPrefix(endpoint, "http://"))
	replicaURL := s3test.URL("http://"+s3px.Addr(), bucket, "srv", "timeout=1s")
	srv := harness.NewServerProc(t, lnvaultBin, "file://"+filepath.Join(t.TempDir(), "store.dbak"))
	srv.Extra = []string{"--replicate", replicaURL, "--replicate-interval", "100ms"}
	srv.Start(true)
	px := netfault.Start(t, srv.Addr)
	campaign(t, pairing{
		url:     "socket:" + px.Addr() + "?" + sockParams,
		proxies: []*netfault.Proxy{px, s3px}, waitOn: []bool{true, false},
		faults: faults(sockTimeout),
		bound:  sockTimeout + sockDelay + slack,
		// A graceful stop ships what the replica lacks.
		finish:  func(t *testing.T) { srv.Stop(60 * time.Second) },
		restore: []string{srv.URL, s3test.URL(endpoint, bucket, "srv")},
	}, faultCount())
}
