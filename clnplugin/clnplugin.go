// Package clnplugin is a small, generic Core Lightning plugin layer: the
// manifest (options, RPC methods, hooks, subscriptions), the init handshake,
// request dispatch over lightningd's JSON-RPC 2.0 stdin/stdout stream, and log
// notifications (with a slog.Handler that emits them).
//
// Concurrency rules: requests for one hook are handled in arrival order, one at
// a time (db_write must be); synchronous hooks (AddSyncHook, for hooks such as
// db_write that lightningd waits for) run on the goroutine that reads the
// stream, other hooks each on their own worker; RPC methods and init run in
// their own goroutines so that a long method (backup-compact) never delays a
// hook; notifications run in order on one goroutine. Every message goes out
// in one Write under a mutex.
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
	options    []Option
	methods    map[string]Method
	hooks      map[string]Handler
	hookList   []string
	syncHooks  map[string]bool
	typedHooks map[string]typedHook
	subs       map[string][]func(context.Context, json.RawMessage)
	inits      []InitFunc
	idle       []func()
	manifest   map[string]any

	wmu  sync.Mutex
	w    io.Writer
	rbuf []byte // sendResult's buffer, reused under wmu

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
	delete(p.syncHooks, name)
	delete(p.typedHooks, name)
}

// AddSyncHook registers the handler of a hook that lightningd waits for
// before it sends anything else, such as db_write: the handler runs on the
// goroutine that reads lightningd's stream, so an answer costs no goroutine
// hand-off. Requests are handled in order, one at a time, as with AddHook;
// RPC methods keep running in their own goroutines alongside. While the
// handler runs, no further message is read: it must never wait for anything
// that arrives over this stream (another hook, a notification).
func (p *Plugin) AddSyncHook(name string, h Handler) {
	p.AddHook(name, h)
	if p.syncHooks == nil {
		p.syncHooks = map[string]bool{}
	}
	p.syncHooks[name] = true
}

// AddTypedSyncHook is AddSyncHook for a handler that takes its params as a
// *T: they are decoded in the same encoding/json pass as the message itself,
// rather than kept as raw JSON and decoded again (db_write's params are most
// of its bytes). Params that do not decode into T are answered with a
// "malformed <name> params" error, as a Handler that decodes them would.
func AddTypedSyncHook[T any](p *Plugin, name string, h func(ctx context.Context, params *T) (any, error)) {
	p.AddSyncHook(name, func(ctx context.Context, raw json.RawMessage) (any, error) {
		var v T
		if err := json.Unmarshal(raw, &v); err != nil {
			return nil, fmt.Errorf("malformed %s params: %w", name, err)
		}
		return h(ctx, &v)
	})
	if p.typedHooks == nil {
		p.typedHooks = map[string]typedHook{}
	}
	p.typedHooks[name] = &typed[T]{name: name, h: h}
}

// typedHook runs a request of a typed hook from its whole message; false
// means the message is not one it can take in one pass (malformed, a
// notification, no params): the general path handles it, and says what is
// wrong.
type typedHook interface {
	run(p *Plugin, ctx, hookCtx context.Context, obj []byte) bool
}

type typed[T any] struct {
	name string
	h    func(ctx context.Context, params *T) (any, error)
}

func (t *typed[T]) run(p *Plugin, ctx, hookCtx context.Context, obj []byte) bool {
	var m struct {
		JSONRPC string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Method  string          `json:"method"`
		Params  *T              `json:"params"`
	}
	if json.Unmarshal(obj, &m) != nil || m.Method != t.name || len(m.ID) == 0 || string(m.ID) == "null" || m.Params == nil {
		return false
	}
	p.runHook(ctx, hookCtx, t.name, func(ctx context.Context, _ json.RawMessage) (any, error) {
		return t.h(ctx, m.Params)
	}, m.ID, nil)
	return true
}

