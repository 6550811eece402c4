// Package clnplugin is a small, generic Core Lightning plugin layer: the
// manifest (options, RPC methods, hooks, subscriptions), the init handshake,
// request dispatch over lightningd's JSON-RPC 2.0 stdin/stdout stream, and log
// notifications (with a slog.Handler that emits them).
//
// Concurrency rules: requests for one hook are handled in arrival order, one at
// a time (db_write must be); RPC methods and init run in their own goroutines so
// that a long method (backup-compact) never delays a hook; notifications run in
// order on one goroutine. Every message goes out in one Write under a mutex.
package clnplugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strconv"
	"sync"
)

// Option is a plugin option, as declared in the manifest.
type Option struct {
	Name        string
	Type        string // "string", "int", "bool", "flag"
	Default     any    // nil: no default (the option is unset unless given)
	Description string
	Dynamic     bool
}

// Handler handles a request (RPC method or hook) and returns its result. An
// error becomes a JSON-RPC error answer (see Error for a chosen code).
type Handler func(ctx context.Context, params json.RawMessage) (any, error)

// Method is an RPC method the plugin adds to lightningd.
type Method struct {
	Name        string
	Usage       string
	Description string
	Handler     Handler
}

// Error is a JSON-RPC error a handler can return to choose the code.
type Error struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Data    any    `json:"data,omitempty"`
}

func (e *Error) Error() string { return e.Message }

// JSON-RPC error codes used by the layer.
const (
	CodeMethodNotFound = -32601
	CodeInvalidParams  = -32602
	CodeInternal       = -32603
)

// Configuration is the `configuration` object of the init request.
type Configuration struct {
	LightningDir string `json:"lightning-dir"`
	RPCFile      string `json:"rpc-file"`
	Network      string `json:"network"`
	Startup      bool   `json:"startup"`
}

// InitRequest is lightningd's init request.
type InitRequest struct {
	Options       map[string]json.RawMessage `json:"options"`
	Configuration Configuration              `json:"configuration"`
}

// String returns a string option ("" when unset or null).
func (r *InitRequest) String(name string) string {
	raw, ok := r.Options[name]
	if !ok {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return ""
}

// Int returns an integer option; lightningd sends numbers, older versions and
// users may send strings. def is returned when the option is unset.
func (r *InitRequest) Int(name string, def int64) (int64, error) {
	raw, ok := r.Options[name]
	if !ok || string(raw) == "null" {
		return def, nil
	}
	var n int64
	if err := json.Unmarshal(raw, &n); err == nil {
		return n, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		if s == "" {
			return def, nil
		}
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			return n, nil
		}
	}
	return 0, fmt.Errorf("option %s: %s is not an integer", name, raw)
}

// InitFunc runs at init. An error disables the plugin (init answers
// {"disable": reason}); call Plugin.Fatal to stop it instead.
type InitFunc func(ctx context.Context, req *InitRequest) error

// Plugin is one plugin. Configure it before Run.
type Plugin struct {
	options  []Option
	methods  map[string]Method
	hooks    map[string]Handler
	hookList []string
	subs     map[string][]func(context.Context, json.RawMessage)
	inits    []InitFunc
	manifest map[string]any

	wmu sync.Mutex
	w   io.Writer

	log *slog.Logger

	fatalOnce sync.Once
	fatalErr  error
	cancel    context.CancelCauseFunc
}

// New returns an empty plugin. nonnumericids is set (lightningd sends string
// ids such as "cln:db_write#55"), dynamic is false.
func New() *Plugin {
	p := &Plugin{
		methods:  map[string]Method{},
		hooks:    map[string]Handler{},
		subs:     map[string][]func(context.Context, json.RawMessage){},
		manifest: map[string]any{"dynamic": false, "nonnumericids": true},
	}
	p.log = slog.New(NewLogHandler(p, slog.LevelDebug))
	return p
}

// AddOption declares an option.
func (p *Plugin) AddOption(o Option) { p.options = append(p.options, o) }

// AddMethod declares an RPC method.
func (p *Plugin) AddMethod(m Method) { p.methods[m.Name] = m }

// AddHook registers the handler of a hook. Requests of one hook are handled
// in order, one at a time.
func (p *Plugin) AddHook(name string, h Handler) {
	if _, ok := p.hooks[name]; !ok {
		p.hookList = append(p.hookList, name)
	}
	p.hooks[name] = h
}

