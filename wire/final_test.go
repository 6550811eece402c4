package wire

import (
	"bytes"
	"compress/flate"
	"compress/zlib"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/corpus"
)

// stdZlib is what the Writer sent before markFinalBlock: compress/zlib as is.
func stdZlib(tb testing.TB, level int, raw []byte) []byte {
	zw := stdWriters[level]
	if zw == nil {
		var err error
		if zw, err = zlib.NewWriterLevel(nil, level); err != nil {
			tb.Fatal(err)
		}
		stdWriters[level] = zw
	}
	var z bytes.Buffer
	zw.Reset(&z)
	zw.Write(raw)
	zw.Close()
	return z.Bytes()
}

var stdWriters = map[int]*zlib.Writer{}

// inflateExact decodes one zlib stream that must fill b exactly.
func inflateExact(b []byte) ([]byte, error) {
	br := bytes.NewReader(b)
	zr, err := zlib.NewReader(br)
	if err != nil {
		return nil, err
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		return nil, err
	}
	if br.Len() != 0 {
		return nil, fmt.Errorf("%d bytes after the stream", br.Len())
	}
	return out, nil
}

func payloadOf(tb testing.TB, p []byte) []byte {
	tb.Helper()
	if p[0] != byte(TypeChange) || int(binary.BigEndian.Uint32(p[1:5])) != len(p)-HeaderLen {
		tb.Fatalf("bad packet header % x (len %d)", p[:5], len(p))
	}
	return p[9:]
}

func testInputs() [][]byte {
	rng := rand.New(rand.NewPCG(1, 2))
	var in [][]byte
	for n := 1; n < 300; n++ { // every bit alignment of the block's end
		b := make([]byte, n)
		for i := range b {
			b[i] = byte('a' + rng.IntN(26))
		}
		in = append(in, b)
	}
	for _, n := range []int{1, 2, 3, 100, 1000, 5000, singleBlockMax - 1, singleBlockMax, singleBlockMax + 1, 70000} {
		rnd := make([]byte, n) // incompressible: a stored block
		for i := range rnd {
			rnd[i] = byte(rng.Uint32())
			if rnd[i] == 0 {
				rnd[i] = 1
			}
		}
		in = append(in, rnd, bytes.Repeat([]byte("UPDATE vars SET intval = intval + 1 "), n/36+1)[:n])
	}
	return in
}

// Every payload the Writer compresses decodes exactly, at every level; short
// ones lose the 4-5 bytes of the empty final block, longer ones are left as
// compress/zlib writes them. Every shape markFinalBlock handles is exercised.
func TestMarkFinalBlock(t *testing.T) {
	var inputs [][]byte
	cs, err := corpus.Changes()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		raw, _ := lnvault.JoinStatements(nil, c.Statements)
		inputs = append(inputs, raw)
	}
	inputs = append(inputs, testInputs()...)
	shapes := map[string]int{}
	for _, level := range []int{zlib.DefaultCompression, zlib.NoCompression, zlib.BestSpeed, 2, 5, zlib.BestCompression, zlib.HuffmanOnly} {
		w, err := NewWriterLevel(nil, level)
		if err != nil {
			t.Fatal(err)
		}
		var pkt bytes.Buffer
		for i, raw := range inputs {
			if i < len(cs) && (level == zlib.DefaultCompression && i%2 != 0 || level != zlib.DefaultCompression && i%11 != 0) {
				continue // half the corpus at the default level, a sample at the others
			}
			pkt.Reset()
			w.Reset(&pkt)
			if err := w.WriteChange(lnvault.NewTransaction(1, lnvault.SplitStatements(raw))); err != nil {
				t.Fatal(err)
			}
			got := payloadOf(t, pkt.Bytes())
			out, err := inflateExact(got)
			if err != nil || !bytes.Equal(out, raw) {
				t.Fatalf("level %d, input %d (%d bytes): %v", level, i, len(raw), err)
			}
			std := stdZlib(t, level, raw)
			diff := len(std) - len(got)
			marked := level == zlib.DefaultCompression || level >= 2 && level <= 9
			switch {
			case marked && len(raw) > 0 && len(raw) < singleBlockMax:
				if diff != 4 && diff != 5 {
					t.Fatalf("level %d, %d bytes: %d bytes shorter than compress/zlib, want 4 or 5", level, len(raw), diff)
				}
				if !bytes.Equal(got[:2], std[:2]) || !bytes.Equal(got[len(got)-4:], std[len(std)-4:]) {
					t.Fatal("zlib header or adler32 changed")
				}
				shapes[fmt.Sprintf("cut %d, btype %d", diff, got[2]>>1&3)]++
			case diff != 0:
				t.Fatalf("level %d, %d bytes: stream changed (%d) where it must not", level, len(raw), diff)
			}
		}
	}
	for _, want := range []string{"cut 4, btype 1", "cut 5, btype 1", "cut 5, btype 0", "cut 4, btype 2"} {
		if shapes[want] == 0 {
			t.Errorf("shape %q never exercised (%v)", want, shapes)
		}
	}
	t.Logf("shapes: %v", shapes)
}

