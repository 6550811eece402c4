package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/backends"
	"github.com/lnvault/lnvault/backupplugin"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/harness"
	"github.com/lnvault/lnvault/internal/s3test"
)

// The test binary is also the plugin the harness starts.
func TestMain(m *testing.M) {
	backends.Register()
	if os.Getenv("LIGHTNINGD_PLUGIN") == "1" {
		os.Exit(backupplugin.Main(context.Background()))
	}
	code := m.Run()
	if tmpl.dir != "" {
		os.RemoveAll(tmpl.dir)
	}
	os.Exit(code)
}

func TestRunCorpusAndSynthetic(t *testing.T) {
	ctx := context.Background()
	res, err := Run(ctx, Options{Bin: os.Args[0], Changes: 200, Size: 2000})
	if err != nil {
		t.Fatal(err)
	}
	if res.Ack.N != 201 || res.Raw == nil || res.Raw.N != 201 || res.P50Ratio <= 0 || res.Ack.P50 <= 0 {
		t.Fatalf("result: %+v", res)
	}
	// A destination that exists is refused, not overwritten.
	f := filepath.Join(t.TempDir(), "x.dbak")
	os.WriteFile(f, []byte("precious"), 0o600)
	if _, err := Run(ctx, Options{Bin: os.Args[0], URL: f, Changes: 5}); err == nil {
		t.Fatal("bench overwrote an existing file")
	}
	if b, _ := os.ReadFile(f); string(b) != "precious" {
		t.Fatal("existing file changed")
	}
	// A directory gets a new backup, removed afterwards.
	d := t.TempDir()
	if _, err := Run(ctx, Options{Bin: os.Args[0], URL: "file://" + d, Changes: 5}); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(d); len(ents) != 0 {
		t.Fatalf("bench left files behind: %v", ents)
	}
}