// Subscribe adds fn for notifications of topic. All notifications are
// delivered in order on one goroutine; fn must not block for long.
func (p *Plugin) Subscribe(topic string, fn func(ctx context.Context, params json.RawMessage)) {
	p.subs[topic] = append(p.subs[topic], fn)
}

// OnInit adds work to do at init, in the order added.
func (p *Plugin) OnInit(fn InitFunc) { p.inits = append(p.inits, fn) }

// SetManifest sets a top-level manifest field (e.g. "featurebits").
func (p *Plugin) SetManifest(key string, value any) { p.manifest[key] = value }

// Log is a logger whose records go to lightningd as log notifications.
func (p *Plugin) Log() *slog.Logger { return p.log }

// Fatal stops Run, which returns err. Use it where the node must stop.
func (p *Plugin) Fatal(err error) {
	p.fatalOnce.Do(func() {
		p.fatalErr = err
		if p.cancel != nil {
			p.cancel(err)
		}
	})
}

// Manifest returns the getmanifest answer.
func (p *Plugin) Manifest() map[string]any {
	m := map[string]any{}
	for k, v := range p.manifest {
		m[k] = v
	}
	opts := []map[string]any{}
	for _, o := range p.options {
		e := map[string]any{"name": o.Name, "type": o.Type, "description": o.Description}
		if o.Default != nil {
			e["default"] = o.Default
		}
		if o.Dynamic {
			e["dynamic"] = true
		}
		opts = append(opts, e)
	}
	m["options"] = opts
	names := make([]string, 0, len(p.methods))
	for n := range p.methods {
		names = append(names, n)
	}
	sort.Strings(names)
	methods := []map[string]any{}
	for _, n := range names {
		mm := p.methods[n]
		methods = append(methods, map[string]any{"name": mm.Name, "usage": mm.Usage, "description": mm.Description})
	}
	m["rpcmethods"] = methods
	hooks := []map[string]any{}
	for _, h := range p.hookList {
		hooks = append(hooks, map[string]any{"name": h})
	}
	m["hooks"] = hooks
	subs := []string{}
	for t := range p.subs {
		subs = append(subs, t)
	}
	sort.Strings(subs)
	m["subscriptions"] = subs
	return m
}

type message struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id,omitempty"`
	Method  string          `json:"method,omitempty"`
	Params  json.RawMessage `json:"params,omitempty"`
}

// send writes one message atomically: lightningd reads objects back to back,
// and two goroutines must never interleave their bytes.
func (p *Plugin) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	b = append(b, '\n', '\n')
	p.wmu.Lock()
	defer p.wmu.Unlock()
	if p.w == nil {
		return errors.New("plugin is not running")
	}
	_, err = p.w.Write(b)
	return err
}

// SetOutput sets where messages go before Run starts, so that a plugin can
// log (e.g. why it cannot start) before serving requests.
func (p *Plugin) SetOutput(w io.Writer) {
	p.wmu.Lock()
	p.w = w
	p.wmu.Unlock()
}

// Notify sends a notification to lightningd.
func (p *Plugin) Notify(method string, params any) error {
	return p.send(struct {
		JSONRPC string `json:"jsonrpc"`
		Method  string `json:"method"`
		Params  any    `json:"params"`
	}{"2.0", method, params})
}

func (p *Plugin) respond(id json.RawMessage, result any, err error) error {
	if err == nil {
		if result == nil {
			result = struct{}{}
		}
		return p.send(struct {
			JSONRPC string          `json:"jsonrpc"`
			ID      json.RawMessage `json:"id"`
			Result  any             `json:"result"`
		}{"2.0", id, result})
	}
	var e *Error
	if !errors.As(err, &e) {
		e = &Error{Code: CodeInternal, Message: err.Error()}
	}
	return p.send(struct {
		JSONRPC string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Error   *Error          `json:"error"`
	}{"2.0", id, e})
}

type hookReq struct {
	id     json.RawMessage
	params json.RawMessage
}

