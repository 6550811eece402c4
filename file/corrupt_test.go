package file

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/corpus"
)

// buildV2 writes a format-2 backup holding a compressed snapshot (from a
// compaction) followed by transactions, and returns its bytes and the offsets
// of its records.
func buildSample(t testing.TB, format, n int) ([]byte, []int64) {
	t.Helper()
	ctx := context.Background()
	reqs := corpus.MustLoad()[:n]
	url, path := tempURL(t, "sample.dbak")
	b := mustOpen(t, url, lnvault.OpenOptions{Create: true, Format: format, Logger: quietLog()})
	appendAll(t, b, reqs[:n*2/3])
	if _, err := b.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	appendAll(t, b, reqs[n*2/3:])
	var offs []int64
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	w := &walker{f: f, h: b.hdr, size: int64(b.hdr.endOffset), headersOnly: true,
		fn: func(r rec, _ *lnvault.Change) error { offs = append(offs, r.off); return nil }}
	if err := w.run(ctx); err != nil {
		t.Fatal(err)
	}
	f.Close()
	b.Close()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data, offs
}

// mustBeCorrupt opens data as a backup read-only and streams it: the result
// must be an error wrapping ErrCorrupt, never success.
func mustBeCorrupt(t *testing.T, path string, data []byte, what string) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := Open(context.Background(), "file://"+path, lnvault.OpenOptions{ReadOnly: true, Logger: quietLog()})
	if err == nil {
		var n int
		err = b.Stream(context.Background(), 0, func(*lnvault.Change) error { n++; return nil })
		b.Close()
		if err == nil {
			t.Fatalf("%s: streamed %d changes without error", what, n)
		}
	}
	var ce *lnvault.CorruptError
	if !errors.Is(err, lnvault.ErrCorrupt) || !errors.As(err, &ce) || ce.Offset < 0 {
		t.Fatalf("%s: error %v is not a CorruptError with an offset", what, err)
	}
}

func TestCorruptionV2(t *testing.T) {
	data, offs := buildSample(t, 2, 150)
	path := filepath.Join(t.TempDir(), "c.dbak")
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 2))
	t.Logf("seed %d, file %d bytes, %d records", seed, len(data), len(offs))

	// Truncations: every record boundary (and one byte either side), the
	// header slots, and random lengths.
	lengths := []int64{0, 1, 3, 4, 100, 508, 511, 512, 513, 1000, 1023, 1024, 1025, int64(len(data)) - 1}
	for _, o := range offs {
		lengths = append(lengths, o-1, o, o+1, o+v2RecHdr-1, o+v2RecHdr)
	}
	for i := 0; i < 250; i++ {
		lengths = append(lengths, rng.Int64N(int64(len(data))))
	}
	for _, l := range lengths {
		if l < 0 || l >= int64(len(data)) {
			continue
		}
		mustBeCorrupt(t, path, data[:l], fmt.Sprintf("truncated to %d", l))
	}
	// Single bit flips anywhere.
	flip := make([]byte, len(data))
	for i := 0; i < 600; i++ {
		copy(flip, data)
		off := rng.IntN(len(data))
		if i < 40 { // make sure both header slots get their share
			off = rng.IntN(2 * headerSize)
		}
		flip[off] ^= 1 << rng.IntN(8)
		mustBeCorrupt(t, path, flip, fmt.Sprintf("bit flip at %d", off))
	}
	// The untouched file is fine.
	os.WriteFile(path, data, 0o600)
	b := mustOpen(t, "file://"+path, lnvault.OpenOptions{ReadOnly: true})
	if all := streamAll(t, b, 0); len(all) != 1+150/3+1 {
		t.Fatalf("sample streams %d changes", len(all))
	}
	b.Close()
}

func TestCorruptionV1Truncation(t *testing.T) {
	data, offs := buildSample(t, 1, 120)
	path := filepath.Join(t.TempDir(), "c.dbak")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	lengths := []int64{0, 1, 4, 511, 512, 513, int64(len(data)) - 1}
	for _, o := range offs {
		lengths = append(lengths, o, o+1, o+v1RecHdr)
	}
	for i := 0; i < 200; i++ {
		lengths = append(lengths, rng.Int64N(int64(len(data))))
	}
	for _, l := range lengths {
		if l < int64(len(data)) {
			mustBeCorrupt(t, path, data[:l], fmt.Sprintf("v1 truncated to %d", l))
		}
	}
}

