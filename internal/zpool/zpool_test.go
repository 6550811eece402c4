package zpool

import (
	"bytes"
	"testing"

	"github.com/klauspost/compress/zstd"
)

func TestReuseAndRoundTrip(t *testing.T) {
	encs := NewEncoders(1, zstd.WithEncoderConcurrency(1))
	decs := NewDecoders(1, zstd.WithDecoderConcurrency(1))
	data := bytes.Repeat([]byte("INSERT INTO invoices VALUES (x'00ff');"), 50)
	e := encs.Get()
	z := e.EncodeAll(data, nil)
	encs.Put(e)
	if again := encs.Get(); again != e {
		t.Fatal("an idle encoder was not reused")
	}
	extra := encs.Get() // the list is empty now: a new one
	if extra == e {
		t.Fatal("one encoder handed out twice")
	}
	encs.Put(e)
	encs.Put(extra) // over the size: dropped, not blocking
	d := decs.Get()
	got, err := d.DecodeAll(z, nil)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("round trip: %v", err)
	}
	decs.Put(d)
	if decs.Get() != d {
		t.Fatal("an idle decoder was not reused")
	}
}

func TestInvalidOptionsPanic(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("no panic for an invalid option")
		}
	}()
	NewEncoders(1, zstd.WithWindowSize(3)).Get() // not a power of two
}
