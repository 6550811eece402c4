package crcio

import (
	"bytes"
	"hash/crc32"
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
