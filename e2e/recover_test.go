package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/lnvault/lnvault/internal/realnode"
	"github.com/lnvault/lnvault/scb"
)

// TestSCBRecoversFunds is the last resort: a node's database is gone for
// good; a fresh node with the same hsm_secret takes lnvault's static channel
// backup (scb get → recoverchannel, or the shipped emergency.recover →
// emergencyrecover), its peer force-closes, and once blocks are mined the
// channel's funds are back in the fresh node's wallet.
func TestSCBRecoversFunds(t *testing.T) {
	nw := getNetwork(t)
	for _, how := range []string{"recoverchannel", "emergencyrecover"} {
		t.Run(how, func(t *testing.T) { recoverFunds(t, nw, how) })
	}
}

func recoverFunds(t *testing.T, nw *network, how string) {
	ctx := testCtx(t, 15*time.Minute)
	name := "r" + how[:1]
	l3, err := realnode.NewNode(tools, nw.btc, name, filepath.Join(workDir, name))
	if err != nil {
		t.Fatal(err)
	}
	backup := "file://" + filepath.Join(workDir, name+".dbak")
	if out, err := lnvault("init", backup, "--lightning-dir", l3.NetDir()); err != nil {
		t.Fatalf("lnvault init: %v: %s", err, out)
	}
	l3.Plugins = []string{lnvaultBin}
	if err := l3.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer l3.Kill()
	if err := l3.Fund(ctx, "0.01"); err != nil {
		t.Fatal(err)
	}
	const channelSat = 500_000
	if err := l3.OpenChannel(ctx, nw.l2, channelSat, 0); err != nil {
		t.Fatal(err)
	}
	cs, err := l3.Channels(ctx)
	if err != nil || len(cs) != 1 {
		t.Fatalf("channels %v, %v", cs, err)
	}
	onchainBefore := confirmedSat(t, l3)
	// Shipped: the channel in the cln-scb version, and emergency.recover.
	if err := realnode.WaitFor(ctx, scbBound, "the channel's static channel backup to be shipped", func() (bool, error) {
		return slices.Contains(shippedChannels(t, backup), cs[0].ChannelID) &&
			len(shippedVersionsOf(t, backup, scb.KindCLNEmergency)) > 0, nil
	}); err != nil {
		t.Fatal(err)
	}

	// The disaster: the node and its database are gone; its hsm_secret is
	// kept (it is in the operator's safe).
	l3.Kill()
	secret, err := os.ReadFile(filepath.Join(l3.NetDir(), "hsm_secret"))
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := realnode.NewNode(tools, nw.btc, name+"b", filepath.Join(workDir, name+"b"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fresh.NetDir(), "hsm_secret"), secret, 0o400); err != nil {
		t.Fatal(err)
	}
	if err := fresh.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer fresh.Kill()
	switch how {
	case "recoverchannel":
		out := filepath.Join(t.TempDir(), "scb.json")
		if msg, err := lnvault("scb", "get", backup, "--kind", string(scb.KindCLN), "-o", out); err != nil {
			t.Fatalf("lnvault scb get: %v: %s", err, msg)
		}
		data, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		var entries []string
		if err := json.Unmarshal(data, &entries); err != nil {
			t.Fatal(err)
		}
		var r json.RawMessage
		if err := fresh.Call(ctx, "recoverchannel", map[string]any{"scb": entries}, &r); err != nil {
			t.Fatalf("recoverchannel: %v", err)
		}
		t.Logf("recoverchannel: %s", r)
	case "emergencyrecover":
		out := filepath.Join(fresh.NetDir(), "emergency.recover")
		if msg, err := lnvault("scb", "get", backup, "--kind", string(scb.KindCLNEmergency), "-o", out, "--force"); err != nil {
			t.Fatalf("lnvault scb get: %v: %s", err, msg)
		}
		var r json.RawMessage
		if err := fresh.Call(ctx, "emergencyrecover", nil, &r); err != nil {
			t.Fatalf("emergencyrecover: %v", err)
		}
		t.Logf("emergencyrecover: %s", r)
	}
	if err := fresh.Connect(ctx, nw.l2); err != nil {
		t.Logf("connecting to the peer (the stub channel dials it too): %v", err)
	}
	// The peer force-closes; blocks confirm the close and let the fresh
	// node sweep what is its own.
	start := time.Now()
	err = realnode.WaitFor(ctx, 5*time.Minute, fmt.Sprintf("the channel's funds back in the fresh node's wallet (%s)", how), func() (bool, error) {
		if err := nw.btc.Mine(ctx, 1); err != nil {
			return false, err
		}
		time.Sleep(500 * time.Millisecond)
		return confirmedSat(t, fresh) > onchainBefore+channelSat*9/10, nil
	})
	if err != nil {
		t.Fatalf("%v\nfresh node's log:\n%s", err, fresh.LogTail(40))
	}
	t.Logf("%s: %d sat confirmed in the fresh node's wallet %v after the recovery (the channel held %d, the wallet %d besides)",
		how, confirmedSat(t, fresh), time.Since(start).Round(time.Second), channelSat, onchainBefore)
}

// confirmedSat is the sum of n's confirmed on-chain outputs.
func confirmedSat(tb testing.TB, n *realnode.Node) int64 {
	tb.Helper()
	var f struct {
		Outputs []struct {
			AmountMsat int64  `json:"amount_msat"`
			Status     string `json:"status"`
		} `json:"outputs"`
	}
	if err := n.Call(testCtx(tb, time.Minute), "listfunds", nil, &f); err != nil {
		return 0
	}
	var sum int64
	for _, o := range f.Outputs {
		if o.Status == "confirmed" {
			sum += o.AmountMsat / 1000
		}
	}
	return sum
}

func shippedVersionsOf(tb testing.TB, url string, kind scb.Kind) []json.RawMessage {
	tb.Helper()
	out, err := lnvault("scb", "list", url, "--json", "--kind", string(kind))
	if err != nil {
		return nil
	}
	var vs []json.RawMessage
	if err := json.Unmarshal([]byte(out), &vs); err != nil {
		tb.Fatal(err)
	}
	return vs
}
