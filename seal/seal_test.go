package seal

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"filippo.io/age"
	"github.com/lnvault/lnvault/internal/corpus"
)

func testKey(t testing.TB, gen uint64) (*Key, *age.X25519Identity) {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewBackupID()
	if err != nil {
		t.Fatal(err)
	}
	k, err := NewKey(b, gen)
	if err != nil {
		t.Fatal(err)
	}
	return k, id
}

// Every corpus change seals and opens back at its place, padded or not;
// the host sees none of its text.
func TestSealOpenCorpus(t *testing.T) {
	k, _ := testKey(t, 1)
	for i, r := range corpus.MustLoad() {
		plain := []byte(strings.Join(r.Writes, "\x00"))
		for _, pad := range []bool{true, false} {
			pos := Position{Index: uint64(i), Version: r.DataVersion, Kind: 1}
			sealed, err := k.Seal(nil, pos, plain, pad)
			if err != nil {
				t.Fatal(err)
			}
			if want := PaddedLen(len(plain), pad) + Overhead; len(sealed) != want {
				t.Fatalf("change %d sealed to %d bytes, want %d", i, len(sealed), want)
			}
			if len(plain) > 16 && bytes.Contains(sealed, plain[:16]) {
				t.Fatalf("change %d: plaintext visible in the sealed bytes", i)
			}
			got, err := k.Open([]byte("prefix"), pos, sealed)
			if err != nil {
				t.Fatalf("change %d: %v", i, err)
			}
			if !bytes.Equal(got, append([]byte("prefix"), plain...)) {
				t.Fatalf("change %d opened to other bytes", i)
			}
		}
	}
}

