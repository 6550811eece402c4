// Package socket is the socket: backend: it stores a backup on a remote
// backup server (`lnvault server`, or the reference Python server) over the
// documented TCP protocol (package wire). A change is reported durable only
// once the server's ACK for its version has arrived.
package socket

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/tlskey"
	"github.com/lnvault/lnvault/wire"
	"golang.org/x/net/proxy"
)

// OpenBackend is Open as an lnvault.Opener (package backends wires it to
// socket: URLs).
func OpenBackend(ctx context.Context, rawURL string, opts lnvault.OpenOptions) (lnvault.Backend, error) {
	b, err := Open(ctx, rawURL, opts)
	if err != nil {
		return nil, err // not a typed nil inside the interface
	}
	return b, nil
}

// ErrRefused wraps a NACK from the server.
var ErrRefused = errors.New("refused by the backup server")

// Backend is a backup on a remote server. Append, Rewind, Compact and Status
// share one connection, one request at a time; Stream opens its own so that a
// restore can run while changes are appended.
type Backend struct {
	url  string
	cfg  Config
	opts lnvault.OpenOptions
	log  *slog.Logger

	mu   sync.Mutex // one request/answer at a time on conn
	conn net.Conn
	rd   *wire.Reader
	wr   *wire.Writer
	// wrLevel is wr's zlib level.
	wrLevel int
	// rewound: the last operation was a rewind (a second is refused locally).
	rewound bool
	// noAside: the server cannot compact beside the writer's connection.
	noAside atomic.Bool
	// oneConn: the server serves one connection at a time (streams go in
	// place of this handle's connection).
	oneConn atomic.Bool
	// token names this handle to the server as a writer (HELLO), so that
	// its reconnection takes the writer role over from its old connection
	// when that one is half-open. noHello: the server takes no HELLO.
	token   [8]byte
	noHello bool
	// helloClosed counts connections in a row closed on HELLO while one
	// without HELLO then worked: a reference server closes every one, a
	// network fault one now and then. sawFeatures: the server answered
	// HELLO once (an lnvault server): a close on HELLO is a fault.
	helloClosed int
	sawFeatures bool

	metaMu sync.Mutex
	meta   lnvault.Metadata
	closed bool
}

var (
	_ lnvault.Backend = (*Backend)(nil)
	_ lnvault.Deleter = (*Backend)(nil)
)

// Open connects to the server of rawURL and asks for its metadata. With
// opts.Create, a server whose backup already holds changes is ErrExists.
func Open(ctx context.Context, rawURL string, opts lnvault.OpenOptions) (*Backend, error) {
	cfg, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	b := &Backend{url: rawURL, cfg: cfg, opts: opts, log: opts.Log().With("backend", "socket", "server", cfg.Addr())}
	rand.Read(b.token[:])
	b.noHello = opts.ReadOnly // only a writer needs to be told apart
	b.mu.Lock()
	defer b.mu.Unlock()
	m, err := b.openLocked(ctx)
	if err != nil {
		return nil, err
	}
	if opts.Create && m.VersionCount > 0 {
		b.dropLocked()
		return nil, fmt.Errorf("%w: the server at %s already holds %d changes (version %d)", lnvault.ErrExists, cfg.Addr(), m.VersionCount, m.Version)
	}
	b.setMeta(m)
	return b, nil
}

// openLocked connects. A writer (a node starting) rides out a link or
// server that is briefly away with the same retry budget as a change; a
// reader (the CLI) is told at once.
func (b *Backend) openLocked(ctx context.Context) (lnvault.Metadata, error) {
	delay := b.cfg.RetryDelay
	for attempt := 0; ; attempt++ {
		m, err := b.connectLocked(ctx)
		if err == nil || b.opts.ReadOnly || !retryable(err) || ctx.Err() != nil {
			return m, err
		}
		if attempt >= b.cfg.Retries {
			return m, fmt.Errorf("no answer after %d reconnection attempts (retries= and retry_delay= in the URL): %w", attempt, err)
		}
		b.log.Warn("cannot reach the backup server, retrying", "attempt", attempt+1, "of", b.cfg.Retries, "delay", delay, "err", err)
		if err := sleepCtx(ctx, delay); err != nil {
			return m, fmt.Errorf("connecting to backup server %s: %w", b.cfg.Addr(), err)
		}
		delay = time.Duration(float64(delay) * retryBackoff)
	}
}

