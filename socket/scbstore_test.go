package socket

import (
	"errors"
	"net"
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
	if _, err := OpenSCBStoreURL(t.Context(), "socket:nohost", scb.StoreOptions{}); err == nil || !strings.Contains(err.Error(), "port missing") {
		t.Fatalf("bad URL: %v", err)
	}
}

// A hostile server answers SCB_LIST with versions without end: the client
// stops at MaxSCBVersions with a clear error, holding no more than that.
func TestHostileSCBListBounded(t *testing.T) {
	defer func(n int) { MaxSCBVersions = n }(MaxSCBVersions)
	MaxSCBVersions = 5000
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		rd, wr := wire.NewReader(c, wire.Limits{}), wire.NewWriter(c)
		page := make([]wire.SCBVersion, wire.SCBVersionsPerPacket)
		for {
			p, err := rd.Next()
			if err != nil {
				return
			}
			switch p.Type {
			case wire.TypeHello:
				wr.WriteFeatures(wire.TypeFeatures, []string{wire.FeatureSCB})
			case wire.TypeReqMetadata:
				wr.WriteMetadata(lnvault.Metadata{})
			case wire.TypeSCBList:
				for seq := uint64(1); ; {
					for i := range page {
						id := scb.VersionID(seq, time.Unix(1, 0))
						page[i] = wire.SCBVersion{ID: id, Seq: seq, Stored: time.Unix(1, 0).UTC(), Kind: "cln-scb", Size: 1}
						seq++
					}
					if err := wr.WriteSCBVersions(page); err != nil {
						return
					}
				}
			}
		}
	}()
	st, err := OpenSCBStore("socket:"+ln.Addr().String()+"?timeout=5s", scb.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = st.List(t.Context())
	if err == nil || !strings.Contains(err.Error(), "lists more than 5000 static channel backup versions") {
		t.Fatalf("endless SCB_LIST: %v", err)
	}
}
