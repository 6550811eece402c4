// Package server is the remote backup server: it speaks the protocol of
// package wire (compatible with the reference Python client) and stores the
// changes it receives in any lnvault.Backend.
//
// Many connections are served at once (restores and status queries while a
// node writes), but only one connection at a time may modify the backup: the
// first one that sends CHANGE, SNAPSHOT, REWIND or COMPACT becomes the writer
// until it disconnects; any other gets a NACK. Every refused request gets a
// NACK carrying the backup's head version.
//
// With Config.SCB set, the server also keeps the static channel backups that
// lnvault clients send through the protocol extension described in package
// wire (HELLO, SCB_PUT, SCB_LIST, SCB_GET); reference clients never see it.
package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/scb"
	"github.com/lnvault/lnvault/tlskey"
	"github.com/lnvault/lnvault/wire"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Config configures a Server. The zero value is usable.
type Config struct {
	// Limits bound what clients may send (packet length, decompressed
	// sizes, where snapshots are spooled).
	Limits wire.Limits
	// AllowUnauthenticated permits ListenAndServe on a non-loopback
	// address. The protocol has no authentication.
	AllowUnauthenticated bool
	// AppendOnly: clients may append and rewind their last change (the
	// db_write contract's one rewind) but not delete, compact or rebase:
	// a compromised node cannot destroy its history. Retention and
	// compaction are the operator's.
	AppendOnly bool
	// Quota bounds the backup's size and its writer's change rate (a
	// hub's tenants; zero: none).
	Quota Quota
	// WriteTimeout bounds each write to a client (a restore to a client
	// that stopped reading). Default 1 minute.
	WriteTimeout time.Duration
	Logger       *slog.Logger
	// MaxConns caps the open connections (default DefaultMaxConns): one
	// more is closed at once. A connection holds at most Limits' bounds
	// in memory (a writer's transaction, MaxChange; anyone's SCB
	// envelope, MaxSCB); a non-writer's changes are discarded unread.
	MaxConns int
	// SCB, when set, is where the server keeps static channel backups that
	// lnvault clients send with the protocol extension (see package wire);
	// nil: the server offers no SCB feature. Any connection may store and
	// read versions: they are a separate, immutable stream with their own
	// sequence, so the writer rule of the database log does not apply.
	SCB scb.Store
}

// DefaultMaxConns is Config.MaxConns's default: a node's writer, its
// compactions and SCB requests, a few restores and status queries.
const DefaultMaxConns = 64

// Server serves one backup.
type Server struct {
	cfg Config
	b   lnvault.Backend
	// idler is b when it takes Idle hints (nil otherwise).
	idler lnvault.Idler
	log   *slog.Logger
	m     *metrics
	// tlsPin is the pin of the key ServeTLS serves with, told to clients
	// that connect without TLS.
	tlsPin string
	limits limiter

	// appendMu is held while a change or rewind is stored: REQ_METADATA
	// waits for it, so that a writer reconnecting after a timeout sees
	// the change its old connection is still storing, and does not resend
	// it.
	appendMu sync.Mutex
	// last is the head change as this process stored it (nil after a
	// rewind or a start): a byte-identical repeat is a resend, not a
	// migration's repeated version.
	last *lnvault.Change

	mu         sync.Mutex
	writer     *conn // the connection allowed to modify the backup
	compacting bool
	conns      map[*conn]struct{}
	listeners  map[net.Listener]struct{}
	closing    bool

	wg       sync.WaitGroup // connection handlers and compactions
	shutdown chan struct{}
	once     sync.Once
	ctx      context.Context // cancelled when shutdown is over-due
	cancel   context.CancelFunc
}

// New returns a Server storing into b. The caller closes b after Serve
// returns.
func New(cfg Config, b lnvault.Backend) *Server {
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = time.Minute
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Server{
		cfg: cfg, b: b, log: log,
		conns:     map[*conn]struct{}{},
		listeners: map[net.Listener]struct{}{},
		shutdown:  make(chan struct{}),
	}
	s.idler, _ = b.(lnvault.Idler)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.m = newMetrics(s)
	s.initLimits(cfg.Quota)
	return s
}

// MetricsHandler serves the server's Prometheus metrics (a private registry).
func (s *Server) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(s.m.reg, promhttp.HandlerOpts{})
}