// On object storage, bench writes a scratch backup beside the URL's prefix,
// leaves the backup at the prefix as it was, and deletes the scratch one.
func TestRunObjectStorageScratchRemoved(t *testing.T) {
	ctx := context.Background()
	endpoint, bucket := s3test.Start(t)
	dir := t.TempDir()
	for _, target := range []string{s3test.URL(endpoint, bucket, "node"), "dir://" + filepath.Join(dir, "node")} {
		bk, err := lnvault.Open(ctx, target, lnvault.OpenOptions{Create: true})
		if err != nil {
			t.Fatal(err)
		}
		reqs := corpus.MustLoad()[:3]
		for _, r := range reqs {
			if err := bk.Append(ctx, r.Change()); err != nil {
				t.Fatal(err)
			}
		}
		before := bk.Metadata()
		bk.Close()
		res, err := Run(ctx, Options{Bin: os.Args[0], URL: target, Changes: 5})
		if err != nil {
			t.Fatalf("%s: %v", target, err)
		}
		if res.URL == target || res.Ack.N != 6 {
			t.Fatalf("%s: the run wrote to %s (%d acks), want a scratch backup beside it", target, res.URL, res.Ack.N)
		}
		if p, ok := strings.CutPrefix(res.URL, "dir://"); ok {
			if _, err := os.Stat(p); !os.IsNotExist(err) {
				t.Fatalf("the scratch directory %s is still there (%v)", p, err)
			}
		}
		if _, err := lnvault.Open(ctx, res.URL, lnvault.OpenOptions{ReadOnly: true}); !errors.Is(err, lnvault.ErrNotFound) {
			t.Fatalf("%s: the scratch backup %s is still there: %v", target, res.URL, err)
		}
		bk, err = lnvault.Open(ctx, target, lnvault.OpenOptions{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		if got := bk.Metadata(); got != before {
			t.Fatalf("%s: the backup at the URL changed from %+v to %+v", target, before, got)
		}
		bk.Close()
	}
}

// BenchmarkDbWriteAck: db_write ack latency through the real plugin process
// into a file backup, against write+fdatasync of the same sizes in the same
// directory, measured in the same run.
func BenchmarkDbWriteAck(b *testing.B) {
	reqs := corpus.MustLoad()
	if b.N < len(reqs) {
		reqs = reqs[:max(b.N, 1)]
	} else {
		reqs = append(reqs[:len(reqs):len(reqs)], harness.Synthetic(reqs[len(reqs)-1].DataVersion+1, b.N-len(reqs), 1300, false, 1)...)
	}
	b.ResetTimer()
	res, err := RunRequests(context.Background(), Options{Bin: os.Args[0]}, reqs, "corpus")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(ms(res.Ack.P50), "p50-ms")
	b.ReportMetric(ms(res.Ack.P99), "p99-ms")
	b.ReportMetric(ms(res.Raw.P50), "raw-p50-ms")
	b.ReportMetric(ms(res.Raw.P99), "raw-p99-ms")
	b.ReportMetric(res.P50Ratio, "p50-ratio")
	b.ReportMetric(res.P99Ratio, "p99-ratio")
}

func ms(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

// A corpus-sized backup, built once.
var tmpl struct {
	once sync.Once
	dir  string
	err  error
}

func corpusBackup(b *testing.B) string {
	tmpl.once.Do(func() {
		tmpl.dir, tmpl.err = os.MkdirTemp("", "lnvault-bench-tmpl-")
		if tmpl.err != nil {
			return
		}
		url := "file://" + filepath.Join(tmpl.dir, "backup.dbak")
		var bk lnvault.Backend
		if bk, tmpl.err = lnvault.Open(context.Background(), url, lnvault.OpenOptions{Create: true}); tmpl.err != nil {
			return
		}
		bk.Close()
		h, err := harness.New(harness.Config{Bin: os.Args[0], Dir: filepath.Join(tmpl.dir, "node"), NoNodeDB: true})
		if err != nil {
			tmpl.err = err
			return
		}
		defer h.Close()
		if tmpl.err = backupplugin.WriteLock(h.NetDir(), backupplugin.Lock{BackendURL: url}); tmpl.err != nil {
			return
		}
		ctx := context.Background()
		if tmpl.err = h.Start(ctx); tmpl.err != nil {
			return
		}
		if tmpl.err = h.Replay(ctx, corpus.MustLoad(), 1); tmpl.err != nil {
			return
		}
		_, tmpl.err = h.Stop(ctx)
	})
	if tmpl.err != nil {
		b.Fatal(tmpl.err)
	}
	return tmpl.dir
}

// BenchmarkCompactUnderLoad: db_writes keep coming while backup-compact runs
// again and again on the corpus-sized backup; reports the worst and p99 ack
// latency of those writes (the goal: no db_write waits longer than 50 ms).
func BenchmarkCompactUnderLoad(b *testing.B) {
	src := corpusBackup(b)
	dir := b.TempDir()
	data, err := os.ReadFile(filepath.Join(src, "backup.dbak"))
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(dir, "backup.dbak")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		b.Fatal(err)
	}
	compactUnderLoad(b, backupplugin.Lock{BackendURL: "file://" + path}, dir, false)
}

// BenchmarkCompactUnderLoadS3 is BenchmarkCompactUnderLoad with an s3://
// destination (versitygw) in backup.lock, holding the corpus as 2,994
// one-change segments, as the plugin writes them.
func BenchmarkCompactUnderLoadS3(b *testing.B) {
	endpoint, bucket := s3test.Start(b)
	u := s3test.URL(endpoint, bucket, "bench")
	ctx := context.Background()
	bk, err := lnvault.Open(ctx, u, lnvault.OpenOptions{Create: true})
	if err != nil {
		b.Fatal(err)
	}
	for _, r := range corpus.MustLoad() {
		if err := bk.Append(ctx, r.Change()); err != nil {
			b.Fatal(err)
		}
	}
	if err := bk.Close(); err != nil {
		b.Fatal(err)
	}
	compactUnderLoad(b, backupplugin.Lock{BackendURL: u}, b.TempDir(), false)
}

// compactUnderLoad runs the plugin on the backup lock names, holding the
// corpus; with nodeDB the harness keeps the node's database at
// dir/node/regtest/lightningd.sqlite3 (made by the caller).
func compactUnderLoad(b *testing.B, lock backupplugin.Lock, dir string, nodeDB bool) {
	h, err := harness.New(harness.Config{Bin: os.Args[0], Dir: filepath.Join(dir, "node"), NoNodeDB: !nodeDB})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	if err := backupplugin.WriteLock(h.NetDir(), lock); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if err := h.Start(ctx); err != nil {
		b.Fatal(err)
	}
	reqs := corpus.MustLoad()
	more := harness.Synthetic(reqs[len(reqs)-1].DataVersion+1, max(b.N, 1)+100000, 1300, false, 5)
	b.ResetTimer()
	var mu sync.Mutex
	compactions, compactErrs := 0, 0
	var firstErr error
	var compactTime time.Duration
	stop := make(chan struct{})
	done := make(chan struct{})
	compact := func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			t := time.Now()
			raw, err := h.Request(ctx, "backup-compact", nil)
			mu.Lock()
			var st lnvault.CompactStats
			if err == nil {
				err = json.Unmarshal(raw, &st)
			}
			if err != nil {
				compactErrs++
				if firstErr == nil {
					firstErr = err
				}
			} else {
				compactions++
				compactTime += time.Since(t)
			}
			mu.Unlock()
		}
	}
	i := 0
	for ; ; i++ {
		mu.Lock()
		enough := compactions >= 2 && i >= max(b.N, 101)
		mu.Unlock()
		if enough || i == len(more) {
			break
		}
		r := more[i]
		if _, err := h.Write(ctx, r.ID, r.DataVersion, r.Writes); err != nil {
			b.Fatal(err)
		}
		if i == 0 {
			if err := h.Init(ctx); err != nil {
				b.Fatal(err)
			}
		}
		if i == 100 {
			// After the first writes: an encrypted backup's shadow copy
			// has changes of this run to compact at.
			go compact()
		}
	}
	close(stop)
	<-done
	b.StopTimer()
	if compactErrs > 0 || compactions < 2 {
		b.Fatalf("%d compactions, %d failed (first: %v)\nplugin stderr: %s", compactions, compactErrs, firstErr, h.Stderr())
	}
	st := harness.Summarize(h.Latencies())
	b.ReportMetric(ms(st.Max), "max-ms")
	b.ReportMetric(ms(st.P99), "p99-ms")
	b.ReportMetric(ms(st.P50), "p50-ms")
	b.ReportMetric(float64(st.N), "writes")
	b.ReportMetric(float64(compactions), "compactions")
	b.ReportMetric(ms(compactTime)/float64(compactions), "compact-ms")
}

// The replay is cut into slices for the interleaved baseline without moving
// init: every early request is in the first slice, and nothing is lost or
// sent twice.
func TestReplaySlices(t *testing.T) {
	for _, tc := range []struct {
		n, early, size int
		want           string
	}{
		{250, 1, 100, "[[0 100] [100 200] [200 250]]"},
		{250, 150, 100, "[[0 150] [150 250]]"},
		{250, 300, 100, "[[0 250]]"},
		{100, 1, 100, "[[0 100]]"},
		{0, 1, 100, "[]"},
		{5, 1, 100, "[[0 5]]"},
	} {
		if got := fmt.Sprint(replaySlices(tc.n, tc.early, tc.size)); got != tc.want {
			t.Errorf("replaySlices(%d, %d, %d) = %s, want %s", tc.n, tc.early, tc.size, got, tc.want)
		}
	}
}
