package replica_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/replica"
	"github.com/lnvault/lnvault/replica/dir"
)

// randomFile writes size bytes of incompressible data to a new file, in
// chunks, and returns its path and SHA-256.
func randomFile(t testing.TB, size int64) (string, [32]byte) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "db.sqlite3")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := rand.NewChaCha8([32]byte{1, 2, 3})
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), r, size); err != nil {
		t.Fatal(err)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return p, sum
}

func dirClient(t testing.TB) (*replica.Client, *dir.Store) {
	t.Helper()
	st, err := dir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return replica.NewClient(st), st
}

// writeSnapshotFromPath encodes the file at path as the snapshot of index 4,
// version 9, and stores it in generation gen.
func writeSnapshotFromPath(t testing.TB, c *replica.Client, gen, path string) replica.SnapshotInfo {
	t.Helper()
	db, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	f, size, h, err := replica.EncodeSnapshotFile(4, 9, 8, db, time.Unix(1700000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	info, err := c.WriteSnapshotFile(context.Background(), gen, f, size, h)
	if err != nil {
		t.Fatal(err)
	}
	if info.Size != size || info.Index != 4 || info.Version != 9 {
		t.Fatalf("WriteSnapshotFile = %+v, size %d", info, size)
	}
	return info
}

func hashReader(t testing.TB, r io.Reader) [32]byte {
	t.Helper()
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		t.Fatal(err)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

const gen = "0000000000000001"

// A snapshot of several MiB of incompressible data round-trips through the
// dir store byte for byte, and its object is the one the in-memory decoder
// reads; damage is a CorruptError naming the object.
func TestSnapshotFileRoundTrip(t *testing.T) {
	ctx := context.Background()
	path, sum := randomFile(t, 5<<20+12345)
	c, st := dirClient(t)
	info := writeSnapshotFromPath(t, c, gen, path)

	h, db, closeDB, err := c.OpenSnapshot(ctx, info)
	if err != nil {
		t.Fatal(err)
	}
	if hashReader(t, db) != sum || db.Size() != 5<<20+12345 {
		t.Fatal("snapshot read back differs")
	}
	if err := closeDB(); err != nil {
		t.Fatal(err)
	}
	if h.LastIndex != 4 || h.LastVersion != 9 || h.PrevVersion != 8 {
		t.Fatalf("header %+v", h)
	}
	hh, err := c.ReadSnapshotHeader(ctx, info)
	if err != nil || hh != h {
		t.Fatalf("ReadSnapshotHeader = %+v, %v; want %+v", hh, err, h)
	}
	// Same format as the in-memory encoder: each decodes the other's.
	obj, _, err := st.Get(ctx, info.Key)
	if err != nil {
		t.Fatal(err)
	}
	if _, raw, err := replica.DecodeSnapshot(obj); err != nil || sha256.Sum256(raw) != sum {
		t.Fatalf("DecodeSnapshot of a streamed object: %v", err)
	}
	small := bytes.Repeat([]byte("page"), 3000)
	old, oh := replica.EncodeSnapshot(5, 10, 9, small, time.Unix(1700000001, 0))
	of, err := os.CreateTemp(t.TempDir(), "old")
	if err != nil {
		t.Fatal(err)
	}
	defer of.Close()
	if _, err := of.Write(old); err != nil {
		t.Fatal(err)
	}
	oinfo, err := c.WriteSnapshotFile(ctx, gen, of, int64(len(old)), oh)
	if err != nil {
		t.Fatal(err)
	}
	_, odb, closeODB, err := c.OpenSnapshot(ctx, oinfo)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := io.ReadAll(odb); !bytes.Equal(got, small) {
		t.Fatal("an object of the in-memory encoder reads back differently")
	}
	closeODB()

	objPath := filepath.Join(st.Root, filepath.FromSlash(info.Key))
	wantCorrupt := func(what string) {
		t.Helper()
		_, _, closeDB, err := c.OpenSnapshot(ctx, info)
		var ce *lnvault.CorruptError
		if !errors.As(err, &ce) || !strings.HasSuffix(ce.Object, info.Key) || !strings.Contains(err.Error(), info.Key) {
			if closeDB != nil {
				closeDB()
			}
			t.Fatalf("%s: OpenSnapshot = %v, want a CorruptError naming %s", what, err, info.Key)
		}
	}
	for _, off := range []int64{0, 5, 20, 50, 66, 68, 1000, int64(len(obj)) / 2, int64(len(obj)) - 1} {
		d := bytes.Clone(obj)
		d[off] ^= 0x40
		if err := os.WriteFile(objPath, d, 0o600); err != nil {
			t.Fatal(err)
		}
		wantCorrupt("byte " + itoa(off) + " flipped")
	}
	for _, n := range []int64{0, 30, 67, 68, 69, int64(len(obj)) / 2, int64(len(obj)) - 1} {
		if err := os.WriteFile(objPath, obj[:n], 0o600); err != nil {
			t.Fatal(err)
		}
		wantCorrupt("truncated to " + itoa(n))
	}
	if err := os.WriteFile(objPath, append(bytes.Clone(obj), 0), 0o600); err != nil {
		t.Fatal(err)
	}
	wantCorrupt("padded")
	// A header that is not a snapshot's is refused by the header read too.
	d := bytes.Clone(obj)
	d[5] = 1
	if err := os.WriteFile(objPath, d, 0o600); err != nil {
		t.Fatal(err)
	}
	wantCorrupt("segment type")
	if _, err := c.ReadSnapshotHeader(ctx, info); err == nil || !strings.Contains(err.Error(), info.Key) {
		t.Fatalf("ReadSnapshotHeader of a segment header: %v", err)
	}
	if err := os.Remove(objPath); err != nil {
		t.Fatal(err)
	}
	wantCorrupt("missing")
	if _, err := c.ReadSnapshotHeader(ctx, info); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("ReadSnapshotHeader of a missing object: %v", err)
	}
}

func itoa(n int64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

// Writing and reading back a 64 MiB snapshot allocates a small, fixed amount
// of memory: the database is never held whole (the []byte code allocated
// well over twice its size to read it back).
func TestSnapshotMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 200 MiB of temp files")
	}
	const size = 64 << 20
	ctx := context.Background()
	path, sum := randomFile(t, size)
	c, _ := dirClient(t)

	var m0, m1, m2 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	info := writeSnapshotFromPath(t, c, gen, path)
	runtime.ReadMemStats(&m1)
	_, db, closeDB, err := c.OpenSnapshot(ctx, info)
	if err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&m2)
	defer closeDB()
	if hashReader(t, db) != sum {
		t.Fatal("snapshot read back differs")
	}
	write, read := m1.TotalAlloc-m0.TotalAlloc, m2.TotalAlloc-m1.TotalAlloc
	t.Logf("%d MiB snapshot: %.1f MiB allocated writing, %.1f MiB reading (heap in use %.1f MiB)",
		size>>20, float64(write)/(1<<20), float64(read)/(1<<20), float64(m2.HeapInuse)/(1<<20))
	const limit = 16 << 20
	if read > limit || write > 2*limit {
		t.Fatalf("allocated %d bytes writing and %d reading a %d-byte snapshot: memory grows with the database", write, read, size)
	}
}

