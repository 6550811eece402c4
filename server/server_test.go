package server_test

import (
	"bytes"
	"compress/zlib"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/server"
	"github.com/lnvault/lnvault/socket"
	"github.com/lnvault/lnvault/wire"
)

// The corpus through socket: → server → file, restored through socket:,
// gives the corpus's reference dump.
func TestCorpusEndToEnd(t *testing.T) {
	ts := startServer(t, server.Config{})
	ctx := context.Background()
	c := openSocket(t, ts.url(""), lnvault.OpenOptions{Create: true})
	changes := corpusChanges(t)
	for _, ch := range changes {
		if err := c.Append(ctx, ch); err != nil {
			t.Fatalf("append %d: %v", ch.Version, err)
		}
	}
	last := changes[len(changes)-1].Version
	if m := c.Metadata(); m.Version != last || m.VersionCount != uint64(len(changes)) {
		t.Fatalf("client metadata %+v", m)
	}
	if m := ts.b.Metadata(); m.Version != last || m.VersionCount != uint64(len(changes)) {
		t.Fatalf("server metadata %+v", m)
	}
	st, err := c.Status(ctx)
	if err != nil || st.Format != "socket" || st.Metadata.Version != last {
		t.Fatalf("status %+v %v", st, err)
	}
	// Restore through a read-only socket client while the writer is still
	// connected.
	r := openSocket(t, ts.url(""), lnvault.OpenOptions{ReadOnly: true})
	h, n := restoreHash(t, r)
	if h != corpus.FinalDumpSHA256() {
		t.Fatalf("restored dump %s, want %s", h, corpus.FinalDumpSHA256())
	}
	if n != len(changes) {
		t.Fatalf("streamed %d changes, want %d", n, len(changes))
	}
	// from filtering: only versions >= from, starting at the first one.
	from := changes[100].Version
	var first uint32
	k := 0
	err = r.Stream(ctx, from, func(ch *lnvault.Change) error {
		if k == 0 {
			first = ch.Version
		}
		k++
		return nil
	})
	if err != nil || first != from {
		t.Fatalf("stream from %d started at %d: %v", from, first, err)
	}
	// ErrStop ends a stream early without error.
	k = 0
	if err := r.Stream(ctx, 0, func(*lnvault.Change) error { k++; return lnvault.ErrStop }); err != nil || k != 1 {
		t.Fatalf("ErrStop: k=%d err=%v", k, err)
	}
	// A read-only client cannot write.
	if err := r.Append(ctx, lnvault.NewTransaction(last+1, []string{"SELECT 1"})); err == nil {
		t.Fatal("read-only append succeeded")
	}
}

// rawConn is a protocol-level client for tests.
type rawConn struct {
	t  testing.TB
	c  net.Conn
	rd *wire.Reader
	wr *wire.Writer
}

func dialRaw(t testing.TB, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c, rd: wire.NewReader(c, wire.Limits{}), wr: wire.NewWriter(c)}
}

func (r *rawConn) next() wire.Packet {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	p, err := r.rd.Next()
	if err != nil {
		r.t.Fatal(err)
	}
	return p
}

func (r *rawConn) change(v uint32, stmts ...string) wire.Packet {
	r.t.Helper()
	if err := r.wr.WriteChange(lnvault.NewTransaction(v, stmts)); err != nil {
		r.t.Fatal(err)
	}
	return r.next()
}

func expect(t testing.TB, p wire.Packet, typ wire.Type, version uint32) {
	t.Helper()
	if p.Type != typ || p.Version != version {
		t.Fatalf("got %v %d, want %v %d", p.Type, p.Version, typ, version)
	}
}