// Registry is the server's private Prometheus registry.
func (s *Server) Registry() *prometheus.Registry { return s.m.reg }

// IsLoopback tells whether addr (host:port) binds only to loopback.
func IsLoopback(addr string) (bool, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false, fmt.Errorf("listen address %q: %w (expected 127.0.0.1:PORT, [::1]:PORT or HOST:PORT)", addr, err)
	}
	if host == "" {
		return false, nil // every interface
	}
	if host == "localhost" {
		return true, nil
	}
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback(), nil
	}
	ips, err := net.LookupIP(host)
	if err != nil {
		return false, fmt.Errorf("listen address %q: %w", addr, err)
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return false, nil
		}
	}
	return len(ips) > 0, nil
}

// ListenAndServe listens on addr (IPv4:PORT, [IPv6]:PORT or HOST:PORT) and
// serves until ctx ends, then shuts down gracefully.
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	lo, err := IsLoopback(addr)
	if err != nil {
		return err
	}
	if !lo {
		if !s.cfg.AllowUnauthenticated {
			return fmt.Errorf("refusing to listen on %s: the backup protocol has no authentication, so anyone who can reach the port can overwrite the backup; bind to 127.0.0.1 or [::1] and use an SSH tunnel, a VPN or a Tor onion service, or pass --allow-unauthenticated", addr)
		}
		s.log.Warn("listening beyond loopback without authentication: anyone who can reach this port can read and overwrite the backup", "addr", addr)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	return s.Serve(ctx, ln)
}

// ListenAndServeTLS is ListenAndServe over TLS (package tlskey). With
// authenticated (tc admits only authorized client keys) it may listen
// beyond loopback.
func (s *Server) ListenAndServeTLS(ctx context.Context, addr string, tc *tls.Config, authenticated bool) error {
	lo, err := IsLoopback(addr)
	if err != nil {
		return err
	}
	if !lo && !authenticated && !s.cfg.AllowUnauthenticated {
		return fmt.Errorf("refusing to listen on %s: TLS without --authorized-keys lets anyone who can reach the port overwrite the backup; give the client keys that may connect (--authorized-keys FILE), bind to loopback, or pass --allow-unauthenticated", addr)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	return s.ServeTLS(ctx, ln, tc)
}

// ServeTLS is Serve with every connection on ln speaking TLS with tc; a
// client that fails the handshake (a wrong or unauthorized key, a client
// without TLS) is refused before any packet is read.
func (s *Server) ServeTLS(ctx context.Context, ln net.Listener, tc *tls.Config) error {
	if len(tc.Certificates) > 0 && len(tc.Certificates[0].Certificate) > 0 {
		if cert, err := x509.ParseCertificate(tc.Certificates[0].Certificate[0]); err == nil {
			if pin, err := tlskey.Pin(cert.PublicKey); err == nil {
				s.mu.Lock()
				s.tlsPin = pin
				s.mu.Unlock()
			}
		}
	}
	return s.serve(ctx, ln, tc)
}

// Serve accepts connections on ln until ctx ends or Shutdown is called; it
// then stops accepting, lets every in-flight request finish, and returns.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	return s.serve(ctx, ln, nil)
}

func (s *Server) serve(ctx context.Context, ln net.Listener, tc *tls.Config) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return errors.New("server is shut down")
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	if tc != nil {
		s.log.Info("backup server listening", "addr", ln.Addr().String(), "tls", true, "client_auth", tc.ClientAuth == tls.RequireAnyClientCert)
	} else {
		s.log.Info("backup server listening", "addr", ln.Addr().String())
	}

	stop := context.AfterFunc(ctx, func() { s.Shutdown(context.Background()) })
	defer stop()

	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			select {
			case <-s.shutdown:
				s.wg.Wait()
				return nil
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of file descriptors and the like: back off, keep serving.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Error("accept failed", "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		if !s.track(c, tc) {
			c.Close()
			continue
		}
	}
}

// Shutdown stops accepting, interrupts idle connections, waits for in-flight
// appends to be acknowledged (and for compactions), then returns. When ctx
// ends first, the remaining work is cancelled.
func (s *Server) Shutdown(ctx context.Context) error {
	s.once.Do(func() {
		s.mu.Lock()
		s.closing = true
		close(s.shutdown)
		for ln := range s.listeners {
			ln.Close()
		}
		for c := range s.conns {
			c.interrupt()
		}
		s.mu.Unlock()
		s.log.Info("shutting down: finishing in-flight requests")
	})
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.cancel()
		<-done
		return ctx.Err()
	}
}

