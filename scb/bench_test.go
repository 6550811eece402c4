package scb

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"filippo.io/age"
)

// refSwap is the reference a durable swap is measured against: temp file,
// write, fsync, rename, directory fsync — the minimum any atomic durable
// replacement costs.
func refSwap(b *testing.B, dir string, data []byte) {
	tmp, err := os.CreateTemp(dir, ".ref-*")
	if err != nil {
		b.Fatal(err)
	}
	if _, err := tmp.Write(data); err != nil {
		b.Fatal(err)
	}
	if err := tmp.Sync(); err != nil {
		b.Fatal(err)
	}
	if err := tmp.Close(); err != nil {
		b.Fatal(err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, "ref")); err != nil {
		b.Fatal(err)
	}
	d, err := os.Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	if err := d.Sync(); err != nil {
		b.Fatal(err)
	}
	d.Close()
}

func timeOf(n int, f func()) time.Duration {
	start := time.Now()
	for i := 0; i < n; i++ {
		f()
	}
	return time.Since(start) / time.Duration(n)
}

// BenchmarkSwapVsReference reports each destination's UpdateAndSwap cost as
// a ratio to the reference durable swap measured in the same run (x_ref).
func BenchmarkSwapVsReference(b *testing.B) {
	data := randBytes(b, 16<<10) // a node with ~100 channels
	id := testIdentity(b)
	for _, tc := range []struct {
		name string
		mk   func(dir string) Swapper
	}{
		{"local-file", func(dir string) Swapper { return &FileSwapper{Path: filepath.Join(dir, "f"), Keep: 5} }},
		{"dir-store", func(dir string) Swapper {
			st, _ := OpenDir(filepath.Join(dir, "s"), StoreOptions{})
			return &StoreSwapper{Store: st}
		}},
		{"dir-store-age", func(dir string) Swapper {
			st, _ := OpenDir(filepath.Join(dir, "s"), StoreOptions{})
			return &StoreSwapper{Store: st, Recipients: []age.Recipient{id.Recipient()}}
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			dir := b.TempDir()
			sw := tc.mk(dir)
			ctx := context.Background()
			bk := []Backup{NewBackup(KindLNDMulti, data, -1), NewBackup(KindLNDMulti, append([]byte{1}, data...), -1)}
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				if err := sw.UpdateAndSwap(ctx, bk[i%2]); err != nil {
					b.Fatal(err)
				}
			}
			per := time.Since(start) / time.Duration(b.N)
			b.StopTimer()
			ref := timeOf(min(b.N, 50), func() { refSwap(b, dir, data) })
			b.ReportMetric(float64(per)/float64(ref), "x_ref")
		})
	}
}

// BenchmarkDecodeEnvelope reports verification cost as a ratio to hashing
// the payload once with SHA-256 (x_sha256): the envelope check is a CRC of
// the header plus one or two hashes.
func BenchmarkDecodeEnvelope(b *testing.B) {
	data := randBytes(b, 16<<10)
	raw, err := Seal(NewBackup(KindLNDMulti, data, -1), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(raw)))
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if _, err := DecodeEnvelope(raw); err != nil {
			b.Fatal(err)
		}
	}
	per := time.Since(start) / time.Duration(b.N)
	b.StopTimer()
	ref := timeOf(max(b.N, 100), func() { _ = NewBackup(KindLNDMulti, data, -1) })
	b.ReportMetric(float64(per)/float64(ref), "x_sha256")
}
