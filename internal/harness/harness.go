// Package harness drives a plugin binary the way lightningd does, for tests,
// the demo and the benchmarks: it starts the process with LIGHTNINGD_PLUGIN=1
// in <dir>/regtest, asks for the manifest, sends db_write requests (the first
// ones before init, as a real node does), sends init, serves a fake
// lightning-rpc unix socket, collects log notifications, measures each
// db_write's ack latency, and keeps its own SQLite "node database" where a
// db_write is applied only after the plugin answered "continue" (what the node
// commits). It can kill the plugin between an answer and the commit, as a
// lightningd crash would.
package harness

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	_ "modernc.org/sqlite" // the node database
)

// RPCHandler answers one method of the fake lightning-rpc socket.
type RPCHandler func(params json.RawMessage) (any, error)

// Config describes the simulated node.
type Config struct {
	Bin     string   // the plugin executable
	Args    []string // its arguments
	Dir     string   // the lightning-dir; the plugin runs in Dir/<Network>
	Network string   // default "regtest"
	Env     []string // extra environment
	// Options are the init options (name → value).
	Options map[string]any
	// RPC adds or replaces methods of the fake lightning-rpc socket.
	RPC map[string]RPCHandler
	// NoNodeDB skips the node database (benchmarks).
	NoNodeDB bool
	// Stderr receives the plugin's stderr (default: kept in memory, see Stderr).
	Stderr io.Writer
}

// Log is one log notification of the plugin.
type Log struct {
	Level   string `json:"level"`
	Message string `json:"message"`
}

// Response is the plugin's answer to a request.
type Response struct {
	Result json.RawMessage
	Error  *RPCError
	At     time.Time // when the answer was read
}

// RPCError is a JSON-RPC error answer of the plugin.
type RPCError struct {
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data,omitempty"`
}

func (e *RPCError) Error() string { return fmt.Sprintf("plugin error %d: %s", e.Code, e.Message) }

// ErrExited is returned for requests the plugin never answered because it
// exited.
var ErrExited = errors.New("plugin exited")

// Harness is a simulated lightningd.
type Harness struct {
	cfg     Config
	netDir  string
	sockDir string
	ln      net.Listener
	node    *sql.DB
	nodeCon *sql.Conn

	rpcMu    sync.Mutex
	rpc      map[string]RPCHandler
	rpcCalls map[string]int

	mu       sync.Mutex
	proc     *process
	logs     []Log
	lat      []time.Duration
	seq      int
	inited   bool
	manifest map[string]any
	stderr   bytes.Buffer
}

type process struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	wmu     sync.Mutex
	pending map[string]chan Response
	pmu     sync.Mutex
	exited  chan struct{}
	exitErr error
	code    int
}

// New prepares the node: directories, node database and RPC socket. It does
// not start the plugin.
func New(cfg Config) (*Harness, error) {
	if cfg.Network == "" {
		cfg.Network = "regtest"
	}
	h := &Harness{cfg: cfg, netDir: filepath.Join(cfg.Dir, cfg.Network), rpcCalls: map[string]int{}}
	if err := os.MkdirAll(h.netDir, 0o700); err != nil {
		return nil, err
	}
	h.rpc = map[string]RPCHandler{
		"getinfo": func(json.RawMessage) (any, error) {
			return map[string]any{"id": "02" + strings.Repeat("ab", 32), "alias": "harness", "network": cfg.Network, "version": "v26.06.6", "lightning-dir": h.netDir}, nil
		},
		"listconfigs": func(json.RawMessage) (any, error) {
			return map[string]any{"configs": map[string]any{"wallet": map[string]any{"value_str": "sqlite3://" + h.NodeDBPath(), "source": "default"}}}, nil
		},
		"staticbackup": func(json.RawMessage) (any, error) { return map[string]any{"scb": []string{}}, nil },
		"stop":         func(json.RawMessage) (any, error) { return "Shutdown complete", nil },
	}
	for k, v := range cfg.RPC {
		h.rpc[k] = v
	}
	if err := h.listen(); err != nil {
		return nil, err
	}
	if _, err := os.Stat(h.NodeDBPath()); err == nil && !cfg.NoNodeDB {
		if err := h.openNodeDB(); err != nil {
			h.Close()
			return nil, err
		}
	}
	return h, nil
}