// retryable: a lost or silent connection, or a failed dial. Everything
// else (a refusal, a protocol error) is final.
func retryable(err error) bool {
	var ne *netError
	var oe *net.OpError
	return errors.As(err, &ne) || errors.As(err, &oe) || isNetErr(err)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Config returns the parsed URL.
func (b *Backend) Config() Config { return b.cfg }

func (b *Backend) setMeta(m lnvault.Metadata) {
	b.metaMu.Lock()
	b.meta = m
	b.metaMu.Unlock()
}

// Metadata is the server's head as of the last answer.
func (b *Backend) Metadata() lnvault.Metadata {
	b.metaMu.Lock()
	defer b.metaMu.Unlock()
	return b.meta
}

// dial opens a TCP connection, through the SOCKS5 proxy if configured.
func (b *Backend) dial(ctx context.Context) (net.Conn, error) { return b.cfg.dial(ctx) }

// dial opens a TCP connection to the server, through the SOCKS5 proxy if
// configured (the backend and the extension connections share it).
func (cfg Config) dial(ctx context.Context) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	d := &net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 5 * time.Second, Count: 3}}
	var c net.Conn
	var err error
	if cfg.Proxy != "" {
		// The proxy resolves host names itself (needed for .onion).
		var pd proxy.Dialer
		pd, err = proxy.SOCKS5("tcp", cfg.Proxy, nil, d)
		if err == nil {
			c, err = pd.(proxy.ContextDialer).DialContext(ctx, "tcp", cfg.Addr())
		}
		if err != nil {
			return nil, fmt.Errorf("connecting to backup server %s through SOCKS5 proxy %s: %w", cfg.Addr(), cfg.Proxy, err)
		}
	} else {
		c, err = d.DialContext(ctx, "tcp", cfg.Addr())
		if err != nil {
			return nil, fmt.Errorf("connecting to backup server %s: %w", cfg.Addr(), err)
		}
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true) // every packet waits for an answer: never batch
	}
	if cfg.Pin == "" {
		return c, nil
	}
	t := tls.Client(c, tlskey.ClientConfig(cfg.Pin, cfg.key))
	if err := t.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, cfg.tlsErr(err)
	}
	return t, nil
}

// tlsErr says what a failed handshake means for the operator.
func (cfg Config) tlsErr(err error) error {
	var pe *tlskey.PinError
	var re tls.RecordHeaderError
	switch {
	case errors.As(err, &pe):
		return fmt.Errorf("%w: backup server %s: %w", ErrRefused, cfg.Addr(), pe)
	case errors.As(err, &re):
		return fmt.Errorf("%w: backup server %s does not speak TLS (an older lnvault server, or the reference): drop pin= from the URL, or start the server with --tls-key", ErrRefused, cfg.Addr())
	case strings.Contains(err.Error(), "bad certificate") || strings.Contains(err.Error(), "certificate required"):
		hint := "this client's key (key=" + cfg.KeyFile + ") is not in its --authorized-keys"
		if cfg.KeyFile == "" {
			hint = "it admits only authorized client keys: add key=PATH (lnvault init writes one) and authorize its pin on the server"
		}
		return fmt.Errorf("%w: backup server %s refused this client: %s", ErrRefused, cfg.Addr(), hint)
	}
	return fmt.Errorf("TLS with backup server %s: %w", cfg.Addr(), err)
}

// connectLocked dials and exchanges REQ_METADATA (after HELLO naming this
// writer, unless the server takes no HELLO).
func (b *Backend) connectLocked(ctx context.Context) (lnvault.Metadata, error) {
	m, err := b.dialLocked(ctx, !b.noHello)
	var ce *helloClosedError
	if errors.As(err, &ce) && !b.sawFeatures {
		// A reference server closes the connection on HELLO (an lnvault
		// server, once seen answering it, never does: a close is then a
		// network fault, retried as one, with HELLO). After the third
		// time in a row that a connection without HELLO then works, the
		// server is spoken to as the reference client does.
		m, err = b.dialLocked(ctx, false)
		if err == nil {
			if b.helloClosed++; b.helloClosed >= 3 {
				b.noHello = true
				b.log.Info("the backup server takes no HELLO (a reference server): if this client's connection goes half-open, its reconnection is refused as a second writer until the server's TCP keepalive closes the old one", "why", ce.err)
			}
		}
	}
	return m, err
}

// helloClosedError: the server closed the connection on HELLO.
type helloClosedError struct{ err error }

func (e *helloClosedError) Error() string { return "connection closed on HELLO: " + e.err.Error() }
func (e *helloClosedError) Unwrap() error { return e.err }

