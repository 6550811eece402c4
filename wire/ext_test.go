package wire

import (
	"bytes"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"
)

func testVersions() []SCBVersion {
	t0 := time.Date(2026, 1, 2, 15, 4, 5, 123456789, time.UTC)
	return []SCBVersion{
		{ID: "000000000001-20260102T150405.123456789Z", Seq: 1, Stored: t0, Kind: "cln-scb", Created: t0.Add(-time.Second),
			Channels: 3, PlainSHA256: strings.Repeat("ab", 32), Size: 412},
		{ID: "000000000002-20260102T150406.000000000Z", Seq: 2, Stored: t0.Add(time.Second), Kind: "lnd-multi", Created: t0,
			Channels: -1, Encrypted: true, Size: 900},
		{ID: "000000000003-20260102T150407.000000000Z", Seq: 3, Stored: t0.Add(2 * time.Second), Channels: -1, Error: "backup is corrupt: payload checksum mismatch"},
	}
}

// The extension packets' exact bytes: a reference implementer could write
// them from these.
func TestExtFixedLayouts(t *testing.T) {
	id := "000000000042-20260102T150405.123456789Z"
	tests := []layoutCase{
		{"hello", func(w *Writer) error { return w.WriteFeatures(TypeHello, []string{"scb"}) }, "20 00000003 736362"},
		{"hello two", func(w *Writer) error { return w.WriteFeatures(TypeHello, []string{"scb", "x.y"}) }, "20 00000007 736362 20 782e79"},
		{"features none", func(w *Writer) error { return w.WriteFeatures(TypeFeatures, nil) }, "21 00000000"},
		{"scb_put", func(w *Writer) error { return w.WriteSCB(TypeSCBPut, []byte{1, 2, 3}) }, "22 00000003 010203"},
		{"scb_list", func(w *Writer) error { return w.WriteEmpty(TypeSCBList) }, "23 00000000"},
		{"scb_versions empty", func(w *Writer) error { return w.WriteSCBVersions(nil) }, "24 00000002 5b5d"},
		{"scb_get latest", func(w *Writer) error { return w.WriteSCBGet("") }, "25 00000000"},
		{"scb_get id", func(w *Writer) error { return w.WriteSCBGet(id) }, "25 00000027 " + hexOf(id)},
		{"scb_data", func(w *Writer) error { return w.WriteSCB(TypeSCBData, []byte("LNV")) }, "26 00000003 4c4e56"},
		{"ext_error", func(w *Writer) error { return w.WriteExtError("no") }, "27 00000002 6e6f"},
	}
	checkLayouts(t, tests)
}

func hexOf(s string) string {
	const digits = "0123456789abcdef"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		b.WriteByte(digits[s[i]>>4])
		b.WriteByte(digits[s[i]&15])
	}
	return b.String()
}

