package backupplugin_test

import (
	"testing"
	"time"

	"github.com/lnvault/lnvault/internal/corpus"
)

func TestZZTiming(t *testing.T) {
	reqs := corpus.MustLoad()[:60]
	t0 := time.Now()
	n := newNode(t)
	t.Log("newNode", time.Since(t0))
	t0 = time.Now()
	n.start()
	t.Log("start", time.Since(t0))
	t0 = time.Now()
	if err := n.h.Replay(ctx(t), reqs[:1], 1); err != nil {
		t.Fatal(err)
	}
	t.Log("first", time.Since(t0))
	t0 = time.Now()
	if err := n.h.Replay(ctx(t), reqs[1:30], 1); err != nil {
		t.Fatal(err)
	}
	t.Log("replay", time.Since(t0), n.h.Latencies())
	t0 = time.Now()
	n.stop()
	t.Log("stop", time.Since(t0))
	t0 = time.Now()
	n.restoreHash(0)
	t.Log("restore", time.Since(t0))
	t0 = time.Now()
	hashOf(t, n.h.NodeDBPath())
	t.Log("hash", time.Since(t0))
}