// Anything markFinalBlock does not recognise is left alone.
func TestMarkFinalBlockLeavesOthers(t *testing.T) {
	std := stdZlib(t, 6, []byte(w7))
	for name, in := range map[string][]byte{
		"empty":         nil,
		"short":         {0x78, 0x9c, 0x03, 0x00},
		"python":        mustHex(t, "789cf3f40b760d0a51f0f40bf1572851d028d3540873f409750d56d0502f3757d7040087030808"),
		"already final": append([]byte{0x78, 0x9c, std[2] | 1}, std[3:]...),
		"not zlib":      append([]byte{0x1f}, std[1:]...),
	} {
		b := append([]byte("pfx"), in...)
		if got := markFinalBlock(append([]byte{}, b...), 3); !bytes.Equal(got, b) {
			t.Errorf("%s: changed % x into % x", name, b, got)
		}
	}
}

// Python's zlib, the reference's decoder, takes every stream whole: it
// reaches the end of the stream and finds nothing after it.
func TestPythonInflatesOurStreams(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Fatal("python3 is needed to check interoperability")
	}
	var pkts, raws bytes.Buffer
	w := NewWriter(&pkts)
	n := 0
	cs, _ := corpus.Changes()
	for i, c := range cs {
		if i%3 != 0 {
			continue
		}
		raw, _ := lnvault.JoinStatements(nil, c.Statements)
		w.WriteChange(lnvault.NewTransaction(c.Version, c.Statements))
		raws.Write(binary.BigEndian.AppendUint32(nil, uint32(len(raw))))
		raws.Write(raw)
		n++
	}
	for _, raw := range testInputs() {
		w.WriteChange(lnvault.NewTransaction(1, lnvault.SplitStatements(raw)))
		raws.Write(binary.BigEndian.AppendUint32(nil, uint32(len(raw))))
		raws.Write(raw)
		n++
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "pkts"), pkts.Bytes(), 0o600)
	os.WriteFile(filepath.Join(dir, "raws"), raws.Bytes(), 0o600)
	script := `
import struct, sys, zlib
p = open(sys.argv[1], "rb").read(); r = open(sys.argv[2], "rb").read()
i = j = n = 0
while i < len(p):
    typ, ln = struct.unpack("!BI", p[i:i+5]); payload = p[i+5:i+5+ln]; i += 5 + ln
    (rl,) = struct.unpack("!I", r[j:j+4]); want = r[j+4:j+4+rl]; j += 4 + rl
    d = zlib.decompressobj(); got = d.decompress(payload[4:])
    assert d.eof and not d.unused_data and got == want, (n, len(want))
    assert zlib.decompress(payload[4:]) == want
    n += 1
print(n)
`
	out, err := exec.Command("python3", "-c", script, filepath.Join(dir, "pkts"), filepath.Join(dir, "raws")).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != fmt.Sprint(n) {
		t.Fatalf("python: %v\n%s", err, out)
	}
}

// FuzzFinalBlock: whatever the payload, the Writer's stream decodes to it
// exactly (compress/flate checks the block structure markFinalBlock edits).
func FuzzFinalBlock(f *testing.F) {
	f.Add([]byte(w7))
	f.Add([]byte{})
	f.Add([]byte{0})
	f.Add(bytes.Repeat([]byte{0xff, 0x10, 0x80}, 700))
	w := NewWriter(nil)
	var pkt bytes.Buffer
	f.Fuzz(func(t *testing.T, raw []byte) {
		pkt.Reset()
		w.Reset(&pkt)
		if err := w.WriteChange(lnvault.NewTransaction(1, lnvault.SplitStatements(raw))); err != nil {
			t.Fatal(err)
		}
		out, err := inflateExact(payloadOf(t, pkt.Bytes()))
		if err != nil || !bytes.Equal(out, raw) {
			t.Fatalf("%d bytes: %v", len(raw), err)
		}
		// The same through a raw flate reader from the first block on.
		fr := flate.NewReader(bytes.NewReader(pkt.Bytes()[11 : pkt.Len()-4]))
		if out, err := io.ReadAll(fr); err != nil || !bytes.Equal(out, raw) {
			t.Fatalf("raw deflate: %v", err)
		}
	})
}
