package main

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/lnvault/lnvault/internal/corpus"
)

// v2Records walks a format-2 file (two 512-byte header slots, then records
// of a 20-byte header `u32 stored_len | u32 version | ...` and the payload)
// and returns each record's offset and version.
func v2Records(t *testing.T, data []byte) (offs []int64, versions []uint32) {
	t.Helper()
	for off := int64(1024); off+20 <= int64(len(data)); {
		n := int64(binary.BigEndian.Uint32(data[off:]))
		offs = append(offs, off)
		versions = append(versions, binary.BigEndian.Uint32(data[off+4:]))
		off += 20 + n
	}
	if len(offs) == 0 {
		t.Fatal("no records found in the v2 file")
	}
	return offs, versions
}

var offsetVersionRE = regexp.MustCompile(`offset (\d+)`)

// TestCLICorruptBackup damages a v2 backup in several ways; verify must exit
// 2 naming the offset (and version) of the damage, restore must refuse and
// leave no DEST behind.
func TestCLICorruptBackup(t *testing.T) {
	dir := t.TempDir()
	orig := filepath.Join(dir, "orig.dbak")
	corpusBackup(t, 2, orig)
	pristine, err := os.ReadFile(orig)
	if err != nil {
		t.Fatal(err)
	}
	offs, vers := v2Records(t, pristine)
	mid := len(offs) / 2
	last := len(offs) - 1

	type damage struct {
		name    string
		mutate  func([]byte) []byte
		lo, hi  int64 // the reported offset must be in [lo, hi]: the damaged record, or where a cut file ends
		version uint32
	}
	flip := func(pos int64) func([]byte) []byte {
		return func(b []byte) []byte { b[pos] ^= 0x10; return b }
	}
	cases := []damage{
		{"flip mid-record payload", flip(offs[mid] + 20 + (offs[mid+1]-offs[mid]-20)/2), offs[mid], offs[mid], vers[mid]},
		{"flip record header version", flip(offs[100] + 7), offs[100], offs[100], 0},
		{"flip record length", flip(offs[1500] + 2), offs[1500], offs[1500], 0},
		{"flip last byte", flip(int64(len(pristine) - 1)), offs[last], offs[last], vers[last]},
		{"truncate mid-record", func(b []byte) []byte { return b[:offs[mid]+25] }, offs[mid], offs[mid] + 25, 0},
		{"truncate last record", func(b []byte) []byte { return b[:len(b)-3] }, offs[last], int64(len(pristine) - 3), 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := t.TempDir()
			path := filepath.Join(d, "b.dbak")
			data := c.mutate(append([]byte(nil), pristine...))
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			url := "file://" + path

			r := runCLI(t, "verify", url)
			if r.code != 2 {
				t.Fatalf("verify exit %d, want 2; stdout %q stderr %q", r.code, r.stdout, r.stderr)
			}
			assertOneLineError(t, r, "offset", "version")
			m := offsetVersionRE.FindStringSubmatch(r.stderr)
			if m == nil {
				t.Fatalf("no offset in %q", r.stderr)
			}
			if got, _ := strconv.ParseInt(m[1], 10, 64); got < c.lo || got > c.hi {
				t.Errorf("reported offset %d, damage in [%d, %d]", got, c.lo, c.hi)
			}
			if c.version != 0 && !strings.Contains(r.stderr, "version") {
				t.Errorf("verify does not name the version: %q", r.stderr)
			}

			dest := filepath.Join(d, "restored.sqlite3")
			r = runCLI(t, "restore", url, dest)
			assertOneLineError(t, r, "corrupt")
			if names := listDir(t, d); len(names) != 1 {
				t.Fatalf("restore of a damaged backup left %v", names)
			}
		})
	}

	// Header damage: format 2 keeps two header slots, so damaging one slot
	// must either be reported (exit 2, naming an offset) or be survived with
	// the exact final state; never a silent rollback.
	for _, pos := range []int64{5, 40, 512 + 5} {
		d := t.TempDir()
		path := filepath.Join(d, "b.dbak")
		data := append([]byte(nil), pristine...)
		data[pos] ^= 0x01
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		url := "file://" + path
		r := runCLI(t, "verify", url)
		dest := filepath.Join(d, "restored.sqlite3")
		switch r.code {
		case 2:
			// The backend may log a warning about the damaged slot before
			// the error; the error itself is still one line.
			assertLastLineError(t, r, "offset")
			r = runCLI(t, "restore", url, dest)
			assertLastLineError(t, r, "corrupt")
			if _, err := os.Stat(dest); err == nil {
				t.Fatalf("header flip at %d: restore left a DEST", pos)
			}
		case 0:
			mustRun(t, "restore", url, dest)
			if got := dumpOf(t, dest); got != corpus.FinalDumpSHA256() {
				t.Fatalf("header flip at %d: verify passed but the restore is not the final state", pos)
			}
		default:
			t.Fatalf("header flip at %d: verify exit %d: %s", pos, r.code, r.stderr)
		}
	}
}

// assertLastLineError is assertOneLineError allowing log lines (slog's
// "time=... level=...") before the error line.
func assertLastLineError(t *testing.T, r cliResult, want ...string) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
	for _, l := range lines[:len(lines)-1] {
		if !strings.HasPrefix(l, "time=") {
			t.Fatalf("stderr has a line that is neither a log line nor the error: %q", l)
		}
	}
	assertOneLineError(t, cliResult{r.stdout, lines[len(lines)-1] + "\n", r.code}, want...)
}
