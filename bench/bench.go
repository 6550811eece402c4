// Package bench measures the db_write ack latency of the plugin path (a
// simulated lightningd driving the real plugin process) against a destination,
// next to a raw fdatasync of the same sizes on the destination's filesystem,
// measured in the same run. `lnvault bench` and the package's Go benchmarks
// use it.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	neturl "net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/backupplugin"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/harness"
	"golang.org/x/sys/unix"
)

// Options of a run.
type Options struct {
	Bin  string   // the plugin executable (lnvault itself)
	Args []string // its arguments
	// URL is the destination. "" makes a file backup in a temp dir; a file
	// URL or a plain path must not exist yet (a directory gets a new file in
	// it) and is removed afterwards.
	URL string
	// Changes > 0 replays a synthetic workload of that many changes of about
	// Size bytes each instead of the corpus.
	Changes int
	Size    int
	// Early is how many db_writes go before init (default 1).
	Early int
	// Log receives progress lines (nil: none).
	Log io.Writer
}

// Result of a run. Durations are per db_write.
type Result struct {
	Workload      string
	URL           string
	Ack           harness.Stats
	Elapsed       time.Duration
	ChangesPerSec float64
	// Raw is write+fdatasync of the same sizes in the destination's
	// directory; nil when the destination is not a local file.
	Raw     *harness.Stats
	RawNote string
	// RawLabel names the baseline: "raw fdatasync" for a local file, "round
	// trip" (one status request to the destination) otherwise.
	RawLabel string
	P50Ratio float64
	P99Ratio float64
	Bytes    int64 // payload bytes sent
}

func (o Options) logf(format string, args ...any) {
	if o.Log != nil {
		fmt.Fprintf(o.Log, format+"\n", args...)
	}
}

// Workload returns the requests a run sends and their name.
func Workload(changes, size int) ([]corpus.Request, string, error) {
	if changes <= 0 {
		reqs, err := corpus.Load()
		if err != nil {
			return nil, "", err
		}
		return reqs, fmt.Sprintf("CLN corpus (%d db_writes)", len(reqs)), nil
	}
	if size <= 0 {
		size = 1300 // the corpus's median request
	}
	return harness.Synthetic(1, changes, size, true, 1), fmt.Sprintf("synthetic (%d changes of ~%d bytes)", changes, size), nil
}

// RecordSize is the bytes a change takes in a file backup's record: the
// statements joined by NUL and a 9-byte header.
func RecordSize(writes []string) int {
	n := 9
	for i, w := range writes {
		if i > 0 {
			n++
		}
		n += len(w)
	}
	return n
}

// Run replays the workload through the plugin into the destination.
func Run(ctx context.Context, o Options) (Result, error) {
	if o.Early <= 0 {
		o.Early = 1
	}
	reqs, name, err := Workload(o.Changes, o.Size)
	if err != nil {
		return Result{}, err
	}
	return RunRequests(ctx, o, reqs, name)
}

// RunRequests is Run with a given workload.
func RunRequests(ctx context.Context, o Options, reqs []corpus.Request, name string) (Result, error) {
	if o.Early <= 0 {
		o.Early = 1
	}
	tmp, err := os.MkdirTemp("", "lnvault-bench-")
	if err != nil {
		return Result{}, fmt.Errorf("bench needs a temp directory (set TMPDIR): %w", err)
	}
	defer os.RemoveAll(tmp)

	url, localPath, cleanup, err := prepareDestination(ctx, o.URL, tmp)
	if err != nil {
		return Result{}, err
	}
	defer cleanup()
	res := Result{Workload: name, URL: url}
	o.logf("replaying %s through the plugin into %s ...", name, url)

	h, err := harness.New(harness.Config{Bin: o.Bin, Args: o.Args, Dir: filepath.Join(tmp, "node"), NoNodeDB: true})
	if err != nil {
		return res, err
	}
	defer h.Close()
	if err := backupplugin.WriteLock(h.NetDir(), backupplugin.Lock{BackendURL: url}); err != nil {
		return res, err
	}
	if err := h.Start(ctx); err != nil {
		return res, err
	}
	sizes := make([]int, len(reqs))
	for i, r := range reqs {
		sizes[i] = RecordSize(r.Writes)
		res.Bytes += int64(sizes[i])
	}
	// The baseline is measured in slices between slices of the replay, so
	// that both see the same disk (or network) weather: storage latency
	// drifts over seconds, and a baseline taken after the whole replay
	// compares two different moments.
	var base baseline
	if localPath == "" {
		// No filesystem of ours to fdatasync on: the floor is the
		// destination's request round trip.
		rt, err := newRoundTripper(ctx, url)
		if err != nil {
			res.RawNote = fmt.Sprintf("n/a (status round trips to %s failed: %v)", url, err)
		} else {
			defer rt.close()
			base, res.RawLabel = rt, "round trip"
		}
	} else {
		rw, err := newRawWriter(filepath.Dir(localPath), sizes)
		if err != nil {
			return res, fmt.Errorf("raw fdatasync baseline: %w", err)
		}
		defer rw.close()
		base, res.RawLabel = rw, "raw fdatasync"
	}
	var baseLats []time.Duration
	for _, sl := range replaySlices(len(reqs), o.Early, interleave) {
		from, to := sl[0], sl[1]
		start := time.Now()
		if err := h.Replay(ctx, reqs[from:to], o.Early-from); err != nil {
			return res, err
		}
		res.Elapsed += time.Since(start)
		if base != nil {
			lats, err := base.measure(ctx, sizes[from:to])
			if err != nil {
				res.RawNote = fmt.Sprintf("n/a (%s baseline failed: %v)", res.RawLabel, err)
				base = nil // closed by the defer above
				continue
			}
			baseLats = append(baseLats, lats...)
		}
	}
	if _, err := h.Stop(ctx); err != nil {
		return res, err
	}
	lats := h.Latencies()
	res.Ack = harness.Summarize(lats)
	res.ChangesPerSec = float64(len(lats)) / res.Elapsed.Seconds()
	if base == nil {
		return res, nil
	}
	raw := harness.Summarize(baseLats)
	res.Raw = &raw
	res.P50Ratio = ratio(res.Ack.P50, raw.P50)
	res.P99Ratio = ratio(res.Ack.P99, raw.P99)
	return res, nil
}

