package clnplugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// pipeRun runs p on pipes and returns a writer to its stdin and a decoder of
// its stdout.
type running struct {
	in   *io.PipeWriter
	out  *json.Decoder
	done chan error
}

func start(t *testing.T, p *Plugin) *running {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	r := &running{in: inW, out: json.NewDecoder(outR), done: make(chan error, 1)}
	go func() {
		r.done <- p.Run(context.Background(), inR, outW)
		outW.Close()
	}()
	t.Cleanup(func() { inW.Close(); outR.Close() })
	return r
}

type msg struct {
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
	Result json.RawMessage `json:"result"`
	Error  *Error          `json:"error"`
}

func (r *running) send(t *testing.T, s string) {
	t.Helper()
	if _, err := io.WriteString(r.in, s); err != nil {
		t.Fatal(err)
	}
}

// next returns the next answer (skipping notifications into logs).
func (r *running) next(t *testing.T, logs *[]msg) msg {
	t.Helper()
	for {
		var m msg
		if err := r.out.Decode(&m); err != nil {
			t.Fatalf("reading plugin output: %v", err)
		}
		if m.Method != "" {
			if logs != nil {
				*logs = append(*logs, m)
			}
			continue
		}
		return m
	}
}

func TestManifest(t *testing.T) {
	p := New()
	p.AddOption(Option{Name: "backup-destination", Type: "string", Description: "d"})
	p.AddOption(Option{Name: "backup-compact-size", Type: "int", Default: 5, Description: "s"})
	p.AddMethod(Method{Name: "backup-status", Handler: func(context.Context, json.RawMessage) (any, error) { return nil, nil }})
	p.AddHook("db_write", func(context.Context, json.RawMessage) (any, error) { return nil, nil })
	p.Subscribe("channel_opened", func(context.Context, json.RawMessage) {})
	r := start(t, p)
	r.send(t, `{"jsonrpc":"2.0","id":"cln:getmanifest#1","method":"getmanifest","params":{}}`)
	m := r.next(t, nil)
	if string(m.ID) != `"cln:getmanifest#1"` {
		t.Fatalf("id = %s", m.ID)
	}
	var man struct {
		Options []map[string]any `json:"options"`
		RPC     []map[string]any `json:"rpcmethods"`
		Hooks   []map[string]any `json:"hooks"`
		Subs    []string         `json:"subscriptions"`
		NonNum  bool             `json:"nonnumericids"`
		Dynamic *bool            `json:"dynamic"`
	}
	if err := json.Unmarshal(m.Result, &man); err != nil {
		t.Fatal(err)
	}
	if len(man.Options) != 2 || man.Options[0]["name"] != "backup-destination" || man.Options[1]["default"] != 5.0 {
		t.Errorf("options: %v", man.Options)
	}
	if _, has := man.Options[0]["default"]; has {
		t.Errorf("option without default got one: %v", man.Options[0])
	}
	if len(man.RPC) != 1 || man.RPC[0]["name"] != "backup-status" {
		t.Errorf("rpcmethods: %v", man.RPC)
	}
	if len(man.Hooks) != 1 || man.Hooks[0]["name"] != "db_write" {
		t.Errorf("hooks: %v", man.Hooks)
	}
	if len(man.Subs) != 1 || man.Subs[0] != "channel_opened" || !man.NonNum || man.Dynamic == nil || *man.Dynamic {
		t.Errorf("manifest: %s", m.Result)
	}
}