// A flipped bit, another index (a dropped or reordered change), another
// version, kind, generation or backup: each refused as ErrOpen, naming the
// change.
func TestOpenRefusesTampering(t *testing.T) {
	k, _ := testKey(t, 3)
	pos := Position{Index: 7, Version: 70, Kind: 1}
	sealed, err := k.Seal(nil, pos, []byte("UPDATE vars SET intval=71 WHERE name='data_version'"), true)
	if err != nil {
		t.Fatal(err)
	}
	other, err := NewKey(k.Backup(), 4)
	if err != nil {
		t.Fatal(err)
	}
	otherBackup, _ := testKey(t, 3)
	flipped := bytes.Clone(sealed)
	flipped[len(flipped)/2] ^= 1
	for _, tc := range []struct {
		name   string
		key    *Key
		pos    Position
		sealed []byte
	}{
		{"flipped bit", k, pos, flipped},
		{"truncated", k, pos, sealed[:len(sealed)-1]},
		{"too short", k, pos, sealed[:10]},
		{"another index", k, Position{Index: 8, Version: 70, Kind: 1}, sealed},
		{"another version", k, Position{Index: 7, Version: 71, Kind: 1}, sealed},
		{"another kind", k, Position{Index: 7, Version: 70, Kind: 2}, sealed},
		{"another chunk", k, Position{Index: 7, Version: 70, Kind: 1, Chunk: 1}, sealed},
		{"not the last chunk", k, Position{Index: 7, Version: 70, Kind: 1, More: true}, sealed},
		{"another generation's key", other, pos, sealed},
		{"another backup's key", otherBackup, pos, sealed},
	} {
		_, err := tc.key.Open(nil, tc.pos, tc.sealed)
		if !errors.Is(err, ErrOpen) || !strings.Contains(err.Error(), "change ") {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

// The data key unwraps with the identity it was wrapped for, only for its
// own backup and generation; without an identity or with another one, a
// clear error.
func TestWrapUnwrap(t *testing.T) {
	k, id := testKey(t, 5)
	wrapped, err := k.Wrap(id.Recipient())
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(wrapped, k.raw[:]) {
		t.Fatal("the wrapped key holds the raw key")
	}
	k2, err := Unwrap(wrapped, k.Backup(), 5, id)
	if err != nil {
		t.Fatal(err)
	}
	sealed, _ := k.Seal(nil, Position{Index: 0, Version: 1}, []byte("x"), true)
	if got, err := k2.Open(nil, Position{Index: 0, Version: 1}, sealed); err != nil || string(got) != "x" {
		t.Fatalf("the unwrapped key does not open what the original sealed: %q %v", got, err)
	}
	if _, err := Unwrap(wrapped, k.Backup(), 6, id); !errors.Is(err, ErrOpen) {
		t.Fatalf("unwrap as another generation: %v", err)
	}
	var otherBackup BackupID
	if _, err := Unwrap(wrapped, otherBackup, 5, id); !errors.Is(err, ErrOpen) {
		t.Fatalf("unwrap as another backup: %v", err)
	}
	stranger, _ := age.GenerateX25519Identity()
	if _, err := Unwrap(wrapped, k.Backup(), 5, stranger); err == nil || !strings.Contains(err.Error(), "unwrapping the data key") {
		t.Fatalf("unwrap with another identity: %v", err)
	}
	if _, err := Unwrap(wrapped, k.Backup(), 5); err == nil || !strings.Contains(err.Error(), "--identity") {
		t.Fatalf("unwrap without identity: %v", err)
	}
	if _, err := k.Wrap(); err == nil {
		t.Fatal("wrapped for nobody")
	}
}

// The chain changes with any dropped, repeated or reordered change.
func TestChain(t *testing.T) {
	var sealed [][]byte
	for i := range 5 {
		sealed = append(sealed, []byte{byte(i)})
	}
	chain := func(cs ...[]byte) Chain {
		var c Chain
		for i, s := range cs {
			c = c.Next(Position{Index: uint64(i), Version: uint32(10 + i), Kind: 1}, s)
		}
		return c
	}
	full := chain(sealed...)
	for name, c := range map[string]Chain{
		"dropped middle": chain(sealed[0], sealed[1], sealed[3], sealed[4]),
		"reordered":      chain(sealed[0], sealed[2], sealed[1], sealed[3], sealed[4]),
		"repeated":       chain(sealed[0], sealed[1], sealed[1], sealed[2], sealed[3], sealed[4]),
		"dropped last":   chain(sealed[:4]...),
	} {
		if c == full {
			t.Errorf("%s: same chain", name)
		}
	}
}

func TestPaddedLen(t *testing.T) {
	for _, tc := range []struct {
		n    int
		pad  bool
		want int
	}{
		{0, true, 256}, {252, true, 256}, {253, true, 272}, {1000, true, 1024}, {1200, true, 1216},
		{4092, true, 4096}, {65532, true, 65536}, {65533, true, 67584}, {200000, true, 200704}, {10, false, 14},
	} {
		if got := PaddedLen(tc.n, tc.pad); got != tc.want {
			t.Errorf("PaddedLen(%d, %v) = %d, want %d", tc.n, tc.pad, got, tc.want)
		}
	}
	// Padmé's bound: never more than 12 % over, and a padded size is
	// shared by a whole range of sizes.
	for n := 300; n < 1<<22; n = n*9/8 + 1 {
		p := PaddedLen(n, true)
		if p < n+lenPrefix || float64(p) > 1.12*float64(n+lenPrefix) {
			t.Fatalf("PaddedLen(%d) = %d: outside [n+4, 1.12(n+4)]", n, p)
		}
	}
}

// FuzzOpen: arbitrary bytes never open (no panic, always ErrOpen), and a
// sealed change opens only unchanged.
func FuzzOpen(f *testing.F) {
	k, _ := testKey(f, 1)
	s, _ := k.Seal(nil, Position{Index: 1, Version: 2, Kind: 1}, []byte("INSERT INTO t VALUES (1)"), true)
	f.Add(s, uint64(1), uint32(2))
	f.Add([]byte{}, uint64(0), uint32(0))
	f.Fuzz(func(t *testing.T, data []byte, idx uint64, v uint32) {
		got, err := k.Open(nil, Position{Index: idx, Version: v, Kind: 1}, data)
		if err == nil && !(bytes.Equal(data, s) && idx == 1 && v == 2 && string(got) == "INSERT INTO t VALUES (1)") {
			t.Fatalf("opened %d bytes at %d/%d to %q", len(data), idx, v, got)
		}
		if err != nil && !errors.Is(err, ErrOpen) {
			t.Fatalf("error is not ErrOpen: %v", err)
		}
	})
}

// BenchmarkSeal: sealing a corpus-sized change (the corpus's changes in
// turn, padded), the per-change cost on the ack path (goal ≤ 0.02 ms).
func BenchmarkSeal(b *testing.B) {
	k, _ := testKey(b, 1)
	var plains [][]byte
	total := 0
	for _, r := range corpus.MustLoad() {
		p := []byte(strings.Join(r.Writes, "\x00"))
		plains = append(plains, p)
		total += len(p)
	}
	buf := make([]byte, 0, 1<<20)
	b.SetBytes(int64(total / len(plains)))
	i := 0
	for b.Loop() {
		var err error
		if buf, err = k.Seal(buf[:0], Position{Index: uint64(i), Version: uint32(i)}, plains[i%len(plains)], true); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(i)/1000, "ms/change")
}
