// Package crcio computes the CRC-32C (Castagnoli) of bytes as they are
// written, for the formats that checksum a body streamed to disk.
package crcio

import (
	"hash/crc32"
	"io"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Writer passes writes on to W and keeps the CRC-32C and length of what was
// written.
type Writer struct {
	W   io.Writer
	CRC uint32
	N   int64
}

func (c *Writer) Write(p []byte) (int, error) {
	n, err := c.W.Write(p)
	c.CRC = crc32.Update(c.CRC, castagnoli, p[:n])
	c.N += int64(n)
	return n, err
}
