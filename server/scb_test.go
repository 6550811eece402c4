package server_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/testnet"
	"github.com/lnvault/lnvault/scb"
	"github.com/lnvault/lnvault/server"
	"github.com/lnvault/lnvault/socket"
	"github.com/lnvault/lnvault/wire"
)

// startSCBServer serves a file backup with its SCB folder next to it, as
// `lnvault server` does.
func startSCBServer(t testing.TB) (*testServer, *scb.DirStore) {
	t.Helper()
	dir := t.TempDir()
	st, err := scb.OpenDir(filepath.Join(dir, "backup.dbak"+scb.DirSuffix), scb.StoreOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, server.Config{SCB: st})
	return ts, st
}

func openSCB(t testing.TB, url string) scb.Store {
	t.Helper()
	st, err := scb.OpenStore(context.Background(), url, scb.StoreOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func sealed(t testing.TB, kind scb.Kind, data string, channels int, rcpts ...age.Recipient) []byte {
	t.Helper()
	env, err := scb.Seal(scb.NewBackup(kind, []byte(data), channels), rcpts)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// Put, list and get through the real server: versions are numbered, stored
// byte for byte in the server's folder, and read back verified, encrypted
// ones too.
func TestSCBPutListGet(t *testing.T) {
	ts, dirStore := startSCBServer(t)
	ctx := context.Background()
	st := openSCB(t, ts.url("timeout=5s"))
	if st.String() != "socket:"+ts.addr {
		t.Fatalf("String() = %q", st.String())
	}
	// An empty store (no folder yet) lists nothing.
	if vs, err := st.List(ctx); err != nil || len(vs) != 0 {
		t.Fatalf("empty list: %v %v", vs, err)
	}
	if _, err := scb.Select(ctx, st, "", ""); !errors.Is(err, scb.ErrNoVersion) {
		t.Fatalf("select on empty store: %v", err)
	}

	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	envs := [][]byte{
		sealed(t, scb.KindCLN, `["aa"]`, 1),
		sealed(t, scb.KindCLN, `["aa","bb"]`, 2),
		sealed(t, scb.KindLNDMulti, "lnd multi bytes", -1, id.Recipient()),
	}
	for i, env := range envs {
		v, err := st.Put(ctx, env)
		if err != nil {
			t.Fatal(err)
		}
		if v.Seq != uint64(i+1) || v.Size != int64(len(env)) || v.Err != nil {
			t.Fatalf("put %d: %+v", i, v)
		}
	}
	vs, err := st.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	local, err := dirStore.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 3 || len(local) != 3 {
		t.Fatalf("%d versions over the socket, %d in the folder", len(vs), len(local))
	}
	for i := range vs {
		a, b := vs[i], local[i]
		if a.ID != b.ID || a.Seq != b.Seq || !a.Stored.Equal(b.Stored) || a.Kind != b.Kind || !a.Created.Equal(b.Created) ||
			a.Channels != b.Channels || a.Encrypted != b.Encrypted || a.PlainSHA256 != b.PlainSHA256 || a.Size != b.Size {
			t.Fatalf("version %d: socket %+v, folder %+v", i, a, b)
		}
	}
	if vs[1].PlainSHA256 != sha256.Sum256([]byte(`["aa","bb"]`)) || vs[2].PlainSHA256 != ([32]byte{}) || !vs[2].Encrypted {
		t.Fatalf("hashes: %+v", vs)
	}
	for i, v := range vs {
		raw, err := st.Get(ctx, v.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(raw, envs[i]) {
			t.Fatalf("version %s came back different", v.ID)
		}
	}
	// The CLI's selection logic over the socket.
	if _, err := scb.Select(ctx, st, "", ""); err == nil || !strings.Contains(err.Error(), "several kinds") {
		t.Fatalf("select without kind: %v", err)
	}
	v, err := scb.Select(ctx, st, scb.KindCLN, "")
	if err != nil || v.Seq != 2 {
		t.Fatalf("latest cln-scb: %+v %v", v, err)
	}
	data, _, err := scb.Fetch(ctx, st, v, nil)
	if err != nil || string(data) != `["aa","bb"]` {
		t.Fatalf("fetch: %q %v", data, err)
	}
	v, _ = scb.Select(ctx, st, scb.KindLNDMulti, "")
	if _, _, err := scb.Fetch(ctx, st, v, nil); !errors.Is(err, scb.ErrEncrypted) {
		t.Fatalf("fetch encrypted without key: %v", err)
	}
	if data, _, err := scb.Fetch(ctx, st, v, []age.Identity{id}); err != nil || string(data) != "lnd multi bytes" {
		t.Fatalf("fetch encrypted: %q %v", data, err)
	}
	// A missing version is a clear error, and the connection's answer is
	// EXT_ERROR, not a dropped connection.
	_, err = st.Get(ctx, scb.VersionID(99, time.Now()))
	if err == nil || !strings.Contains(err.Error(), "no version") {
		t.Fatalf("get missing: %v", err)
	}
}

// The server never stores a damaged or foreign envelope, and says why.
func TestSCBPutRefusesBadEnvelopes(t *testing.T) {
	ts, dirStore := startSCBServer(t)
	ctx := context.Background()
	good := sealed(t, scb.KindCLN, `["aa"]`, 1)
	bad := append([]byte{}, good...)
	bad[len(bad)-40] ^= 1 // payload damaged
	// The client refuses to send it...
	st := openSCB(t, ts.url(""))
	if _, err := st.Put(ctx, bad); err == nil || !strings.Contains(err.Error(), "invalid envelope") {
		t.Fatalf("client put of a damaged envelope: %v", err)
	}
	// ...and the server refuses it when sent anyway.
	for _, env := range [][]byte{bad, []byte("not an envelope"), nil} {
		p := rawExchange(t, ts.addr, func(w *wire.Writer) error { return w.WriteSCB(wire.TypeSCBPut, env) })
		if p.Type != wire.TypeExtError || !strings.Contains(p.Text, "invalid static channel backup envelope") {
			t.Fatalf("server answered %v %q", p.Type, p.Text)
		}
	}
	if vs, err := dirStore.List(ctx); err == nil && len(vs) > 0 {
		t.Fatalf("a refused envelope was stored: %+v", vs)
	}
	if _, err := st.Put(ctx, good); err != nil {
		t.Fatal(err)
	}
}

// rawExchange sends one request on a fresh connection and returns the
// answer, for requests the client library would not send.
func rawExchange(t testing.TB, addr string, send func(w *wire.Writer) error) wire.Packet {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := send(wire.NewWriter(c)); err != nil {
		t.Fatal(err)
	}
	p, err := wire.NewReader(c, wire.Limits{}).Next()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A server without an SCB store says so on HELLO, and a client reports it
// as ErrNoSCB; extension requests get EXT_ERROR. The base protocol on the
// same connection is untouched.
func TestSCBServerWithoutStore(t *testing.T) {
	ts := startServer(t, server.Config{})
	ctx := context.Background()
	st := openSCB(t, ts.url(""))
	for name, f := range map[string]func() error{
		"list": func() error { _, err := st.List(ctx); return err },
		"put":  func() error { _, err := st.Put(ctx, sealed(t, scb.KindCLN, "[]", 0)); return err },
		"get":  func() error { _, err := st.Get(ctx, scb.VersionID(1, time.Now())); return err },
	} {
		err := f()
		if !errors.Is(err, socket.ErrNoSCB) || !strings.Contains(err.Error(), "keeps no static channel backups") {
			t.Fatalf("%s: %v", name, err)
		}
	}
	p := rawExchange(t, ts.addr, func(w *wire.Writer) error { return w.WriteEmpty(wire.TypeSCBList) })
	if p.Type != wire.TypeExtError || !strings.Contains(p.Text, "keeps no static channel backups") {
		t.Fatalf("SCB_LIST answered with %v %q", p.Type, p.Text)
	}
	// HELLO on a connection then the base protocol, as usual.
	c, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w, r := wire.NewWriter(c), wire.NewReader(c, wire.Limits{})
	w.WriteFeatures(wire.TypeHello, []string{"scb", "future-thing"})
	w.WriteEmpty(wire.TypeReqMetadata)
	if p, err := r.Next(); err != nil || p.Type != wire.TypeFeatures || fmt.Sprint(p.Features) != "[compact takeover delete rebase]" {
		t.Fatalf("%+v %v", p, err)
	}
	if p, err := r.Next(); err != nil || p.Type != wire.TypeMetadata || p.Protocol != 1 {
		t.Fatalf("%+v %v", p, err)
	}
}

// SCB puts come from any connection, beside the writer of the database log,
// and do not disturb it: the writer's changes keep flowing and every version
// is stored exactly once with its own number.
func TestSCBBesideTheWriter(t *testing.T) {
	ts, _ := startSCBServer(t)
	ctx := context.Background()
	writer := openSocket(t, ts.url(""), lnvault.OpenOptions{Create: true})
	changes := corpusChanges(t)[:400]
	st := openSCB(t, ts.url(""))
	const puts = 24
	var wg sync.WaitGroup
	errs := make(chan error, puts+1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for _, c := range changes {
			if err := writer.Append(ctx, c); err != nil {
				errs <- err
				return
			}
		}
	}()
	for g := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range puts / 3 {
				if _, err := st.Put(ctx, sealed(t, scb.KindCLN, fmt.Sprintf(`["%02x%02x"]`, g, i), 1)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	vs, err := st.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[[32]byte]bool{}
	for i, v := range vs {
		if v.Seq != uint64(i+1) || v.Err != nil {
			t.Fatalf("version %d: %+v", i, v)
		}
		seen[v.PlainSHA256] = true
	}
	if len(vs) != puts || len(seen) != puts {
		t.Fatalf("%d versions, %d distinct, want %d", len(vs), len(seen), puts)
	}
	checkExact(t, openSocket(t, ts.url(""), lnvault.OpenOptions{ReadOnly: true}), changes)
}

// A long history comes in several SCB_VERSIONS packets; damage on the
// server is listed, and a damaged latest version is an error, never a
// silent fallback to an older one.
func TestSCBListPagesAndDamage(t *testing.T) {
	ts, dirStore := startSCBServer(t)
	ctx := context.Background()
	n := wire.SCBVersionsPerPacket + 10
	env := sealed(t, scb.KindCLN, `["aa"]`, 1)
	if _, err := dirStore.Put(ctx, env); err != nil { // creates the folder
		t.Fatal(err)
	}
	// The rest written directly, as Put names them (Put fsyncs each: slow).
	t0 := time.Now()
	for seq := 2; seq <= n; seq++ {
		name := scb.VersionID(uint64(seq), t0.Add(time.Duration(seq)*time.Millisecond)) + "." + string(scb.KindCLN) + ".scb"
		if err := os.WriteFile(filepath.Join(dirStore.Dir(), name), env, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	st := openSCB(t, ts.url(""))
	vs, err := st.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != n || vs[n-1].Seq != uint64(n) {
		t.Fatalf("%d versions listed, want %d", len(vs), n)
	}
	files, _ := filepath.Glob(filepath.Join(dirStore.Dir(), "*.scb"))
	last := files[len(files)-1]
	raw, _ := os.ReadFile(last)
	raw[len(raw)-1] ^= 0xff
	os.WriteFile(last, raw, 0o600)
	vs, err = st.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(vs[n-1].Err, lnvault.ErrCorrupt) || !strings.Contains(vs[n-1].Err.Error(), "checksum") || vs[n-2].Err != nil {
		t.Fatalf("damage not listed: %v / %v", vs[n-1].Err, vs[n-2].Err)
	}
	if _, err := scb.Select(ctx, st, scb.KindCLN, ""); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("select latest damaged: %v", err)
	}
	// The damaged bytes are served as stored; the client's check catches
	// them.
	if _, _, err := scb.Fetch(ctx, st, vs[n-1], nil); !errors.Is(err, lnvault.ErrCorrupt) {
		t.Fatalf("fetch damaged: %v", err)
	}
	if data, _, err := scb.Fetch(ctx, st, vs[n-2], nil); err != nil || string(data) != `["aa"]` {
		t.Fatalf("fetch older: %q %v", data, err)
	}
}

// The keeper's StoreSwapper works over the socket, resume included.
func TestSCBStoreSwapperOverSocket(t *testing.T) {
	ts, _ := startSCBServer(t)
	ctx := context.Background()
	sw := &scb.StoreSwapper{Store: openSCB(t, ts.url(""))}
	if _, ok, err := sw.StoredSHA256(ctx, scb.KindCLN); ok || err != nil {
		t.Fatalf("empty: %v %v", ok, err)
	}
	b := scb.NewBackup(scb.KindCLN, []byte(`["cc"]`), 1)
	if err := sw.UpdateAndSwap(ctx, b); err != nil {
		t.Fatal(err)
	}
	h, ok, err := sw.StoredSHA256(ctx, scb.KindCLN)
	if err != nil || !ok || h != b.SHA256 {
		t.Fatalf("stored hash %x %v %v", h, ok, err)
	}
}

// A reference-style server that closes the connection on an unknown packet
// (as the original Python server does), or answers it with NACK, is "not
// supported", at once.
func TestSCBAgainstClosingServer(t *testing.T) {
	t.Run("close", func(t *testing.T) { testSCBAgainstRefusingServer(t, false, "closed the connection") })
	t.Run("nack", func(t *testing.T) { testSCBAgainstRefusingServer(t, true, "refused lnvault's extension") })
}

func testSCBAgainstRefusingServer(t *testing.T, nack bool, want string) {
	ln := testnet.Serve(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		var h [5]byte
		if _, err := io.ReadFull(c, h[:]); err == nil && h[0] > 0x0b && nack {
			c.Write([]byte{0x07, 0, 0, 0, 0}) // NACK without version, then close
		}
		// Otherwise an unknown packet type: drop the connection.
	})
	st := openSCB(t, "socket:"+ln.Addr().String()+"?timeout=20s")
	start := time.Now()
	_, err := st.List(context.Background())
	if !errors.Is(err, socket.ErrNoSCB) || !strings.Contains(err.Error(), want) {
		t.Fatalf("list: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("took %v: waited for a timeout", d)
	}
}

// The Python reference server (which skips unknown packets): `scb` over the
// socket reports "not supported" at once, and the backend keeps working on
// the same server afterwards.
func TestSCBAgainstPythonServer(t *testing.T) {
	url := startPythonServer(t)
	ctx := context.Background()
	st := openSCB(t, url)
	start := time.Now()
	if _, err := st.List(ctx); !errors.Is(err, socket.ErrNoSCB) || !strings.Contains(err.Error(), "does not support static channel backups") {
		t.Fatalf("list: %v", err)
	}
	if _, err := st.Put(ctx, sealed(t, scb.KindCLN, `["aa"]`, 1)); !errors.Is(err, socket.ErrNoSCB) {
		t.Fatalf("put: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("took %v: waited for a timeout", d)
	}
	c := openSocket(t, url, lnvault.OpenOptions{Create: true})
	changes := corpusChanges(t)[:50]
	for _, ch := range changes {
		if err := c.Append(ctx, ch); err != nil {
			t.Fatal(err)
		}
	}
	checkExact(t, openSocket(t, url, lnvault.OpenOptions{ReadOnly: true}), changes)
}

func startPythonServer(t testing.TB) string {
	t.Helper()
	cmd := exec.Command("python3", "testdata/refserver.py")
	stdout, _ := cmd.StdoutPipe()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	port, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("python server: %v\n%s", err, stderr.String())
	}
	return "socket:127.0.0.1:" + strings.TrimSpace(port)
}

// runPythonClient runs the reference client's whole session (backup,
// rewind, compact, restore) against addr and returns what it restored.
func runPythonClient(t testing.TB, addr string, changes []*lnvault.Change) []jsonChange {
	t.Helper()
	var in []jsonChange
	for _, c := range changes {
		in = append(in, jsonChange{Version: c.Version, Statements: c.Statements})
	}
	dir := t.TempDir()
	js, _ := json.Marshal(in)
	inPath, outPath := filepath.Join(dir, "in.json"), filepath.Join(dir, "out.json")
	os.WriteFile(inPath, js, 0o600)
	host, port, _ := strings.Cut(addr, ":")
	out, err := exec.Command("python3", "testdata/refclient.py", host, port, inPath, outPath).CombinedOutput()
	if err != nil {
		t.Fatalf("python client: %v\n%s", err, out)
	}
	var res struct {
		Restored []jsonChange `json:"restored"`
	}
	raw, err := os.ReadFile(outPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		t.Fatal(err)
	}
	return res.Restored
}

// The reference client backs up and restores through a server that offers
// the extension, while an lnvault client stores SCBs on it.
func TestInteropPythonClientWithSCB(t *testing.T) {
	ts, _ := startSCBServer(t)
	ctx := context.Background()
	st := openSCB(t, ts.url(""))
	if _, err := st.Put(ctx, sealed(t, scb.KindCLN, `["aa"]`, 1)); err != nil {
		t.Fatal(err)
	}
	changes := corpusChanges(t)[:200]
	r := runPythonClient(t, ts.addr, changes)
	if len(r) < 2 || r[len(r)-1].Version != changes[len(changes)-1].Version {
		t.Fatalf("restored %d changes", len(r))
	}
	if h, _ := restoreHash(t, ts.b); h != prefixHash(t, 200) {
		t.Fatalf("restored database %s differs from the direct one", h)
	}
	if vs, err := st.List(ctx); err != nil || len(vs) != 1 {
		t.Fatalf("SCB versions after the session: %v %v", vs, err)
	}
}

func runBinary(t testing.TB, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.Command(lnvaultBinary(t), args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// The real binaries end to end: `lnvault server` keeps SCBs next to its file
// backup; `lnvault scb put|list|get socket:...` store and fetch them while
// the reference client backs up and restores through the same server; and
// `lnvault scb list` against the reference server is one clear error line.
func TestSCBCLIThroughServerBinary(t *testing.T) {
	dir := t.TempDir()
	backup := filepath.Join(dir, "node.dbak")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := startProc(t, "server", "--create", "file://"+backup, addr)
	waitListening(t, addr, p)
	url := "socket:" + addr

	const marker = "0123456789abcdeffedcba9876543210"
	answer := `{"scb": ["0000000000000002` + strings.Repeat("bb", 32) + marker + `", "0000000000000001` + strings.Repeat("aa", 32) + marker + `"]}`
	in := filepath.Join(dir, "staticbackup.json")
	os.WriteFile(in, []byte(answer), 0o600)
	for i := 1; i <= 2; i++ {
		out, errOut, err := runBinary(t, "scb", "put", url, "--kind", "cln-scb", "--file", in)
		if err != nil || !strings.Contains(out, fmt.Sprintf("stored version %d", i)) || !strings.Contains(out, url) {
			t.Fatalf("put %d: %v\n%s%s\nserver:\n%s", i, err, out, errOut, p.stderr.String())
		}
	}
	if files, _ := filepath.Glob(filepath.Join(backup+".scb", "*.cln-scb.scb")); len(files) != 2 {
		t.Fatalf("%d versions in the server's folder", len(files))
	}
	r := runPythonClient(t, addr, corpusChanges(t)[:100])
	if len(r) < 2 {
		t.Fatalf("reference client restored %d changes", len(r))
	}

	out, errOut, err := runBinary(t, "scb", "list", url, "--json")
	if err != nil {
		t.Fatalf("list: %v %s", err, errOut)
	}
	var list []struct {
		Seq      uint64 `json:"seq"`
		Kind     string `json:"kind"`
		Channels int    `json:"channels"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 2 || list[1].Seq != 2 || list[1].Kind != "cln-scb" || list[1].Channels != 2 {
		t.Fatalf("list: %v %s", err, out)
	}
	got := filepath.Join(dir, "got.json")
	if _, errOut, err := runBinary(t, "scb", "get", url, "-o", got); err != nil {
		t.Fatalf("get: %v %s", err, errOut)
	}
	var arr []string
	raw, _ := os.ReadFile(got)
	if err := json.Unmarshal(raw, &arr); err != nil || len(arr) != 2 || !strings.Contains(string(raw), marker) {
		t.Fatalf("get wrote %s (%v)", raw, err)
	}

	ref := startPythonServer(t)
	_, errOut, err = runBinary(t, "scb", "list", ref)
	if err == nil {
		t.Fatal("scb list against the reference server succeeded")
	}
	line := strings.TrimSpace(errOut)
	if strings.Count(line, "\n") != 0 || !strings.HasPrefix(line, "lnvault: ") || !strings.Contains(line, "does not support static channel backups") {
		t.Fatalf("stderr: %q", errOut)
	}
}