// interleave is how many db_writes go between two slices of the baseline.
const interleave = 100

// replaySlices cuts n requests into [from, to) slices of size each, except
// that the first holds at least the early requests that go before init:
// Replay sends init within a slice (or right after it), never in a later one.
func replaySlices(n, early, size int) [][2]int {
	var out [][2]int
	for from := 0; from < n; {
		to := min(from+size, n)
		if from == 0 {
			to = min(max(to, early), n)
		}
		out = append(out, [2]int{from, to})
		from = to
	}
	return out
}

// baseline measures the floor under an acknowledged change, one latency per
// size.
type baseline interface {
	measure(ctx context.Context, sizes []int) ([]time.Duration, error)
	close()
}

func ratio(a, b time.Duration) float64 {
	if b <= 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// prepareDestination creates a new backup for the run and returns its URL,
// its local file ("" if not a file) and how to remove it.
func prepareDestination(ctx context.Context, target, tmp string) (url, local string, cleanup func(), err error) {
	cleanup = func() {}
	switch {
	case target == "":
		local = filepath.Join(tmp, "bench.dbak")
	case !strings.Contains(target, ":"): // a plain path
		abs, err := filepath.Abs(target)
		if err != nil {
			return "", "", cleanup, err
		}
		if st, err := os.Stat(abs); err == nil && st.IsDir() {
			abs = filepath.Join(abs, fmt.Sprintf("lnvault-bench-%d.dbak", os.Getpid()))
		}
		local = abs
	case lnvault.Scheme(target) == "file":
		local = strings.TrimPrefix(target, "file://")
		if st, err := os.Stat(local); err == nil && st.IsDir() {
			local = filepath.Join(local, fmt.Sprintf("lnvault-bench-%d.dbak", os.Getpid()))
		}
	case lnvault.Scheme(target) == "s3" || lnvault.Scheme(target) == "dir":
		// Object storage: a scratch backup beside the prefix (never inside
		// a backup's), deleted after the run.
		u, err := neturl.Parse(target)
		if err != nil {
			return "", "", cleanup, fmt.Errorf("bench destination %q: %w", target, err)
		}
		scratch := fmt.Sprintf("lnvault-bench-%d-%d", os.Getpid(), time.Now().UnixNano())
		if p := strings.TrimSuffix(u.Path, "/"); p != "" {
			u.Path = p + "." + scratch
		} else {
			u.Path = "/" + scratch
		}
		url = u.String()
	default:
		url = target
	}
	if local != "" {
		url = "file://" + local
		if _, err := os.Stat(local); err == nil {
			return "", "", cleanup, fmt.Errorf("%s exists: bench writes a new backup, give a path that does not exist or a directory", local)
		}
	}
	b, err := lnvault.Open(ctx, url, lnvault.OpenOptions{Create: true})
	if err != nil {
		return "", "", cleanup, fmt.Errorf("creating the bench backup at %s: %w", url, err)
	}
	if err := b.Close(); err != nil {
		return "", "", cleanup, err
	}
	if local == "" {
		// Object storage: the scratch backup; socket: the server's one
		// backup, empty before the run (Create refuses one that is not).
		cleanup = func() { deleteScratch(ctx, url) }
	}
	if local != "" {
		cleanup = func() {
			os.Remove(local)
			// Backends may keep side files next to the backup (lock, temp).
			matches, _ := filepath.Glob(local + ".*")
			for _, m := range matches {
				os.Remove(m)
			}
		}
	}
	return url, local, cleanup, nil
}

// deleteScratch removes the bench's backup: the scratch one on object storage, or
// the server's (socket:).
func deleteScratch(ctx context.Context, url string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	b, err := lnvault.Open(ctx, url, lnvault.OpenOptions{})
	if err == nil {
		if d, ok := b.(lnvault.Deleter); ok {
			err = d.Delete(ctx)
		}
		b.Close()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "lnvault bench: could not delete its scratch backup %s: %v\n", url, err)
	}
}