func (b *Backend) dialLocked(ctx context.Context, hello bool) (lnvault.Metadata, error) {
	b.dropLocked()
	c, err := b.dial(ctx)
	if err != nil {
		return lnvault.Metadata{}, err
	}
	b.conn = c
	if b.rd == nil {
		b.rd = wire.NewReader(c, wire.Limits{})
	} else {
		b.rd.Reset(c)
	}
	// Any zlib stream is valid on the wire; the level is chosen per
	// connection (see Config.Compress). Never compress/flate's default level:
	// it clears 640 KiB of hash tables per stream.
	if level := b.cfg.zlibLevel(c); b.wr == nil || b.wrLevel != level {
		b.wr, _ = wire.NewWriterLevel(c, level)
		b.wrLevel = level
		b.log.Debug("wire compression", "zlib_level", level, "remote", c.RemoteAddr().String())
	} else {
		b.wr.Reset(c)
	}
	var m lnvault.Metadata
	if hello {
		m, err = b.helloMetadataLocked(ctx)
	} else {
		m, err = b.requestMetadataLocked(ctx)
	}
	if err != nil {
		b.dropLocked()
		return m, err
	}
	b.log.Debug("connected", "version", m.Version, "prev_version", m.PrevVersion, "version_count", m.VersionCount)
	return m, nil
}

func (b *Backend) dropLocked() {
	if b.conn != nil {
		b.conn.Close()
		b.conn = nil
	}
}

func (b *Backend) requestMetadataLocked(ctx context.Context) (lnvault.Metadata, error) {
	p, err := b.roundTrip(ctx, b.cfg.Timeout, op{name: "REQ_METADATA"}, func() error { return b.wr.WriteEmpty(wire.TypeReqMetadata) })
	if err != nil {
		return lnvault.Metadata{}, err
	}
	return b.metadataAnswer(p)
}

func (b *Backend) metadataAnswer(p wire.Packet) (lnvault.Metadata, error) {
	if p.Type == wire.TypeExtError {
		// A TLS server telling a client without TLS how to connect.
		return lnvault.Metadata{}, fmt.Errorf("%w: backup server %s: %s", ErrRefused, b.cfg.Addr(), p.Text)
	}
	if p.Type != wire.TypeMetadata {
		return lnvault.Metadata{}, &protocolError{fmt.Sprintf("backup server %s answered REQ_METADATA with %v", b.cfg.Addr(), p.Type)}
	}
	if p.Protocol != wire.Protocol {
		return lnvault.Metadata{}, &protocolError{fmt.Sprintf("backup server %s speaks protocol %d, lnvault speaks %d", b.cfg.Addr(), p.Protocol, wire.Protocol)}
	}
	return p.Meta, nil
}

// helloMetadataLocked sends HELLO naming this writer and REQ_METADATA, and
// reads the answers: an lnvault server sends FEATURES then METADATA; a
// server without the extension NACKs HELLO or skips it, then sends METADATA
// (it is not sent HELLO again); a reference server closes the connection
// (*helloClosedError).
func (b *Backend) helloMetadataLocked(ctx context.Context) (lnvault.Metadata, error) {
	what := op{name: "REQ_METADATA"} // sent with HELLO
	p, err := b.roundTrip(ctx, b.cfg.Timeout, what, func() error {
		if err := b.wr.WriteFeatures(wire.TypeHello, []string{wire.WriterFeature(b.token)}); err != nil {
			return err
		}
		return b.wr.WriteEmpty(wire.TypeReqMetadata)
	})
	if err != nil {
		var ne *netError
		if errors.As(err, &ne) && ctx.Err() == nil && (errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)) {
			return lnvault.Metadata{}, &helloClosedError{err}
		}
		return lnvault.Metadata{}, err
	}
	b.helloClosed = 0
	if p.Type == wire.TypeExtError {
		return b.metadataAnswer(p)
	}
	if p.Type == wire.TypeFeatures {
		b.sawFeatures = true
	}
	if p.Type != wire.TypeMetadata {
		if p.Type != wire.TypeFeatures {
			b.noHello = true
		}
		if p.Type != wire.TypeFeatures && p.Type != wire.TypeNack {
			return lnvault.Metadata{}, &protocolError{fmt.Sprintf("backup server %s answered HELLO with %v", b.cfg.Addr(), p.Type)}
		}
		if p, err = b.rd.Next(); err != nil {
			if errors.Is(err, wire.ErrMalformed) || errors.Is(err, wire.ErrTooLarge) {
				return lnvault.Metadata{}, &protocolError{fmt.Sprintf("backup server %s answered REQ_METADATA with a bad packet: %v", b.cfg.Addr(), err)}
			}
			return lnvault.Metadata{}, b.netErr(ctx, op{name: "REQ_METADATA"}, "waiting for the answer to", b.cfg.Timeout, err)
		}
	} else {
		b.noHello = true // it skipped HELLO
	}
	return b.metadataAnswer(p)
}

// protocolError: the server answered, but not as the protocol says. Not
// retried: reconnecting would not make it right.
type protocolError struct{ msg string }

func (e *protocolError) Error() string { return e.msg }

