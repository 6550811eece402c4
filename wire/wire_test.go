package wire

import (
	"bytes"
	"compress/zlib"
	"encoding/hex"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/lnvault/lnvault"
)

const w7 = "INSERT INTO t (v) VALUES ('w7')"

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func inflate(t testing.TB, b []byte) []byte {
	t.Helper()
	zr, err := zlib.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// The byte example: a CHANGE for version 7 is exactly what the
// reference implementation (python3 zlib.compress) sends, length 0x2b.
// compress/zlib alone would add an empty final stored block (0x2f); the
// Writer marks the single data block final instead (markFinalBlock).
func TestChangeBytes(t *testing.T) {
	ref := mustHex(t, "01 0000002b 00000007 789cf3f40b760d0a51f0f40bf1572851d028d3540873f409750d56d0502f3757d7040087030808")
	var b bytes.Buffer
	if err := NewWriter(&b).WriteChange(lnvault.NewTransaction(7, []string{w7})); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.Bytes(), ref) {
		t.Fatalf("CHANGE bytes\n got % x\nwant % x", b.Bytes(), ref)
	}
	if s := inflate(t, b.Bytes()[9:]); string(s) != w7 {
		t.Fatalf("payload decompresses to %q", s)
	}

	// And the decoder takes them.
	p, err := NewReader(bytes.NewReader(ref), Limits{}).Next()
	if err != nil {
		t.Fatal(err)
	}
	if p.Type != TypeChange || p.Version != 7 || p.Len != 0x2b || !reflect.DeepEqual(p.Change.Statements, []string{w7}) {
		t.Fatalf("decoded %+v %+v", p, p.Change)
	}
}

func TestFixedLayouts(t *testing.T) {
	tests := []layoutCase{
		{"metadata", func(w *Writer) error {
			return w.WriteMetadata(lnvault.Metadata{Version: 0x0102, PrevVersion: 0x0101, VersionCount: 0x0a0b0c0d0e})
		}, "08 00000014 00000001 00000102 00000101 0000000a0b0c0d0e"},
		{"ack", func(w *Writer) error { return w.WriteVersion(TypeAck, 42) }, "06 00000004 0000002a"},
		{"nack", func(w *Writer) error { return w.WriteVersion(TypeNack, 42) }, "07 00000004 0000002a"},
		{"rewind", func(w *Writer) error { return w.WriteVersion(TypeRewind, 9) }, "03 00000004 00000009"},
		{"req_metadata", func(w *Writer) error { return w.WriteEmpty(TypeReqMetadata) }, "04 00000000"},
		{"restore", func(w *Writer) error { return w.WriteEmpty(TypeRestore) }, "05 00000000"},
		{"done", func(w *Writer) error { return w.WriteEmpty(TypeDone) }, "09 00000000"},
		{"compact", func(w *Writer) error { return w.WriteEmpty(TypeCompact) }, "0a 00000000"},
	}
	checkLayouts(t, tests)
}

func TestCompactResJSON(t *testing.T) {
	var b bytes.Buffer
	st := lnvault.CompactStats{Before: lnvault.SizeStats{BackupSize: 1000, VersionCount: 10}, After: lnvault.SizeStats{BackupSize: 300, VersionCount: 2}}
	if err := NewWriter(&b).WriteCompactResult(st); err != nil {
		t.Fatal(err)
	}
	js := `{"before":{"backupsize":1000,"version_count":10},"after":{"backupsize":300,"version_count":2}}`
	if got := string(b.Bytes()[HeaderLen:]); got != js {
		t.Fatalf("json %s", got)
	}
	if b.Bytes()[0] != 0x0b || int(b.Bytes()[4]) != len(js) {
		t.Fatalf("header % x", b.Bytes()[:5])
	}
	// The reference server's json.dumps (spaces, key order) decodes too.
	py := `{"before": {"backupsize": 1000, "version_count": 10}, "after": {"version_count": 2, "backupsize": 300}}`
	pkt := append([]byte{0x0b, 0, 0, 0, byte(len(py))}, py...)
	p, err := NewReader(bytes.NewReader(pkt), Limits{}).Next()
	if err != nil || p.Stats != st {
		t.Fatalf("%+v %v", p.Stats, err)
	}
}