func (s *Server) track(nc net.Conn, tc *tls.Config) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	if len(s.conns) >= s.cfg.MaxConns {
		s.m.refusals.WithLabelValues("too_many_connections").Inc()
		s.log.Warn("refusing a connection: too many open", "remote", nc.RemoteAddr().String(), "max_conns", s.cfg.MaxConns)
		return false
	}
	tuneTCP(nc)
	if tc != nil {
		nc = tls.Server(nc, tc)
	}
	c := &conn{s: s, nc: nc, remote: nc.RemoteAddr().String()}
	c.wr = wire.NewWriter(deadlineWriter{nc, s.cfg.WriteTimeout})
	c.wr.TempDir = s.cfg.Limits.TempDir
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.m.connections.Inc()
	s.m.connectionsTotal.Inc()
	go c.serve()
	return true
}

// deadlineWriter bounds every write to a client.
type deadlineWriter struct {
	nc      net.Conn
	timeout time.Duration
}

func (w deadlineWriter) Write(p []byte) (int, error) {
	w.nc.SetWriteDeadline(time.Now().Add(w.timeout))
	return w.nc.Write(p)
}

// conn is one client connection.
type conn struct {
	s      *Server
	nc     net.Conn
	remote string
	wmu    sync.Mutex // the compaction goroutine writes too
	wr     *wire.Writer
	busy   atomic.Bool // inside a request: shutdown lets it finish
	// compactAside: the client asked for FeatureCompact, so its COMPACT
	// does not need (nor take) the writer role.
	compactAside bool
	// rebaseAside: the client asked for FeatureRebase; rebaseNext: it sent
	// REBASE, so its next SNAPSHOT is a rebase (admitted without the writer
	// role).
	rebaseAside bool
	rebaseNext  atomic.Bool
	// token names the client process behind the connection (HELLO's
	// writer feature), "" when it gave none.
	token string
}

// interrupt unblocks a connection waiting for its next request; one busy
// with a request notices the shutdown when it is done.
func (c *conn) interrupt() {
	if !c.busy.Load() {
		c.nc.SetReadDeadline(time.Unix(1, 0))
	}
}

func (c *conn) closing() bool {
	select {
	case <-c.s.shutdown:
		return true
	default:
		return false
	}
}

func (c *conn) serve() {
	s := c.s
	log := s.log.With("remote", c.remote)
	log.Debug("connection opened")
	if !c.handshake(log) {
		c.nc.Close()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		s.m.connections.Dec()
		s.wg.Done()
		return
	}
	rd := wire.NewReader(c.nc, s.cfg.Limits)
	// A change from a connection that cannot be the writer is refused from
	// its header: never inflated nor spooled.
	rd.Admit = func(t wire.Type, _ uint32) bool {
		return t == wire.TypeSnapshot && c.rebaseNext.Load() || s.mayWriteSoon(c)
	}
	defer func() {
		rd.Close()
		c.nc.Close()
		s.mu.Lock()
		if s.writer == c {
			s.writer = nil
			log.Info("writer disconnected")
		}
		delete(s.conns, c)
		s.mu.Unlock()
		s.m.connections.Dec()
		s.wg.Done()
	}()
	for !c.closing() {
		c.busy.Store(false)
		if c.closing() { // Shutdown may have run between the check and Store
			return
		}
		p, err := rd.Next()
		c.busy.Store(true)
		if err != nil {
			switch {
			case err == io.EOF:
				log.Debug("connection closed by client")
			case c.closing():
				log.Debug("connection closed for shutdown")
			case errors.Is(err, wire.ErrMalformed) || errors.Is(err, wire.ErrTooLarge):
				s.m.refusals.WithLabelValues("malformed").Inc()
				log.Warn("closing connection: bad packet", "err", err)
			default:
				log.Info("connection lost", "err", err)
			}
			return
		}
		if err := c.handle(p, log); err != nil {
			log.Info("closing connection", "err", err)
			return
		}
		if p.Type == wire.TypeChange && rd.Buffered() == 0 && s.idler != nil {
			// The ACK is out and the writer has sent nothing else: prepare
			// the backend for the next change now, off its ack path.
			s.idler.Idle()
		}
	}
}

