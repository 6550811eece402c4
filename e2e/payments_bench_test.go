package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lnvault/lnvault/internal/harness"
	"github.com/lnvault/lnvault/internal/realnode"
)

// BenchmarkRealNodePayments: payment latency (l1 → l2, one at a time) and
// invoice rate on l1, a real Core Lightning node, in each configuration:
// no backup plugin; the floor (a plugin that only writes each db_write to a
// preallocated file and fdatasyncs it, e2e/floorplugin); lnvault to file:;
// lnvault to socket: (lnvault server on loopback, its store on the same
// disk); Core Lightning's own synchronous SQLite replica. Configurations run
// in bursts, in a shuffled order each round, so that all see the same disk;
// each is reported with its ratio to the floor and to CLN's replica.
func BenchmarkRealNodePayments(b *testing.B) {
	nw := getNetwork(b)
	ctx := testCtx(b, 60*time.Minute)
	floorBin := filepath.Join(workDir, "floorplugin")
	if out, err := exec.Command("go", "build", "-o", floorBin, "./floorplugin").CombinedOutput(); err != nil {
		b.Fatalf("building the floor plugin: %v: %s", err, out)
	}
	seq := 0
	fresh := func(what string) string {
		seq++
		return filepath.Join(workDir, fmt.Sprintf("bench-%s-%d-%d", what, time.Now().UnixNano(), seq))
	}
	initLock := func(url string) error {
		if out, err := lnvault("init", url, "--lightning-dir", nw.l1.NetDir(), "--force"); err != nil {
			return fmt.Errorf("lnvault init %s: %v: %s", url, err, out)
		}
		return nil
	}
	type config struct {
		short string // for LNVAULT_BENCH_CONFIGS
		name  string
		setup func() error // with l1 stopped
	}
	var srv *harness.ServerProc
	configs := []config{
		{"none", "no backup plugin", func() error { nw.l1.Plugins, nw.l1.Args = nil, nil; return nil }},
		{"floor", "floor (write + fdatasync)", func() error { nw.l1.Plugins, nw.l1.Args = []string{floorBin}, nil; return nil }},
		{"file", "lnvault file:", func() error {
			nw.l1.Plugins, nw.l1.Args = []string{lnvaultBin}, nil
			return initLock("file://" + fresh("file") + ".dbak")
		}},
		{"socket", "lnvault socket: (loopback)", func() error {
			nw.l1.Plugins, nw.l1.Args = []string{lnvaultBin}, nil
			if srv != nil {
				srv.Kill()
			}
			srv = harness.NewServerProc(b, lnvaultBin, "file://"+fresh("srv")+".dbak")
			srv.Start(true)
			return initLock("socket:" + srv.Addr)
		}},
		{"cln", "CLN's sqlite3 replica", func() error {
			nw.l1.Plugins = nil
			nw.l1.Args = []string{"--wallet=sqlite3://" + nw.l1.DBPath() + ":" + fresh("replica") + ".sqlite3"}
			return nil
		}},
	}
	if only := os.Getenv("LNVAULT_BENCH_CONFIGS"); only != "" {
		// A focused run (more rounds of fewer configurations); floor and
		// CLN's replica are the references, so they always run.
		keep := map[string]bool{"floor": true, "cln": true}
		for _, n := range strings.Split(only, ",") {
			keep[strings.TrimSpace(n)] = true
		}
		configs = slices.DeleteFunc(configs, func(c config) bool { return !keep[c.short] })
	}
	const burst = 25
	// Per configuration: every payment's latency, and per round the burst's
	// payment p50 and invoice rate. The disk's speed drifts by tens of
	// percent within seconds, so the figures that count are ratios between
	// bursts of the same round (seconds apart), summarised by their median
	// over the rounds; totals over the run are printed beside them.
	lat := map[string][]time.Duration{}
	roundP50 := map[string][]float64{}
	roundRate := map[string][]float64{}
	invSecs := map[string]float64{}
	invN := map[string]int{}
	rounds := max(b.N, 2)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 9))
	b.ResetTimer()
	for r := 0; r < rounds; r++ {
		for _, i := range rng.Perm(len(configs)) {
			c := configs[i]
			b.StopTimer()
			if err := nw.l1.Stop(ctx); err != nil {
				b.Fatal(err)
			}
			if err := c.setup(); err != nil {
				b.Fatal(err)
			}
			if err := nw.startL1(ctx); err != nil {
				b.Fatalf("%s: start: %v", c.name, err)
			}
			time.Sleep(time.Second) // start-up work (any plugin's) is not measured
			b.StartTimer()
			var burstLat []time.Duration
			for k := 0; k < burst; k++ {
				t := time.Now()
				if err := realnode.PayFrom(ctx, nw.l1, nw.l2, 1_000, nw.label()); err != nil {
					b.Fatalf("%s: payment: %v", c.name, err)
				}
				burstLat = append(burstLat, time.Since(t))
			}
			lat[c.short] = append(lat[c.short], burstLat...)
			roundP50[c.short] = append(roundP50[c.short], float64(harness.Summarize(burstLat).P50))
			t := time.Now()
			for k := 0; k < burst*2; k++ {
				if _, err := nw.l1.Invoice(ctx, 1000, nw.label()); err != nil {
					b.Fatalf("%s: invoice: %v", c.name, err)
				}
			}
			secs := time.Since(t).Seconds()
			invSecs[c.short] += secs
			invN[c.short] += burst * 2
			roundRate[c.short] = append(roundRate[c.short], float64(burst*2)/secs)
		}
	}
	b.StopTimer()
	// Back to the suite's configuration: lnvault on a file: backup.
	if err := nw.l1.Stop(ctx); err != nil {
		b.Fatal(err)
	}
	nw.backup = "file://" + fresh("file") + ".dbak"
	nw.l1.Plugins, nw.l1.Args = []string{lnvaultBin}, nil
	if err := initLock(nw.backup); err != nil {
		b.Fatal(err)
	}
	if err := nw.startL1(ctx); err != nil {
		b.Fatal(err)
	}
	stats := map[string]harness.Stats{}
	rate := map[string]float64{}
	for _, c := range configs {
		stats[c.short] = harness.Summarize(lat[c.short])
		rate[c.short] = float64(invN[c.short]) / invSecs[c.short]
	}
	// paired returns the median over rounds of x's figure ÷ ref's, and the
	// interquartile range of those ratios.
	paired := func(fig map[string][]float64, x, ref string) (med, q1, q3 float64) {
		var rs []float64
		for i := range fig[x] {
			rs = append(rs, fig[x][i]/fig[ref][i])
		}
		slices.Sort(rs)
		at := func(q float64) float64 { return rs[int(q*float64(len(rs)-1)+0.5)] }
		return at(0.5), at(0.25), at(0.75)
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	// One log entry: the testing package keeps 10 lines of a benchmark's
	// output, and the probe run (b.N = 1) logs its table too.
	var table strings.Builder
	fmt.Fprintf(&table, "%d rounds; ratios are medians of per-round ratios [interquartile range]", rounds)
	for _, c := range configs {
		st := stats[c.short]
		pf, pf1, pf3 := paired(roundP50, c.short, "floor")
		rf, rf1, rf3 := paired(roundRate, c.short, "floor")
		pc, _, _ := paired(roundP50, c.short, "cln")
		rc, _, _ := paired(roundRate, c.short, "cln")
		fmt.Fprintf(&table, "\n%-28s payments p50 %6.1f ms p99 %6.1f ms (n=%d)  invoices %6.1f/s | p50 ÷ floor %.3f [%.3f-%.3f], ÷ CLN replica %.3f | invoice rate ÷ floor %.3f [%.3f-%.3f], ÷ CLN replica %.3f",
			c.name, ms(st.P50), ms(st.P99), st.N, rate[c.short], pf, pf1, pf3, pc, rf, rf1, rf3, rc)
	}
	if b.N > 1 {
		b.Log(table.String())
	} else {
		fmt.Fprintln(os.Stderr, table.String()) // the probe run: kept out of b's 10 lines
	}
	for _, lv := range []string{"file", "socket"} {
		if _, ok := stats[lv]; !ok {
			continue
		}
		pf, _, _ := paired(roundP50, lv, "floor")
		rf, _, _ := paired(roundRate, lv, "floor")
		pc, _, _ := paired(roundP50, lv, "cln")
		rc, _, _ := paired(roundRate, lv, "cln")
		b.ReportMetric(ms(stats[lv].P50), lv+"-pay-p50-ms")
		b.ReportMetric(rate[lv], lv+"-invoices/s")
		b.ReportMetric(1/pf, "floor÷"+lv+"-pay-p50")
		b.ReportMetric(rf, lv+"÷floor-invoice-rate")
		b.ReportMetric(1/pc, "cln-replica÷"+lv+"-pay-p50")
		b.ReportMetric(rc, lv+"÷cln-replica-invoice-rate")
	}
}