func TestExtRoundTrip(t *testing.T) {
	env := bytes.Repeat([]byte("LNVSCB envelope "), 5000)
	var b bytes.Buffer
	w := NewWriter(&b)
	steps := []error{
		w.WriteFeatures(TypeHello, []string{FeatureSCB}),
		w.WriteFeatures(TypeFeatures, nil),
		w.WriteSCB(TypeSCBPut, env),
		w.WriteEmpty(TypeSCBList),
		w.WriteSCBVersions(testVersions()),
		w.WriteSCBGet("cln-scb"),
		w.WriteSCB(TypeSCBData, nil),
		w.WriteExtError("line one\nline two \xff"),
		w.WriteVersion(TypeDelete, 70000),
		w.WriteEmpty(TypeRebase),
	}
	for i, err := range steps {
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	r := NewReader(&b, Limits{})
	defer r.Close()
	next := func(want Type) Packet {
		t.Helper()
		p, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if p.Type != want {
			t.Fatalf("type %v, want %v", p.Type, want)
		}
		return p
	}
	if p := next(TypeHello); !reflect.DeepEqual(p.Features, []string{"scb"}) {
		t.Fatalf("%q", p.Features)
	}
	if p := next(TypeFeatures); p.Features == nil || len(p.Features) != 0 {
		t.Fatalf("%#v", p.Features)
	}
	if p := next(TypeSCBPut); !bytes.Equal(p.Data, env) {
		t.Fatalf("SCB_PUT carried %d bytes", len(p.Data))
	}
	next(TypeSCBList)
	if p := next(TypeSCBVersions); !reflect.DeepEqual(p.SCBVersions, testVersions()) {
		t.Fatalf("versions %+v", p.SCBVersions)
	}
	if p := next(TypeSCBGet); p.Text != "cln-scb" {
		t.Fatal(p.Text)
	}
	if p := next(TypeSCBData); len(p.Data) != 0 {
		t.Fatal(p.Data)
	}
	if p := next(TypeExtError); p.Text != "line one line two ?" {
		t.Fatalf("%q", p.Text)
	}
	if p := next(TypeDelete); p.Version != 70000 || !p.HasVersion {
		t.Fatalf("DELETE carried %d (%v)", p.Version, p.HasVersion)
	}
	if p := next(TypeRebase); p.Len != 0 {
		t.Fatalf("REBASE of %d bytes", p.Len)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatal(err)
	}
	if s := TypeSCBVersions.String(); s != "SCB_VERSIONS" {
		t.Fatal(s)
	}
	if s := Type(0x2a).String(); s != "type(0x2a)" {
		t.Fatal(s)
	}
}

func TestExtBadInput(t *testing.T) {
	tests := []badCase{
		{"bad feature", packet(TypeHello, []byte("scb  x")), Limits{}, ErrMalformed, "invalid feature name"},
		{"upper feature", packet(TypeFeatures, []byte("SCB")), Limits{}, ErrMalformed, "invalid feature name"},
		{"features too long", packet(TypeFeatures, bytes.Repeat([]byte("a "), 600)), Limits{}, ErrTooLarge, "limit is 1024"},
		{"scb_put over limit", packet(TypeSCBPut, make([]byte, 2000)), Limits{MaxSCB: 1000}, ErrTooLarge, "limit is 1000"},
		{"scb_put huge length", []byte{0x22, 0x7f, 0xff, 0xff, 0xff}, Limits{}, ErrTooLarge, "SCB_PUT payload"},
		{"scb_put over max packet", packet(TypeSCBPut, make([]byte, 2000)), Limits{MaxPacket: 100}, ErrTooLarge, "limit is 100"},
		{"scb_list payload", packet(TypeSCBList, []byte{0}), Limits{}, ErrMalformed, "SCB_LIST must have an empty payload"},
		{"scb_get space", packet(TypeSCBGet, []byte("a b")), Limits{}, ErrMalformed, "invalid version"},
		{"scb_get long", packet(TypeSCBGet, bytes.Repeat([]byte("a"), 200)), Limits{}, ErrTooLarge, "SCB_GET"},
		{"ext_error not utf8", packet(TypeExtError, []byte{0xff, 0xfe}), Limits{}, ErrMalformed, "not UTF-8"},
		{"versions not json", packet(TypeSCBVersions, []byte("[{")), Limits{}, ErrMalformed, "not a JSON list"},
		{"versions object", packet(TypeSCBVersions, []byte(`{"id":"x"}`)), Limits{}, ErrMalformed, "not a JSON list"},
		{"versions null", packet(TypeSCBVersions, []byte(`null`)), Limits{}, ErrMalformed, "null"},
		{"versions trailing", packet(TypeSCBVersions, []byte(`[]]`)), Limits{}, ErrMalformed, "not a JSON list"},
		{"versions bad time", packet(TypeSCBVersions, []byte(`[{"stored":"yesterday"}]`)), Limits{}, ErrMalformed, "not a JSON list"},
		{"truncated scb_data", packet(TypeSCBData, make([]byte, 100))[:50], Limits{}, io.ErrUnexpectedEOF, "SCB_DATA"},
		{"delete short", packet(TypeDelete, []byte{0, 0, 1}), Limits{}, ErrMalformed, "DELETE payload must be 4 bytes"},
		{"delete long", packet(TypeDelete, make([]byte, 8)), Limits{}, ErrMalformed, "DELETE payload must be 4 bytes"},
		{"unknown ext", packet(0x2a, nil), Limits{}, ErrMalformed, "unknown packet type 0x2a"},
		{"rebase with payload", packet(TypeRebase, []byte{1}), Limits{}, ErrMalformed, "REBASE must have an empty payload"},
	}
	checkBadInput(t, tests)
}

func TestExtWriterRefuses(t *testing.T) {
	w := NewWriter(io.Discard)
	for name, err := range map[string]error{
		"bad feature":  w.WriteFeatures(TypeHello, []string{"a b"}),
		"wrong type":   w.WriteFeatures(TypeAck, nil),
		"scb type":     w.WriteSCB(TypeChange, nil),
		"bad selector": w.WriteSCBGet("a\x00"),
		"too large":    w.WriteSCB(TypeSCBPut, make([]byte, DefaultMaxSCB+1)),
	} {
		if err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	long := strings.Repeat("é", MaxExtError) // 2 bytes each: cut inside a rune
	if got := ExtErrorText(long); len(got) > MaxExtError || !strings.HasPrefix(long, got) || len(got) < MaxExtError-1 {
		t.Fatalf("cut to %d bytes", len(got))
	}
}
