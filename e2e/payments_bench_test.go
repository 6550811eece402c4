package e2e

import (
	"fmt"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
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
		name  string
		setup func() error // with l1 stopped
	}
	var srv *harness.ServerProc
	configs := []config{
		{"no backup plugin", func() error { nw.l1.Plugins, nw.l1.Args = nil, nil; return nil }},
		{"floor (write + fdatasync)", func() error { nw.l1.Plugins, nw.l1.Args = []string{floorBin}, nil; return nil }},
		{"lnvault file:", func() error {
			nw.l1.Plugins, nw.l1.Args = []string{lnvaultBin}, nil
			return initLock("file://" + fresh("file") + ".dbak")
		}},
		{"lnvault socket: (loopback)", func() error {
			nw.l1.Plugins, nw.l1.Args = []string{lnvaultBin}, nil
			if srv != nil {
				srv.Kill()
			}
			srv = harness.NewServerProc(b, lnvaultBin, "file://"+fresh("srv")+".dbak")
			srv.Start(true)
			return initLock("socket:" + srv.Addr)
		}},
		{"CLN's sqlite3 replica", func() error {
			nw.l1.Plugins = nil
			nw.l1.Args = []string{"--wallet=sqlite3://" + nw.l1.DBPath() + ":" + fresh("replica") + ".sqlite3"}
			return nil
		}},
	}
	const burst = 25
	lat := map[string][]time.Duration{}
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
			b.StartTimer()
			for k := 0; k < burst; k++ {
				t := time.Now()
				if err := realnode.PayFrom(ctx, nw.l1, nw.l2, 1_000, nw.label()); err != nil {
					b.Fatalf("%s: payment: %v", c.name, err)
				}
				lat[c.name] = append(lat[c.name], time.Since(t))
			}
			t := time.Now()
			for k := 0; k < burst*2; k++ {
				if _, err := nw.l1.Invoice(ctx, 1000, nw.label()); err != nil {
					b.Fatalf("%s: invoice: %v", c.name, err)
				}
			}
			invSecs[c.name] += time.Since(t).Seconds()
			invN[c.name] += burst * 2
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
		stats[c.name] = harness.Summarize(lat[c.name])
		rate[c.name] = float64(invN[c.name]) / invSecs[c.name]
	}
	floor, cln := configs[1].name, configs[4].name
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	for _, c := range configs {
		st := stats[c.name]
		b.Logf("%-28s payments p50 %6.1f ms p99 %6.1f ms (n=%d)  invoices %6.1f/s  | p50 ÷ floor %.3f, ÷ CLN replica %.3f | invoice rate ÷ floor %.3f, ÷ CLN replica %.3f",
			c.name, ms(st.P50), ms(st.P99), st.N, rate[c.name],
			float64(st.P50)/float64(stats[floor].P50), float64(st.P50)/float64(stats[cln].P50),
			rate[c.name]/rate[floor], rate[c.name]/rate[cln])
	}
	lv := configs[2].name
	b.ReportMetric(ms(stats[lv].P50), "lnvault-file-pay-p50-ms")
	b.ReportMetric(ms(stats[lv].P99), "lnvault-file-pay-p99-ms")
	b.ReportMetric(rate[lv], "lnvault-file-invoices/s")
	b.ReportMetric(float64(stats[floor].P50)/float64(stats[lv].P50), "floor÷lnvault-pay-p50")
	b.ReportMetric(rate[lv]/rate[floor], "lnvault÷floor-invoice-rate")
	b.ReportMetric(float64(stats[cln].P50)/float64(stats[lv].P50), "cln-replica÷lnvault-pay-p50")
	b.ReportMetric(rate[lv]/rate[cln], "lnvault÷cln-replica-invoice-rate")
}
