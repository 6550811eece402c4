package scb

import (
	"bytes"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/lnvault/lnvault"
)

func randBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func testIdentity(t testing.TB) *age.X25519Identity {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestEnvelopeRoundTrip(t *testing.T) {
	id := testIdentity(t)
	created := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	cases := []struct {
		name     string
		kind     Kind
		data     []byte
		channels int
		encrypt  bool
	}{
		{"lnd clear", KindLNDMulti, randBytes(t, 300), -1, false},
		{"lnd encrypted", KindLNDMulti, randBytes(t, 300), -1, true},
		{"cln empty set", KindCLN, []byte("[]"), 0, false},
		{"cln set encrypted", KindCLN, []byte(`["00aa","00bb"]`), 2, true},
		{"empty payload", KindCLNEmergency, nil, -1, false},
		{"large", KindLNDMulti, randBytes(t, 1<<20), -1, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBackup(tc.kind, tc.data, tc.channels)
			b.Taken = created
			var rc []age.Recipient
			if tc.encrypt {
				rc = []age.Recipient{id.Recipient()}
			}
			raw, err := Seal(b, rc)
			if err != nil {
				t.Fatal(err)
			}
			env, err := DecodeEnvelope(raw)
			if err != nil {
				t.Fatal(err)
			}
			if env.Kind != tc.kind || env.Channels != tc.channels || !env.Created.Equal(created) || env.Encrypted != tc.encrypt {
				t.Fatalf("header mismatch: %+v", env.Header)
			}
			if tc.encrypt && env.PlainSHA256 != ([32]byte{}) {
				t.Fatal("encrypted envelope leaks the plaintext hash")
			}
			if !tc.encrypt && env.PlainSHA256 != b.SHA256 {
				t.Fatal("plaintext hash missing")
			}
			got, err := env.Open([]age.Identity{id})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.data) {
				t.Fatal("payload differs after round trip")
			}
			h, start, err := DecodeHeader(raw)
			if err != nil || h != env.Header || start+int(h.PayloadLen)+32 != len(raw) {
				t.Fatalf("DecodeHeader: %v %+v %d", err, h, start)
			}
		})
	}
}

// Every single-byte change and every truncation of an envelope is detected.
func TestEnvelopeDetectsDamage(t *testing.T) {
	for _, encrypt := range []bool{false, true} {
		var rc []age.Recipient
		if encrypt {
			rc = []age.Recipient{testIdentity(t).Recipient()}
		}
		raw, err := Seal(NewBackup(KindLNDMulti, randBytes(t, 100), -1), rc)
		if err != nil {
			t.Fatal(err)
		}
		for i := range raw {
			bad := bytes.Clone(raw)
			bad[i] ^= 0x01
			if _, err := DecodeEnvelope(bad); err == nil {
				t.Fatalf("encrypt=%v: flipping byte %d went unnoticed", encrypt, i)
			} else if !errors.Is(err, lnvault.ErrCorrupt) {
				t.Fatalf("byte %d: error %v is not ErrCorrupt", i, err)
			}
		}
		for n := 0; n < len(raw); n++ {
			if _, err := DecodeEnvelope(raw[:n]); err == nil {
				t.Fatalf("encrypt=%v: truncation to %d bytes went unnoticed", encrypt, n)
			}
		}
		if _, err := DecodeEnvelope(append(bytes.Clone(raw), 0)); err == nil {
			t.Fatal("an extra byte went unnoticed")
		}
	}
}

func TestEnvelopeOpenErrors(t *testing.T) {
	id, other := testIdentity(t), testIdentity(t)
	raw, err := Seal(NewBackup(KindLNDMulti, randBytes(t, 64), -1), []age.Recipient{id.Recipient()})
	if err != nil {
		t.Fatal(err)
	}
	env, err := DecodeEnvelope(raw)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Open(nil); !errors.Is(err, ErrEncrypted) || !strings.Contains(err.Error(), "--identity") {
		t.Fatalf("no identity: %v", err)
	}
	if _, err := env.Open([]age.Identity{other}); !errors.Is(err, ErrWrongIdentity) {
		t.Fatalf("wrong identity: %v", err)
	}
}

func TestSealRejectsBadInput(t *testing.T) {
	if _, err := Seal(Backup{Kind: "Bad Kind"}, nil); err == nil {
		t.Fatal("invalid kind accepted")
	}
	if _, err := Seal(Backup{Kind: KindLNDMulti, Data: make([]byte, MaxPayload+1)}, nil); err == nil {
		t.Fatal("oversized payload accepted")
	}
}

// FuzzDecodeEnvelope: the decoder never panics, and whatever it accepts
// re-encodes to the same bytes (so nothing is silently ignored).
func FuzzDecodeEnvelope(f *testing.F) {
	clear, _ := Seal(Backup{Kind: KindCLN, Data: []byte(`["00aa"]`), Channels: 1, Taken: time.Unix(1, 0)}, nil)
	f.Add(clear)
	empty, _ := Seal(Backup{Kind: KindLNDMulti, Taken: time.Unix(2, 0), Channels: -1}, nil)
	f.Add(empty)
	f.Add([]byte("LNVSCB"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		env, err := DecodeEnvelope(b)
		if err != nil {
			if !errors.Is(err, lnvault.ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
			return
		}
		re, err := EncodeEnvelope(env.Header, env.Payload)
		if err != nil {
			t.Fatalf("accepted envelope does not re-encode: %v", err)
		}
		if !bytes.Equal(re, b) {
			t.Fatalf("accepted envelope re-encodes differently")
		}
		if !env.Encrypted {
			if _, err := env.Open(nil); err != nil {
				t.Fatal(err)
			}
		}
	})
}