// handshakeTimeout bounds a TLS handshake: a client that connects and says
// nothing does not hold a connection slot.
const handshakeTimeout = 10 * time.Second

// handshake completes a TLS connection's handshake before any packet is
// read; a refused one is logged (with the client key's pin when it was
// not authorized) and counted.
func (c *conn) handshake(log *slog.Logger) bool {
	t, ok := c.nc.(*tls.Conn)
	if !ok {
		return true
	}
	if err := handshakeTLS(c.s.ctx, t, c.s.pin()); err != nil {
		c.s.m.refusals.WithLabelValues("tls").Inc()
		log.Warn("refused: TLS handshake failed", "err", err)
		return false
	}
	return true
}

// handshakeTLS completes t's handshake within handshakeTimeout. A client
// without TLS is told, in its own protocol, how to connect (pin: the
// server's key's).
func handshakeTLS(ctx context.Context, t *tls.Conn, pin string) error {
	ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	err := t.HandshakeContext(ctx)
	var rhe tls.RecordHeaderError
	if errors.As(err, &rhe) && rhe.Conn != nil {
		rhe.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		wire.NewWriter(rhe.Conn).WriteExtError("this backup server speaks TLS: connect with socket:HOST:PORT?pin=" + pin + " (plaintext clients: its --legacy-listen address, if it has one)")
	}
	return err
}

// tuneTCP sets what every client connection needs: no batching (every
// packet waits for an answer) and keepalive (a writer whose host died must
// not hold the writer role for hours).
func tuneTCP(nc net.Conn) {
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
		tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 5 * time.Second, Count: 3})
	}
}

// pin is the pin of the server's TLS key.
func (s *Server) pin() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tlsPin
}

// head is the backup's current head version, sent in ACK and NACK.
func (s *Server) head() uint32 { return s.b.Metadata().Version }

// mayWrite tells whether claimWriter(c) would succeed now.
func (s *Server) mayWrite(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.writer
	return w == nil || w == c || c.token != "" && w.token == c.token
}

