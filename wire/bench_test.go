package wire

import (
	"compress/zlib"
	"encoding/binary"
	"io"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/corpus"
)

// refWriter is the CHANGE encoder as it was before markFinalBlock:
// compress/zlib's stream as is, same buffers, same single write.
type refWriter struct {
	w   io.Writer
	buf []byte
	raw []byte
	zw  *zlib.Writer
}

func (r *refWriter) writeTransaction(c *lnvault.Change) error {
	r.raw, _ = lnvault.JoinStatements(r.raw[:0], c.Statements)
	r.buf = append(r.buf[:0], 0, 0, 0, 0, 0, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(r.buf[5:9], c.Version)
	r.zw.Reset(appendBuf{&r.buf})
	r.zw.Write(r.raw)
	if err := r.zw.Close(); err != nil {
		return err
	}
	putHeader(r.buf, TypeChange, len(r.buf)-HeaderLen)
	_, err := r.w.Write(r.buf)
	return err
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// BenchmarkWriteCorpus encodes every corpus transaction with the Writer and
// with the reference encoder (plain compress/zlib), interleaved in the same
// run, and reports time and bytes as ratios: time_ratio < 1 and
// bytes_ratio < 1 mean the Writer is faster and smaller.
func BenchmarkWriteCorpus(b *testing.B) {
	cs, err := corpus.Changes()
	if err != nil {
		b.Fatal(err)
	}
	var ours, ref countWriter
	w := NewWriter(&ours)
	zw, _ := zlib.NewWriterLevel(nil, zlib.DefaultCompression)
	rw := &refWriter{w: &ref, zw: zw, buf: make([]byte, 0, 4096)}
	var tOurs, tRef time.Duration
	b.ReportAllocs()
	for b.Loop() {
		ours.n, ref.n = 0, 0
		t0 := time.Now()
		for _, c := range cs {
			if err := w.WriteChange(c); err != nil {
				b.Fatal(err)
			}
		}
		t1 := time.Now()
		for _, c := range cs {
			if err := rw.writeTransaction(c); err != nil {
				b.Fatal(err)
			}
		}
		tOurs += t1.Sub(t0)
		tRef += time.Since(t1)
	}
	b.ReportMetric(float64(tOurs)/float64(tRef), "time_ratio")
	b.ReportMetric(float64(ours.n)/float64(ref.n), "bytes_ratio")
	b.ReportMetric(float64(ours.n)/float64(len(cs)), "bytes/change")
	b.ReportMetric(float64(ref.n)/float64(len(cs)), "ref_bytes/change")
}