func sectionOf(t testing.TB, path string) *io.SectionReader {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return io.NewSectionReader(f, 0, st.Size())
}

// streamed is what Stream delivers: versions, and the hash of each snapshot.
func streamed(t *testing.T, b lnvault.Backend) (vs []uint32, snaps map[uint32][32]byte) {
	t.Helper()
	snaps = map[uint32][32]byte{}
	err := b.Stream(context.Background(), 0, func(c *lnvault.Change) error {
		vs = append(vs, c.Version)
		if c.Kind == lnvault.KindSnapshot {
			snaps[c.Version] = hashReader(t, io.NewSectionReader(c.Snapshot, 0, c.Snapshot.Size()))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return vs, snaps
}

// A snapshot change appended to a replica (what `lnvault init
// --lightning-dir` sends) is stored as a snapshot object, not a segment,
// streams back, survives a reopen, and can be rewound.
func TestAppendSnapshotChange(t *testing.T) {
	ctx := context.Background()
	u := "dir://" + t.TempDir()
	b := openReplica(t, u, lnvault.OpenOptions{Create: true})
	path, sum := randomFile(t, 3<<20)
	if err := b.Append(ctx, lnvault.NewSnapshot(5, sectionOf(t, path))); err != nil {
		t.Fatal(err)
	}
	inv, err := b.Client().Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if g := inv.Latest(); len(g.Snapshots) != 1 || len(g.Segments) != 0 || g.Snapshots[0].Index != 0 || g.Snapshots[0].Version != 5 {
		t.Fatalf("after a snapshot change: %+v", g)
	}
	// Rewinding the first change empties the backup.
	if err := b.Rewind(ctx); err != nil {
		t.Fatal(err)
	}
	if md := b.Metadata(); md != (lnvault.Metadata{}) {
		t.Fatalf("after rewinding the only change: %+v", md)
	}
	if err := b.Append(ctx, lnvault.NewSnapshot(5, sectionOf(t, path))); err != nil {
		t.Fatal(err)
	}
	for _, v := range []uint32{6, 7} {
		if err := b.Append(ctx, lnvault.NewTransaction(v, []string{"UPDATE vars SET intval = intval + 1"})); err != nil {
			t.Fatal(err)
		}
	}
	path2, sum2 := randomFile(t, 1<<20)
	if err := b.Append(ctx, lnvault.NewSnapshot(8, sectionOf(t, path2))); err != nil {
		t.Fatal(err)
	}
	want := lnvault.Metadata{Version: 8, PrevVersion: 7, VersionCount: 4}
	if md := b.Metadata(); md != want {
		t.Fatalf("metadata %+v, want %+v", md, want)
	}
	ro := openReplica(t, u, lnvault.OpenOptions{ReadOnly: true})
	if md := ro.Metadata(); md != want {
		t.Fatalf("reopened: metadata %+v, want %+v", md, want)
	}
	vs, snaps := streamed(t, b)
	if fmt.Sprint(vs) != "[8]" || snaps[8] != sum2 {
		t.Fatalf("streamed %v", vs)
	}
	// Rewinding the snapshot change goes back to the transactions before it.
	if err := b.Rewind(ctx); err != nil {
		t.Fatal(err)
	}
	if md := b.Metadata(); md != (lnvault.Metadata{Version: 7, PrevVersion: 0, VersionCount: 3}) { // nothing more may be rewound
		t.Fatalf("after rewind: %+v", md)
	}
	vs, snaps = streamed(t, b)
	if fmt.Sprint(vs) != "[5 6 7]" || snaps[5] != sum {
		t.Fatalf("streamed %v after rewind", vs)
	}
	// A batch with a snapshot in the middle: segment, snapshot, segment.
	batch := []*lnvault.Change{
		lnvault.NewTransaction(8, []string{"UPDATE vars SET intval = 8"}),
		lnvault.NewSnapshot(9, sectionOf(t, path2)),
		lnvault.NewTransaction(10, []string{"UPDATE vars SET intval = 10"}),
	}
	if err := b.AppendBatch(ctx, batch); err != nil {
		t.Fatal(err)
	}
	if md := b.Metadata(); md != (lnvault.Metadata{Version: 10, PrevVersion: 9, VersionCount: 6}) {
		t.Fatalf("after a batch: %+v", md)
	}
	vs, snaps = streamed(t, b)
	if fmt.Sprint(vs) != "[9 10]" || snaps[9] != sum2 {
		t.Fatalf("streamed %v after a batch", vs)
	}
}

// newDirReplicator replicates a new local file backup to a new directory
// replica; both are closed when the test ends.
func newDirReplicator(t *testing.T, o replica.ReplicatorOptions) (*replica.Replicator, *replica.Backend) {
	t.Helper()
	local, err := lnvault.Open(context.Background(), "file://"+filepath.Join(t.TempDir(), "node.dbak"), lnvault.OpenOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	rb := openReplica(t, "dir://"+t.TempDir(), lnvault.OpenOptions{Create: true})
	r := replica.NewReplicator(local, rb, o)
	t.Cleanup(func() { r.Backend().Close() })
	return r, rb
}

// The replicator ships a snapshot change as a snapshot object, streamed from
// the local backend, not queued in memory.
func TestReplicatorShipsSnapshotChange(t *testing.T) {
	ctx := context.Background()
	r, rb := newDirReplicator(t, replica.ReplicatorOptions{FlushInterval: 50 * time.Millisecond})
	path, sum := randomFile(t, 2<<20)
	w := r.Backend()
	if err := w.Append(ctx, lnvault.NewTransaction(4, []string{"UPDATE vars SET intval = 4"})); err != nil {
		t.Fatal(err)
	}
	flush(t, r)
	if err := w.Append(ctx, lnvault.NewSnapshot(5, sectionOf(t, path))); err != nil {
		t.Fatal(err)
	}
	if err := w.Append(ctx, lnvault.NewTransaction(6, []string{"UPDATE vars SET intval = 6"})); err != nil {
		t.Fatal(err)
	}
	flush(t, r)
	inv, err := rb.Client().Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	g := inv.Latest()
	if len(inv.Generations) != 1 || len(g.Snapshots) != 1 || g.Snapshots[0].Version != 5 || g.Snapshots[0].Index != 1 {
		t.Fatalf("replica holds %+v", g)
	}
	for _, s := range g.Segments {
		if s.FirstVersion <= 5 && s.LastVersion >= 5 {
			t.Fatalf("the snapshot change is in segment %s", s.Key)
		}
	}
	vs, snaps := streamed(t, rb)
	if fmt.Sprint(vs) != "[5 6]" || snaps[5] != sum {
		t.Fatalf("replica streams %v", vs)
	}
}

// A replica whose head is a snapshot change the replicator shipped is found
// again in the local log by the next resync (here forced by a queue limit of
// one byte): the changes after it go into the same generation, and no new
// generation is rebuilt from the local log.
func TestResyncAfterShippedSnapshot(t *testing.T) {
	ctx := context.Background()
	r, rb := newDirReplicator(t, replica.ReplicatorOptions{FlushInterval: 20 * time.Millisecond, MaxPendingBytes: 1})
	path, sum := randomFile(t, 256<<10)
	w := r.Backend()
	steps := []*lnvault.Change{
		lnvault.NewTransaction(4, []string{"UPDATE vars SET intval = 4"}),
		lnvault.NewSnapshot(5, sectionOf(t, path)),
		lnvault.NewTransaction(6, []string{"UPDATE vars SET intval = 6"}),
		lnvault.NewTransaction(7, []string{"UPDATE vars SET intval = 7"}),
	}
	for _, c := range steps {
		if err := w.Append(ctx, c); err != nil {
			t.Fatal(err)
		}
		flush(t, r)
	}
	inv, err := rb.Client().Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.Generations) != 1 {
		t.Fatalf("%d generations, want 1: the resync did not recognise the snapshot it shipped", len(inv.Generations))
	}
	vs, snaps := streamed(t, rb)
	if fmt.Sprint(vs) != "[5 6 7]" || snaps[5] != sum {
		t.Fatalf("replica streams %v", vs)
	}
}