func TestRoundTrip(t *testing.T) {
	snap := bytes.Repeat([]byte("SQLite format 3\x00 page "), 50000) // ~1 MB
	big := make([]byte, 3<<20)
	for i := range big {
		big[i] = byte(i*7 + i>>9)
	}
	var b bytes.Buffer
	w := NewWriter(&b)
	w.SmallSnapshot = 2 << 20 // so that `big` takes the temp-file path
	w.TempDir = t.TempDir()
	meta := lnvault.Metadata{Version: 7, PrevVersion: 6, VersionCount: 1 << 40}
	stats := lnvault.CompactStats{Before: lnvault.SizeStats{BackupSize: 5, VersionCount: 4}, After: lnvault.SizeStats{BackupSize: 3, VersionCount: 2}}
	stmts := []string{"PRAGMA foreign_keys = OFF;", "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version'", "INSERT INTO x VALUES (x'00ff', 'é')"}
	steps := []func() error{
		func() error { return w.WriteChange(lnvault.NewTransaction(5, stmts)) },
		func() error { return w.WriteChange(lnvault.NewTransaction(6, nil)) },
		func() error {
			return w.WriteChange(lnvault.NewSnapshot(7, io.NewSectionReader(bytes.NewReader(snap), 0, int64(len(snap)))))
		},
		func() error {
			return w.WriteChange(lnvault.NewSnapshot(8, io.NewSectionReader(bytes.NewReader(big), 0, int64(len(big)))))
		},
		func() error { return w.WriteVersion(TypeRewind, 6) },
		func() error { return w.WriteEmpty(TypeReqMetadata) },
		func() error { return w.WriteEmpty(TypeRestore) },
		func() error { return w.WriteVersion(TypeAck, 7) },
		func() error { return w.WriteVersion(TypeNack, 8) },
		func() error { return w.WriteMetadata(meta) },
		func() error { return w.WriteEmpty(TypeDone) },
		func() error { return w.WriteEmpty(TypeCompact) },
		func() error { return w.WriteCompactResult(stats) },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			t.Fatal(err)
		}
	}
	b.Write([]byte{0x07, 0, 0, 0, 0}) // NACK without version (protocol document)
	r := NewReader(&b, Limits{TempDir: t.TempDir()})
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
	if p := next(TypeChange); p.Version != 5 || !reflect.DeepEqual(p.Change.Statements, stmts) || p.Change.Kind != lnvault.KindTransaction {
		t.Fatalf("%+v", p.Change)
	}
	if p := next(TypeChange); p.Version != 6 || len(p.Change.Statements) != 0 {
		t.Fatalf("%+v", p.Change)
	}
	for _, want := range []struct {
		v uint32
		b []byte
	}{{7, snap}, {8, big}} {
		p := next(TypeSnapshot)
		got, err := io.ReadAll(p.Change.Snapshot)
		if err != nil {
			t.Fatal(err)
		}
		if p.Version != want.v || p.Change.Kind != lnvault.KindSnapshot || !bytes.Equal(got, want.b) {
			t.Fatalf("snapshot %d: %d bytes", p.Version, len(got))
		}
	}
	if p := next(TypeRewind); p.Version != 6 {
		t.Fatal(p.Version)
	}
	next(TypeReqMetadata)
	next(TypeRestore)
	if p := next(TypeAck); p.Version != 7 {
		t.Fatal(p.Version)
	}
	if p := next(TypeNack); p.Version != 8 || !p.HasVersion {
		t.Fatal(p)
	}
	if p := next(TypeMetadata); p.Meta != meta || p.Protocol != 1 {
		t.Fatal(p)
	}
	next(TypeDone)
	next(TypeCompact)
	if p := next(TypeCompactRes); p.Stats != stats {
		t.Fatal(p.Stats)
	}
	if p := next(TypeNack); p.HasVersion {
		t.Fatal(p)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("at end: %v", err)
	}
}

func zlibOf(b []byte) []byte {
	var z bytes.Buffer
	zw := zlib.NewWriter(&z)
	zw.Write(b)
	zw.Close()
	return z.Bytes()
}

func packet(t Type, payload []byte) []byte {
	out := []byte{byte(t), 0, 0, 0, 0}
	putHeader(out, t, len(payload))
	return append(out, payload...)
}

func versioned(v uint32, rest []byte) []byte {
	return append([]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}, rest...)
}

