package scb

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
)

// Encrypted versions hold no plaintext at the destination, decrypt exactly
// with the identity, and fail clearly with another one.
func TestEncryptedDestination(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	id, other := testIdentity(t), testIdentity(t)
	dir := t.TempDir()
	ln := &fakeLightningd{chans: map[string]string{}}
	// A distinctive marker inside the channel backups.
	const marker = "deadbeefcafebabe0123456789abcdef"
	ln.chans["a"] = "00000000000000010000000000000000000000000000000000000000000000000000000000000001" + marker
	ln.chans["b"] = "00000000000000020000000000000000000000000000000000000000000000000000000000000002" + marker
	st, _ := OpenDir(filepath.Join(dir, "enc"), StoreOptions{})
	k, err := New(Config{Kind: KindCLN, Source: CLNSource{RPC: ln},
		Swappers: []Swapper{&StoreSwapper{Store: st, Recipients: []age.Recipient{id.Recipient()}}},
		Debounce: 10 * time.Millisecond, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	go k.Run(ctx)
	waitFor(t, "the encrypted version", func() bool { return k.Status().Healthy() })
	plain := ln.packed()

	files, _ := filepath.Glob(filepath.Join(dir, "enc", "*.scb"))
	if len(files) != 1 {
		t.Fatalf("%d versions stored", len(files))
	}
	raw, _ := os.ReadFile(files[0])
	for _, needle := range [][]byte{plain, []byte(marker), []byte(strings.ToUpper(marker)), plain[10:40]} {
		if bytes.Contains(raw, needle) {
			t.Fatalf("stored bytes contain plaintext %q", needle)
		}
	}
	vs, err := st.List(ctx)
	if err != nil || len(vs) != 1 || !vs[0].Encrypted || vs[0].Channels != 2 || vs[0].Kind != KindCLN {
		t.Fatalf("list without key: %v %+v", err, vs)
	}
	got, _, err := Fetch(ctx, st, vs[0], []age.Identity{id})
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("decrypt: %v", err)
	}
	if _, _, err := Fetch(ctx, st, vs[0], []age.Identity{other}); !errors.Is(err, ErrWrongIdentity) {
		t.Fatalf("wrong identity: %v", err)
	}
	if _, _, err := Fetch(ctx, st, vs[0], nil); !errors.Is(err, ErrEncrypted) {
		t.Fatalf("no identity: %v", err)
	}
}

func TestParseRecipientsAndIdentities(t *testing.T) {
	dir := t.TempDir()
	id := testIdentity(t)
	rf := filepath.Join(dir, "recipients")
	os.WriteFile(rf, []byte("# mine\n"+id.Recipient().String()+"\n"), 0o600)
	idf := filepath.Join(dir, "key")
	os.WriteFile(idf, []byte("# created: now\n"+id.String()+"\n"), 0o600)
	rs, err := ParseRecipients([]string{id.Recipient().String()}, []string{rf})
	if err != nil || len(rs) != 2 {
		t.Fatalf("%v %d", err, len(rs))
	}
	ids, err := ReadIdentities([]string{idf})
	if err != nil || len(ids) != 1 {
		t.Fatalf("%v", err)
	}
	if _, err := ParseRecipients([]string{id.String()}, nil); err == nil || strings.Contains(err.Error(), id.String()) {
		t.Fatalf("a secret key given as recipient must fail without echoing it: %v", err)
	}
	if _, err := ReadIdentities([]string{rf}); err == nil {
		t.Fatal("recipients file accepted as identities")
	}
	if _, err := ParseRecipients(nil, []string{filepath.Join(dir, "missing")}); err == nil {
		t.Fatal("missing recipients file accepted")
	}
}