// Hooks run in order, one at a time; a slow method does not hold them up;
// requests split in pieces or back to back are all read.
func TestDispatchOrderAndConcurrency(t *testing.T) {
	p := New()
	var inHook atomic.Int32
	var order []int
	var mu sync.Mutex
	p.AddHook("db_write", func(ctx context.Context, params json.RawMessage) (any, error) {
		if inHook.Add(1) != 1 {
			t.Error("two db_write handlers at once")
		}
		defer inHook.Add(-1)
		var q struct {
			V int `json:"data_version"`
		}
		json.Unmarshal(params, &q)
		time.Sleep(time.Millisecond)
		mu.Lock()
		order = append(order, q.V)
		mu.Unlock()
		return map[string]string{"result": "continue"}, nil
	})
	release := addSlow(p)
	r := start(t, p)
	var buf bytes.Buffer
	buf.WriteString(`{"jsonrpc":"2.0","id":"x#1","method":"slow","params":{}}`)
	for i := 1; i <= 20; i++ {
		buf.WriteString(`{"jsonrpc":"2.0","id":"cln:db_write#` + itoa(i) + `","method":"db_write","params":{"data_version":` + itoa(i) + `,"writes":[]}}`)
		if i%3 == 0 {
			buf.WriteString("\n\n")
		}
	}
	// Byte by byte in places, back to back in others.
	go feed(r.in, buf.Bytes(), 7)
	for i := 1; i <= 20; i++ {
		m := r.next(t, nil)
		if string(m.ID) != `"cln:db_write#`+itoa(i)+`"` || string(m.Result) != `{"result":"continue"}` {
			t.Fatalf("answer %d: id %s result %s", i, m.ID, m.Result)
		}
	}
	close(release)
	if m := r.next(t, nil); string(m.ID) != `"x#1"` {
		t.Fatalf("slow answer id %s", m.ID)
	}
	for i, v := range order {
		if v != i+1 {
			t.Fatalf("order %v", order)
		}
	}
	r.in.Close()
	if err := <-r.done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

func TestErrorsInitAndLogs(t *testing.T) {
	p := New()
	p.AddHook("db_write", func(ctx context.Context, _ json.RawMessage) (any, error) {
		return nil, errors.New("disk full")
	})
	p.AddMethod(Method{Name: "coded", Handler: func(context.Context, json.RawMessage) (any, error) {
		return nil, &Error{Code: 1234, Message: "nope"}
	}})
	var gotSize int64
	p.OnInit(func(ctx context.Context, req *InitRequest) error {
		var err error
		gotSize, err = req.Int("size", 1)
		if req.Configuration.RPCFile != "lightning-rpc" || req.String("dest") != "file:///x" {
			t.Errorf("init: %+v", req)
		}
		p.Log().Info("hello", "k", "v w")
		return err
	})
	r := start(t, p)
	var logs []msg
	r.send(t, `{"jsonrpc":"2.0","id":"cln:db_write#1","method":"db_write","params":{"data_version":1,"writes":[]}}`)
	m := r.next(t, &logs)
	if m.Error == nil || m.Error.Message != "disk full" || m.Result != nil {
		t.Fatalf("hook error answer: %+v", m)
	}
	r.send(t, `{"jsonrpc":"2.0","id":"2","method":"coded"}`)
	if m := r.next(t, &logs); m.Error == nil || m.Error.Code != 1234 {
		t.Fatalf("coded: %+v", m)
	}
	r.send(t, `{"jsonrpc":"2.0","id":"3","method":"nosuch"}`)
	if m := r.next(t, &logs); m.Error == nil || m.Error.Code != CodeMethodNotFound {
		t.Fatalf("unknown method: %+v", m)
	}
	r.send(t, `{"jsonrpc":"2.0","id":"4","method":"init","params":{"options":{"size":"77","dest":"file:///x"},"configuration":{"lightning-dir":"/l/regtest","rpc-file":"lightning-rpc"}}}`)
	if m := r.next(t, &logs); string(m.Result) != "{}" {
		t.Fatalf("init answer: %s", m.Result)
	}
	if gotSize != 77 {
		t.Errorf("int option = %d", gotSize)
	}
	var sawHello, sawHookErr bool
	for _, l := range logs {
		var lp struct{ Level, Message string }
		json.Unmarshal(l.Params, &lp)
		if l.Method != "log" {
			t.Errorf("unexpected notification %s", l.Method)
		}
		sawHello = sawHello || (lp.Level == "info" && lp.Message == `hello k="v w"`)
		sawHookErr = sawHookErr || (lp.Level == "error" && strings.Contains(lp.Message, "disk full"))
	}
	if !sawHello || !sawHookErr {
		t.Errorf("logs: hello=%v hookerr=%v", sawHello, sawHookErr)
	}
}

func TestInitDisable(t *testing.T) {
	p := New()
	p.OnInit(func(context.Context, *InitRequest) error { return errors.New("no wallet") })
	r := start(t, p)
	r.send(t, `{"jsonrpc":"2.0","id":"1","method":"init","params":{"options":{},"configuration":{}}}`)
	if m := r.next(t, nil); string(m.Result) != `{"disable":"no wallet"}` {
		t.Fatalf("init answer: %s", m.Result)
	}
}

func TestFatalStopsRun(t *testing.T) {
	p := New()
	boom := errors.New("boom")
	p.AddMethod(Method{Name: "die", Handler: func(context.Context, json.RawMessage) (any, error) {
		p.Fatal(boom)
		return nil, boom
	}})
	r := start(t, p)
	go func() {
		var m msg
		for r.out.Decode(&m) == nil {
		}
	}()
	r.send(t, `{"jsonrpc":"2.0","id":"1","method":"die"}`)
	select {
	case err := <-r.done:
		if !errors.Is(err, boom) {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop")
	}
}

func TestNotificationsInOrder(t *testing.T) {
	p := New()
	got := make(chan int, 10)
	p.Subscribe("channel_opened", func(_ context.Context, params json.RawMessage) {
		var v struct{ N int }
		json.Unmarshal(params, &v)
		got <- v.N
	})
	r := start(t, p)
	for i := 0; i < 5; i++ {
		r.send(t, `{"jsonrpc":"2.0","method":"channel_opened","params":{"n":`+itoa(i)+`}}`)
	}
	for i := 0; i < 5; i++ {
		if n := <-got; n != i {
			t.Fatalf("notification %d got %d", i, n)
		}
	}
}

func TestMalformedInput(t *testing.T) {
	p := New()
	r := start(t, p)
	go func() {
		var m msg
		for r.out.Decode(&m) == nil {
		}
	}()
	r.send(t, `{"jsonrpc":"2.0","id":"1","method":`)
	r.send(t, `]`)
	select {
	case err := <-r.done:
		if err == nil || !strings.Contains(err.Error(), "reading lightningd's requests") {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop on malformed input")
	}
}

// FuzzRun feeds arbitrary bytes as lightningd's stream: Run must never panic
// and every message it writes must be one valid JSON object.
func FuzzRun(f *testing.F) {
	f.Add([]byte(`{"jsonrpc":"2.0","id":"cln:getmanifest#1","method":"getmanifest","params":{}}`))
	f.Add([]byte(`{"jsonrpc":"2.0","id":"cln:db_write#2","method":"db_write","params":{"data_version":1,"writes":["x"]}}{"id":3,"method":"init","params":{"options":{"n":"1"}}}`))
	f.Add([]byte(`{"method":"channel_opened","params":{}}{"id":null,"method":"x"}[1]`))
	f.Add([]byte(`{"id":"a","method":"db_write","params":{"data_version":"x"}} {"id":"b","params":{"writes":["}\\\""]},"method":"db_write"}{"id":"c","method":"other","params":{}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p := New()
		AddTypedSyncHook(p, "db_write", func(_ context.Context, q *struct {
			V      *uint32  `json:"data_version"`
			Writes []string `json:"writes"`
		}) (any, error) {
			return json.RawMessage(`{"result":"continue"}`), nil
		})
		p.AddHook("other", func(context.Context, json.RawMessage) (any, error) {
			return map[string]string{"result": "continue"}, nil
		})
		p.AddMethod(Method{Name: "m", Handler: func(_ context.Context, params json.RawMessage) (any, error) { return params, nil }})
		p.OnInit(func(_ context.Context, r *InitRequest) error { _, err := r.Int("n", 0); return err })
		p.Subscribe("channel_opened", func(context.Context, json.RawMessage) {})
		var out safeBuffer
		p.Run(context.Background(), bytes.NewReader(data), &out)
		dec := json.NewDecoder(bytes.NewReader(out.Bytes()))
		for {
			var m map[string]any
			if err := dec.Decode(&m); err == io.EOF {
				break
			} else if err != nil {
				t.Fatalf("plugin wrote invalid JSON: %v: %q", err, out.Bytes())
			}
			if m["jsonrpc"] != "2.0" {
				t.Fatalf("message without jsonrpc 2.0: %v", m)
			}
		}
	})
}

type safeBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *safeBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *safeBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.b.Bytes()...)
}

// A typed synchronous hook is answered in order, one at a time, with its
// params decoded; bad params get an error answer and the plugin goes on; a
// slow RPC method does not hold it up.
func TestTypedSyncHook(t *testing.T) {
	p := New()
	type params struct {
		V      *uint32  `json:"data_version"`
		Writes []string `json:"writes"`
	}
	var inHook atomic.Int32
	var got []string
	AddTypedSyncHook(p, "db_write", func(ctx context.Context, q *params) (any, error) {
		if inHook.Add(1) != 1 {
			t.Error("two db_write handlers at once")
		}
		defer inHook.Add(-1)
		if q.V == nil {
			return nil, errors.New("no data_version")
		}
		got = append(got, itoa(int(*q.V))+":"+strings.Join(q.Writes, "|"))
		return json.RawMessage(`{"result":"continue"}`), nil
	})
	release := addSlow(p)
	r := start(t, p)
	var buf bytes.Buffer
	buf.WriteString(`{"jsonrpc":"2.0","id":"x#1","method":"slow","params":{}}`)
	for i := 1; i <= 20; i++ {
		// Keys in another order, escapes and braces inside strings.
		buf.WriteString(`{"params":{"writes":["INSERT INTO t VALUES ('{[\"` + itoa(i) + `\\')","b"],"data_version":` + itoa(i) + `},"method":"db_write","jsonrpc":"2.0","id":"cln:db_write#` + itoa(i) + `"}`)
		if i%4 == 0 {
			buf.WriteString("\n\n")
		}
	}
	go feed(r.in, buf.Bytes(), 5)
	for i := 1; i <= 20; i++ {
		m := r.next(t, nil)
		if string(m.ID) != `"cln:db_write#`+itoa(i)+`"` || string(m.Result) != `{"result":"continue"}` {
			t.Fatalf("answer %d: id %s result %s error %+v", i, m.ID, m.Result, m.Error)
		}
	}
	for i, g := range got {
		if want := itoa(i+1) + `:INSERT INTO t VALUES ('{["` + itoa(i+1) + `\')|b`; g != want {
			t.Fatalf("write %d decoded as %q, want %q", i, g, want)
		}
	}
	// Params that do not fit, or are missing: an error answer, not a stop.
	r.send(t, `{"jsonrpc":"2.0","id":"bad1","method":"db_write","params":{"data_version":"x","writes":[]}}`)
	if m := r.next(t, nil); string(m.ID) != `"bad1"` || m.Error == nil || !strings.Contains(m.Error.Message, "malformed db_write params") {
		t.Fatalf("bad params answer: %+v", m)
	}
	r.send(t, `{"jsonrpc":"2.0","id":"bad2","method":"db_write"}`)
	if m := r.next(t, nil); string(m.ID) != `"bad2"` || m.Error == nil || !strings.Contains(m.Error.Message, "malformed db_write params") {
		t.Fatalf("no params answer: %+v", m)
	}
	r.send(t, `{"jsonrpc":"2.0","id":"ok","method":"db_write","params":{"writes":[]}}`)
	if m := r.next(t, nil); string(m.ID) != `"ok"` || m.Error == nil || m.Error.Message != "no data_version" {
		t.Fatalf("handler error answer: %+v", m)
	}
	close(release)
	if m := r.next(t, nil); string(m.ID) != `"x#1"` {
		t.Fatalf("slow answer id %s", m.ID)
	}
	r.in.Close()
	if err := <-r.done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// The framer cuts the same objects out of a stream as encoding/json, and its
// method hint is the decoded method whenever it gives one.
func TestFramerMatchesDecoder(t *testing.T) {
	for _, in := range []string{
		`{"method":"db_write","id":1}{"id":2,"method":"init"}`,
		" \n{\"a\":{\"method\":\"nested\"},\"method\":\"top\"}\n\n{}\t",
		`{"method":"esc\"aped","x":"}}]]"}{"method":1,"k":"method"}`,
		`{"k":"method","method":"m2","arr":[{"method":"no"},"\\"]}`,
		`{"method":"a","method":"b"}`,
		`{"method":"db_write","METHOD":"x"}`,
		`{"method":"db_write","meth\u006fd":"x"}`,
		`{"methoD":""}`,
	} {
		checkFramer(t, []byte(in))
	}
}

func checkFramer(t *testing.T, data []byte) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	var want []json.RawMessage
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			if err != io.EOF {
				return // not a stream of valid values: nothing to compare
			}
			break
		}
		if raw[0] != '{' {
			return
		}
		want = append(want, raw)
	}
	fr := newFramer(bytes.NewReader(data))
	for i, w := range want {
		obj, method, err := fr.next()
		if err != nil {
			t.Fatalf("%q: object %d: %v", data, i, err)
		}
		if !bytes.Equal(obj, w) {
			t.Fatalf("%q: object %d is %q, want %q", data, i, obj, w)
		}
		var m struct {
			Method any `json:"method"`
		}
		json.Unmarshal(w, &m)
		if method != nil && m.Method != string(method) {
			t.Fatalf("%q: object %d: method hint %q, decoded %v", data, i, method, m.Method)
		}
		if s, ok := m.Method.(string); ok && method == nil && isASCII([]byte(s)) && !bytes.Contains(w, []byte(`\`)) && bytes.Count(bytes.ToLower(w), []byte(`"method"`)) == 1 && bytes.Contains(w, []byte(`"method"`)) {
			t.Fatalf("%q: object %d: no method hint for %q", data, i, s)
		}
	}
	if _, _, err := fr.next(); err != io.EOF {
		t.Fatalf("%q: after the last object: %v, want EOF", data, err)
	}
}

func FuzzFramer(f *testing.F) {
	f.Add([]byte(`{"jsonrpc":"2.0","id":"cln:db_write#2","method":"db_write","params":{"data_version":1,"writes":["x"]}}`))
	f.Add([]byte(`{"method":"esc\"aped","x":"}}]]"} {"method":1}`))
	f.Add([]byte("{\"a\":[{\"method\":\"n\"}],\"method\":\"t\"}\n\n{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkFramer(t, data)
		// Whatever the input, next ends (EOF or an error) without panicking.
		fr := newFramer(bytes.NewReader(data))
		for range len(data) + 1 {
			if _, _, err := fr.next(); err != nil {
				return
			}
		}
		t.Fatalf("%q: framer returned more objects than bytes", data)
	})
}

// addSlow adds a method "slow" that answers once release is closed.
func addSlow(p *Plugin) (release chan struct{}) {
	release = make(chan struct{})
	p.AddMethod(Method{Name: "slow", Handler: func(ctx context.Context, _ json.RawMessage) (any, error) {
		<-release
		return map[string]int{"ok": 1}, nil
	}})
	return release
}

// feed writes b to w in chunks of at most n bytes.
func feed(w io.Writer, b []byte, n int) {
	for len(b) > 0 {
		k := min(len(b), n)
		w.Write(b[:k])
		b = b[k:]
	}
}

// OnIdle runs after a synchronous hook's answer is written, and only when no
// other request is waiting.
func TestOnIdle(t *testing.T) {
	p := New()
	type params struct {
		V *uint32 `json:"data_version"`
	}
	AddTypedSyncHook(p, "db_write", func(ctx context.Context, q *params) (any, error) {
		return json.RawMessage(`{"result":"continue"}`), nil
	})
	p.AddSyncHook("other", func(ctx context.Context, _ json.RawMessage) (any, error) { return "ok", nil })
	idled := make(chan struct{})
	release := make(chan struct{})
	var calls atomic.Int32
	p.OnIdle(func() {
		calls.Add(1)
		idled <- struct{}{}
		<-release
	})
	r := start(t, p)
	answers := make(chan msg, 10)
	go func() {
		for {
			var m msg
			if err := r.out.Decode(&m); err != nil {
				close(answers)
				return
			}
			if m.Method == "" {
				answers <- m
			}
		}
	}()
	wait := func(what string) msg {
		t.Helper()
		select {
		case m := <-answers:
			return m
		case <-time.After(10 * time.Second):
			t.Fatalf("no %s", what)
		}
		return msg{}
	}
	waitIdle := func(what string) {
		t.Helper()
		select {
		case <-idled:
		case <-time.After(10 * time.Second):
			t.Fatalf("OnIdle not called %s", what)
		}
	}
	req := func(id, method string) string {
		return `{"jsonrpc":"2.0","id":"` + id + `","method":"` + method + `","params":{"data_version":1}}`
	}

	// One request: its answer arrives while the idle function still runs.
	r.send(t, req("a", "db_write")+"\n\n")
	waitIdle("after a lone db_write")
	if m := wait("answer to a"); string(m.ID) != `"a"` {
		t.Fatalf("answer %s", m.ID)
	}
	release <- struct{}{}

	// Two requests in one write: the second is waiting when the first is
	// answered, so the idle function runs once, after the second.
	r.send(t, req("b", "db_write")+req("c", "other"))
	waitIdle("after two requests")
	for _, id := range []string{`"b"`, `"c"`} {
		if m := wait("answer"); string(m.ID) != id {
			t.Fatalf("answer %s, want %s", m.ID, id)
		}
	}
	release <- struct{}{}
	if n := calls.Load(); n != 2 {
		t.Fatalf("OnIdle ran %d times, want 2", n)
	}

	// Notifications and plain methods are not hooks: no idle call.
	r.send(t, `{"jsonrpc":"2.0","method":"some_notification","params":{}}`+`{"jsonrpc":"2.0","id":"m","method":"getmanifest","params":{}}`)
	if m := wait("getmanifest answer"); string(m.ID) != `"m"` {
		t.Fatalf("answer %s", m.ID)
	}
	r.in.Close()
	if err := <-r.done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("OnIdle ran %d times after a notification and getmanifest, want 2", n)
	}
}