func TestVersionChecksAndRewind(t *testing.T) {
	ts := startServer(t, server.Config{})
	r := dialRaw(t, ts.addr)
	expect(t, r.change(5, "CREATE TABLE t (v)"), wire.TypeAck, 5) // first change: any version
	expect(t, r.change(6, "INSERT INTO t VALUES (6)"), wire.TypeAck, 6)
	expect(t, r.change(6, "PRAGMA foreign_keys = OFF;"), wire.TypeAck, 6) // migration repeat
	expect(t, r.change(8, "INSERT INTO t VALUES (8)"), wire.TypeNack, 6)  // skip
	expect(t, r.change(4, "INSERT INTO t VALUES (4)"), wire.TypeNack, 6)  // backwards
	expect(t, r.change(7, "INSERT INTO t VALUES (7)"), wire.TypeAck, 7)
	if m := ts.b.Metadata(); m.Version != 7 || m.VersionCount != 4 {
		t.Fatalf("metadata %+v", m)
	}
	// REWIND carries the version to go back to.
	r.wr.WriteVersion(wire.TypeRewind, 5)
	expect(t, r.next(), wire.TypeNack, 7)
	r.wr.WriteVersion(wire.TypeRewind, 6)
	expect(t, r.next(), wire.TypeAck, 6)
	if m := ts.b.Metadata(); m.Version != 6 {
		t.Fatalf("after rewind %+v", m)
	}
	r.wr.WriteEmpty(wire.TypeReqMetadata)
	if p := r.next(); p.Type != wire.TypeMetadata || p.Protocol != 1 || p.Meta != ts.b.Metadata() {
		t.Fatalf("%+v", p)
	}
	// The client may ACK restored changes: ignored, the connection lives on.
	r.wr.WriteVersion(wire.TypeAck, 1)
	expect(t, r.change(7, "INSERT INTO t VALUES (77)"), wire.TypeAck, 7)
}

