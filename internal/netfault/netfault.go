// Package netfault puts toxiproxy (in process) between a client and a
// server on 127.0.0.1, for tests: latency and jitter, bandwidth limits,
// black holes, resets, responses cut off after the upstream handled the
// request, and half-open connections.
package netfault

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Directions of a toxic: Up is client → server, Down is server → client.
const (
	Up   = "upstream"
	Down = "downstream"
)

// Proxy is one toxiproxy proxy listening on a free 127.0.0.1 port.
type Proxy struct {
	p    *toxiproxy.Proxy
	mu   sync.Mutex
	live map[string]bool
}

var nameSeq struct {
	sync.Mutex
	n int
}

// Start runs a proxy to upstream (host:port) until the test ends.
func Start(tb testing.TB, upstream string) *Proxy {
	tb.Helper()
	// Toxics log through zerolog's global logger, at trace level.
	zerolog.SetGlobalLevel(zerolog.Disabled)
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	nameSeq.Lock()
	nameSeq.n++
	name := fmt.Sprintf("netfault%d", nameSeq.n)
	nameSeq.Unlock()
	// Port 0: toxiproxy binds it and records the port it got, which Down/Up
	// then reuse (a port picked by listening and closing can be taken by a
	// parallel test before toxiproxy binds it).
	p := toxiproxy.NewProxy(srv, name, "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		tb.Fatalf("starting toxiproxy to %s: %v", upstream, err)
	}
	tb.Cleanup(p.Stop)
	return &Proxy{p: p, live: map[string]bool{}}
}

// Addr is where clients connect.
func (p *Proxy) Addr() string { return p.p.Listen }

// Toxic is one fault: Type is a toxiproxy toxic type (latency, bandwidth,
// timeout, reset_peer, slow_close, limit_data, slicer), Attrs its
// attributes, Stream Up or Down, Toxicity the share of connections it
// applies to (0 means 1).
type Toxic struct {
	Name     string
	Type     string
	Stream   string
	Toxicity float32
	Attrs    map[string]any
}

// Add adds a toxic, to existing connections and new ones.
func (p *Proxy) Add(t Toxic) error {
	if t.Toxicity == 0 {
		t.Toxicity = 1
	}
	if t.Name == "" {
		t.Name = t.Type + "_" + t.Stream
	}
	js, err := json.Marshal(map[string]any{"name": t.Name, "type": t.Type, "stream": t.Stream, "toxicity": t.Toxicity, "attributes": t.Attrs})
	if err != nil {
		return err
	}
	if _, err := p.p.Toxics.AddToxicJson(bytes.NewReader(js)); err != nil {
		return fmt.Errorf("adding toxic %s: %w", t.Name, err)
	}
	p.mu.Lock()
	p.live[t.Name] = true
	p.mu.Unlock()
	return nil
}

// Remove removes the toxic named name.
func (p *Proxy) Remove(name string) error {
	if err := p.p.Toxics.RemoveToxic(context.Background(), name); err != nil {
		return fmt.Errorf("removing toxic %s: %w", name, err)
	}
	p.mu.Lock()
	delete(p.live, name)
	p.mu.Unlock()
	return nil
}

// Clear removes every toxic.
func (p *Proxy) Clear() {
	p.p.Toxics.ResetToxics(context.Background())
	p.mu.Lock()
	clear(p.live)
	p.mu.Unlock()
}

// Down closes every connection through the proxy and refuses new ones
// until Up: the link is down.
func (p *Proxy) Down() { p.p.Stop() }

// Up starts accepting connections again after Down.
func (p *Proxy) Up() error {
	if err := p.p.Start(); err != nil {
		return fmt.Errorf("restarting toxiproxy on %s: %w", p.Addr(), err)
	}
	return nil
}
