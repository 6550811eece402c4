// Package clnrpc is a client for lightningd's JSON-RPC interface, the unix
// socket `<lightning-dir>/<network>/lightning-rpc` (the init configuration's
// rpc-file, relative to the plugin's cwd).
package clnrpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
)

// Error is an error answer of lightningd (the JSON-RPC error object).
type Error struct {
	Method  string          `json:"-"`
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data,omitempty"`
}

func (e *Error) Error() string {
	return fmt.Sprintf("lightningd %s: %s (code %d)", e.Method, e.Message, e.Code)
}

// ErrClosed is returned by calls on a closed client.
var ErrClosed = errors.New("clnrpc: client is closed")

// Client talks to one lightningd RPC socket. It dials one connection per call:
// lightningd serves each connection in order, so a slow call (e.g. waitblockheight)
// must not hold up the others, and a broken connection affects one call only.
type Client struct {
	path   string
	prefix string
	seq    atomic.Uint64
	mu     sync.Mutex
	closed bool
}

// New returns a client for the socket at path. Nothing is dialled yet.
func New(path string) *Client {
	return &Client{path: path, prefix: "lnvault:"}
}

// Path is the socket path.
func (c *Client) Path() string { return c.path }

// Close makes later calls fail with ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	return nil
}

// Call sends method with params (nil, a struct, a map or a slice) and decodes
// the result into result (nil to ignore it). A lightningd error answer is an
// *Error; transport problems are wrapped with the socket path.
func (c *Client) Call(ctx context.Context, method string, params, result any) error {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if params == nil {
		params = map[string]any{}
	}
	id := c.prefix + method + "#" + strconv.FormatUint(c.seq.Add(1), 10)
	req, err := json.Marshal(struct {
		JSONRPC string `json:"jsonrpc"`
		ID      string `json:"id"`
		Method  string `json:"method"`
		Params  any    `json:"params"`
	}{"2.0", id, method, params})
	if err != nil {
		return fmt.Errorf("clnrpc %s: encoding params: %w", method, err)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		return fmt.Errorf("clnrpc %s: connecting to lightningd at %s: %w", method, c.path, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if _, err := conn.Write(req); err != nil {
		return c.ctxErr(ctx, method, err)
	}
	dec := json.NewDecoder(conn)
	for {
		var resp struct {
			ID     json.RawMessage `json:"id"`
			Method string          `json:"method"`
			Result json.RawMessage `json:"result"`
			Error  *Error          `json:"error"`
		}
		if err := dec.Decode(&resp); err != nil {
			return c.ctxErr(ctx, method, err)
		}
		if resp.Method != "" {
			continue // a notification (progress, message): not our answer
		}
		var gotID string
		if err := json.Unmarshal(resp.ID, &gotID); err != nil || gotID != id {
			return fmt.Errorf("clnrpc %s: answer with id %s, expected %q", method, resp.ID, id)
		}
		if resp.Error != nil {
			resp.Error.Method = method
			return resp.Error
		}
		if result == nil {
			return nil
		}
		if len(resp.Result) == 0 {
			return fmt.Errorf("clnrpc %s: answer without result", method)
		}
		if err := json.Unmarshal(resp.Result, result); err != nil {
			return fmt.Errorf("clnrpc %s: decoding result: %w", method, err)
		}
		return nil
	}
}

func (c *Client) ctxErr(ctx context.Context, method string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("clnrpc %s: %w", method, ctx.Err())
	}
	return fmt.Errorf("clnrpc %s via %s: %w", method, c.path, err)
}