// Subscribe adds fn for notifications of topic. All notifications are
// delivered in order on one goroutine; fn must not block for long.
func (p *Plugin) Subscribe(topic string, fn func(ctx context.Context, params json.RawMessage)) {
	p.subs[topic] = append(p.subs[topic], fn)
}

// OnIdle adds fn to run on the reader goroutine after a synchronous hook has
// been answered, when no other request is waiting: lightningd is busy with
// the answer, so work done now is off its critical path. fn must be short.
func (p *Plugin) OnIdle(fn func()) { p.idle = append(p.idle, fn) }

func (p *Plugin) runIdle(fr *framer) {
	if len(p.idle) == 0 || fr.waiting() {
		return
	}
	for _, fn := range p.idle {
		fn()
	}
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

// Stop ends Run cleanly (it returns nil), as the end of lightningd's input
// does: a synchronous hook being handled is answered first, nothing more is
// read.
func (p *Plugin) Stop() {
	if p.cancel != nil {
		p.cancel(context.Canceled)
	}
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

// sendResult writes a result that is already JSON (a handler returned a
// json.RawMessage, such as db_write's constant answer) without going
// through json.Marshal: the id and the result are copied as they are.
func (p *Plugin) sendResult(id, result json.RawMessage) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	if p.w == nil {
		return errors.New("plugin is not running")
	}
	b := append(p.rbuf[:0], `{"jsonrpc":"2.0","id":`...)
	b = append(b, id...)
	b = append(b, `,"result":`...)
	b = append(b, result...)
	b = append(b, "}\n\n"...)
	p.rbuf = b
	_, err := p.w.Write(b)
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
		if raw, ok := result.(json.RawMessage); ok && json.Valid(raw) && json.Valid(id) {
			return p.sendResult(id, raw)
		}
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
//
// The goroutine that reads r dispatches each message itself (no hand-off to
// another goroutine), and runs synchronous hooks (AddSyncHook) in place: a
// db_write is decoded, made durable and answered without waking any other
// goroutine, which is most of the plugin's share of the ack latency.
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

	// Hook workers' context is not cancelled by end of input: a change
	// being made durable is finished.
	hookCtx, hookCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hookCancel()
	var hookWG, workWG sync.WaitGroup
	queues := p.startHookWorkers(ctx, hookCtx, &hookWG)
	notes := p.startNotifier(ctx, &workWG)
	var g gate
	readErr := make(chan error, 1)
	go func() { readErr <- p.readLoop(ctx, hookCtx, r, &g, queues, notes, &workWG) }()

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-readErr:
	}
	fatal := context.Cause(ctx) != nil && !errors.Is(context.Cause(ctx), context.Canceled)
	if fatal {
		hookCancel() // fatal: answer what is queued with an error, fast
	}
	g.stop()
	for _, q := range queues {
		close(q)
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

// gate serialises the reader's dispatch with Run's shutdown: once stopped
// no message is dispatched any more (so the queues can be closed and the
// WaitGroups waited for), and a synchronous hook that is running is
// finished first.
type gate struct {
	sync.Mutex
	stopped bool
}

func (g *gate) stop() {
	g.Lock()
	g.stopped = true
	g.Unlock()
}

// startHookWorkers starts one goroutine per asynchronous hook, FIFO, so
// order is kept, and returns their queues. Synchronous hooks have no
// worker: the reader runs them.
func (p *Plugin) startHookWorkers(ctx, hookCtx context.Context, wg *sync.WaitGroup) map[string]chan hookReq {
	queues := map[string]chan hookReq{}
	for name, h := range p.hooks {
		if p.syncHooks[name] {
			continue
		}
		q := make(chan hookReq, 1024)
		queues[name] = q
		wg.Add(1)
		go func() {
			defer wg.Done()
			for req := range q {
				p.runHook(ctx, hookCtx, name, h, req.id, req.params)
			}
		}()
	}
	return queues
}

// startNotifier starts the goroutine that hands notifications to their
// subscribers, in order, and returns its queue.
func (p *Plugin) startNotifier(ctx context.Context, wg *sync.WaitGroup) chan message {
	notes := make(chan message, 1024)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := range notes {
			for _, fn := range p.subs[n.Method] {
				fn(ctx, n.Params)
			}
		}
	}()
	return notes
}

// readLoop reads lightningd's messages from r and dispatches each until r
// ends (nil), the gate is stopped, or reading or dispatching fails.
func (p *Plugin) readLoop(ctx, hookCtx context.Context, r io.Reader, g *gate, queues map[string]chan hookReq, notes chan<- message, workWG *sync.WaitGroup) error {
	fr := newFramer(r)
	for {
		obj, method, err := fr.next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading lightningd's requests: %w", err)
		}
		g.Lock()
		if g.stopped || ctx.Err() != nil {
			g.Unlock()
			return nil
		}
		err = p.dispatchRaw(ctx, hookCtx, fr, obj, method, queues, notes, workWG)
		g.Unlock()
		if err != nil {
			return err
		}
	}
}