func TestSocketRewind(t *testing.T) {
	ts := startServer(t, server.Config{})
	ctx := context.Background()
	c := openSocket(t, ts.url(""), lnvault.OpenOptions{})
	for v := uint32(1); v <= 3; v++ {
		if err := c.Append(ctx, lnvault.NewTransaction(v, []string{fmt.Sprintf("SELECT %d", v)})); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Rewind(ctx); err != nil {
		t.Fatal(err)
	}
	if m := c.Metadata(); m.Version != 2 || m != ts.b.Metadata() {
		t.Fatalf("%+v", m)
	}
	if err := c.Rewind(ctx); !errors.Is(err, lnvault.ErrRewindTwice) {
		t.Fatalf("second rewind: %v", err)
	}
	if err := c.Append(ctx, lnvault.NewTransaction(3, []string{"SELECT 33"})); err != nil {
		t.Fatal(err)
	}
	if vs := streamVersions(t, ts.b); fmt.Sprint(vs) != "[1 2 3]" {
		t.Fatalf("versions %v", vs)
	}
}

func TestTwoWriters(t *testing.T) {
	ts := startServer(t, server.Config{})
	ctx := context.Background()
	a := openSocket(t, ts.url(""), lnvault.OpenOptions{})
	if err := a.Append(ctx, lnvault.NewTransaction(1, []string{"SELECT 1"})); err != nil {
		t.Fatal(err)
	}
	b := openSocket(t, ts.url("retries=0"), lnvault.OpenOptions{})
	done := make(chan error, 1)
	go func() { done <- b.Append(ctx, lnvault.NewTransaction(2, []string{"SELECT 'b'"})) }()
	select {
	case err := <-done:
		if !errors.Is(err, socket.ErrRefused) || !strings.Contains(err.Error(), "another node") {
			t.Fatalf("second writer: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("second writer hangs instead of being refused")
	}
	// Compaction keeps every change, so any lnvault client may ask for it
	// (over a connection of its own, FeatureCompact); the writer goes on.
	if _, err := b.Compact(ctx); err != nil {
		t.Fatalf("compaction from another client: %v", err)
	}
	// A client of the base protocol sends COMPACT on its own connection: a
	// modification, so only the writer may.
	r := dialRaw(t, ts.addr)
	r.wr.WriteEmpty(wire.TypeCompact)
	expect(t, r.next(), wire.TypeNack, 1)
	// Reads are fine from anyone.
	if st, err := b.Status(ctx); err != nil || st.Metadata.Version != 1 {
		t.Fatalf("status %+v %v", st, err)
	}
	if err := a.Append(ctx, lnvault.NewTransaction(2, []string{"SELECT 'a'"})); err != nil {
		t.Fatalf("first writer disturbed: %v", err)
	}
	// The role is released when the writer disconnects.
	a.Close()
	c := openSocket(t, ts.url(""), lnvault.OpenOptions{})
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := c.Append(ctx, lnvault.NewTransaction(3, []string{"SELECT 'c'"}))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("writer role never released: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if vs := streamVersions(t, ts.b); fmt.Sprint(vs) != "[1 2 3]" {
		t.Fatalf("versions %v", vs)
	}
}

// A server that accepts and never answers: a clear timeout, no hang.
func TestSilentServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	var conns []net.Conn
	answerMeta := atomic.Bool{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			if answerMeta.Load() {
				go func() {
					rd := wire.NewReader(c, wire.Limits{})
					wr := wire.NewWriter(c)
					for {
						p, err := rd.Next()
						if err != nil {
							return
						}
						if p.Type == wire.TypeReqMetadata {
							wr.WriteMetadata(lnvault.Metadata{})
						} // and never ACK anything
					}
				}()
			}
		}
	}()
	defer func() {
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	}()
	url := "socket:" + ln.Addr().String() + "?timeout=300ms&retries=1&retry_delay=10ms"
	start := time.Now()
	_, err = socket.Open(context.Background(), url, lnvault.OpenOptions{Logger: testLogger(t)})
	if err == nil || !strings.Contains(err.Error(), "did not answer REQ_METADATA within 300ms") {
		t.Fatalf("open: %v", err)
	}
	answerMeta.Store(true)
	b, err := socket.Open(context.Background(), url, lnvault.OpenOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	err = b.Append(context.Background(), lnvault.NewTransaction(1, []string{"SELECT 1"}))
	if err == nil || !strings.Contains(err.Error(), "did not answer change version 1 within 300ms") || !strings.Contains(err.Error(), "not acknowledged") {
		t.Fatalf("append: %v", err)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Fatalf("took %v", el)
	}
	if m := b.Metadata(); m.VersionCount != 0 {
		t.Fatalf("an unacknowledged change counted: %+v", m)
	}
	// Cancellation also ends the wait.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	b2, err := socket.Open(context.Background(), "socket:"+ln.Addr().String()+"?timeout=1m", lnvault.OpenOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	t0 := time.Now()
	if err := b2.Append(ctx, lnvault.NewTransaction(1, []string{"SELECT 1"})); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cancelled append: %v", err)
	}
	if time.Since(t0) > 5*time.Second {
		t.Fatal("cancellation ignored")
	}
}

func heapInuse() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

func zlibBomb(t testing.TB, n int) []byte {
	var z bytes.Buffer
	zw, _ := zlib.NewWriterLevel(&z, zlib.DefaultCompression)
	zero := make([]byte, 1<<20)
	for i := 0; i < n>>20; i++ {
		zw.Write(zero)
	}
	zw.Close()
	return z.Bytes()
}

func rawPacket(typ byte, payload []byte) []byte {
	out := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(out[1:], uint32(len(payload)))
	return append(out, payload...)
}

// Malformed, truncated, oversized packets and zlib bombs from raw sockets
// while a client keeps writing: the client is unaffected, the bad
// connections are closed, and memory stays bounded.
func TestHostileClients(t *testing.T) {
	ts := startServer(t, server.Config{Limits: wire.Limits{MaxPacket: 8 << 20, MaxChange: 4 << 20, MaxSnapshot: 16 << 20, TempDir: t.TempDir()}})
	c := openSocket(t, ts.url(""), lnvault.OpenOptions{})
	changes := corpusChanges(t)[:600]

	bomb := zlibBomb(t, 128<<20) // 128 MiB of zeros in ~130 KB: 32× the change limit
	// A low GC target makes the heap peak follow live memory, so that an
	// unbounded decompression could not hide in GC slack.
	defer debug.SetGCPercent(debug.SetGCPercent(10))
	runtime.GC()
	base := heapInuse()
	var peak atomic.Uint64
	stopSampling := make(chan struct{})
	var sampled sync.WaitGroup
	sampled.Add(1)
	go func() {
		defer sampled.Done()
		for {
			if h := heapInuse(); h > peak.Load() {
				peak.Store(h)
			}
			select {
			case <-stopSampling:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()

	_, writerErr := appendInBackground(c, changes)
	// The attacks come from non-writers: the honest client must hold the
	// writer role first (its first stored change claims it). Without a
	// writer, a change is admitted, as from a writer that reconnects.
	for deadline := time.Now().Add(30 * time.Second); ts.b.Metadata().VersionCount == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the honest writer stored nothing within 30 s")
		}
	}

	ver := []byte{0, 0, 0, 1}
	// Changes from a connection that is not the writer are discarded
	// unread and refused (nack): the connection stays.
	attacks := []struct {
		name string
		data []byte
		half bool // close the write side after sending (truncated packet)
		nack bool
	}{
		{"unknown type", rawPacket(0x42, []byte("hello")), false, false},
		{"bad ack length", rawPacket(0x06, []byte{1, 2}), false, false},
		{"oversized length", []byte{0x01, 0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 1}, false, false},
		{"change zlib bomb", rawPacket(0x01, append(append([]byte{}, ver...), bomb...)), false, true},
		{"snapshot zlib bomb", rawPacket(0x02, append(append([]byte{}, ver...), bomb...)), false, true},
		{"not zlib", rawPacket(0x01, append(append([]byte{}, ver...), "plain text"...)), false, true},
		{"truncated change", rawPacket(0x01, append(append([]byte{}, ver...), bomb[:1000]...))[:500], true, false},
		{"truncated header", []byte{0x01, 0, 0}, true, false},
	}
	for round := 0; round < 2; round++ {
		for _, a := range attacks {
			conn, err := net.Dial("tcp", ts.addr)
			if err != nil {
				t.Fatal(err)
			}
			conn.SetDeadline(time.Now().Add(20 * time.Second))
			// The server may close while we are still sending (a bomb is
			// refused as soon as the limit is hit): ignore write errors.
			go func() {
				conn.Write(a.data)
				if a.half {
					conn.(*net.TCPConn).CloseWrite()
				}
			}()
			if a.nack {
				p, err := wire.NewReader(conn, wire.Limits{}).Next()
				conn.Close()
				if err != nil || p.Type != wire.TypeNack {
					t.Fatalf("%s from a non-writer: answered %v, %v; want NACK", a.name, p.Type, err)
				}
				continue
			}
			// The server must close the connection, without answering ACK.
			buf, err := io.ReadAll(conn)
			conn.Close()
			if err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
				t.Fatalf("%s: %v", a.name, err)
			}
			if len(buf) != 0 {
				t.Fatalf("%s: server answered % x", a.name, buf)
			}
		}
	}
	if err := <-writerErr; err != nil {
		t.Fatalf("the honest writer was affected: %v", err)
	}
	close(stopSampling)
	sampled.Wait()
	if grow := int64(peak.Load()) - int64(base); grow > 40<<20 {
		t.Fatalf("heap grew by %d MiB under attack (base %d MiB)", grow>>20, base>>20)
	}
	t.Logf("heap in use: base %d MiB, peak %d MiB", base>>20, peak.Load()>>20)
	if m := ts.b.Metadata(); m.VersionCount != uint64(len(changes)) {
		t.Fatalf("server metadata %+v", m)
	}
	// Refusals are counted.
	rec := httptest.NewRecorder()
	ts.srv.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		`lnvault_server_refusals_total{reason="malformed"} 6`,
		`lnvault_server_refusals_total{reason="second_writer"} 6`,
		`lnvault_server_changes_received_total{kind="change"} 600`,
		"lnvault_server_ack_latency_seconds_count 600",
		fmt.Sprintf("lnvault_server_backup_version %d", changes[len(changes)-1].Version),
		"lnvault_server_connections_total",
		"lnvault_server_backup_size_bytes",
		"lnvault_server_received_bytes_total",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if t.Failed() {
		t.Log(body)
	}
}

func TestCompaction(t *testing.T) {
	ts := startServer(t, server.Config{})
	ctx := context.Background()
	c := openSocket(t, ts.url(""), lnvault.OpenOptions{})
	changes := corpusChanges(t)[:600]
	for _, ch := range changes {
		if err := c.Append(ctx, ch); err != nil {
			t.Fatal(err)
		}
	}
	st, err := c.Compact(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Before.VersionCount != uint64(len(changes)) || st.After.BackupSize <= 0 || st.Before.BackupSize <= 0 {
		t.Fatalf("stats %+v", st)
	}
	// Appends go on after the compaction, restores give the same database.
	if h, _ := restoreHash(t, openSocket(t, ts.url(""), lnvault.OpenOptions{ReadOnly: true})); h != prefixHash(t, 600) {
		t.Fatalf("after compaction: %s", h)
	}
	last := changes[len(changes)-1].Version
	if err := c.Append(ctx, lnvault.NewTransaction(last+1, []string{"UPDATE vars SET intval = intval + 1 WHERE name = 'data_version'"})); err != nil {
		t.Fatal(err)
	}
}

// Compaction runs in the background: the writer's connection is still
// served while it runs (checked at the protocol level, where the client may
// send a CHANGE before COMPACT_RES arrives).
func TestCompactionDoesNotStallWriter(t *testing.T) {
	ts := startServer(t, server.Config{})
	r := dialRaw(t, ts.addr)
	changes := corpusChanges(t)[:600]
	for _, ch := range changes[:400] {
		r.wr.WriteChange(ch)
		expect(t, r.next(), wire.TypeAck, ch.Version)
	}
	r.wr.WriteEmpty(wire.TypeCompact)
	r.wr.WriteEmpty(wire.TypeCompact) // a second one while the first runs: refused
	var gotRes, gotNack bool
	acks := 0
	i := 400
	for !gotRes || !gotNack || acks < 20 || acks < i-400 {
		if i < len(changes) && acks == i-400 {
			r.wr.WriteChange(changes[i])
			i++
		}
		p := r.next()
		switch p.Type {
		case wire.TypeCompactRes:
			gotRes = true
		case wire.TypeNack:
			gotNack = true
		case wire.TypeAck:
			expect(t, p, wire.TypeAck, changes[400+acks].Version)
			acks++
		default:
			t.Fatalf("unexpected %v", p.Type)
		}
	}
	for ; i < len(changes); i++ {
		r.wr.WriteChange(changes[i])
		expect(t, r.next(), wire.TypeAck, changes[i].Version)
	}
	r.c.Close()
	if h, _ := restoreHash(t, ts.b); h != prefixHash(t, 600) {
		t.Fatalf("restored %s", h)
	}
}

func TestListenRefusesNonLoopback(t *testing.T) {
	s := server.New(server.Config{Logger: testLogger(t)}, nil)
	err := s.ListenAndServe(context.Background(), "0.0.0.0:0")
	if err == nil || !strings.Contains(err.Error(), "--allow-unauthenticated") {
		t.Fatalf("err = %v", err)
	}
	for addr, want := range map[string]bool{"127.0.0.1:1": true, "[::1]:1": true, "localhost:1": true, ":1": false, "0.0.0.0:1": false, "[::]:1": false, "192.0.2.1:1": false} {
		if got, err := server.IsLoopback(addr); err != nil || got != want {
			t.Errorf("IsLoopback(%s) = %v, %v", addr, got, err)
		}
	}
	if _, err := server.IsLoopback("nonsense"); err == nil {
		t.Error("bad address accepted")
	}
}

func TestIPv6Loopback(t *testing.T) {
	ts := startServerOn(t, server.Config{}, "tcp6", "[::1]:0")
	if !strings.HasPrefix(ts.addr, "[::1]:") {
		t.Fatalf("addr %s", ts.addr)
	}
	ctx := context.Background()
	c := openSocket(t, ts.url(""), lnvault.OpenOptions{})
	changes := corpusChanges(t)[:50]
	for _, ch := range changes {
		if err := c.Append(ctx, ch); err != nil {
			t.Fatal(err)
		}
	}
	if vs := streamVersions(t, c); len(vs) != 50 || vs[49] != changes[49].Version {
		t.Fatalf("versions %v", vs)
	}
}

// idleCounter counts the server's Idle hints to its backend.
type idleCounter struct {
	lnvault.Backend
	n atomic.Int32
}

func (b *idleCounter) Idle() {
	b.n.Add(1)
	b.Backend.(lnvault.Idler).Idle()
}

// The server hints its backend after acknowledging a change, unless the
// writer has already sent more: then only after the last one.
func TestIdleAfterAck(t *testing.T) {
	ctx := context.Background()
	fb, err := lnvault.Open(ctx, "file://"+filepath.Join(t.TempDir(), "b.dbak"), lnvault.OpenOptions{Create: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	ib := &idleCounter{Backend: fb}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := server.New(server.Config{Logger: testLogger(t)}, ib)
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(sctx, ln) }()
	defer func() { cancel(); <-done }()

	r := dialRaw(t, ln.Addr().String())
	for v := uint32(1); v <= 5; v++ {
		expect(t, r.change(v, "INSERT INTO t VALUES (1)"), wire.TypeAck, v)
	}
	// Three changes in one write: the server finds the 7th and 8th waiting
	// when it has answered the 6th and 7th.
	var buf bytes.Buffer
	pw := wire.NewWriter(&buf)
	for v := uint32(6); v <= 8; v++ {
		pw.WriteChange(lnvault.NewTransaction(v, []string{"INSERT INTO t VALUES (2)"}))
	}
	if _, err := r.c.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	for v := uint32(6); v <= 8; v++ {
		expect(t, r.next(), wire.TypeAck, v)
	}
	// A status request is not a change: no hint.
	if err := r.wr.WriteEmpty(wire.TypeReqMetadata); err != nil {
		t.Fatal(err)
	}
	if p := r.next(); p.Type != wire.TypeMetadata || p.Meta.Version != 8 {
		t.Fatalf("metadata answer %+v", p)
	}
	// The hint for a change runs before the server reads the next packet,
	// so every hint has run once the metadata answer is in.
	if n := ib.n.Load(); n != 6 {
		t.Fatalf("%d Idle hints for 5 lone changes and 3 sent together, want 6", n)
	}
	var want []*lnvault.Change
	for v := uint32(1); v <= 8; v++ {
		stmt := "INSERT INTO t VALUES (1)"
		if v >= 6 {
			stmt = "INSERT INTO t VALUES (2)"
		}
		want = append(want, lnvault.NewTransaction(v, []string{stmt}))
	}
	checkExact(t, fb, want)
}

// Every compress= choice of the client gives a server the same changes.
func TestClientCompression(t *testing.T) {
	changes := corpusChanges(t)[:200]
	raw := 0
	for _, ch := range changes {
		raw += len(strings.Join(ch.Statements, "\x00"))
	}
	wireBytes := map[string]float64{}
	for _, c := range []string{"none", "fast", "auto"} {
		t.Run(c, func(t *testing.T) {
			ts := startServer(t, server.Config{})
			b := openSocket(t, ts.url("compress="+c), lnvault.OpenOptions{})
			for _, ch := range changes {
				if err := b.Append(context.Background(), ch); err != nil {
					t.Fatal(err)
				}
			}
			checkExact(t, ts.b, changes)
			mfs, err := ts.srv.Registry().Gather()
			if err != nil {
				t.Fatal(err)
			}
			for _, mf := range mfs {
				if mf.GetName() == "lnvault_server_received_bytes_total" {
					wireBytes[c] = mf.GetMetric()[0].GetCounter().GetValue()
				}
			}
		})
	}
	// Stored blocks carry every byte; the fast level about half; auto on
	// loopback stores.
	if wireBytes["none"] < float64(raw) || wireBytes["fast"] > 0.7*float64(raw) || wireBytes["auto"] != wireBytes["none"] {
		t.Fatalf("bytes on the wire for %d bytes of statements: %v", raw, wireBytes)
	}
}

// A node starting while its backup server is briefly away waits for it with
// the URL's retry budget; a reader (the CLI) is told at once.
func TestWriterOpenRidesOutAnAbsentServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	url := "socket:" + addr + "?retries=6&retry_delay=100ms&timeout=2s"
	if r, err := socket.Open(context.Background(), url, lnvault.OpenOptions{ReadOnly: true, Logger: testLogger(t)}); err == nil {
		r.Close()
		t.Fatal("a reader opened a server that is not there")
	}
	b, err := lnvault.Open(context.Background(), "file://"+filepath.Join(t.TempDir(), "b.dbak"), lnvault.OpenOptions{Create: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			served <- err
			return
		}
		served <- server.New(server.Config{Logger: testLogger(t)}, b).Serve(ctx, ln)
	}()
	w := openSocket(t, url, lnvault.OpenOptions{})
	if err := w.Append(ctx, &lnvault.Change{Version: 1, Kind: lnvault.KindTransaction, Statements: []string{"CREATE TABLE t(x)"}}); err != nil {
		t.Fatalf("append after the server came up: %v", err)
	}
	w.Close()
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("server: %v", err)
	}
}