// mayWriteSoon is mayWrite, giving a writer whose client just closed its
// connection a moment to be noticed gone (its handler reads the EOF at
// once): a client that reconnects at once is not refused for it.
func (s *Server) mayWriteSoon(c *conn) bool {
	for deadline := time.Now().Add(250 * time.Millisecond); ; {
		if s.mayWrite(c) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// claimWriter makes c the writer if there is none, or if the writer's
// connection belongs to the same client process as c (same writer token):
// that client left the old connection (it timed out on it and reconnected),
// which is half-open when the server has not seen it close.
func (s *Server) claimWriter(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch old := s.writer; {
	case old == nil:
		s.writer = c
		s.log.Info("writer connected", "remote", c.remote)
	case old != c && c.token != "" && old.token == c.token:
		s.writer = c
		old.nc.Close() // its client has left it; its handler ends on the read error
		s.m.takeovers.Inc()
		s.log.Warn("the writer reconnected before its old connection closed: the new connection takes over (the old one was left half-open by a network fault)",
			"remote", c.remote, "old_remote", old.remote)
	}
	return s.writer == c
}

// isResend tells whether ch repeats the head change byte for byte: a client
// that did not see its ACK sends it again.
func (s *Server) isResend(ch *lnvault.Change) bool {
	l := s.last
	return l != nil && ch.Kind == lnvault.KindTransaction && l.Kind == ch.Kind && l.Version == ch.Version && slices.Equal(l.Statements, ch.Statements)
}

func (c *conn) send(f func(w *wire.Writer) error) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return f(c.wr)
}

func (c *conn) nack(reason string, log *slog.Logger, args ...any) error {
	c.s.m.refusals.WithLabelValues(reason).Inc()
	v := c.s.head()
	log.Warn("refused", append([]any{"reason", reason, "head", v}, args...)...)
	return c.send(func(w *wire.Writer) error { return w.WriteVersion(wire.TypeNack, v) })
}

// handle answers one request. An error closes the connection.
func (c *conn) handle(p wire.Packet, log *slog.Logger) error {
	s := c.s
	if p.Type == wire.TypeSnapshot && c.rebaseNext.Swap(false) {
		return c.rebase(p.Change, log)
	}
	switch p.Type {
	case wire.TypeRebase:
		return c.startRebase(log)
	case wire.TypeChange, wire.TypeSnapshot:
		if p.Skipped {
			return c.nack("second_writer", log, "version", p.Version, "detail", "another connection is the writer of this backup (the change was discarded unread)")
		}
		start := time.Now()
		kind := "change"
		if p.Type == wire.TypeSnapshot {
			kind = "snapshot"
			s.m.receivedSnapshot.Inc()
		} else {
			s.m.receivedChange.Inc()
		}
		s.m.bytes.Add(float64(p.Len) + wire.HeaderLen)
		s.appendMu.Lock()
		if !s.claimWriter(c) {
			s.appendMu.Unlock()
			return c.nack("second_writer", log, "version", p.Version, "detail", "another connection is the writer of this backup")
		}
		if s.isResend(p.Change) {
			s.appendMu.Unlock()
			log.Info("a resend of the head change: acknowledged again, not stored twice", "version", p.Version)
			return c.send(func(w *wire.Writer) error { return w.WriteVersion(wire.TypeAck, p.Version) })
		}
		if err := lnvault.CheckNext(s.b.Metadata(), p.Version, p.Change.Kind); err != nil {
			s.appendMu.Unlock()
			return c.nack("version", log, "version", p.Version, "err", err)
		}
		if why := s.overQuota(int64(p.Len)); why != "" {
			s.appendMu.Unlock()
			s.m.refusals.WithLabelValues("quota").Inc()
			log.Warn("change refused: over quota", "version", p.Version, "detail", why)
			return c.send(func(w *wire.Writer) error { return w.WriteExtError(why) })
		}
		if d := s.throttle(s.ctx); d > 0 {
			log.Debug("writer throttled to its change rate", "waited", d)
		}
		err := s.b.Append(s.ctx, p.Change)
		if err == nil {
			s.grew(int64(p.Len) + wire.HeaderLen)
		}
		s.last = nil
		if err == nil && p.Change.Kind == lnvault.KindTransaction {
			s.last = p.Change // the wire reader allocates each packet's statements afresh
		}
		s.appendMu.Unlock()
		if err != nil {
			log.Error("storing change failed", "version", p.Version, "err", err)
			return c.nack("store_failed", log, "version", p.Version)
		}
		// Observed before the ACK goes out: a client that has its ACK
		// then finds the metric counted.
		s.m.ackLatency.Observe(time.Since(start).Seconds())
		if err := c.send(func(w *wire.Writer) error { return w.WriteVersion(wire.TypeAck, p.Version) }); err != nil {
			return err
		}
		if log.Enabled(s.ctx, slog.LevelDebug) { // the arguments would be allocated for nothing
			log.Debug("stored", "kind", kind, "version", p.Version)
		}
	case wire.TypeRewind:
		if !s.claimWriter(c) {
			return c.nack("second_writer", log, "rewind_to", p.Version)
		}
		s.appendMu.Lock()
		m := s.b.Metadata()
		if m.VersionCount == 0 || p.Version != m.PrevVersion {
			s.appendMu.Unlock()
			return c.nack("rewind", log, "rewind_to", p.Version, "prev_version", m.PrevVersion)
		}
		err := s.b.Rewind(s.ctx)
		s.last = nil
		s.appendMu.Unlock()
		if err != nil {
			log.Error("rewind failed", "err", err)
			return c.nack("rewind", log, "rewind_to", p.Version)
		}
		log.Info("rewound", "version", s.head())
		return c.send(func(w *wire.Writer) error { return w.WriteVersion(wire.TypeAck, s.head()) })
	case wire.TypeReqMetadata:
		s.appendMu.Lock() // after any change being stored
		m := s.b.Metadata()
		s.appendMu.Unlock()
		return c.send(func(w *wire.Writer) error { return w.WriteMetadata(m) })
	case wire.TypeRestore:
		return c.restore(log)
	case wire.TypeCompact:
		if s.cfg.AppendOnly {
			s.m.refusals.WithLabelValues("append_only").Inc()
			log.Warn("compaction refused: the server is append-only")
			return c.send(func(w *wire.Writer) error {
				return w.WriteExtError("not compacted: this server is append-only (--append-only): its operator compacts it")
			})
		}
		if !c.compactAside && !s.claimWriter(c) {
			return c.nack("second_writer", log, "request", "COMPACT")
		}
		s.mu.Lock()
		busy := s.compacting
		s.compacting = true
		s.mu.Unlock()
		if busy {
			return c.nack("compacting", log, "detail", "a compaction is already running")
		}
		// Compact runs beside Append: the writer keeps being served.
		s.wg.Add(1)
		go c.compact(log)
	case wire.TypeHello, wire.TypeSCBPut, wire.TypeSCBList, wire.TypeSCBGet:
		return c.handleExt(p, log)
	case wire.TypeDelete:
		return c.delete(p.Version, log)
	case wire.TypeAck, wire.TypeNack, wire.TypeMetadata, wire.TypeCompactRes, wire.TypeDone:
		// Clients may acknowledge restored changes; nothing to do.
	default:
		// Server-to-client packets (FEATURES, SCB_VERSIONS, ...) from a
		// client: it is out of step with the protocol.
		s.m.refusals.WithLabelValues("malformed").Inc()
		return fmt.Errorf("client sent %v, which only a server sends", p.Type)
	}
	return nil
}

func (c *conn) compact(log *slog.Logger) {
	s := c.s
	defer s.wg.Done()
	log.Info("compaction started")
	start := time.Now()
	st, err := s.b.Compact(s.ctx)
	// Done before the answer goes out: a client may ask again as soon as it
	// has it.
	s.mu.Lock()
	s.compacting = false
	s.mu.Unlock()
	if err != nil {
		log.Error("compaction failed", "err", err)
		if err := c.nack("compact_failed", log); err != nil {
			c.nc.Close()
		}
		return
	}
	s.resized(s.ctx)
	log.Info("compaction done", "before_bytes", st.Before.BackupSize, "after_bytes", st.After.BackupSize,
		"before_changes", st.Before.VersionCount, "after_changes", st.After.VersionCount, "took", time.Since(start))
	if err := c.send(func(w *wire.Writer) error { return w.WriteCompactResult(st) }); err != nil {
		c.nc.Close()
	}
}

// startRebase takes REBASE: the next SNAPSHOT is the client's snapshot of
// its own database. Refused (EXT_ERROR) unless the connection asked for
// the feature and the store can take it.
func (c *conn) startRebase(log *slog.Logger) error {
	s := c.s
	refuse := func(reason, msg string) error {
		s.m.refusals.WithLabelValues(reason).Inc()
		log.Warn("rebase refused", "reason", reason, "detail", msg)
		return c.send(func(w *wire.Writer) error { return w.WriteExtError("not rebased: " + msg) })
	}
	if _, ok := s.b.(lnvault.Rebaser); !ok {
		return refuse("rebase_unsupported", "this server's store cannot take a snapshot from its client")
	}
	if s.cfg.AppendOnly {
		return refuse("append_only", "this server is append-only (--append-only): it keeps the changes a snapshot would replace; its operator compacts it")
	}
	if !c.rebaseAside {
		return refuse("rebase_unasked", "REBASE on a connection that did not ask for the rebase feature in HELLO")
	}
	if !s.mayWriteSoon(c) {
		// A rebase replaces history: only the writer's own client (its
		// token) may send one, never a second client beside it.
		return refuse("second_writer", "another client is the writer of this backup: only it may rebase it")
	}
	c.rebaseNext.Store(true)
	return nil
}

// rebase stores the client's snapshot in place of the changes up to its
// version, beside the writer's appends, and answers COMPACT_RES.
func (c *conn) rebase(snap *lnvault.Change, log *slog.Logger) error {
	s := c.s
	s.mu.Lock()
	busy := s.compacting
	s.compacting = true
	s.mu.Unlock()
	if busy {
		s.m.refusals.WithLabelValues("compacting").Inc()
		return c.send(func(w *wire.Writer) error {
			return w.WriteExtError("not rebased: a compaction is running; try again when it is done")
		})
	}
	start := time.Now()
	st, err := s.b.(lnvault.Rebaser).Rebase(s.ctx, snap)
	// Done before the answer goes out: a client may ask again at once.
	s.mu.Lock()
	s.compacting = false
	s.mu.Unlock()
	if err != nil {
		log.Warn("rebase failed", "version", snap.Version, "err", err)
		return c.send(func(w *wire.Writer) error { return w.WriteExtError("not rebased: " + err.Error()) })
	}
	s.resized(s.ctx)
	log.Info("rebased on the client's snapshot", "version", snap.Version, "before_bytes", st.Before.BackupSize, "after_bytes", st.After.BackupSize,
		"before_changes", st.Before.VersionCount, "after_changes", st.After.VersionCount, "took", time.Since(start))
	return c.send(func(w *wire.Writer) error { return w.WriteCompactResult(st) })
}

// delete empties the backup on a client's request (`lnvault delete
// socket:...`), if c may write, no compaction runs and the head is still
// version head, the one the user agreed to delete; it answers the empty
// backup's METADATA, or EXT_ERROR saying why nothing was deleted.
func (c *conn) delete(head uint32, log *slog.Logger) error {
	s := c.s
	refuse := func(reason, msg string) error {
		s.m.refusals.WithLabelValues(reason).Inc()
		log.Warn("delete refused", "reason", reason, "detail", msg)
		return c.send(func(w *wire.Writer) error { return w.WriteExtError("not deleted: " + msg) })
	}
	if s.cfg.AppendOnly {
		return refuse("append_only", "this server is append-only (--append-only): no client may delete its history; its operator can")
	}
	e, ok := s.b.(lnvault.Emptier)
	if !ok {
		return refuse("delete_unsupported", "this server's store cannot be emptied; stop the server and delete its store on its host")
	}
	if !s.mayWriteSoon(c) || !s.claimWriter(c) {
		return refuse("second_writer", "another connection is the writer of this backup (lightningd's plugin): stop that node first")
	}
	s.mu.Lock()
	busy := s.compacting
	s.compacting = true // no compaction starts meanwhile
	s.mu.Unlock()
	if busy {
		return refuse("compacting", "a compaction is running; try again when it is done")
	}
	defer func() {
		s.mu.Lock()
		s.compacting = false
		s.mu.Unlock()
	}()
	s.appendMu.Lock()
	m := s.b.Metadata()
	if m.Version != head {
		s.appendMu.Unlock()
		return refuse("version", fmt.Sprintf("the backup is at version %d now, not %d as shown before; look again and repeat", m.Version, head))
	}
	err := e.Empty(s.ctx)
	s.last = nil
	s.appendMu.Unlock()
	if err != nil {
		log.Error("delete failed", "err", err)
		return refuse("delete_failed", err.Error())
	}
	s.resized(s.ctx)
	log.Warn("backup deleted on a client's request; serving it empty", "remote", c.remote, "version_was", m.Version, "changes_were", m.VersionCount)
	return c.send(func(w *wire.Writer) error { return w.WriteMetadata(s.b.Metadata()) })
}

// restore streams the backup: CHANGE/SNAPSHOT packets, then DONE. A failure
// mid-way is reported with a NACK (the reference client then stops with an
// error) rather than a DONE that would look like a complete backup.
func (c *conn) restore(log *slog.Logger) error {
	s := c.s
	log.Info("restore requested")
	var n int
	err := s.b.Stream(s.ctx, 0, func(ch *lnvault.Change) error {
		if c.closing() {
			return errors.New("server shutting down")
		}
		n++
		return c.send(func(w *wire.Writer) error { return w.WriteChange(ch) })
	})
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) {
			return fmt.Errorf("restore aborted after %d changes: %w", n, err)
		}
		log.Error("restore failed", "changes_sent", n, "err", err)
		if err := c.nack("restore_failed", log); err != nil {
			return err
		}
		return nil
	}
	log.Info("restore sent", "changes", n)
	return c.send(func(w *wire.Writer) error { return w.WriteEmpty(wire.TypeDone) })
}

