package wire

import "math/bits"

// singleBlockMax: compress/flate (levels 2-9) emits a block when it holds
// 16384 tokens (its maxFlateBlockTokens) or at Close; a payload shorter than
// that, which gives at most one token per byte, comes out as one block.
const singleBlockMax = 16384

// markFinalBlock turns the zlib stream at b[start:] from what compress/zlib
// writes for a single-block payload,
//
//	78 9c | block (BFINAL=0) | empty stored block (BFINAL=1) | adler32
//
// into what zlib (and so the reference Python implementation) writes,
//
//	78 9c | block (BFINAL=1) | adler32
//
// by setting the first block's BFINAL bit and cutting the empty stored block
// (its 3 header bits, the padding, and LEN/NLEN 00 00 ff ff), which saves 4
// or 5 bytes per packet at no cost. It works in place and never allocates.
// Anything not of the expected shape is returned unchanged.
func markFinalBlock(b []byte, start int) []byte {
	z := b[start:]
	n := len(z)
	// header (2) + at least 2 bytes of block + stored header byte +
	// 00 00 ff ff + adler32 (4)
	if n < 2+2+1+8 || z[0] != 0x78 || z[2]&1 != 0 ||
		z[n-8] != 0 || z[n-7] != 0 || z[n-6] != 0xff || z[n-5] != 0xff {
		return b
	}
	// The stored block's BFINAL bit is the last set bit before LEN: its
	// BTYPE (00) and the padding that follow are zeros. When the BFINAL bit
	// is bit 6 or 7, BTYPE spills into one more, all-zero, byte.
	k := n - 9
	spilled := z[k] == 0
	if spilled {
		k--
	}
	if k < 3 || z[k] == 0 {
		return b
	}
	h := bits.Len8(z[k]) - 1
	if spilled != (h >= 6) {
		return b
	}
	var adler [4]byte
	copy(adler[:], z[n-4:])
	z[2] |= 1 // BFINAL of the first block: bit 0 after the zlib header
	end := k  // the data block ended at a byte boundary: drop byte k
	if h > 0 {
		z[k] &^= 1 << h
		end = k + 1
	}
	copy(z[end:], adler[:])
	return b[:start+end+4]
}
