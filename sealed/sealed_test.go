package sealed

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/ascii85"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/dbapply"
	"github.com/lnvault/lnvault/file"
	"github.com/lnvault/lnvault/internal/backendtest"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/dumphash"
	"github.com/lnvault/lnvault/seal"
)

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

type keys struct {
	id  *age.X25519Identity
	cfg Config
}

func newKeys(t testing.TB) keys {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	bid, err := seal.NewBackupID()
	if err != nil {
		t.Fatal(err)
	}
	return keys{id: id, cfg: Config{Backup: bid, Recipients: []string{id.Recipient().String()}, Pad: os.Getenv("NOPAD") == ""}}
}

func (k keys) session(t testing.TB) *Session {
	t.Helper()
	s, err := NewSession(k.cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// The sealed wrapper over a file keeps the Backend contract; compaction is
// the node's and refused here.
func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backendtest.Subject {
		k := newKeys(t)
		url := "file://" + filepath.Join(t.TempDir(), "backup.dbak")
		return backendtest.Subject{
			Empties:    true,
			Deviations: backendtest.Deviations{CompactRefused: true},
			Open: func(ctx context.Context, o lnvault.OpenOptions) (lnvault.Backend, error) {
				o.Logger = quiet()
				inner, err := file.Open(ctx, url, o)
				if err != nil {
					return nil, err
				}
				if o.ReadOnly {
					return NewReader(inner, []age.Identity{k.id}, &k.cfg.Backup), nil
				}
				return New(inner, k.session(t), k.id), nil
			},
		}
	})
}

// stored is what the host holds: the changes as the inner backend streams
// them (snapshots copied out of the callback).
type stored []*lnvault.Change