// roundTrip sends one packet and reads the answer, both bounded by timeout
// and ctx. Network errors are returned as *netError (retryable).
func (b *Backend) roundTrip(ctx context.Context, timeout time.Duration, what op, send func() error) (wire.Packet, error) {
	c := b.conn
	if ctx.Done() != nil {
		// Unblock the read/write if ctx ends first.
		stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
		defer stop()
	}
	c.SetWriteDeadline(time.Now().Add(b.cfg.Timeout))
	if err := send(); err != nil {
		if errors.Is(err, wire.ErrTooLarge) || !isNetErr(err) {
			return wire.Packet{}, err
		}
		return wire.Packet{}, b.netErr(ctx, what, "sending", timeout, err)
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	p, err := b.rd.Next()
	if err != nil {
		if errors.Is(err, wire.ErrMalformed) || errors.Is(err, wire.ErrTooLarge) {
			return p, &protocolError{fmt.Sprintf("backup server %s answered %s with a bad packet: %v", b.cfg.Addr(), what, err)}
		}
		return p, b.netErr(ctx, what, "waiting for the answer to", timeout, err)
	}
	return p, nil
}

func isNetErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed)
}

// netError is a lost or silent connection: worth a reconnection.
type netError struct{ err error }

func (e *netError) Error() string { return e.err.Error() }
func (e *netError) Unwrap() error { return e.err }

func (b *Backend) netErr(ctx context.Context, what op, doing string, timeout time.Duration, err error) error {
	return b.cfg.netErr(ctx, what, doing, timeout, err)
}

// netErr words a network error of a request to the server.
func (cfg Config) netErr(ctx context.Context, what op, doing string, timeout time.Duration, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s %s on backup server %s: %w", doing, what, cfg.Addr(), ctx.Err())
	}
	if cfg.Pin != "" && strings.Contains(err.Error(), "remote error: tls:") {
		// In TLS 1.3 the server's refusal of the client's key arrives after
		// the client's handshake is done: a refusal, not a lost connection.
		return cfg.tlsErr(err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		param := "timeout"
		if timeout == cfg.CompactTimeout && timeout > cfg.Timeout {
			param = "compact_timeout"
		}
		return &netError{fmt.Errorf("backup server %s did not answer %s within %v (%s= in the URL): %w", cfg.Addr(), what, timeout, param, err)}
	}
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return &netError{fmt.Errorf("connection to backup server %s lost %s %s: %w", cfg.Addr(), doing, what, err)}
}