// An append interrupted between its record and its header (the header did
// not land whole): the writer carries on from the previous state, readers
// report it and name the version to restore to.
func TestInterruptedAppend(t *testing.T) {
	ctx := context.Background()
	reqs := corpus.MustLoad()[:12]
	url, path := tempURL(t, "b.dbak")
	b := mustOpen(t, url, lnvault.OpenOptions{Create: true})
	appendAll(t, b, reqs[:11])
	slot := 1 - b.slot // where the next header goes
	appendAll(t, b, reqs[11:])
	b.Close()
	data, _ := os.ReadFile(path)
	data[slot*headerSize+100] ^= 0x10 // the newest header is torn
	os.WriteFile(path, data, 0o600)

	rb := mustOpen(t, url, lnvault.OpenOptions{ReadOnly: true, Logger: quietLog()})
	if m := rb.Metadata(); m.Version != reqs[10].DataVersion {
		t.Fatalf("read-only metadata %+v", m)
	}
	all, err := tryStream(rb, 0)
	var ce *lnvault.CorruptError
	if !errors.As(err, &ce) || ce.Offset != int64(slot*headerSize) || !strings.Contains(err.Error(), fmt.Sprintf("--to-version %d", reqs[10].DataVersion)) ||
		!strings.Contains(err.Error(), "never acknowledged") {
		t.Fatalf("stream: %v", err)
	}
	checkSame(t, all, reqs[:11]) // delivered before the error, for --to-version
	rb.Close()

	// The writer goes on from version of change 10; the next append heals it.
	w := mustOpen(t, url, lnvault.OpenOptions{Logger: quietLog()})
	if m := w.Metadata(); m.Version != reqs[10].DataVersion {
		t.Fatalf("writer metadata %+v", m)
	}
	appendAll(t, w, reqs[11:])
	checkSame(t, streamAll(t, w, 0), reqs)
	w.Close()

	// A damaged older slot with nothing after the end: the writer opens,
	// readers complain until the next append rewrites that slot.
	data, _ = os.ReadFile(path)
	w = mustOpen(t, url, lnvault.OpenOptions{Logger: quietLog()})
	older := 1 - w.slot
	w.Close()
	data[older*headerSize+7] ^= 1
	os.WriteFile(path, data, 0o600)
	w = mustOpen(t, url, lnvault.OpenOptions{Logger: quietLog()})
	if _, err := tryStream(w, 0); !errors.Is(err, lnvault.ErrCorrupt) {
		t.Fatalf("stream with a damaged older slot: %v", err)
	}
	extra := lnvault.NewTransaction(reqs[11].DataVersion+1, []string{"SELECT 1"})
	if err := w.Append(ctx, extra); err != nil {
		t.Fatal(err)
	}
	if all := streamAll(t, w, 0); len(all) != 13 {
		t.Fatalf("after healing: %d changes", len(all))
	}
	w.Close()

	// Both slots damaged: nobody opens it.
	data, _ = os.ReadFile(path)
	data[5] ^= 1
	data[headerSize+5] ^= 1
	os.WriteFile(path, data, 0o600)
	for _, ro := range []bool{true, false} {
		if _, err := Open(ctx, url, lnvault.OpenOptions{ReadOnly: ro}); !errors.Is(err, lnvault.ErrCorrupt) || !strings.Contains(err.Error(), "no valid header") {
			t.Fatalf("both slots damaged (read-only %v): %v", ro, err)
		}
	}
}

// A damaged newest header with two records after the intact one's end cannot
// be an interrupted append: the writer refuses, whether the writer closed
// (file cut at the records' end) or crashed (preallocated zeros after them).
func TestUnexplainedHeaderDamage(t *testing.T) {
	for name, stop := range map[string]func(*Backend){"closed": func(b *Backend) { b.Close() }, "crashed": crash} {
		t.Run(name, func(t *testing.T) {
			reqs := corpus.MustLoad()[:12]
			url, path := tempURL(t, "b.dbak")
			b := mustOpen(t, url, lnvault.OpenOptions{Create: true})
			appendAll(t, b, reqs[:10])
			b.Idle() // room past the records, as a writer between appends keeps
			stop(b)
			before, _ := os.ReadFile(path)
			b = mustOpen(t, url, lnvault.OpenOptions{})
			appendAll(t, b, reqs[10:])
			b.Idle()
			stop(b)
			data, _ := os.ReadFile(path)
			if name == "crashed" && len(data) <= int(b.hdr.endOffset) {
				t.Fatalf("no preallocated room: file %d bytes, records end at %d", len(data), b.hdr.endOffset)
			}
			// Put back the header of 9 changes in the older slot, and damage
			// the newest.
			cur := b.slot
			copy(data[(1-cur)*headerSize:], before[(1-cur)*headerSize:(2-cur)*headerSize])
			if _, st, _ := decodeV2(data[(1-cur)*headerSize : (2-cur)*headerSize]); st != slotValid {
				t.Fatalf("slot %d of the earlier backup is not valid", 1-cur)
			}
			data[cur*headerSize+9] ^= 4
			os.WriteFile(path, data, 0o600)
			_, err := Open(context.Background(), url, lnvault.OpenOptions{Logger: quietLog()})
			if !errors.Is(err, lnvault.ErrCorrupt) || !strings.Contains(err.Error(), "not an interrupted append") {
				t.Fatalf("writer open: %v", err)
			}
		})
	}
}