// dispatchRaw dispatches one message: a typed hook (db_write) is decoded by
// its own decoder and run in place; anything else is decoded as JSON-RPC.
// After a synchronous hook's answer the idle functions run.
func (p *Plugin) dispatchRaw(ctx, hookCtx context.Context, fr *framer, obj, method []byte, queues map[string]chan hookReq, notes chan<- message, workWG *sync.WaitGroup) error {
	if th, ok := p.typedHooks[string(method)]; ok && method != nil && th.run(p, ctx, hookCtx, obj) {
		p.runIdle(fr)
		return nil
	}
	var m message
	if err := json.Unmarshal(obj, &m); err != nil {
		return fmt.Errorf("reading lightningd's requests: %w", err)
	}
	err := p.dispatch(ctx, hookCtx, m, queues, notes, workWG)
	if err == nil && p.syncHooks[m.Method] && len(m.ID) != 0 && string(m.ID) != "null" {
		p.runIdle(fr)
	}
	return err
}

// dispatch handles one message from lightningd on the reader goroutine. It
// returns an error only when Run must stop.
func (p *Plugin) dispatch(ctx, hookCtx context.Context, m message, queues map[string]chan hookReq, notes chan<- message, workWG *sync.WaitGroup) error {
	if m.Method == "" {
		return nil // an answer: we never send requests on this stream
	}
	if len(m.ID) == 0 || string(m.ID) == "null" {
		select {
		case notes <- m:
		case <-ctx.Done():
		}
		return nil
	}
	if h, ok := p.hooks[m.Method]; ok {
		if q, ok := queues[m.Method]; ok {
			q <- hookReq{id: m.ID, params: m.Params}
		} else {
			p.runHook(ctx, hookCtx, m.Method, h, m.ID, m.Params)
		}
		return nil
	}
	switch m.Method {
	case "getmanifest":
		return p.respond(m.ID, p.Manifest(), nil)
	case "init":
		workWG.Add(1)
		go func() {
			defer workWG.Done()
			p.handleInit(ctx, m)
		}()
		return nil
	}
	meth, ok := p.methods[m.Method]
	if !ok {
		p.respond(m.ID, nil, &Error{Code: CodeMethodNotFound, Message: "unknown method " + m.Method})
		return nil
	}
	workWG.Add(1)
	go func() {
		defer workWG.Done()
		res, err := meth.Handler(ctx, m.Params)
		p.respond(m.ID, res, err)
	}()
	return nil
}

// runHook runs one hook request and answers it.
func (p *Plugin) runHook(ctx, hookCtx context.Context, name string, h Handler, id, params json.RawMessage) {
	if hookCtx.Err() != nil {
		p.respond(id, nil, fmt.Errorf("plugin is stopping: %w", context.Cause(ctx)))
		return
	}
	res, err := h(hookCtx, params)
	if err != nil {
		p.log.Error("hook failed", "hook", name, "err", err)
	}
	if werr := p.respond(id, res, err); werr != nil {
		p.Fatal(fmt.Errorf("writing the %s answer to lightningd: %w", name, werr))
	}
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
