package socket

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/scb"
	"github.com/lnvault/lnvault/wire"
)

func TestSCBVersionFromWire(t *testing.T) {
	id := "000000000042-20260102T150405.123456789Z"
	stored := time.Date(2026, 1, 2, 15, 4, 5, 123456789, time.UTC)
	good := wire.SCBVersion{ID: id, Seq: 42, Stored: stored, Kind: "cln-scb", Created: stored.Add(-time.Minute), Channels: 2,
		PlainSHA256: strings.Repeat("0f", 32), Size: 300}
	v, err := SCBVersionFromWire(good)
	if err != nil {
		t.Fatal(err)
	}
	if v.ID != id || v.Seq != 42 || !v.Stored.Equal(stored) || v.Kind != scb.KindCLN || v.Channels != 2 || v.Size != 300 || v.PlainSHA256[0] != 0x0f || v.Err != nil {
		t.Fatalf("%+v", v)
	}
	damaged := wire.SCBVersion{ID: id, Seq: 42, Channels: -1, Error: "payload checksum mismatch"}
	v, err = SCBVersionFromWire(damaged)
	if err != nil || !errors.Is(v.Err, lnvault.ErrCorrupt) || !strings.Contains(v.Err.Error(), "on the backup server: payload checksum mismatch") {
		t.Fatalf("damaged: %v %v", v.Err, err)
	}
	for name, mod := range map[string]func(*wire.SCBVersion){
		"bad id":         func(w *wire.SCBVersion) { w.ID = "42" },
		"seq mismatch":   func(w *wire.SCBVersion) { w.Seq = 41 },
		"bad kind":       func(w *wire.SCBVersion) { w.Kind = "CLN SCB" },
		"channels":       func(w *wire.SCBVersion) { w.Channels = -2 },
		"size":           func(w *wire.SCBVersion) { w.Size = -1 },
		"hash hex":       func(w *wire.SCBVersion) { w.PlainSHA256 = "zz" },
		"hash length":    func(w *wire.SCBVersion) { w.PlainSHA256 = "00ff" },
		"encrypted hash": func(w *wire.SCBVersion) { w.Encrypted = true },
	} {
		w := good
		mod(&w)
		if _, err := SCBVersionFromWire(w); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestOpenSCBStoreURL(t *testing.T) {
	st, err := OpenSCBStore("socket:[::1]:8700?timeout=3s", scb.StoreOptions{})
	if err != nil || st.String() != "socket:[::1]:8700" {
		t.Fatalf("%v %v", st, err)
	}
	if _, err := scb.OpenStore(t.Context(), "socket:nohost", scb.StoreOptions{}); err == nil || !strings.Contains(err.Error(), "port missing") {
		t.Fatalf("bad URL: %v", err)
	}
}