// openNodeDB opens (creating at the first commit, as a new node does) the
// node database.
func (h *Harness) openNodeDB() error {
	db, err := sql.Open("sqlite", h.NodeDBPath())
	if err != nil {
		return err
	}
	db.SetMaxOpenConns(1)
	conn, err := db.Conn(context.Background())
	if err != nil {
		db.Close()
		return err
	}
	// The node database is the reference a restore is compared with, not a
	// durability subject: no fsyncs.
	if _, err := conn.ExecContext(context.Background(), "PRAGMA synchronous = OFF"); err != nil {
		conn.Close()
		db.Close()
		return err
	}
	h.node, h.nodeCon = db, conn
	return nil
}

// NetDir is <dir>/<network>, the plugin's cwd.
func (h *Harness) NetDir() string { return h.netDir }

// NodeDBPath is the node database: every change the plugin acknowledged and
// the harness "committed".
func (h *Harness) NodeDBPath() string { return filepath.Join(h.netDir, "lightningd.sqlite3") }

// listen serves lightning-rpc. Unix socket paths are limited to ~107 bytes,
// so the socket lives in a short temp dir and NetDir/lightning-rpc links to it.
func (h *Harness) listen() error {
	d, err := os.MkdirTemp("", "lnrpc")
	if err != nil {
		return err
	}
	h.sockDir = d
	sock := filepath.Join(d, "lightning-rpc")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		os.RemoveAll(d)
		return err
	}
	h.ln = ln
	link := filepath.Join(h.netDir, "lightning-rpc")
	os.Remove(link)
	if err := os.Symlink(sock, link); err != nil {
		ln.Close()
		os.RemoveAll(d)
		return err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go h.serveRPC(c)
		}
	}()
	return nil
}

func (h *Harness) serveRPC(c net.Conn) {
	defer c.Close()
	dec := json.NewDecoder(c)
	for {
		var req struct {
			ID     json.RawMessage `json:"id"`
			Method string          `json:"method"`
			Params json.RawMessage `json:"params"`
		}
		if err := dec.Decode(&req); err != nil {
			return
		}
		h.rpcMu.Lock()
		fn := h.rpc[req.Method]
		h.rpcCalls[req.Method]++
		h.rpcMu.Unlock()
		resp := map[string]any{"jsonrpc": "2.0", "id": req.ID}
		if fn == nil {
			resp["error"] = map[string]any{"code": -32601, "message": "Unknown command '" + req.Method + "'"}
		} else if res, err := fn(req.Params); err != nil {
			resp["error"] = map[string]any{"code": -1, "message": err.Error()}
		} else {
			resp["result"] = res
		}
		b, _ := json.Marshal(resp)
		if _, err := c.Write(append(b, '\n', '\n')); err != nil {
			return
		}
	}
}

// SetRPC sets the handler of a fake RPC method.
func (h *Harness) SetRPC(method string, fn RPCHandler) {
	h.rpcMu.Lock()
	h.rpc[method] = fn
	h.rpcMu.Unlock()
}

// RPCCalls tells how often the plugin called method.
func (h *Harness) RPCCalls(method string) int {
	h.rpcMu.Lock()
	defer h.rpcMu.Unlock()
	return h.rpcCalls[method]
}

// Start starts the plugin (it must not be running) and asks for its
// manifest. A plugin that exits instead of answering yields an error that
// includes its last log.
func (h *Harness) Start(ctx context.Context) error {
	h.mu.Lock()
	if h.proc != nil {
		h.mu.Unlock()
		return errors.New("harness: plugin already running")
	}
	h.inited = false
	h.mu.Unlock()
	cmd := exec.Command(h.cfg.Bin, h.cfg.Args...)
	cmd.Dir = h.netDir
	cmd.Env = append(os.Environ(), "LIGHTNINGD_PLUGIN=1", "LIGHTNINGD_VERSION=v26.06.6")
	if os.Getenv("GORACE") == "" {
		// A race-built plugin (a test binary) otherwise sleeps 1 s at exit.
		cmd.Env = append(cmd.Env, "GORACE=atexit_sleep_ms=0")
	}
	cmd.Env = append(cmd.Env, h.cfg.Env...)
	if h.cfg.Stderr != nil {
		cmd.Stderr = h.cfg.Stderr
	} else {
		cmd.Stderr = &lockedWriter{mu: &h.mu, w: &h.stderr}
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("harness: starting %s: %w", h.cfg.Bin, err)
	}
	p := &process{cmd: cmd, stdin: stdin, pending: map[string]chan Response{}, exited: make(chan struct{})}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		h.read(p, stdout)
	}()
	go func() {
		<-readDone
		err := cmd.Wait()
		p.exitErr = err
		p.code = cmd.ProcessState.ExitCode()
		close(p.exited)
		p.pmu.Lock()
		for id, ch := range p.pending {
			close(ch)
			delete(p.pending, id)
		}
		p.pmu.Unlock()
	}()
	h.mu.Lock()
	h.proc = p
	h.mu.Unlock()
	raw, err := h.Request(ctx, "getmanifest", map[string]any{"allow-deprecated-apis": false})
	if err != nil {
		return fmt.Errorf("harness: getmanifest: %w (logs: %s)", err, h.lastLogs(5))
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("harness: bad manifest: %w", err)
	}
	h.mu.Lock()
	h.manifest = m
	h.mu.Unlock()
	return nil
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// logLevels are the levels lightningd's log notification handler accepts
// (plugins say "warn" and "error" for unusual and broken); a missing level
// means info.
var logLevels = map[string]bool{"": true, "io": true, "trace": true, "debug": true, "info": true,
	"unusual": true, "warn": true, "broken": true, "error": true}