// roundTripper times Status requests to the backup (for socket: one
// REQ_METADATA round trip, for s3:// a listing): the least any acknowledged
// change to that destination can cost.
type roundTripper struct{ b lnvault.Backend }

func newRoundTripper(ctx context.Context, url string) (*roundTripper, error) {
	b, err := lnvault.Open(ctx, url, lnvault.OpenOptions{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	return &roundTripper{b}, nil
}

// roundTripsPerSlice bounds the status requests per slice of the replay
// (~600 for the corpus, as many as before the baseline was interleaved): on
// object storage each is a billed LIST that may take tens of ms.
const roundTripsPerSlice = 20

func (r *roundTripper) measure(ctx context.Context, sizes []int) ([]time.Duration, error) {
	n := min(len(sizes), roundTripsPerSlice)
	lats := make([]time.Duration, 0, n)
	for range n {
		t := time.Now()
		if _, err := r.b.Status(ctx); err != nil {
			return nil, err
		}
		lats = append(lats, time.Since(t))
	}
	return lats, nil
}

func (r *roundTripper) close() { r.b.Close() }

// rawWriter appends to a temp file in the destination's directory with an
// fdatasync after each write: the floor under any durable append on that
// filesystem.
type rawWriter struct {
	f   *os.File
	buf []byte
}

func newRawWriter(dir string, sizes []int) (*rawWriter, error) {
	f, err := os.CreateTemp(dir, ".lnvault-rawsync-*")
	if err != nil {
		return nil, err
	}
	n := 1
	for _, s := range sizes {
		n = max(n, s)
	}
	buf := make([]byte, n)
	for i := range buf {
		buf[i] = byte(i)
	}
	return &rawWriter{f: f, buf: buf}, nil
}

func (r *rawWriter) measure(ctx context.Context, sizes []int) ([]time.Duration, error) {
	lats := make([]time.Duration, 0, len(sizes))
	for _, s := range sizes {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		t := time.Now()
		if _, err := r.f.Write(r.buf[:s]); err != nil {
			return nil, err
		}
		if err := fdatasync(r.f); err != nil {
			return nil, err
		}
		lats = append(lats, time.Since(t))
	}
	return lats, nil
}

func (r *rawWriter) close() {
	r.f.Close()
	os.Remove(r.f.Name())
}

func fdatasync(f *os.File) error {
	for {
		err := unix.Fdatasync(int(f.Fd()))
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// Print writes the result as a table.
func (r Result) Print(w io.Writer) {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d.Microseconds())/1000) }
	fmt.Fprintf(w, "workload:      %s\n", r.Workload)
	fmt.Fprintf(w, "destination:   %s\n", r.URL)
	fmt.Fprintf(w, "changes:       %d in %v (%.0f changes/s, %.1f MiB)\n", r.Ack.N, r.Elapsed.Round(time.Millisecond), r.ChangesPerSec, float64(r.Bytes)/(1<<20))
	fmt.Fprintf(w, "%-14s %12s %12s %12s\n", "", "p50", "p99", "max")
	fmt.Fprintf(w, "%-14s %12s %12s %12s\n", "db_write ack", ms(r.Ack.P50), ms(r.Ack.P99), ms(r.Ack.Max))
	if r.Raw == nil {
		fmt.Fprintf(w, "%-14s %s\n", "baseline", r.RawNote)
		return
	}
	fmt.Fprintf(w, "%-14s %12s %12s %12s\n", r.RawLabel, ms(r.Raw.P50), ms(r.Raw.P99), ms(r.Raw.Max))
	fmt.Fprintf(w, "%-14s %11.2fx %11.2fx\n", "ratio", r.P50Ratio, r.P99Ratio)
}
