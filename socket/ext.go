package socket

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"time"

	"github.com/lnvault/lnvault/wire"
)

// extConn is one connection on which the server has offered an lnvault
// extension feature (package wire documents HELLO/FEATURES).
type extConn struct {
	cfg  Config
	nc   net.Conn
	ic   *idleConn // its timeout may be changed between requests
	rd   *wire.Reader
	wr   *wire.Writer
	stop func() bool
}

func (c *extConn) close() {
	c.stop()
	c.rd.Close()
	c.nc.Close()
}

// noExtError: the server does not offer the feature. answer is what it sent
// instead of FEATURES (METADATA: a reference server that skips unknown
// packets; NACK: a server without extensions; FEATURES: an lnvault server
// without that feature), 0 when it closed the connection or was silent for
// the hello timeout (a reference server closes on unknown packets, and the
// Python one serves a single connection at a time).
type noExtError struct {
	answer wire.Type
	err    error
}

func (e *noExtError) Error() string {
	if e.answer == 0 {
		return fmt.Sprintf("no answer to HELLO: %v", e.err)
	}
	return fmt.Sprintf("HELLO answered with %v", e.answer)
}

// dialExt dials and asks for feature. HELLO and REQ_METADATA go out
// together: an lnvault server answers FEATURES then METADATA; a reference
// server answers METADATA alone or closes the connection. Only FEATURES
// listing feature gives a connection; the rest is a *noExtError. The first
// answer must come within helloTimeout (no answer by then is a *noExtError
// when silentIsNo, a timeout error otherwise); later reads use cfg.Timeout.
func dialExt(ctx context.Context, cfg Config, feature string, maxPacket uint32, helloTimeout time.Duration, silentIsNo bool, more ...string) (*extConn, error) {
	nc, err := cfg.dial(ctx)
	if err != nil {
		return nil, err
	}
	ic := &idleConn{nc, helloTimeout}
	c := &extConn{cfg: cfg, nc: nc, ic: ic, rd: wire.NewReader(ic, wire.Limits{MaxPacket: maxPacket}), wr: wire.NewWriter(nc)}
	c.stop = context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	var hello bytes.Buffer
	w := wire.NewWriter(&hello)
	w.WriteFeatures(wire.TypeHello, append([]string{feature}, more...))
	w.WriteEmpty(wire.TypeReqMetadata)
	nc.SetWriteDeadline(time.Now().Add(cfg.Timeout))
	if _, err := nc.Write(hello.Bytes()); err != nil {
		c.close()
		return nil, c.netErr(ctx, "HELLO", err)
	}
	p, err := c.rd.Next()
	if err != nil {
		c.close()
		var ne net.Error
		if ctx.Err() == nil && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || isReset(err) ||
			silentIsNo && errors.As(err, &ne) && ne.Timeout()) {
			return nil, &noExtError{err: err}
		}
		return nil, c.netErr(ctx, "HELLO", err)
	}
	ic.timeout = cfg.Timeout
	switch p.Type {
	case wire.TypeMetadata, wire.TypeNack:
		c.close()
		return nil, &noExtError{answer: p.Type}
	case wire.TypeFeatures:
	default:
		c.close()
		return nil, &protocolError{fmt.Sprintf("backup server %s answered HELLO with %v", cfg.Addr(), p.Type)}
	}
	if !slices.Contains(p.Features, feature) {
		c.close()
		return nil, &noExtError{answer: wire.TypeFeatures}
	}
	if p, err = c.rd.Next(); err != nil || p.Type != wire.TypeMetadata {
		c.close()
		if err != nil {
			return nil, c.netErr(ctx, "REQ_METADATA", err)
		}
		return nil, &protocolError{fmt.Sprintf("backup server %s answered REQ_METADATA with %v", cfg.Addr(), p.Type)}
	}
	return c, nil
}

func isReset(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && !oe.Timeout() && oe.Op == "read"
}

func (c *extConn) netErr(ctx context.Context, what string, err error) error {
	if errors.Is(err, wire.ErrMalformed) || errors.Is(err, wire.ErrTooLarge) {
		return &protocolError{fmt.Sprintf("backup server %s answered %s with a bad packet: %v", c.cfg.Addr(), what, err)}
	}
	return c.cfg.netErr(ctx, op{name: what}, "waiting for the answer to", c.ic.timeout, err)
}

// request sends one packet and reads the first answer; EXT_ERROR becomes an
// error carrying the server's message.
func (c *extConn) request(ctx context.Context, what string, send func(w *wire.Writer) error) (wire.Packet, error) {
	c.nc.SetWriteDeadline(time.Now().Add(c.cfg.Timeout))
	if err := send(c.wr); err != nil {
		if isNetErr(err) {
			return wire.Packet{}, c.cfg.netErr(ctx, op{name: what}, "sending", c.cfg.Timeout, err)
		}
		return wire.Packet{}, err
	}
	return c.next(ctx, what)
}

func (c *extConn) next(ctx context.Context, what string) (wire.Packet, error) {
	p, err := c.rd.Next()
	if err != nil {
		return p, c.netErr(ctx, what, err)
	}
	if p.Type == wire.TypeExtError {
		return p, fmt.Errorf("backup server %s: %s", c.cfg.Addr(), p.Text)
	}
	return p, nil
}