// BadLogLevel starts the harness log entry for a log notification whose level
// lightningd would refuse.
const BadLogLevel = "log notification with a level lightningd refuses"

// timedReader notes when its last read returned data: the moment the bytes
// of every message decoded so far had arrived.
type timedReader struct {
	r    io.Reader
	last time.Time
}

func (t *timedReader) Read(b []byte) (int, error) {
	n, err := t.r.Read(b)
	if n > 0 {
		t.last = time.Now()
	}
	return n, err
}

func (h *Harness) read(p *process, r io.Reader) {
	tr := &timedReader{r: r}
	dec := json.NewDecoder(tr)
	for {
		var m struct {
			ID     json.RawMessage `json:"id"`
			Method string          `json:"method"`
			Params json.RawMessage `json:"params"`
			Result json.RawMessage `json:"result"`
			Error  *RPCError       `json:"error"`
		}
		if err := dec.Decode(&m); err != nil {
			if !errors.Is(err, io.EOF) {
				h.mu.Lock()
				h.logs = append(h.logs, Log{Level: "harness", Message: "bad JSON from plugin: " + err.Error()})
				h.mu.Unlock()
			}
			return
		}
		// An answer's latency ends when its bytes arrived, as lightningd
		// has it then; decoding it here is the harness's own cost.
		now := tr.last
		if m.Method != "" {
			if m.Method == "log" {
				var l Log
				json.Unmarshal(m.Params, &l)
				h.mu.Lock()
				h.logs = append(h.logs, l)
				if !logLevels[l.Level] {
					h.logs = append(h.logs, Log{Level: "harness", Message: fmt.Sprintf("%s %q: %s", BadLogLevel, l.Level, l.Message)})
				}
				h.mu.Unlock()
			}
			continue
		}
		var id string
		json.Unmarshal(m.ID, &id)
		p.pmu.Lock()
		ch := p.pending[id]
		delete(p.pending, id)
		p.pmu.Unlock()
		if ch != nil {
			ch <- Response{Result: m.Result, Error: m.Error, At: now}
		}
	}
}

// Manifest is the plugin's getmanifest answer.
func (h *Harness) Manifest() map[string]any {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.manifest
}

// Send sends a request and returns a channel that yields the answer (closed
// without a value if the plugin exits first) and the time it was sent.
func (h *Harness) Send(method string, id string, params any) (<-chan Response, time.Time, error) {
	h.mu.Lock()
	p := h.proc
	if id == "" {
		h.seq++
		id = "cln:" + method + "#" + strconv.Itoa(h.seq)
	}
	h.mu.Unlock()
	if p == nil {
		return nil, time.Time{}, errors.New("harness: plugin is not running")
	}
	b, err := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": id, "method": method, "params": params})
	if err != nil {
		return nil, time.Time{}, err
	}
	ch := make(chan Response, 1)
	p.pmu.Lock()
	select {
	case <-p.exited:
		p.pmu.Unlock()
		return nil, time.Time{}, h.exitError(p)
	default:
	}
	p.pending[id] = ch
	p.pmu.Unlock()
	p.wmu.Lock()
	sent := time.Now()
	_, err = p.stdin.Write(append(b, '\n', '\n'))
	p.wmu.Unlock()
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("harness: writing to the plugin: %w", err)
	}
	return ch, sent, nil
}

func (h *Harness) exitError(p *process) error {
	return fmt.Errorf("%w (exit code %d); last logs: %s", ErrExited, p.code, h.lastLogs(3))
}

