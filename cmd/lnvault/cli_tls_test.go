package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/harness"
	"github.com/lnvault/lnvault/internal/pyref"
	"github.com/lnvault/lnvault/tlskey"
)

var (
	tlsListenRe    = regexp.MustCompile(`msg="backup server listening" component=server addr=(\S+) tls=true`)
	legacyListenRe = regexp.MustCompile(`msg="backup server listening" component=server addr=(\S+)\n`)
	pinRe          = regexp.MustCompile(`pin=(sha256:[0-9a-f]{64})`)
)

// waitLog waits until re matches the server's log and returns its group.
func waitLog(t *testing.T, p *serverProc, re *regexp.Regexp) string {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if m := re.FindStringSubmatch(p.log.String()); m != nil {
			return m[1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server's log never matched %s:\n%s", re, p.log.String())
		}
	}
}

// `lnvault server --tls-key --authorized-keys --legacy-listen`: init over
// TLS is refused until the node's key is authorized, then the real plugin
// backs the corpus up over TLS and it restores exactly; the reference
// Python client restores the same backup from the plaintext legacy
// listener.
func TestServerTLSAuthorizedKeys(t *testing.T) {
	dir := t.TempDir()
	netDir := filepath.Join(dir, "lightning", "regtest")
	if err := os.MkdirAll(netDir, 0o700); err != nil {
		t.Fatal(err)
	}
	stranger, _, err := tlskey.LoadOrCreate(filepath.Join(dir, "stranger.key"))
	if err != nil {
		t.Fatal(err)
	}
	auth := filepath.Join(dir, "authorized")
	if err := os.WriteFile(auth, []byte(stranger.Pin+" someone else\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"file://" + filepath.Join(dir, "srv.dbak"), "127.0.0.1:0", "--create",
		"--tls-key", filepath.Join(dir, "server.key"), "--authorized-keys", auth, "--legacy-listen", "127.0.0.1:0"}
	srv := startServer(t, args...)
	addr, legacy := waitLog(t, srv, tlsListenRe), waitLog(t, srv, legacyListenRe)
	pin := waitLog(t, srv, pinRe)
	if st, err := os.Stat(filepath.Join(dir, "server.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("the server's key: %v, mode %v", err, st.Mode())
	}

	url := "socket:" + addr + "?pin=" + pin
	r := runCLI(t, "init", url, "--lightning-dir", netDir, "--force")
	node, err := tlskey.Load(filepath.Join(netDir, ClientKeyFile))
	if err != nil {
		t.Fatalf("init made no client key: %v\n%s%s", err, r.stdout, r.stderr)
	}
	if r.code == 0 || !strings.Contains(r.stdout, node.Pin) || !strings.Contains(r.stderr, "is not in its --authorized-keys") {
		t.Fatalf("init with an unauthorized key: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	// The operator authorizes the node's key and restarts the server.
	if err := os.WriteFile(auth, []byte(stranger.Pin+"\n"+node.Pin+" the node\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv.stop()
	srv = startServer(t, append(args[:len(args)-1], legacy)...)
	if got := waitLog(t, srv, pinRe); got != pin {
		t.Fatalf("the server's pin changed across a restart: %s, was %s", got, pin)
	}
	addr = waitLog(t, srv, tlsListenRe)
	url = "socket:" + addr + "?pin=" + pin
	mustRun(t, "init", url, "--lightning-dir", netDir, "--force")
	lock := readLock(t, netDir)
	if u, _ := lock["backend_url"].(string); !strings.Contains(u, "key="+filepath.Join(netDir, ClientKeyFile)) {
		t.Fatalf("backup.lock names %q, without the node's client key", u)
	}

	h, err := harness.New(harness.Config{Bin: lnvaultBin, Dir: filepath.Join(dir, "lightning"), NoNodeDB: true})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := h.Start(ctx); err != nil {
		t.Fatal(err)
	}
	reqs := corpus.MustLoad()
	if err := h.Replay(ctx, reqs, 1); err != nil {
		t.Fatalf("replay over TLS: %v\nplugin stderr: %s", err, h.Stderr())
	}
	if code, err := h.Stop(ctx); err != nil || code != 0 {
		t.Fatalf("plugin exit %d: %v\nstderr: %s", code, err, h.Stderr())
	}
	dest := filepath.Join(t.TempDir(), "restored.sqlite3")
	mustRun(t, "restore", lock["backend_url"].(string), dest)
	if got := dumpOf(t, dest); got != corpus.FinalDumpSHA256() {
		t.Fatalf("restore over TLS: dump %s, want %s", got, corpus.FinalDumpSHA256())
	}
	// A client without TLS at the TLS port is told how to connect.
	r = runCLI(t, "status", "socket:"+addr+"?retries=0")
	assertOneLineError(t, r, "speaks TLS", "pin="+pin)

	d := pyref.Need(t)
	byRef := filepath.Join(t.TempDir(), "ref.sqlite3")
	if out, err := pyref.CLI(ctx, d, "restore", "socket:"+legacy, byRef); err != nil {
		t.Fatalf("the reference client on the legacy listener: %v\n%s", err, out)
	}
	if got := dumpOf(t, byRef); got != corpus.FinalDumpSHA256() {
		t.Fatalf("the reference client's restore from the legacy listener: dump %s", got)
	}
	srv.stop()
}

// `lnvault server --store --tenants`: each tenant's node inits and writes
// its own backup under the store; `tenant revoke` and SIGHUP refuse the
// tenant's next connection and leave its backup.
func TestServerTenants(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	if err := os.MkdirAll(store, 0o700); err != nil {
		t.Fatal(err)
	}
	tenants := filepath.Join(dir, "tenants.json")
	nodes := map[string]string{}
	for _, name := range []string{"alice", "bob"} {
		netDir := filepath.Join(dir, name, "regtest")
		if err := os.MkdirAll(netDir, 0o700); err != nil {
			t.Fatal(err)
		}
		replayCorpus(t, filepath.Join(netDir, "lightningd.sqlite3"), map[string]uint32{"alice": 300, "bob": 200}[name])
		k, _, err := tlskey.LoadOrCreate(filepath.Join(netDir, ClientKeyFile))
		if err != nil {
			t.Fatal(err)
		}
		mustRun(t, "server", "tenant", "add", name, "--key", k.Pin, "--tenants", tenants)
		nodes[name] = netDir
	}
	r := runCLI(t, "server", "tenant", "add", "carol", "--key", "sha256:12", "--tenants", tenants)
	assertOneLineError(t, r, "not a key pin")
	r = runCLI(t, "server", "--store", "file://"+store+"/", "--tenants", tenants, "--tls-key", filepath.Join(dir, "server.key"), "--replicate", "dir://"+dir+"/r", "127.0.0.1:0")
	assertOneLineError(t, r, "--replicate does not apply with --store")
	r = runCLI(t, "server", "--store", "ftp://x/", "--tenants", tenants, "--tls-key", filepath.Join(dir, "server.key"), "127.0.0.1:0")
	assertOneLineError(t, r, "use file:///dir/, dir:///dir/ or s3://bucket/prefix")

	srv := startServer(t, "--store", "file://"+store+"/", "--tenants", tenants, "--tls-key", filepath.Join(dir, "server.key"), "127.0.0.1:0")
	addr, pin := srv.Addr, waitLog(t, srv, pinRe)
	url := "socket:" + addr + "?pin=" + pin
	for name, netDir := range nodes {
		mustRun(t, "init", url, "--lightning-dir", netDir, "--force")
		u := readLock(t, netDir)["backend_url"].(string)
		r := mustRun(t, "status", u, "--json")
		want := map[string]string{"alice": `"version": 300`, "bob": `"version": 200`}[name]
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("%s's status: %s, want %s", name, r.stdout, want)
		}
		if _, err := os.Stat(filepath.Join(store, name+".dbak")); err != nil {
			t.Fatalf("%s's backup is not in the store: %v", name, err)
		}
	}
	// A quota below what alice holds: her next change is refused, saying so.
	mustRun(t, "server", "tenant", "quota", "alice", "--bytes", "1000", "--tenants", tenants)
	mustRun(t, "server", "tenant", "revoke", "bob", "--tenants", tenants)
	if r := mustRun(t, "server", "tenant", "list", "--tenants", tenants); !strings.Contains(r.stdout, "bob") || !strings.Contains(r.stdout, "revoked") || !strings.Contains(r.stdout, "1000") {
		t.Fatalf("tenant list: %s", r.stdout)
	}
	srv.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, srv, regexp.MustCompile(`msg="(tenants reloaded)"`))
	bobURL := readLock(t, nodes["bob"])["backend_url"].(string) + "&retries=0"
	r = runCLI(t, "status", bobURL)
	assertOneLineError(t, r, "refused this client")
	aliceURL := readLock(t, nodes["alice"])["backend_url"].(string)
	mustRun(t, "status", aliceURL)
	srv.stop()
	b, err := os.ReadFile(filepath.Join(store, "bob.dbak"))
	if err != nil || len(b) == 0 {
		t.Fatalf("bob's backup after the revocation: %v", err)
	}
}
