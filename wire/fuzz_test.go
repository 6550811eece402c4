package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"testing"

	"github.com/lnvault/lnvault"
)

// FuzzDecode feeds arbitrary bytes to the decoder: it must never panic, never
// exceed its limits, and every packet it accepts must re-encode to something
// that decodes to the same packet.
func FuzzDecode(f *testing.F) {
	var seed bytes.Buffer
	w := NewWriter(&seed)
	w.WriteChange(lnvault.NewTransaction(7, []string{w7, "PRAGMA foreign_keys = ON;"}))
	w.WriteVersion(TypeAck, 7)
	w.WriteMetadata(lnvault.Metadata{Version: 7, PrevVersion: 6, VersionCount: 3})
	f.Add(seed.Bytes())
	seed.Reset()
	w.WriteFeatures(TypeHello, []string{FeatureSCB, "x-1"})
	w.WriteEmpty(TypeReqMetadata)
	w.WriteFeatures(TypeFeatures, nil)
	w.WriteSCB(TypeSCBPut, []byte("LNVSCB\x01\x00"))
	w.WriteEmpty(TypeSCBList)
	w.WriteSCBVersions(testVersions())
	w.WriteSCBGet("000000000042-20260102T150405.123456789Z")
	w.WriteSCB(TypeSCBData, []byte("envelope"))
	w.WriteExtError("no version \"x\" in /srv/node.dbak.scb")
	f.Add(seed.Bytes())
	lim := Limits{MaxPacket: 1 << 16, MaxChange: 1 << 16, MaxSnapshot: 1 << 16, MaxSCB: 1 << 12}
	tmp := f.TempDir()
	lim.TempDir = tmp
	f.Fuzz(func(t *testing.T, in []byte) {
		r := NewReader(bytes.NewReader(in), lim)
		defer r.Close()
		for range 64 {
			p, err := r.Next()
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("unexpected error class: %v", err)
				}
				return
			}
			checkReencode(t, p, lim)
		}
	})
}

func checkReencode(t *testing.T, p Packet, lim Limits) {
	var b bytes.Buffer
	w := NewWriter(&b)
	var err error
	var snap []byte
	switch p.Type {
	case TypeChange:
		err = w.WriteChange(p.Change)
	case TypeSnapshot:
		snap, err = io.ReadAll(io.NewSectionReader(p.Change.Snapshot, 0, p.Change.Snapshot.Size()))
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(snap)) > lim.MaxSnapshot {
			t.Fatalf("snapshot of %d bytes passed the limit", len(snap))
		}
		err = w.WriteChange(lnvault.NewSnapshot(p.Version, io.NewSectionReader(bytes.NewReader(snap), 0, int64(len(snap)))))
	case TypeRewind, TypeAck, TypeDelete:
		err = w.WriteVersion(p.Type, p.Version)
	case TypeNack:
		if p.HasVersion {
			err = w.WriteVersion(p.Type, p.Version)
		} else {
			b.Write([]byte{byte(TypeNack), 0, 0, 0, 0})
		}
	case TypeMetadata:
		b.Write(AppendMetadata(nil, p.Protocol, p.Meta))
	case TypeCompactRes:
		err = w.WriteCompactResult(p.Stats)
	case TypeHello, TypeFeatures:
		err = w.WriteFeatures(p.Type, p.Features)
	case TypeSCBPut, TypeSCBData:
		if int64(len(p.Data)) > lim.MaxSCB {
			t.Fatalf("%v of %d bytes passed the limit", p.Type, len(p.Data))
		}
		err = w.WriteSCB(p.Type, p.Data)
	case TypeSCBGet:
		err = w.WriteSCBGet(p.Text)
	case TypeExtError:
		// Any UTF-8 is accepted (the writer sends one line: ExtErrorText).
		b.Write([]byte{byte(TypeExtError), 0, 0, 0, 0})
		putHeader(b.Bytes(), TypeExtError, len(p.Text))
		b.WriteString(p.Text)
	case TypeSCBVersions:
		err = w.WriteSCBVersions(p.SCBVersions)
	default:
		err = w.WriteEmpty(p.Type)
	}
	if err != nil {
		// A statement with NUL cannot come out of the decoder.
		t.Fatalf("re-encoding %v: %v", p.Type, err)
	}
	r := NewReader(&b, Limits{MaxPacket: 1 << 30, MaxChange: 1 << 30, MaxSnapshot: 1 << 30, TempDir: lim.TempDir})
	defer r.Close()
	q, err := r.Next()
	if err != nil {
		t.Fatalf("re-decoding %v: %v", p.Type, err)
	}
	if q.Type != p.Type || q.Version != p.Version || q.HasVersion != p.HasVersion || q.Meta != p.Meta || q.Protocol != p.Protocol || q.Stats != p.Stats {
		t.Fatalf("round trip changed %+v into %+v", p, q)
	}
	switch p.Type {
	case TypeChange:
		if !reflect.DeepEqual(p.Change.Statements, q.Change.Statements) && (len(p.Change.Statements)+len(q.Change.Statements) > 0) {
			t.Fatalf("statements %q became %q", p.Change.Statements, q.Change.Statements)
		}
	case TypeSnapshot:
		got, _ := io.ReadAll(q.Change.Snapshot)
		if !bytes.Equal(got, snap) {
			t.Fatal("snapshot bytes changed in round trip")
		}
	case TypeHello, TypeFeatures:
		if !reflect.DeepEqual(p.Features, q.Features) {
			t.Fatalf("features %q became %q", p.Features, q.Features)
		}
	case TypeSCBPut, TypeSCBData, TypeSCBGet, TypeExtError:
		if !bytes.Equal(p.Data, q.Data) || p.Text != q.Text {
			t.Fatalf("%v payload changed in round trip", p.Type)
		}
	case TypeSCBVersions:
		a, _ := json.Marshal(p.SCBVersions)
		b, _ := json.Marshal(q.SCBVersions)
		if !bytes.Equal(a, b) {
			t.Fatalf("versions %s became %s", a, b)
		}
	}
}