func (h *Harness) wait(ctx context.Context, ch <-chan Response) (Response, error) {
	h.mu.Lock()
	p := h.proc
	h.mu.Unlock()
	select {
	case r, ok := <-ch:
		if !ok {
			if p != nil {
				<-p.exited
				return Response{}, h.exitError(p)
			}
			return Response{}, ErrExited
		}
		return r, nil
	case <-ctx.Done():
		return Response{}, ctx.Err()
	}
}

// Request sends a request and waits for its result; an error answer is an
// *RPCError.
func (h *Harness) Request(ctx context.Context, method string, params any) (json.RawMessage, error) {
	ch, _, err := h.Send(method, "", params)
	if err != nil {
		return nil, err
	}
	r, err := h.wait(ctx, ch)
	if err != nil {
		return nil, err
	}
	if r.Error != nil {
		return nil, r.Error
	}
	return r.Result, nil
}

// Init sends init with the configured options, as lightningd does once the
// early db_writes are answered.
func (h *Harness) Init(ctx context.Context) error {
	opts := h.cfg.Options
	if opts == nil {
		opts = map[string]any{}
	}
	raw, err := h.Request(ctx, "init", map[string]any{
		"options": opts,
		"configuration": map[string]any{
			"lightning-dir": h.netDir, "rpc-file": "lightning-rpc", "startup": true,
			"network": h.cfg.Network, "feature_set": map[string]string{"init": "", "node": "", "channel": "", "invoice": ""},
		},
	})
	if err != nil {
		return fmt.Errorf("harness: init: %w", err)
	}
	var res map[string]any
	json.Unmarshal(raw, &res)
	if d, ok := res["disable"]; ok {
		return fmt.Errorf("harness: plugin disabled itself: %v", d)
	}
	h.mu.Lock()
	h.inited = true
	h.mu.Unlock()
	return nil
}

// Inited tells whether init was answered since the last Start.
func (h *Harness) Inited() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.inited
}

// Write sends one db_write, waits for the answer and, on "continue", commits
// the writes to the node database. id "" makes one up. It returns the ack
// latency (request written → answer read).
func (h *Harness) Write(ctx context.Context, id string, version uint32, writes []string) (time.Duration, error) {
	return h.write(ctx, id, version, writes, true)
}

// WriteNoCommit is Write where lightningd crashes after the answer: the
// change is not committed to the node database.
func (h *Harness) WriteNoCommit(ctx context.Context, id string, version uint32, writes []string) (time.Duration, error) {
	return h.write(ctx, id, version, writes, false)
}

func (h *Harness) write(ctx context.Context, id string, version uint32, writes []string, commit bool) (time.Duration, error) {
	ch, sent, err := h.Send("db_write", id, map[string]any{"data_version": version, "writes": writes})
	if err != nil {
		return 0, err
	}
	r, err := h.wait(ctx, ch)
	if err != nil {
		return 0, fmt.Errorf("db_write %d: %w", version, err)
	}
	lat := r.At.Sub(sent)
	if r.Error != nil {
		return lat, fmt.Errorf("db_write %d: %w", version, r.Error)
	}
	var res struct {
		Result string `json:"result"`
	}
	if err := json.Unmarshal(r.Result, &res); err != nil || res.Result != "continue" {
		return lat, fmt.Errorf("db_write %d: answer %s is not {\"result\":\"continue\"}", version, r.Result)
	}
	h.mu.Lock()
	h.lat = append(h.lat, lat)
	h.mu.Unlock()
	if commit {
		if err := h.commit(ctx, writes); err != nil {
			return lat, fmt.Errorf("harness: committing db_write %d to the node database: %w", version, err)
		}
	}
	return lat, nil
}

// CommitUnreported commits writes to the node database without sending
// them to the plugin, as lightningd does after the plugin has gone during a
// shutdown, or when it runs without the plugin.
func (h *Harness) CommitUnreported(ctx context.Context, writes []string) error {
	return h.commit(ctx, writes)
}

