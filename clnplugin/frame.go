package clnplugin

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
)

// framer cuts lightningd's stream into top-level JSON objects without
// decoding them, and notes the top-level "method" string on the way, so that
// a typed hook (AddTypedSyncHook) can be decoded in a single encoding/json
// pass. It only has to find where a valid object ends: every object it
// returns is then decoded (and so validated) by encoding/json, and the method
// it noted is only a hint that the decoding checks.
type framer struct {
	r   *bufio.Reader
	buf []byte
}

func newFramer(r io.Reader) *framer { return &framer{r: bufio.NewReaderSize(r, 64<<10)} }

// waiting reports whether input beyond whitespace is already buffered (the
// next object has at least begun to arrive).
func (f *framer) waiting() bool {
	b, _ := f.r.Peek(f.r.Buffered())
	for _, c := range b {
		if !isSpace(c) {
			return true
		}
	}
	return false
}

// isSpace is JSON's whitespace.
func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// next returns the next object (valid until the next call) and the value of
// its top-level "method" key when it is a plain string (nil otherwise). It
// returns io.EOF at a clean end of input.
func (f *framer) next() (obj, method []byte, err error) {
	// Skip whitespace between objects.
	for {
		c, err := f.r.ReadByte()
		if err != nil {
			return nil, nil, err
		}
		if isSpace(c) {
			continue
		}
		if c != '{' {
			return nil, nil, fmt.Errorf("invalid character %q looking for the beginning of an object", c)
		}
		break
	}
	f.buf = append(f.buf[:0], '{')
	depth := 1
	inStr, esc := false, false
	// Top-level keys: expectKey is true after '{' or ',' at depth 1;
	// keyStart is where the top-level key being read starts; methodNext says
	// the last top-level key was "method"; valStart is where its string value
	// starts.
	expectKey := true
	keyStart, valStart := -1, -1
	methodNext := false
	mStart, mEnd := -1, -1
	// ambiguous: a top-level key that encoding/json could also take for
	// "method" (another case, or escaped): then no hint.
	ambiguous := false
	for {
		chunk, err := f.r.Peek(max(f.r.Buffered(), 1))
		if len(chunk) == 0 {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, nil, err
		}
		base := len(f.buf)
		f.buf = append(f.buf, chunk...)
		for pos := base; pos < len(f.buf); pos++ {
			c := f.buf[pos]
			if inStr {
				if !esc && c != '"' && c != '\\' {
					// Inside a string only a quote or a backslash matters:
					// jump to the next one (most of a db_write is SQL text
					// in strings, and IndexByte scans it vectorised).
					n := quoteOrBackslash(f.buf[pos:])
					if n < 0 {
						break // the string goes on in the next chunk
					}
					pos += n
					c = f.buf[pos]
				}
				switch {
				case esc:
					esc = false
				case c == '\\':
					esc = true
					valStart = -1 // an escaped method: no hint
					if keyStart >= 0 {
						ambiguous = true // an escaped key may decode to "method"
					}
				case c == '"':
					inStr = false
					if keyStart >= 0 {
						k := f.buf[keyStart:pos]
						methodNext = string(k) == "method"
						// encoding/json matches keys case-insensitively.
						ambiguous = ambiguous || !methodNext && bytes.EqualFold(k, []byte("method"))
						keyStart = -1
					} else if valStart >= 0 {
						mStart, mEnd = valStart, pos
						valStart = -1
					}
				}
				continue
			}
			switch c {
			case '"':
				inStr = true
				if depth == 1 && expectKey {
					keyStart = pos + 1
				} else if depth == 1 && methodNext {
					valStart = pos + 1
				}
			case '{', '[':
				depth++
			case '}', ']':
				depth--
			case ',':
				if depth == 1 {
					expectKey, methodNext = true, false
				}
			case ':':
				if depth == 1 {
					expectKey = false
				}
			}
			if depth == 0 {
				if _, err := f.r.Discard(pos + 1 - base); err != nil {
					return nil, nil, err
				}
				f.buf = f.buf[:pos+1]
				// Only an ASCII method is a hint: encoding/json turns
				// invalid UTF-8 into U+FFFD, so raw bytes could differ.
				if mStart >= 0 && !ambiguous && isASCII(f.buf[mStart:mEnd]) {
					method = f.buf[mStart:mEnd]
				}
				return f.buf, method, nil
			}
		}
		if _, err := f.r.Discard(len(chunk)); err != nil {
			return nil, nil, err
		}
	}
}

// quoteOrBackslash is the index of the first '"' or '\\' in b, or -1.
func quoteOrBackslash(b []byte) int {
	q := bytes.IndexByte(b, '"')
	head := b
	if q >= 0 {
		head = b[:q]
	}
	if k := bytes.IndexByte(head, '\\'); k >= 0 {
		return k
	}
	return q
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}