// handleExt answers the lnvault extension requests (package wire documents
// them). Failures are answered with EXT_ERROR and keep the connection: they
// concern one request, not the stream.
func (c *conn) handleExt(p wire.Packet, log *slog.Logger) error {
	s := c.s
	st := s.cfg.SCB
	if p.Type == wire.TypeHello {
		features := []string{wire.FeatureCompact, wire.FeatureTakeover}
		if st != nil {
			features = append(features, wire.FeatureSCB)
		}
		if _, ok := s.b.(lnvault.Emptier); ok {
			features = append(features, wire.FeatureDelete)
		}
		if _, ok := s.b.(lnvault.Rebaser); ok {
			features = append(features, wire.FeatureRebase)
		}
		c.compactAside = slices.Contains(p.Features, wire.FeatureCompact)
		c.rebaseAside = slices.Contains(p.Features, wire.FeatureRebase)
		c.token = wire.WriterToken(p.Features)
		log.Debug("extension hello", "client_features", p.Features, "features", features)
		return c.send(func(w *wire.Writer) error { return w.WriteFeatures(wire.TypeFeatures, features) })
	}
	extErr := func(reason, msg string, args ...any) error {
		s.m.refusals.WithLabelValues(reason).Inc()
		log.Warn("refused", append([]any{"request", p.Type.String(), "reason", reason, "detail", msg}, args...)...)
		return c.send(func(w *wire.Writer) error { return w.WriteExtError(msg) })
	}
	if st == nil {
		return extErr("scb_unsupported", "this backup server keeps no static channel backups (start it with a file: backup, or with --scb URL)")
	}
	ctx := s.ctx
	switch p.Type {
	case wire.TypeSCBPut:
		// Checked before storing: a damaged envelope must never become the
		// latest version.
		if _, err := scb.DecodeEnvelope(p.Data); err != nil {
			return extErr("scb_invalid", fmt.Sprintf("refusing an invalid static channel backup envelope: %v", err))
		}
		v, err := st.Put(ctx, p.Data)
		if err != nil {
			log.Error("storing static channel backup failed", "err", err)
			return extErr("scb_store_failed", fmt.Sprintf("the backup server could not store the static channel backup: %v", err))
		}
		log.Info("static channel backup stored", "id", v.ID, "kind", v.Kind, "channels", v.Channels, "bytes", v.Size, "encrypted", v.Encrypted)
		return c.send(func(w *wire.Writer) error { return w.WriteSCBVersions([]wire.SCBVersion{SCBVersionToWire(v)}) })
	case wire.TypeSCBList:
		vs, err := st.List(ctx)
		if err != nil && !errors.Is(err, lnvault.ErrNotFound) { // no folder yet: no versions
			log.Error("listing static channel backups failed", "err", err)
			return extErr("scb_list_failed", fmt.Sprintf("the backup server could not list its static channel backups: %v", err))
		}
		// Several packets for a long history, then DONE, like RESTORE.
		for len(vs) > 0 {
			n := min(len(vs), wire.SCBVersionsPerPacket)
			page := make([]wire.SCBVersion, n)
			for i, v := range vs[:n] {
				page[i] = SCBVersionToWire(v)
			}
			vs = vs[n:]
			if err := c.send(func(w *wire.Writer) error { return w.WriteSCBVersions(page) }); err != nil {
				return err
			}
		}
		return c.send(func(w *wire.Writer) error { return w.WriteEmpty(wire.TypeDone) })
	case wire.TypeSCBGet:
		id := p.Text
		if _, _, err := scb.ParseVersionID(id); err != nil {
			// Not an id: "" is the latest version, a kind its latest.
			kind := scb.Kind(id)
			if id != "" && !kind.Valid() {
				return extErr("scb_get", fmt.Sprintf("%q is neither a static channel backup version id nor a kind", id))
			}
			v, err := scb.Select(ctx, st, kind, "")
			if err != nil {
				return extErr("scb_get", err.Error())
			}
			id = v.ID
		}
		env, err := st.Get(ctx, id)
		if err != nil {
			return extErr("scb_get", err.Error())
		}
		return c.send(func(w *wire.Writer) error { return w.WriteSCB(wire.TypeSCBData, env) })
	}
	return nil
}

// SCBVersionToWire converts a stored version's metadata for SCB_VERSIONS.
func SCBVersionToWire(v scb.Version) wire.SCBVersion {
	w := wire.SCBVersion{ID: v.ID, Seq: v.Seq, Stored: v.Stored.UTC(), Kind: string(v.Kind), Created: v.Created.UTC(),
		Channels: v.Channels, Encrypted: v.Encrypted, Size: v.Size}
	if v.PlainSHA256 != ([32]byte{}) {
		w.PlainSHA256 = hex.EncodeToString(v.PlainSHA256[:])
	}
	if v.Err != nil {
		w.Error = wire.ExtErrorText(v.Err.Error())
	}
	return w
}
