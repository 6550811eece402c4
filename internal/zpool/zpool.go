// Package zpool is the one free list of zstd coders: building an encoder or
// a decoder costs far more than compressing a small change, so each format
// keeps a few built with its options. A buffered channel rather than
// sync.Pool, which drops its items at every GC (a node appending one change
// at a time would rebuild its encoder after each collection).
package zpool

import "github.com/klauspost/compress/zstd"

// Encoders holds up to a few idle encoders built with the same options.
type Encoders struct {
	free chan *zstd.Encoder
	opts []zstd.EOption
}

// NewEncoders returns a free list of up to keep encoders built with opts.
// opts must be valid: a bad option is a programming error and panics at
// the first Get.
func NewEncoders(keep int, opts ...zstd.EOption) *Encoders {
	return &Encoders{free: make(chan *zstd.Encoder, keep), opts: opts}
}

// Get returns an idle encoder or a new one.
func (p *Encoders) Get() *zstd.Encoder {
	select {
	case e := <-p.free:
		return e
	default:
	}
	e, err := zstd.NewWriter(nil, p.opts...)
	if err != nil {
		panic("zpool: invalid encoder options: " + err.Error())
	}
	return e
}

// Put gives an encoder back; one over the list's size is dropped.
func (p *Encoders) Put(e *zstd.Encoder) {
	select {
	case p.free <- e:
	default:
	}
}

// Decoders holds up to a few idle decoders built with the same options.
type Decoders struct {
	free chan *zstd.Decoder
	opts []zstd.DOption
}

// NewDecoders returns a free list of up to keep decoders built with opts.
func NewDecoders(keep int, opts ...zstd.DOption) *Decoders {
	return &Decoders{free: make(chan *zstd.Decoder, keep), opts: opts}
}

// Get returns an idle decoder or a new one.
func (p *Decoders) Get() *zstd.Decoder {
	select {
	case d := <-p.free:
		return d
	default:
	}
	d, err := zstd.NewReader(nil, p.opts...)
	if err != nil {
		panic("zpool: invalid decoder options: " + err.Error())
	}
	return d
}

// Put gives a decoder back, detached from its last input; one over the
// list's size is closed.
func (p *Decoders) Put(d *zstd.Decoder) {
	d.Reset(nil)
	select {
	case p.free <- d:
	default:
		d.Close()
	}
}
