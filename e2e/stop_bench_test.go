package e2e

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/lnvault/lnvault/internal/harness"
	"github.com/lnvault/lnvault/internal/realnode"
)

// BenchmarkQuietStop: how long a quiet `lightning-cli stop` takes (the stop
// RPC until lightningd's process is gone) for a node with lnvault (which
// stays through the shutdown until nothing else can write) and for the same
// kind of node without any backup plugin, measured in turns so both see the
// same disk.
//
//	go test ./e2e -run '^$' -bench QuietStop -benchtime 20x
func BenchmarkQuietStop(b *testing.B) {
	nw := getNetwork(b)
	ctx := testCtx(b, 30*time.Minute)
	with, err := realnode.NewNode(tools, nw.btc, "stopwith", filepath.Join(b.TempDir(), "w"))
	if err != nil {
		b.Fatal(err)
	}
	without, err := realnode.NewNode(tools, nw.btc, "stopwithout", filepath.Join(b.TempDir(), "wo"))
	if err != nil {
		b.Fatal(err)
	}
	if out, err := lnvault("init", "file://"+filepath.Join(b.TempDir(), "w.dbak"), "--lightning-dir", with.NetDir()); err != nil {
		b.Fatalf("lnvault init: %v: %s", err, out)
	}
	with.Plugins = []string{lnvaultBin}
	defer with.Kill()
	defer without.Kill()
	stopTime := func(n *realnode.Node) time.Duration {
		if err := n.Start(ctx); err != nil {
			b.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond) // let the start's own writes settle
		start := time.Now()
		if err := n.Stop(ctx); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	var got, ref []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%2 == 0 {
			got = append(got, stopTime(with))
			ref = append(ref, stopTime(without))
		} else {
			ref = append(ref, stopTime(without))
			got = append(got, stopTime(with))
		}
	}
	b.StopTimer()
	harness.ReportRatios(b, got, ref, "noplugin")
}