func storedOf(t *testing.T, b lnvault.Backend) stored {
	t.Helper()
	var out stored
	err := b.Stream(context.Background(), 0, func(c *lnvault.Change) error {
		if c.Kind == lnvault.KindSnapshot {
			data, err := io.ReadAll(io.NewSectionReader(c.Snapshot, 0, c.Snapshot.Size()))
			if err != nil {
				return err
			}
			out = append(out, lnvault.NewSnapshot(c.Version, io.NewSectionReader(bytes.NewReader(data), 0, int64(len(data)))))
			return nil
		}
		out = append(out, lnvault.NewTransaction(c.Version, slices.Clone(c.Statements)))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// list serves stored changes (Stream only): the host's tampering.
type list struct{ stored }

func (l list) Metadata() lnvault.Metadata                     { return lnvault.Metadata{} }
func (l list) Append(context.Context, *lnvault.Change) error  { return errors.New("read only") }
func (l list) Rewind(context.Context) error                   { return errors.New("read only") }
func (l list) Status(context.Context) (lnvault.Status, error) { return lnvault.Status{}, nil }
func (l list) Close() error                                   { return nil }
func (l list) Compact(context.Context) (lnvault.CompactStats, error) {
	return lnvault.CompactStats{}, errors.New("read only")
}
func (l list) Stream(ctx context.Context, from uint32, fn func(*lnvault.Change) error) error {
	for _, c := range l.stored {
		if c.Version < from {
			continue
		}
		if err := fn(c); err != nil {
			if errors.Is(err, lnvault.ErrStop) {
				return nil
			}
			return err
		}
	}
	return nil
}

// written writes n corpus changes in two generations (a restart between)
// to a file backup and returns what it holds.
func written(t *testing.T, k keys, n int) (stored, []*lnvault.Change) {
	t.Helper()
	ctx := context.Background()
	cs, err := corpus.Changes()
	if err != nil {
		t.Fatal(err)
	}
	cs = cs[:n]
	url := "file://" + filepath.Join(t.TempDir(), "b.dbak")
	for i, part := range [][]*lnvault.Change{cs[:n/2], cs[n/2:]} {
		inner, err := file.Open(ctx, url, lnvault.OpenOptions{Create: i == 0, Logger: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		b := New(inner, k.session(t))
		for _, c := range part {
			if err := b.Append(ctx, c); err != nil {
				t.Fatal(err)
			}
		}
		b.Close()
	}
	inner, err := file.Open(ctx, url, lnvault.OpenOptions{ReadOnly: true, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	return storedOf(t, inner), cs
}

func read(k keys, s stored) ([]*lnvault.Change, error) {
	var out []*lnvault.Change
	r := NewReader(list{s}, []age.Identity{k.id}, &k.cfg.Backup)
	err := r.Stream(context.Background(), 0, func(c *lnvault.Change) error {
		out = append(out, lnvault.NewTransaction(c.Version, slices.Clone(c.Statements)))
		return nil
	})
	return out, err
}

func TestRoundTripAndHostSeesNoPlaintext(t *testing.T) {
	k := newKeys(t)
	s, cs := written(t, k, 400)
	got, err := read(k, s)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(cs) {
		t.Fatalf("read %d changes, wrote %d", len(got), len(cs))
	}
	for i := range cs {
		if got[i].Version != cs[i].Version || !slices.Equal(got[i].Statements, cs[i].Statements) {
			t.Fatalf("change %d differs after the round trip", i)
		}
	}
	// Nothing of a statement is left in what the host holds.
	var host bytes.Buffer
	for _, c := range s {
		host.WriteString(strings.Join(c.Statements, "\x00"))
	}
	for _, c := range cs[:50] {
		for _, st := range c.Statements {
			if len(st) > 24 && bytes.Contains(host.Bytes(), []byte(st[:24])) {
				t.Fatalf("the host holds plaintext: %.40q", st)
			}
		}
	}
}

func decodeTx(t *testing.T, c *lnvault.Change) []byte {
	t.Helper()
	raw, err := decode85(nil, strings.TrimPrefix(c.Statements[0], lnvault.SealedPrefix))
	if err != nil {
		t.Fatal(err)
	}
	return slices.Clone(raw)
}

func encodeTx(v uint32, raw []byte) *lnvault.Change {
	enc := make([]byte, ascii85.MaxEncodedLen(len(raw)))
	enc = enc[:ascii85.Encode(enc, raw)]
	return lnvault.NewTransaction(v, []string{lnvault.SealedPrefix + string(enc)})
}

// Every way a host can rearrange what it holds is named by the reader.
func TestTamperingIsNamed(t *testing.T) {
	k := newKeys(t)
	s, _ := written(t, k, 60)
	other := newKeys(t)
	os, _ := written(t, other, 60)
	mid := len(s) / 4 // inside the first generation
	for _, tc := range []struct {
		name string
		edit func(stored) stored
		want string
	}{
		{"flipped bit", func(s stored) stored {
			raw := decodeTx(t, s[mid])
			raw[len(raw)-5] ^= 1
			s[mid] = encodeTx(s[mid].Version, raw)
			return s
		}, "altered"},
		{"dropped middle change", func(s stored) stored { return slices.Delete(s, mid, mid+1) }, "missing"},
		{"reordered pair", func(s stored) stored { s[mid], s[mid+1] = s[mid+1], s[mid]; return s }, "missing"},
		{"replayed change", func(s stored) stored { return slices.Insert(s, mid+1, s[mid]) }, "comes again"},
		{"edited version", func(s stored) stored {
			s[mid] = lnvault.NewTransaction(s[mid].Version+1, s[mid].Statements)
			return s
		}, "altered"},
		{"plaintext inserted", func(s stored) stored {
			return slices.Insert(s, mid, lnvault.NewTransaction(s[mid].Version, []string{"UPDATE vars SET intval=1"}))
		}, "plaintext"},
		{"first change of a generation dropped", func(s stored) stored { return slices.Delete(s, 0, 1) }, "first change is missing"},
		{"another backup's change", func(s stored) stored { s[mid] = os[0]; return s }, "two backups were spliced"},
		{"another backup's generation", func(s stored) stored { return append(s[:len(s)/2], os[len(os)/2:]...) }, "two backups were spliced"},
		{"a generation comes back", func(s stored) stored { return append(s, s[mid]) }, "comes back"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := read(k, tc.edit(slices.Clone(s)))
			if !errors.Is(err, lnvault.ErrCorrupt) {
				t.Fatalf("read: %v, want a corrupt backup", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("read: %v, want it to say %q", err, tc.want)
			}
		})
	}
}

// Without the identity, or with another one, the error names the
// recipients the backup was made for.
func TestIdentityNeeded(t *testing.T) {
	k := newKeys(t)
	s, _ := written(t, k, 20)
	for _, ids := range [][]age.Identity{nil, {newKeys(t).id}} {
		err := NewReader(list{s}, ids, nil).Stream(context.Background(), 0, func(*lnvault.Change) error { return nil })
		if !errors.Is(err, lnvault.ErrSealed) || !strings.Contains(err.Error(), k.cfg.Recipients[0]) {
			t.Fatalf("with %d identities: %v, want ErrSealed naming %s", len(ids), err, k.cfg.Recipients[0])
		}
	}
	// A plaintext backup streams as it is without identity, and is refused
	// with one (a host cannot strip the encryption).
	plain := stored{lnvault.NewTransaction(1, []string{"CREATE TABLE t (a)"})}
	if err := NewReader(list{plain}, nil, nil).Stream(context.Background(), 0, func(*lnvault.Change) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := read(k, plain); !errors.Is(err, lnvault.ErrCorrupt) || !strings.Contains(err.Error(), "plaintext") {
		t.Fatalf("a plaintext backup read with an identity: %v", err)
	}
}

// Snapshots are sealed in chunks, read at any offset, and refused cut
// short, extended or with a chunk altered.
func TestSnapshotChunks(t *testing.T) {
	ctx := context.Background()
	k := newKeys(t)
	for _, size := range []int{0, 1, chunkPlain - snapPrefix, chunkPlain - snapPrefix + 1, 3*chunkPlain + 17} {
		data := make([]byte, size)
		rand.Read(data)
		url := "file://" + filepath.Join(t.TempDir(), "b.dbak")
		inner, err := file.Open(ctx, url, lnvault.OpenOptions{Create: true, Logger: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		b := New(inner, k.session(t), k.id)
		if err := b.Append(ctx, lnvault.NewSnapshot(5, io.NewSectionReader(bytes.NewReader(data), 0, int64(size)))); err != nil {
			t.Fatal(err)
		}
		if err := b.Append(ctx, lnvault.NewTransaction(6, []string{"INSERT INTO t VALUES (1)"})); err != nil {
			t.Fatal(err)
		}
		var got []byte
		err = b.Stream(ctx, 0, func(c *lnvault.Change) error {
			if c.Kind != lnvault.KindSnapshot {
				return nil
			}
			if c.Snapshot.Size() != int64(size) {
				t.Fatalf("size %d: snapshot streams as %d bytes", size, c.Snapshot.Size())
			}
			// Backwards, in odd pieces: any offset reads.
			got = make([]byte, size)
			for off := size; off > 0; off -= min(off, 7001) {
				n := min(off, 7001)
				if _, err := c.Snapshot.ReadAt(got[off-n:off], int64(off-n)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("size %d: read back %d bytes, equal %v, err %v", size, len(got), bytes.Equal(got, data), err)
		}
		host := storedOf(t, b.Inner())
		b.Close()
		snap, _ := io.ReadAll(host[0].Snapshot)
		if size >= 64 && bytes.Contains(snap, data[:64]) {
			t.Fatalf("size %d: the host holds the snapshot's plaintext", size)
		}
		for name, bad := range map[string][]byte{
			"cut short": snap[:len(snap)-1],
			"extended":  append(slices.Clone(snap), 0),
			"altered":   flip(snap, len(snap)-20),
		} {
			s := stored{lnvault.NewSnapshot(5, io.NewSectionReader(bytes.NewReader(bad), 0, int64(len(bad)))), host[1]}
			err := NewReader(list{s}, []age.Identity{k.id}, nil).Stream(ctx, 0, func(c *lnvault.Change) error {
				if c.Kind == lnvault.KindSnapshot {
					_, err := io.Copy(io.Discard, c.Snapshot)
					return err
				}
				return nil
			})
			if err == nil {
				t.Fatalf("size %d: a snapshot %s was read", size, name)
			}
		}
	}
}

func flip(b []byte, i int) []byte {
	b = slices.Clone(b)
	b[i] ^= 0x10
	return b
}

// What the reader is handed by a hostile host never panics and never
// allocates beyond what it holds.
func FuzzOpen(f *testing.F) {
	k := newKeys(f)
	s := k.session(f)
	var raw []byte
	raw = appendHeader(raw, envelope{gen: s.Generation(), key: s.ks, flags: flagPad})
	raw, _ = s.key.Seal(raw, seal.Position{Version: 3, Kind: 1}, []byte("INSERT INTO t VALUES (1)"), true)
	f.Add(raw)
	f.Add(raw[:30])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		s := stored{encodeTx(3, data)}
		_, err := read(k, s)
		if err != nil && !errors.Is(err, lnvault.ErrCorrupt) && !errors.Is(err, lnvault.ErrSealed) {
			t.Fatalf("unexpected error kind: %v", err)
		}
		if _, _, err := parseHeader(data); err == nil && len(data) < headerLen {
			t.Fatal("a short header parsed")
		}
	})
}

// Several destinations of one backup: the newest head is picked, a
// destination behind (an older head replayed) or forked is named.
func TestCompareHeads(t *testing.T) {
	ctx := context.Background()
	k := newKeys(t)
	s := k.session(t)
	cs, err := corpus.Changes()
	if err != nil {
		t.Fatal(err)
	}
	dest := func(extra ...*lnvault.Change) *Backend {
		url := "file://" + filepath.Join(t.TempDir(), "b.dbak")
		inner, err := file.Open(ctx, url, lnvault.OpenOptions{Create: true, Logger: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		b := New(inner, s, k.id)
		t.Cleanup(func() { b.Close() })
		for _, c := range append(slices.Clone(cs[:30]), extra...) {
			if err := b.Append(ctx, c); err != nil {
				t.Fatal(err)
			}
		}
		return b
	}
	fork := lnvault.NewTransaction(cs[30].Version, append(slices.Clone(cs[30].Statements), "UPDATE vars SET intval = 7 WHERE name = 'x';"))
	a := dest(cs[30:40]...)
	same := dest(cs[30:40]...)
	behind := dest()
	forked := dest(fork)
	forkedTip := dest(append([]*lnvault.Change{fork}, cs[31:40]...)...)
	replayed := NewReader(list{storedOf(t, a.Inner())[:20]}, []age.Identity{k.id}, &k.cfg.Backup)
	var trails [][]Mark
	for _, b := range []*Backend{behind, a, same, forked, replayed} {
		tr, err := b.Scan(ctx)
		if err != nil {
			t.Fatal(err)
		}
		trails = append(trails, tr)
	}
	newest, rel := Compare(trails)
	if newest != 1 {
		t.Fatalf("newest is %d, want 1 (%+v)", newest, rel)
	}
	for i, want := range []State{Behind, Newest, Same, Forked, Behind} {
		if rel[i].State != want {
			t.Errorf("destination %d: %s (%s), want %s", i, rel[i].State, rel[i].Detail, want)
		}
	}
	if !strings.Contains(rel[0].Detail, "10 versions behind") {
		t.Errorf("behind: %s", rel[0].Detail)
	}
	// Two heads at the same version with other changes: nothing is newest.
	tr, err := forkedTip.Scan(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n, rel := Compare([][]Mark{trails[1], tr}); n != -1 || rel[1].State != Forked {
		t.Fatalf("a fork at the head: newest %d, %+v", n, rel)
	}
}

// replayTo writes cs to a new database at dst, as the node's database
// would be after committing them.
func replayTo(ctx context.Context, dst string, cs []*lnvault.Change) (uint32, error) {
	a, err := dbapply.Create(ctx, dst)
	if err != nil {
		return 0, err
	}
	for _, c := range cs {
		if err := a.Apply(ctx, c); err != nil {
			a.Close(ctx)
			return 0, err
		}
	}
	return cs[len(cs)-1].Version, a.Finish(ctx)
}

// The node compacts its encrypted backup with a snapshot of its own
// database while db_writes go on: the host's file shrinks to the sealed
// snapshot and the changes after it, a restore with the identity is the
// node's database, the head can still be rewound, and later changes and a
// restart (a new generation) follow the snapshot.
func TestNodeCompaction(t *testing.T) {
	ctx := context.Background()
	k := newKeys(t)
	cs, err := corpus.Changes()
	if err != nil {
		t.Fatal(err)
	}
	cs = cs[:600]
	url := "file://" + filepath.Join(t.TempDir(), "b.dbak")
	open := func(create bool) *Backend {
		inner, err := file.Open(ctx, url, lnvault.OpenOptions{Create: create, Logger: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		return New(inner, k.session(t), k.id)
	}
	b := open(true)
	var mu sync.Mutex
	n := 0 // changes appended (and so committed by the "node")
	appendN := func(to int) {
		for {
			mu.Lock()
			if n >= to {
				mu.Unlock()
				return
			}
			err := b.Append(ctx, cs[n])
			n++
			mu.Unlock()
			if err != nil {
				t.Error(err)
				return
			}
		}
	}
	appendN(200) // a first run: another generation
	b.Close()
	b = open(false)
	appendN(400)
	if _, err := b.Compact(ctx); !errors.Is(err, lnvault.ErrSealed) {
		t.Fatalf("compaction without the node's database: %v, want ErrSealed", err)
	}
	at := 0
	b.SetSnapshotSource(func(ctx context.Context, dst string) (uint32, error) {
		mu.Lock()
		at = n
		mu.Unlock()
		return replayTo(ctx, dst, cs[:at])
	})
	before, _ := b.Inner().Status(ctx)
	done := make(chan struct{})
	go func() { defer close(done); appendN(500) }()
	st, err := b.Compact(ctx)
	<-done
	if err != nil {
		t.Fatal(err)
	}
	after, _ := b.Inner().Status(ctx)
	t.Logf("compacted at change %d: %+v; file %d -> %d bytes", at, st, before.Size, after.Size)
	if at <= 200 || st.After.VersionCount != uint64(1+500-at) {
		t.Fatalf("compaction at change %d kept %d records, want the snapshot and the %d after it", at, st.After.VersionCount, 500-at)
	}
	wantDB := func(upto int) string {
		h, err := dumphash.OfReplay(ctx, filepath.Join(t.TempDir(), "want.sqlite3"), cs[:upto])
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	check := func(what string, upto int) {
		t.Helper()
		path := filepath.Join(t.TempDir(), "got.sqlite3")
		a, err := dbapply.Create(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		r := NewReader(b.Inner(), []age.Identity{k.id}, &k.cfg.Backup)
		if err := r.Stream(ctx, 0, func(c *lnvault.Change) error { return a.Apply(ctx, c) }); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if err := a.Finish(ctx); err != nil {
			t.Fatal(err)
		}
		got, err := dumphash.Of(path)
		if err != nil {
			t.Fatal(err)
		}
		if got != wantDB(upto) {
			t.Fatalf("%s: the restored database is not the node's after %d changes", what, upto)
		}
	}
	check("after the compaction", 500)
	if err := b.Rewind(ctx); err != nil {
		t.Fatal(err)
	}
	check("after a rewind of the head", 499)
	mu.Lock()
	n = 499
	mu.Unlock()
	appendN(550)
	b.Close()
	b = open(false)
	defer b.Close()
	appendN(600)
	check("after a restart", 600)
}

// The destinations of one session compacting together share one copy and
// seal of the node's database; the file goes with the last of them.
func TestSharedSnapshot(t *testing.T) {
	s := newKeys(t).session(t)
	builds := 0
	unblock := make(chan struct{})
	build := func() (uint32, *os.File, error) {
		builds++
		<-unblock
		f, err := os.CreateTemp(t.TempDir(), "snap")
		f.WriteString("sealed")
		return 7, f, err
	}
	type res struct {
		sn      *sharedSnap
		release func()
		err     error
	}
	out := make(chan res, 2)
	go func() { sn, r, err := s.sharedSnapshot(build); out <- res{sn, r, err} }()
	for {
		s.mu.Lock()
		started := s.snap != nil
		s.mu.Unlock()
		if started {
			break
		}
		time.Sleep(time.Millisecond)
	}
	go func() { sn, r, err := s.sharedSnapshot(build); out <- res{sn, r, err} }()
	for {
		s.mu.Lock()
		joined := s.snap.refs == 2
		s.mu.Unlock()
		if joined {
			break
		}
		time.Sleep(time.Millisecond)
	}
	close(unblock)
	a, b := <-out, <-out
	if a.err != nil || b.err != nil || builds != 1 || a.sn != b.sn || a.sn.v != 7 || a.sn.size != 6 {
		t.Fatalf("builds %d, %v %v, shared %v", builds, a.err, b.err, a.sn == b.sn)
	}
	name := a.sn.f.Name()
	a.release()
	if _, err := os.Stat(name); err != nil {
		t.Fatal("the snapshot went before its last user")
	}
	b.release()
	if _, err := os.Stat(name); err == nil {
		t.Fatal("the snapshot outlived its users")
	}
	// The next round builds again.
	if _, r, err := s.sharedSnapshot(func() (uint32, *os.File, error) {
		builds++
		f, err := os.CreateTemp(t.TempDir(), "x")
		return 8, f, err
	}); err != nil || builds != 2 {
		t.Fatalf("a second round: builds %d, %v", builds, err)
	} else {
		r()
	}
}
