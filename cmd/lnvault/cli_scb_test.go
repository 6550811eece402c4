package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"
)

func scbKeys(t *testing.T, dir string) (recipients, identity, wrong string) {
	t.Helper()
	id, _ := age.GenerateX25519Identity()
	other, _ := age.GenerateX25519Identity()
	recipients = filepath.Join(dir, "recipients.txt")
	identity = filepath.Join(dir, "key.txt")
	wrong = filepath.Join(dir, "other-key.txt")
	os.WriteFile(recipients, []byte(id.Recipient().String()+"\n"), 0o600)
	os.WriteFile(identity, []byte(id.String()+"\n"), 0o600)
	os.WriteFile(wrong, []byte(other.String()+"\n"), 0o600)
	return
}

// Encrypted CLN SCBs through the CLI: put the staticbackup answer, list
// without the key, get back exactly what recoverchannel takes.
func TestCLISCBEncryptedPutListGet(t *testing.T) {
	dir := t.TempDir()
	rcpt, key, wrongKey := scbKeys(t, dir)
	backup := filepath.Join(dir, "node.dbak")
	url := "file://" + backup
	const marker = "0123456789abcdeffedcba9876543210"
	answer := `{"scb": ["0000000000000002` + strings.Repeat("bb", 32) + marker + `", "0000000000000001` + strings.Repeat("aa", 32) + marker + `"]}`
	in := filepath.Join(dir, "staticbackup.json")
	os.WriteFile(in, []byte(answer), 0o600)

	r := mustRun(t, "scb", "put", url, "--kind", "cln-scb", "--file", in, "--recipients-file", rcpt)
	if !strings.Contains(r.stdout, "stored version 1") {
		t.Fatalf("put: %q", r.stdout)
	}
	// No plaintext at the destination.
	files, _ := filepath.Glob(filepath.Join(backup+".scb", "*.scb"))
	if len(files) != 1 {
		t.Fatalf("%d files in %s.scb", len(files), backup)
	}
	raw, _ := os.ReadFile(files[0])
	if bytes.Contains(raw, []byte(marker)) || bytes.Contains(raw, []byte(strings.Repeat("aa", 32))) {
		t.Fatal("encrypted version contains plaintext")
	}

	r = mustRun(t, "scb", "list", url, "--json")
	list := scbListJSON(t, r.stdout)
	if len(list) != 1 || list[0].Kind != "cln-scb" || list[0].Channels != 2 || !list[0].Encrypted || list[0].Error != "" {
		t.Fatalf("list: %+v", list)
	}

	out := filepath.Join(dir, "scb.json")
	mustRun(t, "scb", "get", url, "-o", out, "--identity", key)
	got, _ := os.ReadFile(out)
	want := `["0000000000000001` + strings.Repeat("aa", 32) + marker + `","0000000000000002` + strings.Repeat("bb", 32) + marker + `"]`
	if string(got) != want {
		t.Fatalf("get wrote %s\nwant %s", got, want)
	}

	assertOneLineError(t, runCLI(t, "scb", "get", url, "-o", filepath.Join(dir, "x"), "--identity", wrongKey), "identities", "decrypt")
	assertOneLineError(t, runCLI(t, "scb", "get", url, "-o", filepath.Join(dir, "y")), "encrypted", "--identity")
	assertOneLineError(t, runCLI(t, "scb", "get", url, "-o", out, "--identity", key), "exists", "--force")
	assertOneLineError(t, runCLI(t, "scb", "get", url, "-o", filepath.Join(dir, "z"), "--version", "7", "--identity", key), "no version")
	assertOneLineError(t, runCLI(t, "scb", "list", "file://"+filepath.Join(dir, "none.dbak")), "no static channel backup folder")
	assertOneLineError(t, runCLI(t, "scb", "put", url, "--kind", "lnd-multi", "--file", in), "not a complete")
	assertOneLineError(t, runCLI(t, "scb", "put", url, "--kind", "cln-scb", "--file", in, "--encrypt-to", "age1nope"), "age recipient")
	for _, f := range []string{"x", "y"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			t.Errorf("failed get left %s behind", f)
		}
	}

	// A damaged version: list says so and exits 2, get refuses.
	raw[len(raw)/2] ^= 0xff
	os.WriteFile(files[0], raw, 0o600)
	r = runCLI(t, "scb", "list", url)
	if r.code != 2 || !strings.Contains(r.stdout, "DAMAGED") {
		t.Fatalf("damaged list: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	assertOneLineError(t, runCLI(t, "scb", "get", url, "-o", filepath.Join(dir, "d"), "--identity", key), "damaged")
}

// scb watch end to end: lnd swaps channel.backup by rename; every version
// arrives, encrypted; get returns lnd's bytes; SIGTERM ends it cleanly.
func TestCLISCBWatch(t *testing.T) {
	dir := t.TempDir()
	rcpt, key, _ := scbKeys(t, dir)
	lndDir := filepath.Join(dir, "lnd")
	os.Mkdir(lndDir, 0o700)
	cb := filepath.Join(lndDir, "channel.backup")
	dest := "dir://" + filepath.Join(dir, "dest")
	local := filepath.Join(dir, "local.backup")

	cmd := exec.Command(lnvaultBin, "scb", "watch", "--file", cb, "--to", dest, "--local-copy", local,
		"--interval", "50ms", "--settle", "100ms", "--recipients-file", rcpt)
	cmd.Env = append(os.Environ(), "LIGHTNINGD_PLUGIN=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()

	var last []byte
	for i := 0; i < 3; i++ {
		last = make([]byte, 200+i*100)
		rand.Read(last)
		tmp := filepath.Join(lndDir, "temp-dont-use.backup")
		os.WriteFile(tmp, last, 0o600)
		os.Rename(tmp, cb)
		deadline := time.Now().Add(15 * time.Second)
		for {
			got, _ := os.ReadFile(local)
			if bytes.Equal(got, last) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("version %d not shipped; stderr:\n%s", i, stderr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// The store may trail the local copy by a moment.
	deadline := time.Now().Add(15 * time.Second)
	out := filepath.Join(dir, "restored.backup")
	for {
		os.Remove(out)
		r := runCLI(t, "scb", "get", dest, "-o", out, "--identity", key)
		got, _ := os.ReadFile(out)
		if r.code == 0 && bytes.Equal(got, last) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("store did not get the last version: %s", r.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	r := mustRun(t, "scb", "list", dest, "--json")
	var list []map[string]any
	json.Unmarshal([]byte(r.stdout), &list)
	if len(list) != 3 {
		t.Fatalf("%d versions, want 3: %s", len(list), r.stdout)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("watch did not exit cleanly on SIGTERM: %v\n%s", err, stderr.String())
	}
}

// scbListEntry is what the tests read of `scb list --json`.
type scbListEntry struct {
	Seq       uint64 `json:"seq"`
	Kind      string `json:"kind"`
	Channels  int    `json:"channels"`
	Encrypted bool   `json:"encrypted"`
	Error     string `json:"error"`
}

func scbListJSON(t *testing.T, out string) []scbListEntry {
	t.Helper()
	var list []scbListEntry
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("list --json: %v\n%s", err, out)
	}
	return list
}