// Append sends c and returns once the server has acknowledged its version.
// A lost connection is retried as the reference client does: reconnect,
// REQ_METADATA, and either the change is already stored (the server's head is
// c's version and its count moved by one) or it is sent again.
func (b *Backend) Append(ctx context.Context, c *lnvault.Change) error {
	if b.opts.ReadOnly {
		return errors.New("socket backend opened read-only: cannot append")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	base := b.Metadata()
	if err := lnvault.CheckNext(base, c.Version, c.Kind); err != nil {
		return fmt.Errorf("not sent to the backup server %s: %w", b.cfg.Addr(), err)
	}
	what := op{name: "change version", version: c.Version, hasVersion: true}
	err := b.withRetry(ctx, what, base, func(m lnvault.Metadata) bool {
		return m.Version == c.Version && m.VersionCount == base.VersionCount+1
	}, func() error {
		p, err := b.roundTrip(ctx, b.cfg.Timeout, what, func() error { return b.wr.WriteChange(c) })
		if err != nil {
			return err
		}
		if p.Type == wire.TypeNack && p.HasVersion && p.Version == base.Version && lnvault.CheckNext(base, c.Version, c.Kind) == nil {
			// The change follows the server's head: not a version
			// mismatch, so another writer or the server's storage.
			return fmt.Errorf("%w: %s although it follows the server's head (version %d): another node, or an old connection of this one, holds the writer role, or the server could not store it (its disk failed or is full?); see the server's log", ErrRefused, what, p.Version)
		}
		return b.expectAck(p, what, c.Version)
	})
	if err != nil {
		return err
	}
	b.rewound = false
	b.setMeta(lnvault.Metadata{Version: c.Version, PrevVersion: base.Version, VersionCount: base.VersionCount + 1})
	return nil
}

// op names a request in errors and logs. It is formatted only when one is
// written, so the ack path formats nothing.
type op struct {
	name       string
	version    uint32
	hasVersion bool
}

func (o op) String() string {
	if !o.hasVersion {
		return o.name
	}
	return o.name + " " + strconv.FormatUint(uint64(o.version), 10)
}

func (b *Backend) expectAck(p wire.Packet, what op, version uint32) error {
	switch {
	case p.Type == wire.TypeAck && p.Version == version:
		return nil
	case p.Type == wire.TypeAck:
		return &protocolError{fmt.Sprintf("backup server %s acknowledged version %d for %s", b.cfg.Addr(), p.Version, what)}
	case p.Type == wire.TypeNack && p.HasVersion:
		return fmt.Errorf("%w: %s (the server's backup is at version %d; is another node writing to it, or does the version not follow?)", ErrRefused, what, p.Version)
	case p.Type == wire.TypeNack:
		return fmt.Errorf("%w: %s", ErrRefused, what)
	case p.Type == wire.TypeExtError:
		// Why the server did not store it (a quota).
		return fmt.Errorf("%w: %s: backup server %s: %s", ErrRefused, what, b.cfg.Addr(), p.Text)
	}
	return &protocolError{fmt.Sprintf("backup server %s answered %s with %v", b.cfg.Addr(), what, p.Type)}
}

// withRetry runs do on the connection, reconnecting on network errors. After
// a reconnection, stored tells from the server's metadata whether do already
// took effect; otherwise the metadata must still be base for do to be redone.
func (b *Backend) withRetry(ctx context.Context, what op, base lnvault.Metadata, stored func(lnvault.Metadata) bool, do func() error) error {
	delay := b.cfg.RetryDelay
	var lastErr error
	for attempt := 0; ; attempt++ {
		err := b.attempt(ctx, attempt, what, base, stored, do)
		if err == nil || err == errAlreadyStored {
			return nil
		}
		if !b.reconnectable(ctx, err) {
			return err
		}
		b.dropLocked()
		lastErr = err
		if attempt >= b.cfg.Retries || ctx.Err() != nil {
			if attempt == 0 {
				return lastErr
			}
			return fmt.Errorf("%s not acknowledged after %d reconnection attempts: %w", what, attempt, lastErr)
		}
		b.log.Warn("connection to backup server lost, reconnecting", "what", what, "attempt", attempt+1, "of", b.cfg.Retries, "delay", delay, "err", err)
		if err := sleepCtx(ctx, delay); err != nil {
			return fmt.Errorf("%s: %w (after: %v)", what, err, lastErr)
		}
		delay = time.Duration(float64(delay) * retryBackoff)
	}
}

// attempt sends the request once, connecting first if there is no
// connection. A new connection must find the server at base, or, on a retry,
// already holding the request (errAlreadyStored: the ACK was lost, not the
// change).
func (b *Backend) attempt(ctx context.Context, attempt int, what op, base lnvault.Metadata, stored func(lnvault.Metadata) bool, do func() error) error {
	if b.closed {
		return errors.New("socket backend is closed")
	}
	if b.conn == nil {
		m, err := b.connectLocked(ctx)
		if err != nil {
			return err
		}
		switch {
		case attempt > 0 && stored(m):
			b.log.Info("after reconnecting, the server already holds "+what.String(), "version", m.Version, "version_count", m.VersionCount)
			return errAlreadyStored
		case m != base:
			b.dropLocked()
			return fmt.Errorf("backup server %s is at version %d (previous %d, %d changes) but this client expected version %d (%d changes): another writer may have used it; refusing to send %s",
				b.cfg.Addr(), m.Version, m.PrevVersion, m.VersionCount, base.Version, base.VersionCount, what)
		}
	}
	return do()
}

// reconnectable tells whether err is worth another connection: a network
// failure, or a retryable refusal while ctx is live. A protocol error
// (the stream is out of step) drops the connection and is final.
func (b *Backend) reconnectable(ctx context.Context, err error) bool {
	var ne *netError
	if errors.As(err, &ne) || retryable(err) && ctx.Err() == nil {
		return true
	}
	if _, ok := err.(*protocolError); ok {
		b.dropLocked()
	}
	return false
}

var errAlreadyStored = errors.New("already stored")

// Rewind asks the server to drop its last change (REWIND carries the version
// to go back to: the head's prev_version).
func (b *Backend) Rewind(ctx context.Context) error {
	if b.opts.ReadOnly {
		return errors.New("socket backend opened read-only: cannot rewind")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.rewound {
		return lnvault.ErrRewindTwice
	}
	base := b.Metadata()
	if base.VersionCount == 0 {
		return errors.New("cannot rewind: the backup is empty")
	}
	what := op{name: "rewind to version", version: base.PrevVersion, hasVersion: true}
	err := b.withRetry(ctx, what, base, func(m lnvault.Metadata) bool {
		return m.Version == base.PrevVersion && m != base
	}, func() error {
		p, err := b.roundTrip(ctx, b.cfg.Timeout, what, func() error { return b.wr.WriteVersion(wire.TypeRewind, base.PrevVersion) })
		if err != nil {
			return err
		}
		return b.expectAck(p, what, base.PrevVersion)
	})
	if err != nil {
		if errors.Is(err, ErrRefused) && base.PrevVersion == 0 {
			// After a rewind a server reports previous version 0 and
			// refuses another, also after this client reconnected.
			return fmt.Errorf("%w: the backup server %s keeps no change before version %d to rewind to (it was rewound already): %v", lnvault.ErrRewindTwice, b.cfg.Addr(), base.Version, err)
		}
		return err
	}
	b.rewound = true
	// The new prev_version is only known to the server.
	if m, err := b.refreshLocked(ctx); err == nil {
		b.setMeta(m)
	} else {
		b.setMeta(lnvault.Metadata{Version: base.PrevVersion, VersionCount: base.VersionCount - 1})
	}
	return nil
}

func (b *Backend) refreshLocked(ctx context.Context) (lnvault.Metadata, error) {
	if b.conn == nil {
		return b.connectLocked(ctx)
	}
	m, err := b.requestMetadataLocked(ctx)
	if err != nil {
		b.dropLocked()
	}
	return m, err
}

// Status asks the server for its metadata. Records and Size are not part of
// the protocol: Records is the version count, Size is 0 (unknown).
func (b *Backend) Status(ctx context.Context) (lnvault.Status, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	m, err := b.refreshLocked(ctx)
	if err != nil {
		return lnvault.Status{}, err
	}
	if !b.opts.ReadOnly && m != b.Metadata() {
		b.log.Warn("the server's metadata moved without this client", "server", m, "client", b.Metadata())
	}
	if b.opts.ReadOnly {
		b.setMeta(m)
	}
	return lnvault.Status{URL: b.url, Format: "socket", Metadata: m, Records: int64(m.VersionCount)}, nil
}

// Compact asks the server to compact its backup (on the writer connection:
// the server lets only one connection modify a backup). Appends wait until
// the server answers.
func (b *Backend) Compact(ctx context.Context) (lnvault.CompactStats, error) {
	if b.opts.ReadOnly {
		return lnvault.CompactStats{}, errors.New("socket backend opened read-only: cannot compact")
	}
	if !b.noAside.Load() {
		st, err := b.compactAside(ctx)
		var ne *noExtError
		if !errors.As(err, &ne) {
			return st, err
		}
		b.noAside.Store(true)
		b.log.Info("the backup server compacts only on the writer's connection: appends wait for the compaction", "server", b.cfg.Addr(), "why", ne.Error())
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn == nil {
		m, err := b.connectLocked(ctx)
		if err != nil {
			return lnvault.CompactStats{}, err
		}
		b.setMeta(m)
	}
	p, err := b.roundTrip(ctx, b.cfg.CompactTimeout, op{name: "COMPACT"}, func() error { return b.wr.WriteEmpty(wire.TypeCompact) })
	if err != nil {
		b.dropLocked()
		return lnvault.CompactStats{}, err
	}
	st, err := b.compactAnswer(p)
	var pe *protocolError
	if errors.As(err, &pe) {
		b.dropLocked()
	}
	if err == nil {
		// The reference server restarts its version count at a
		// compaction: take the server's, or a reconnection would see a
		// head other than the one expected and refuse to go on.
		base := b.Metadata()
		if m, merr := b.requestMetadataLocked(ctx); merr != nil {
			b.dropLocked()
		} else if m.Version == base.Version && m.PrevVersion == base.PrevVersion && m != base {
			b.log.Info("the backup server counts versions anew after a compaction", "server", b.cfg.Addr(), "version_count", m.VersionCount, "was", base.VersionCount)
			b.setMeta(m)
		}
	}
	return st, err
}

// Rebase sends the node's snapshot over a connection of its own (REBASE,
// then the SNAPSHOT), so appends on the main connection go on; the server
// replaces the changes up to its version with it. A server that does not
// offer it (the reference, an older lnvault server) gives
// lnvault.ErrNoRebase.
func (b *Backend) Rebase(ctx context.Context, snap *lnvault.Change) (lnvault.CompactStats, error) {
	if b.opts.ReadOnly {
		return lnvault.CompactStats{}, errors.New("socket backend opened read-only: cannot rebase")
	}
	// The writer's token: only the writer's client may replace the start
	// of its backup.
	c, err := dialExt(ctx, b.cfg, wire.FeatureRebase, 0, min(asideHelloTimeout, b.cfg.Timeout), true, wire.WriterFeature(b.token))
	if err != nil {
		var ne *noExtError
		if errors.As(err, &ne) {
			return lnvault.CompactStats{}, fmt.Errorf("%w: backup server %s does not offer it (%s)", lnvault.ErrNoRebase, b.cfg.Addr(), ne.Error())
		}
		return lnvault.CompactStats{}, err
	}
	defer c.close()
	c.ic.timeout = b.cfg.CompactTimeout
	c.nc.SetWriteDeadline(time.Now().Add(b.cfg.CompactTimeout))
	err = c.wr.WriteEmpty(wire.TypeRebase)
	if err == nil {
		err = c.wr.WriteChange(snap)
	}
	if err != nil {
		if isNetErr(err) {
			return lnvault.CompactStats{}, b.cfg.netErr(ctx, op{name: "REBASE"}, "sending", b.cfg.CompactTimeout, err)
		}
		return lnvault.CompactStats{}, err
	}
	p, err := c.next(ctx, "REBASE")
	if err != nil {
		return lnvault.CompactStats{}, err
	}
	return b.compactAnswer(p)
}

// compactAnswer reads the answer to COMPACT.
func (b *Backend) compactAnswer(p wire.Packet) (lnvault.CompactStats, error) {
	switch p.Type {
	case wire.TypeCompactRes:
		return p.Stats, nil
	case wire.TypeNack:
		return lnvault.CompactStats{}, fmt.Errorf("%w: compaction failed on backup server %s (see the server's log)", ErrRefused, b.cfg.Addr())
	case wire.TypeExtError:
		return lnvault.CompactStats{}, fmt.Errorf("%w: backup server %s: %s", ErrRefused, b.cfg.Addr(), p.Text)
	}
	return lnvault.CompactStats{}, &protocolError{fmt.Sprintf("backup server %s answered COMPACT with %v", b.cfg.Addr(), p.Type)}
}

// asideHelloTimeout bounds the wait for FEATURES on the compaction
// connection: the Python reference server serves one connection at a time, so
// it does not answer a second one while the writer's is open.
const asideHelloTimeout = 3 * time.Second

// compactAside compacts over a connection of its own when the server offers
// FeatureCompact, so that appends on the main connection are not held for the
// whole compaction. A server without it gives a *noExtError.
func (b *Backend) compactAside(ctx context.Context) (lnvault.CompactStats, error) {
	c, err := dialExt(ctx, b.cfg, wire.FeatureCompact, 0, min(asideHelloTimeout, b.cfg.Timeout), true)
	if err != nil {
		return lnvault.CompactStats{}, err
	}
	defer c.close()
	c.ic.timeout = b.cfg.CompactTimeout
	p, err := c.request(ctx, "COMPACT", func(w *wire.Writer) error { return w.WriteEmpty(wire.TypeCompact) })
	if err != nil {
		return lnvault.CompactStats{}, err
	}
	return b.compactAnswer(p)
}

// idleConn renews the read deadline before every read, so a long restore
// fails only when the server goes silent, not when it is merely large.
type idleConn struct {
	net.Conn
	timeout time.Duration
}

func (c *idleConn) Read(p []byte) (int, error) {
	c.Conn.SetReadDeadline(time.Now().Add(c.timeout))
	return c.Conn.Read(p)
}

// Stream restores over a connection of its own: RESTORE, then CHANGE and
// SNAPSHOT packets until DONE. Changes before from are skipped here (the
// protocol always streams everything). The stream must end at the server's
// head version as of its start (or later: a writer may append meanwhile),
// or it is an error.
//
// A server that serves one connection at a time (the Python reference) does
// not answer a second connection while this handle holds one: the handle
// then streams in place of its connection (appends wait meanwhile), and
// keeps doing so.
func (b *Backend) Stream(ctx context.Context, from uint32, fn func(*lnvault.Change) error) error {
	if b.oneConn.Load() {
		return b.streamInPlace(ctx, from, fn)
	}
	conn, err := b.dial(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	first := b.cfg.Timeout
	b.mu.Lock()
	if b.conn != nil {
		first = min(asideHelloTimeout, b.cfg.Timeout)
	}
	b.mu.Unlock()
	err = b.streamOn(ctx, conn, first, from, fn)
	var se *silentError
	if errors.As(err, &se) && first < b.cfg.Timeout {
		b.oneConn.Store(true)
		b.log.Info("the backup server serves one connection at a time: the writer streams on its own connection", "server", b.cfg.Addr())
		conn.Close()
		return b.streamInPlace(ctx, from, fn)
	}
	return err
}

// streamInPlace streams in place of the handle's connection: it closes it
// and streams on a new one (the next request reconnects and checks the
// server's head). A one-connection server takes the new connection only
// once the old one is gone.
func (b *Backend) streamInPlace(ctx context.Context, from uint32, fn func(*lnvault.Change) error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return errors.New("socket backend is closed")
	}
	b.dropLocked()
	conn, err := b.dial(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return b.streamOn(ctx, conn, b.cfg.Timeout, from, fn)
}

// silentError: the server did not answer the first request of a stream in
// time (a one-connection server busy with this writer's connection).
type silentError struct{ err error }

func (e *silentError) Error() string { return e.err.Error() }
func (e *silentError) Unwrap() error { return e.err }

// streamOn runs a restore on conn; the first answer must come within first.
func (b *Backend) streamOn(ctx context.Context, conn net.Conn, first time.Duration, from uint32, fn func(*lnvault.Change) error) error {
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
		defer stop()
	}
	ic := &idleConn{conn, first}
	rd := wire.NewReader(ic, wire.Limits{})
	defer rd.Close()
	wr := wire.NewWriter(conn)
	conn.SetWriteDeadline(time.Now().Add(b.cfg.Timeout))
	if err := wr.WriteEmpty(wire.TypeReqMetadata); err != nil {
		return b.netErr(ctx, op{name: "REQ_METADATA"}, "sending", b.cfg.Timeout, err)
	}
	p, err := rd.Next()
	if err != nil {
		var ne net.Error
		if first < b.cfg.Timeout && errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil {
			return &silentError{err}
		}
		return b.netErr(ctx, op{name: "REQ_METADATA"}, "waiting for the answer to", first, err)
	}
	ic.timeout = b.cfg.Timeout
	if p.Type != wire.TypeMetadata {
		return &protocolError{fmt.Sprintf("backup server %s answered REQ_METADATA with %v", b.cfg.Addr(), p.Type)}
	}
	head := p.Meta
	if err := wr.WriteEmpty(wire.TypeRestore); err != nil {
		return b.netErr(ctx, op{name: "RESTORE"}, "sending", b.cfg.Timeout, err)
	}
	// A server sends a snapshot only once it has compressed all of it (the
	// packet's length comes first): a large database keeps it silent for
	// as long as a compaction may take, not one request's timeout.
	ic.timeout = max(b.cfg.Timeout, b.cfg.CompactTimeout)
	started := from == 0
	var last uint32
	var n uint64
	for {
		p, err := rd.Next()
		if err != nil {
			if errors.Is(err, wire.ErrMalformed) || errors.Is(err, wire.ErrTooLarge) {
				return fmt.Errorf("restoring from backup server %s after %d changes: %w", b.cfg.Addr(), n, err)
			}
			return fmt.Errorf("restoring from backup server %s after %d changes: %w", b.cfg.Addr(), n, b.netErr(ctx, op{name: "RESTORE"}, "reading the answer to", ic.timeout, err))
		}
		switch p.Type {
		case wire.TypeChange, wire.TypeSnapshot:
			n++
			if n > 1 && !lnvault.Follows(last, p.Version, p.Change.Kind) {
				return &lnvault.CorruptError{Offset: -1, Version: last, Reason: fmt.Sprintf("the server's restore stream jumps from version %d to %d", last, p.Version)}
			}
			last = p.Version
			if !started && p.Version >= from {
				started = true
			}
			if !started {
				continue
			}
			if err := fn(p.Change); err != nil {
				if errors.Is(err, lnvault.ErrStop) {
					return nil
				}
				return err
			}
		case wire.TypeDone:
			if n > 0 && last < head.Version || n == 0 && head.VersionCount > 0 {
				return &lnvault.CorruptError{Offset: -1, Version: last, Reason: fmt.Sprintf("the server's restore stream ended at version %d but its head is version %d", last, head.Version)}
			}
			return nil
		case wire.TypeNack:
			return fmt.Errorf("%w: the backup server %s could not stream its backup after %d changes (see the server's log)", ErrRefused, b.cfg.Addr(), n)
		default:
			return &protocolError{fmt.Sprintf("backup server %s sent %v during a restore", b.cfg.Addr(), p.Type)}
		}
	}
}

// Delete asks the server to delete the backup it serves (the "delete"
// extension, on a connection of its own): the server empties it, if no other
// connection is the writer and its head is still the one this backend opened
// at, and goes on serving it empty at version 0. Delete closes b.
func (b *Backend) Delete(ctx context.Context) error {
	if b.opts.ReadOnly {
		return errors.New("socket backend opened read-only: cannot delete")
	}
	defer b.Close()
	head := b.Metadata().Version
	c, err := dialExt(ctx, b.cfg, wire.FeatureDelete, 0, min(asideHelloTimeout, b.cfg.Timeout), true)
	var ne *noExtError
	if errors.As(err, &ne) {
		return fmt.Errorf("%w: backup server %s cannot delete its backup (a reference server, or an older lnvault server: %v); stop it and delete the store it serves on its host", ErrRefused, b.cfg.Addr(), ne)
	}
	if err != nil {
		return err
	}
	defer c.close()
	p, err := c.request(ctx, "DELETE", func(w *wire.Writer) error { return w.WriteVersion(wire.TypeDelete, head) })
	if err != nil {
		return err
	}
	if p.Type != wire.TypeMetadata {
		return &protocolError{fmt.Sprintf("backup server %s answered DELETE with %v", b.cfg.Addr(), p.Type)}
	}
	if p.Meta != (lnvault.Metadata{}) {
		return fmt.Errorf("backup server %s answered DELETE with a backup at version %d (%d changes), not an empty one", b.cfg.Addr(), p.Meta.Version, p.Meta.VersionCount)
	}
	return nil
}

// Close closes the connection.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.dropLocked()
	b.closed = true
	return nil
}
