package e2e

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/lnvault/lnvault/internal/realnode"
	"github.com/lnvault/lnvault/scb"
)

// scbBound is how long a channel change may take to reach the destination
// as a new static channel backup version.
const scbBound = 30 * time.Second

// TestSCBFollowsRealChannels: a channel opened and then closed on the real
// node each yields a shipped static channel backup whose channel set is the
// one listpeerchannels shows, within scbBound (measured).
func TestSCBFollowsRealChannels(t *testing.T) {
	nw := getNetwork(t)
	ctx := testCtx(t, 15*time.Minute)
	if !nw.l1.Running() {
		if err := nw.startL1(ctx); err != nil {
			t.Fatal(err)
		}
	}
	wait := func(when string, since time.Time) time.Duration {
		t.Helper()
		var want, got []string
		err := realnode.WaitFor(ctx, scbBound, fmt.Sprintf("a static channel backup matching listpeerchannels %s", when), func() (bool, error) {
			cs, err := nw.l1.Channels(ctx)
			if err != nil {
				return false, nil
			}
			want = want[:0]
			for _, c := range cs {
				want = append(want, c.ChannelID)
			}
			slices.Sort(want)
			got = shippedChannels(t, nw.backup)
			return slices.Equal(got, want), nil
		})
		if err != nil {
			t.Fatalf("%v: listpeerchannels %v, shipped %v", err, want, got)
		}
		return time.Since(since)
	}
	wait("at the start", time.Now())

	var opened struct {
		ChannelID string `json:"channel_id"`
	}
	start := time.Now()
	if err := nw.l1.Call(ctx, "fundchannel", map[string]any{"id": nw.l2.ID(), "amount": 300_000, "announce": false}, &opened); err != nil {
		t.Fatal(err)
	}
	if err := nw.btc.Mine(ctx, 6); err != nil {
		t.Fatal(err)
	}
	if err := realnode.WaitFor(ctx, 90*time.Second, "the second channel to be CHANNELD_NORMAL", func() (bool, error) {
		cs, err := nw.l1.Channels(ctx)
		if err != nil {
			return false, nil
		}
		for _, c := range cs {
			if c.ChannelID == opened.ChannelID && c.State == "CHANNELD_NORMAL" {
				return true, nil
			}
		}
		return false, nil
	}); err != nil {
		t.Fatal(err)
	}
	normal := time.Now()
	afterOpen := wait("after an open", normal)
	t.Logf("open: fundchannel to CHANNELD_NORMAL %v; the matching version was shipped %v after", normal.Sub(start).Round(time.Millisecond), afterOpen.Round(time.Millisecond))

	before := len(shippedVersions(t, nw.backup))
	closing := time.Now()
	if err := nw.l1.Call(ctx, "close", map[string]any{"id": opened.ChannelID}, nil); err != nil {
		t.Fatal(err)
	}
	if err := nw.btc.Mine(ctx, 6); err != nil {
		t.Fatal(err)
	}
	// The closed channel stays in listpeerchannels (and in the backup)
	// until it is forgotten: the close must still ship a new version.
	if err := realnode.WaitFor(ctx, scbBound, "a new static channel backup version after the close", func() (bool, error) {
		return len(shippedVersions(t, nw.backup)) > before, nil
	}); err != nil {
		t.Fatal(err)
	}
	afterClose := wait("after a close", closing)
	t.Logf("close: the matching version was shipped %v after the close began", afterClose.Round(time.Millisecond))
	if n := len(shippedVersions(t, nw.backup)); n < 3 {
		t.Fatalf("%d cln-scb versions shipped, want one per change at least", n)
	}
}

// shippedChannels is the sorted channel ids of the latest cln-scb version
// at url.
func shippedChannels(tb testing.TB, url string) []string {
	tb.Helper()
	out := filepath.Join(tb.TempDir(), "scb.json")
	if _, err := lnvault("scb", "get", url, "--kind", string(scb.KindCLN), "-o", out); err != nil {
		return nil // none shipped yet
	}
	data, err := os.ReadFile(out)
	if err != nil {
		tb.Fatal(err)
	}
	var entries []string
	if err := json.Unmarshal(data, &entries); err != nil {
		tb.Fatalf("lnvault scb get wrote %q, not recoverchannel's JSON array: %v", data, err)
	}
	set := map[string]bool{}
	for _, e := range entries {
		set[scb.CLNChannelID(e)] = true
	}
	return slices.Sorted(maps.Keys(set))
}

func shippedVersions(tb testing.TB, url string) []json.RawMessage {
	tb.Helper()
	return shippedVersionsOf(tb, url, scb.KindCLN)
}