// commit applies writes to the node database as lightningd does: in one
// transaction, except migrations' PRAGMA statements, which SQLite ignores
// inside a transaction.
func (h *Harness) commit(ctx context.Context, writes []string) error {
	if h.cfg.NoNodeDB {
		return nil
	}
	if h.nodeCon == nil {
		if err := h.openNodeDB(); err != nil {
			return err
		}
	}
	pragma := len(writes) > 0
	for _, w := range writes {
		if !strings.HasPrefix(strings.ToUpper(strings.TrimSpace(w)), "PRAGMA") {
			pragma = false
		}
	}
	if pragma {
		for _, w := range writes {
			if _, err := h.nodeCon.ExecContext(ctx, w); err != nil {
				return err
			}
		}
		return nil
	}
	if _, err := h.nodeCon.ExecContext(ctx, "BEGIN"); err != nil {
		return err
	}
	for _, w := range writes {
		if _, err := h.nodeCon.ExecContext(ctx, w); err != nil {
			h.nodeCon.ExecContext(ctx, "ROLLBACK")
			return fmt.Errorf("%w (statement: %.200s)", err, w)
		}
	}
	_, err := h.nodeCon.ExecContext(ctx, "COMMIT")
	return err
}

// Latencies returns the ack latency of every successful db_write so far.
func (h *Harness) Latencies() []time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]time.Duration(nil), h.lat...)
}

// ResetLatencies forgets the latencies measured so far.
func (h *Harness) ResetLatencies() {
	h.mu.Lock()
	h.lat = nil
	h.mu.Unlock()
}

// Logs returns the log notifications received so far.
func (h *Harness) Logs() []Log {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Log(nil), h.logs...)
}

// LogsContain tells whether a log message contains s.
func (h *Harness) LogsContain(s string) bool {
	for _, l := range h.Logs() {
		if strings.Contains(l.Message, s) {
			return true
		}
	}
	return false
}

func (h *Harness) lastLogs(n int) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for i := max(0, len(h.logs)-n); i < len(h.logs); i++ {
		out = append(out, h.logs[i].Level+": "+h.logs[i].Message)
	}
	if len(out) == 0 {
		if s := strings.TrimSpace(h.stderr.String()); s != "" {
			return "(none; stderr: " + s + ")"
		}
		return "(none)"
	}
	return strings.Join(out, " | ")
}

// Stderr returns what the plugin wrote to stderr (when Config.Stderr is nil).
func (h *Harness) Stderr() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.stderr.String()
}

// Kill SIGKILLs the plugin (a crash) and waits for it.
func (h *Harness) Kill() {
	h.mu.Lock()
	p := h.proc
	h.proc = nil
	h.mu.Unlock()
	if p == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.stdin.Close()
	<-p.exited
}

// Stop closes the plugin's stdin, as lightningd does when it stops, and
// waits for the exit code.
func (h *Harness) Stop(ctx context.Context) (int, error) {
	h.mu.Lock()
	p := h.proc
	h.proc = nil
	h.mu.Unlock()
	if p == nil {
		return 0, errors.New("harness: plugin is not running")
	}
	p.stdin.Close()
	select {
	case <-p.exited:
		return p.code, nil
	case <-ctx.Done():
		p.cmd.Process.Kill()
		<-p.exited
		return p.code, fmt.Errorf("harness: plugin did not exit after stdin closed: %w", ctx.Err())
	}
}

// WaitExit waits for the plugin to exit by itself and returns its code.
func (h *Harness) WaitExit(ctx context.Context) (int, error) {
	h.mu.Lock()
	p := h.proc
	h.mu.Unlock()
	if p == nil {
		return 0, errors.New("harness: plugin is not running")
	}
	select {
	case <-p.exited:
		h.mu.Lock()
		if h.proc == p {
			h.proc = nil
		}
		h.mu.Unlock()
		return p.code, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// Close kills the plugin if running and releases everything.
func (h *Harness) Close() error {
	h.Kill()
	if h.ln != nil {
		h.ln.Close()
	}
	if h.nodeCon != nil {
		h.nodeCon.Close()
	}
	if h.node != nil {
		h.node.Close()
	}
	if h.sockDir != "" {
		os.RemoveAll(h.sockDir)
	}
	return nil
}

// Notify sends a notification (no id, no answer), as lightningd does for the
// topics a plugin subscribed to, e.g. channel_opened.
func (h *Harness) Notify(method string, params any) error {
	h.mu.Lock()
	p := h.proc
	h.mu.Unlock()
	if p == nil {
		return errors.New("harness: plugin is not running")
	}
	b, err := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": method, "params": params})
	if err != nil {
		return err
	}
	p.wmu.Lock()
	defer p.wmu.Unlock()
	if _, err := p.stdin.Write(append(b, '\n', '\n')); err != nil {
		return fmt.Errorf("harness: writing to the plugin: %w", err)
	}
	return nil
}
