package crcio

import (
	"bytes"
	"hash/crc32"
	"math/rand/v2"
	"testing"
)

func TestWriter(t *testing.T) {
	var buf bytes.Buffer
	w := &Writer{W: &buf}
	for _, s := range []string{"INSERT INTO t ", "VALUES (1)", ""} {
		if _, err := w.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	want := crc32.Checksum([]byte("INSERT INTO t VALUES (1)"), crc32.MakeTable(crc32.Castagnoli))
	if w.CRC != want || w.N != 24 || buf.String() != "INSERT INTO t VALUES (1)" {
		t.Fatalf("crc %08x n %d buf %q, want %08x", w.CRC, w.N, buf.String(), want)
	}
}

func TestCombine(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 7, 64, 68, 1000, 1 << 16} {
		a, b := make([]byte, 64), make([]byte, n)
		for i := range a {
			a[i] = byte(r.Uint32())
		}
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		want := crc32.Checksum(append(bytes.Clone(a), b...), crc32.MakeTable(crc32.Castagnoli))
		if got := Combine(Checksum(a), Checksum(b), int64(n)); got != want {
			t.Fatalf("combine over %d bytes = %08x, want %08x", n, got, want)
		}
	}
}
