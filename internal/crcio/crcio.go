// Package crcio is the one home of lnvault's checksum: CRC-32C (Castagnoli)
// of bytes in memory, of bytes as they are written (for the formats that
// checksum a body streamed to disk), and of two pieces joined.
package crcio

import (
	"hash/crc32"
	"io"
)

// Table is the CRC-32C table, for APIs that take one (crc32.New).
var Table = crc32.MakeTable(crc32.Castagnoli)

// Checksum returns the CRC-32C of p.
func Checksum(p []byte) uint32 { return crc32.Checksum(p, Table) }

// Update returns the CRC-32C of what crc covered followed by p.
func Update(crc uint32, p []byte) uint32 { return crc32.Update(crc, Table, p) }

// Writer passes writes on to W and keeps the CRC-32C and length of what was
// written.
type Writer struct {
	W   io.Writer
	CRC uint32
	N   int64
}

func (c *Writer) Write(p []byte) (int, error) {
	n, err := c.W.Write(p)
	c.CRC = Update(c.CRC, p[:n])
	c.N += int64(n)
	return n, err
}

// Combine returns the CRC-32C of A followed by B from crc1 of A and crc2
// of B (len2 bytes), as zlib's crc32_combine does: crc1 is shifted over len2
// zero bytes by multiplying it by x^(8*len2) modulo the polynomial.
func Combine(crc1, crc2 uint32, len2 int64) uint32 {
	return multModP(x2nModP(uint64(len2), 3), crc1) ^ crc2
}

const castagnoliReflected = 0x82f63b78

// multModP multiplies a and b modulo the (reflected) polynomial; a != 0.
func multModP(a, b uint32) uint32 {
	m := uint32(1) << 31
	var p uint32
	for {
		if a&m != 0 {
			p ^= b
			if a&(m-1) == 0 {
				return p
			}
		}
		m >>= 1
		if b&1 != 0 {
			b = b>>1 ^ castagnoliReflected
		} else {
			b >>= 1
		}
	}
}

// x2nTable[k] is x^(2^k) modulo the polynomial.
var x2nTable = func() (t [32]uint32) {
	p := uint32(1) << 30 // x^1
	t[0] = p
	for i := 1; i < len(t); i++ {
		p = multModP(p, p)
		t[i] = p
	}
	return t
}()

// x2nModP returns x^(n*2^k) modulo the polynomial.
func x2nModP(n uint64, k uint) uint32 {
	p := uint32(1) << 31 // x^0
	for n != 0 {
		if n&1 != 0 {
			p = multModP(x2nTable[k&31], p)
		}
		n >>= 1
		k++
	}
	return p
}