// Run serves lightningd on r (stdin) and w (stdout) until r ends, ctx is
// cancelled or Fatal is called. Hook requests already received are finished
// before Run returns. It returns nil on a clean end of input.
func (p *Plugin) Run(ctx context.Context, r io.Reader, w io.Writer) error {
	p.wmu.Lock()
	p.w = w
	p.wmu.Unlock()
	ctx, cancel := context.WithCancelCause(ctx)
	p.cancel = cancel
	if p.fatalErr != nil { // Fatal before Run
		cancel(p.fatalErr)
	}
	defer cancel(nil)

	// Hook workers: one goroutine per hook, FIFO, so order is kept. Their
	// context is not cancelled by end of input: a change being made durable
	// is finished.
	hookCtx, hookCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hookCancel()
	var hookWG sync.WaitGroup
	queues := map[string]chan hookReq{}
	for name, h := range p.hooks {
		q := make(chan hookReq, 1024)
		queues[name] = q
		hookWG.Add(1)
		go func() {
			defer hookWG.Done()
			for req := range q {
				if hookCtx.Err() != nil {
					p.respond(req.id, nil, fmt.Errorf("plugin is stopping: %w", context.Cause(ctx)))
					continue
				}
				res, err := h(hookCtx, req.params)
				if err != nil {
					p.log.Error("hook failed", "hook", name, "err", err)
				}
				if werr := p.respond(req.id, res, err); werr != nil {
					p.Fatal(fmt.Errorf("writing the %s answer to lightningd: %w", name, werr))
				}
			}
		}()
	}
	notes := make(chan message, 1024)
	var workWG sync.WaitGroup
	workWG.Add(1)
	go func() {
		defer workWG.Done()
		for n := range notes {
			for _, fn := range p.subs[n.Method] {
				fn(ctx, n.Params)
			}
		}
	}()

	msgs := make(chan message)
	readErr := make(chan error, 1)
	go func() {
		dec := json.NewDecoder(r)
		for {
			var m message
			if err := dec.Decode(&m); err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				} else {
					err = fmt.Errorf("reading lightningd's requests: %w", err)
				}
				readErr <- err
				return
			}
			select {
			case msgs <- m:
			case <-ctx.Done():
				readErr <- nil
				return
			}
		}
	}()

	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case err := <-readErr:
			runErr = err
			break loop
		case m := <-msgs:
			if m.Method == "" {
				continue // an answer: we never send requests on this stream
			}
			if len(m.ID) == 0 || string(m.ID) == "null" {
				select {
				case notes <- m:
				case <-ctx.Done():
				}
				continue
			}
			switch m.Method {
			case "getmanifest":
				if err := p.respond(m.ID, p.Manifest(), nil); err != nil {
					runErr = err
					break loop
				}
			case "init":
				workWG.Add(1)
				go func() {
					defer workWG.Done()
					p.handleInit(ctx, m)
				}()
			default:
				if q, ok := queues[m.Method]; ok {
					q <- hookReq{id: m.ID, params: m.Params}
					continue
				}
				meth, ok := p.methods[m.Method]
				if !ok {
					p.respond(m.ID, nil, &Error{Code: CodeMethodNotFound, Message: "unknown method " + m.Method})
					continue
				}
				workWG.Add(1)
				go func() {
					defer workWG.Done()
					res, err := meth.Handler(ctx, m.Params)
					p.respond(m.ID, res, err)
				}()
			}
		}
	}
	for _, q := range queues {
		close(q)
	}
	if context.Cause(ctx) != nil && !errors.Is(context.Cause(ctx), context.Canceled) {
		hookCancel() // fatal: answer what is queued with an error, fast
	}
	hookWG.Wait()
	cancel(context.Canceled)
	close(notes)
	workWG.Wait()
	if p.fatalErr != nil {
		return p.fatalErr
	}
	if runErr == nil && ctx.Err() != nil {
		return nil
	}
	return runErr
}

func (p *Plugin) handleInit(ctx context.Context, m message) {
	var req InitRequest
	if err := json.Unmarshal(m.Params, &req); err != nil {
		p.respond(m.ID, nil, &Error{Code: CodeInvalidParams, Message: "bad init params: " + err.Error()})
		return
	}
	for _, fn := range p.inits {
		if err := fn(ctx, &req); err != nil {
			p.log.Error("init failed, disabling the plugin", "err", err)
			p.respond(m.ID, map[string]string{"disable": err.Error()}, nil)
			return
		}
	}
	p.respond(m.ID, struct{}{}, nil)
}
