package replica

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
)

func sampleChanges() []*lnvault.Change {
	db := []byte("SQLite format 3\x00 pretend database")
	return []*lnvault.Change{
		lnvault.NewSnapshot(7, io.NewSectionReader(bytes.NewReader(db), 0, int64(len(db)))),
		lnvault.NewTransaction(7, []string{"PRAGMA foreign_keys = OFF;"}),
		lnvault.NewTransaction(8, []string{"INSERT INTO t VALUES (x'00ff')", "", "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version'"}),
		lnvault.NewTransaction(9, nil),
	}
}

func TestSegmentRoundTrip(t *testing.T) {
	cs := sampleChanges()
	created := time.Unix(1700000000, 123456789)
	data, h, err := EncodeSegment(41, 6, cs, created)
	if err != nil {
		t.Fatal(err)
	}
	if h.FirstIndex != 41 || h.LastIndex != 44 || h.FirstVersion != 7 || h.LastVersion != 9 || h.PrevVersion != 8 || h.Count != 4 {
		t.Fatalf("header %+v", h)
	}
	seg, err := DecodeSegment(data)
	if err != nil {
		t.Fatal(err)
	}
	if !seg.Created.Equal(created) || len(seg.Changes) != len(cs) {
		t.Fatalf("decoded %+v", seg.Header)
	}
	for i, c := range seg.Changes {
		want := cs[i]
		if c.Version != want.Version || c.Kind != want.Kind || strings.Join(c.Statements, "\x00") != strings.Join(want.Statements, "\x00") {
			t.Fatalf("change %d: %+v, want %+v", i, c, want)
		}
		if want.Kind == lnvault.KindSnapshot {
			got, _ := io.ReadAll(c.Snapshot)
			exp, _ := io.ReadAll(io.NewSectionReader(want.Snapshot, 0, want.Snapshot.Size()))
			if !bytes.Equal(got, exp) {
				t.Fatalf("snapshot bytes differ")
			}
		}
	}
}

// Every single-bit flip and every truncation of an object is detected.
func TestSegmentDamageDetected(t *testing.T) {
	data, _, err := EncodeSegment(0, 0, sampleChanges(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(data)*8; i++ {
		d := bytes.Clone(data)
		d[i/8] ^= 1 << (i % 8)
		if _, err := DecodeSegment(d); err == nil {
			t.Fatalf("bit flip at bit %d not detected", i)
		}
	}
	for n := 0; n < len(data); n++ {
		if _, err := DecodeSegment(data[:n]); err == nil {
			t.Fatalf("truncation to %d bytes not detected", n)
		}
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	db := bytes.Repeat([]byte("page"), 5000)
	data, _ := EncodeSnapshot(99, 120, 119, db, time.Now())
	h, got, err := DecodeSnapshot(data)
	if err != nil || !bytes.Equal(got, db) || h.LastIndex != 99 || h.LastVersion != 120 || h.PrevVersion != 119 {
		t.Fatalf("DecodeSnapshot = %+v, %d bytes, %v", h, len(got), err)
	}
	if _, err := DecodeSegment(data); err == nil {
		t.Fatal("a snapshot decoded as a segment")
	}
	seg, _, _ := EncodeSegment(0, 0, sampleChanges(), time.Now())
	if _, _, err := DecodeSnapshot(seg); err == nil {
		t.Fatal("a segment decoded as a snapshot")
	}
}

func TestEncodeRejectsBadChanges(t *testing.T) {
	for name, cs := range map[string][]*lnvault.Change{
		"empty":             nil,
		"snapshot w/o data": {{Version: 1, Kind: lnvault.KindSnapshot}},
		"unknown kind":      {{Version: 1, Kind: 9}},
	} {
		if _, _, err := EncodeSegment(0, 0, cs, time.Now()); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// FuzzDecodeSegment: no input may panic or be accepted unless it
// re-encodes to a segment with the same changes.
func FuzzDecodeSegment(f *testing.F) {
	data, _, _ := EncodeSegment(3, 2, sampleChanges(), time.Unix(1, 0))
	f.Add(data)
	one, _, _ := EncodeSegment(0, 0, []*lnvault.Change{lnvault.NewTransaction(1, []string{"CREATE TABLE t(x)"})}, time.Unix(2, 0))
	f.Add(one)
	snap, _ := EncodeSnapshot(5, 5, 4, []byte("db"), time.Unix(3, 0))
	f.Add(snap)
	f.Add([]byte("LNVO"))
	f.Fuzz(func(t *testing.T, b []byte) {
		seg, err := DecodeSegment(b)
		if err != nil {
			var ce *lnvault.CorruptError
			if errors.As(err, &ce) {
				t.Fatalf("decoder returned a CorruptError itself: %v", err)
			}
			_, _, _ = DecodeSnapshot(b)
			return
		}
		if uint64(len(seg.Changes)) != seg.LastIndex-seg.FirstIndex+1 {
			t.Fatalf("accepted segment with %d changes for indexes %d-%d", len(seg.Changes), seg.FirstIndex, seg.LastIndex)
		}
		re, _, err := EncodeSegment(seg.FirstIndex, seg.PrevVersion, seg.Changes, seg.Created)
		if err != nil {
			t.Fatalf("re-encoding an accepted segment: %v", err)
		}
		seg2, err := DecodeSegment(re)
		if err != nil || len(seg2.Changes) != len(seg.Changes) {
			t.Fatalf("re-encoded segment does not decode: %v", err)
		}
	})
}

// decodeStream runs the streaming snapshot decoder on b, delivered in two
// writes, and returns the database.
func decodeStream(b []byte, split int) (Header, []byte, error) {
	h, raw, _, err := decodeSnapshotStream(func(w io.Writer) error {
		if _, err := w.Write(b[:split]); err != nil {
			return err
		}
		_, err := w.Write(b[split:])
		return err
	})
	if err != nil {
		return h, nil, err
	}
	defer raw.Close()
	db, err := io.ReadAll(io.NewSectionReader(raw, 0, 1<<40))
	return h, db, err
}

// FuzzDecodeHeader: DecodeHeader never panics and agrees with the full
// decoder, and the streaming snapshot decoder accepts exactly what
// DecodeSnapshot accepts, with the same result or the same message.
func FuzzDecodeHeader(f *testing.F) {
	snap, _ := EncodeSnapshot(5, 5, 4, []byte("db"), time.Unix(3, 0))
	f.Add(snap)
	f.Add(snap[:headerSize])
	seg, _, _ := EncodeSegment(3, 2, sampleChanges(), time.Unix(1, 0))
	f.Add(seg)
	f.Add([]byte("LNVO"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := DecodeHeader(b)
		fh, _, ferr := decodeBody(b)
		if ferr == nil && (err != nil || h != fh) {
			t.Fatalf("DecodeHeader = %+v, %v; the full decoder accepted %+v", h, err, fh)
		}
		sh, sdb, serr := decodeStream(b, len(b)/3)
		mh, mdb, merr := DecodeSnapshot(b)
		var oe *objectError
		switch {
		case (serr == nil) != (merr == nil):
			t.Fatalf("streaming decoder: %v; in memory: %v", serr, merr)
		case serr != nil && (!errors.As(serr, &oe) || serr.Error() != merr.Error()):
			t.Fatalf("streaming decoder: %v; in memory: %v", serr, merr)
		case serr == nil && (sh != mh || !bytes.Equal(sdb, mdb)):
			t.Fatalf("streaming decoder read %+v, %d bytes; in memory %+v, %d bytes", sh, len(sdb), mh, len(mdb))
		}
	})
}