func TestBadInput(t *testing.T) {
	bomb := zlibOf(make([]byte, 8<<20)) // 8 MiB of zeros in ~8 KB
	good := zlibOf([]byte(w7))
	tests := []badCase{
		{"unknown type", packet(0x42, nil), Limits{}, ErrMalformed, "unknown packet type 0x42"},
		{"oversized length", []byte{0x01, 0xff, 0xff, 0xff, 0xff}, Limits{MaxPacket: 1 << 20}, ErrTooLarge, "limit is 1048576"},
		{"zlib bomb change", packet(TypeChange, versioned(3, bomb)), Limits{MaxChange: 1 << 20}, ErrTooLarge, "decompresses to more than"},
		{"zlib bomb snapshot", packet(TypeSnapshot, versioned(3, bomb)), Limits{MaxSnapshot: 1 << 20}, ErrTooLarge, "decompresses to more than"},
		{"not zlib", packet(TypeChange, versioned(3, []byte("hello world"))), Limits{}, ErrMalformed, "bad zlib stream"},
		{"trailing bytes", packet(TypeChange, versioned(3, append(append([]byte{}, good...), 1, 2))), Limits{}, ErrMalformed, "2 bytes after the end"},
		{"cut zlib stream", packet(TypeChange, versioned(3, good[:len(good)-6])), Limits{}, ErrMalformed, "bad zlib stream"},
		{"no version", packet(TypeChange, []byte{1, 2}), Limits{}, ErrMalformed, "has no version"},
		{"ack length", packet(TypeAck, []byte{1, 2, 3}), Limits{}, ErrMalformed, "ACK payload must be 4 bytes"},
		{"nack length", packet(TypeNack, []byte{1, 2}), Limits{}, ErrMalformed, "NACK payload must be 0 or 4"},
		{"metadata length", packet(TypeMetadata, make([]byte, 12)), Limits{}, ErrMalformed, "METADATA payload must be 20"},
		{"done payload", packet(TypeDone, []byte{1}), Limits{}, ErrMalformed, "DONE must have an empty payload"},
		{"compact_res json", packet(TypeCompactRes, []byte("{nope")), Limits{}, ErrMalformed, "COMPACT_RES is not"},
		{"truncated header", []byte{0x06, 0, 0}, Limits{}, io.ErrUnexpectedEOF, "header"},
		{"truncated ack", []byte{0x06, 0, 0, 0, 4, 0}, Limits{}, io.ErrUnexpectedEOF, ""},
		{"truncated change", packet(TypeChange, versioned(3, good))[:20], Limits{}, io.ErrUnexpectedEOF, ""},
	}
	checkBadInput(t, tests)
}

func TestNULInStatement(t *testing.T) {
	err := NewWriter(io.Discard).WriteChange(lnvault.NewTransaction(1, []string{"a\x00b"}))
	if err == nil || !strings.Contains(err.Error(), "NUL") {
		t.Fatalf("err = %v", err)
	}
}

// The append path must not allocate per packet.
func TestWriteChangeAllocs(t *testing.T) {
	w := NewWriter(io.Discard)
	c := lnvault.NewTransaction(9, []string{w7, "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = 8"})
	w.WriteChange(c)
	if n := testing.AllocsPerRun(100, func() { w.WriteChange(c) }); n > 0 {
		t.Fatalf("WriteChange allocates %v times per packet", n)
	}
	var b bytes.Buffer
	if n := testing.AllocsPerRun(100, func() { b.Reset(); w.Reset(&b); w.WriteVersion(TypeAck, 3) }); n > 0 {
		t.Fatalf("WriteVersion allocates %v times", n)
	}
}

// writeCounter counts Write calls: one per packet is the latency contract.
type writeCounter struct{ n int }

func (w *writeCounter) Write(p []byte) (int, error) { w.n++; return len(p), nil }

func TestOneWritePerPacket(t *testing.T) {
	var wc writeCounter
	w := NewWriter(&wc)
	w.WriteChange(lnvault.NewTransaction(1, []string{w7, w7}))
	w.WriteVersion(TypeAck, 1)
	w.WriteMetadata(lnvault.Metadata{})
	snap := make([]byte, 100000)
	w.WriteChange(lnvault.NewSnapshot(2, io.NewSectionReader(bytes.NewReader(snap), 0, int64(len(snap)))))
	if wc.n != 4 {
		t.Fatalf("%d writes for 4 packets", wc.n)
	}
}

func BenchmarkWriteChange(b *testing.B) {
	w := NewWriter(io.Discard)
	c := lnvault.NewTransaction(9, []string{w7, "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = 8"})
	b.ReportAllocs()
	for b.Loop() {
		w.WriteChange(c)
	}
}

// layoutCase: what write puts on the wire, in hex (spaces ignored).
type layoutCase struct {
	name  string
	write func(w *Writer) error
	want  string
}

func checkLayouts(t *testing.T, tests []layoutCase) {
	t.Helper()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := tc.write(NewWriter(&b)); err != nil {
				t.Fatal(err)
			}
			if want := mustHex(t, tc.want); !bytes.Equal(b.Bytes(), want) {
				t.Fatalf("got % x, want % x", b.Bytes(), want)
			}
		})
	}
}

// badCase: decoding in must fail with an error that is want and mentions msg.
type badCase struct {
	name string
	in   []byte
	lim  Limits
	want error
	msg  string
}

func checkBadInput(t *testing.T, tests []badCase) {
	t.Helper()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := NewReader(bytes.NewReader(tc.in), tc.lim)
			defer r.Close()
			_, err := r.Next()
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %q, want it to mention %q", err, tc.msg)
			}
		})
	}
}
