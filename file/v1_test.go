package file

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/corpus"
)

// refChange is what the reference reader yields.
type refChange struct {
	version  uint32
	typ      byte
	payload  []byte
	snapshot bool
}

// refRead is an independent transcription of the reference plugin's
// FileBackend.read_metadata + stream_changes: header at 0, records from 512,
// stop after the first record whose version is >= the header's version.
func refRead(data []byte) ([]refChange, error) {
	if len(data) < 512 {
		return nil, errors.New("short header")
	}
	if binary.BigEndian.Uint32(data) != 1 {
		return nil, errors.New("unknown file version")
	}
	hdrVersion := int64(binary.BigEndian.Uint32(data[4:]))
	var out []refChange
	version := int64(-1)
	r := bytes.NewReader(data[512:])
	for version < hdrVersion {
		var h [9]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return nil, err
		}
		length := binary.BigEndian.Uint32(h[:])
		version = int64(binary.BigEndian.Uint32(h[4:]))
		payload := make([]byte, length)
		if _, err := io.ReadFull(r, payload); err != nil {
			return nil, err
		}
		if h[8] != 1 && h[8] != 2 {
			return nil, errors.New("unknown entry type")
		}
		out = append(out, refChange{version: uint32(version), typ: h[8], payload: payload})
	}
	if version != hdrVersion {
		return nil, errors.New("versions do not match up")
	}
	return out, nil
}

func TestV1ReadByReference(t *testing.T) {
	reqs := corpus.MustLoad()[:600] // the round trip covers the whole corpus
	url, path := tempURL(t, "v1.dbak")
	b := mustOpen(t, url, lnvault.OpenOptions{Create: true, Format: 1})
	defer b.Close()
	appendAll(t, b, reqs)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Header fields as the reference writes them.
	be := binary.BigEndian
	if be.Uint32(data) != 1 || be.Uint64(data[8:]) != uint64(len(data)) || be.Uint64(data[28:]) != uint64(len(reqs)) {
		t.Fatalf("header: version field %d end %d count %d, file %d bytes", be.Uint32(data), be.Uint64(data[8:]), be.Uint64(data[28:]), len(data))
	}
	if !bytes.Equal(data[36:512], make([]byte, 512-36)) {
		t.Fatal("header padding is not zero")
	}
	refs, err := refRead(data)
	if err != nil {
		t.Fatalf("reference reader: %v", err)
	}
	if len(refs) != len(reqs) {
		t.Fatalf("reference reader read %d changes, want %d", len(refs), len(reqs))
	}
	for i, r := range reqs {
		want := []byte(joinNUL(r.Writes))
		if refs[i].version != r.DataVersion || refs[i].typ != 1 || !bytes.Equal(refs[i].payload, want) {
			t.Fatalf("change %d differs as the reference reads it", i)
		}
	}
	// Also after a rewind and a re-append of the same version.
	if err := b.Rewind(context.Background()); err != nil {
		t.Fatal(err)
	}
	last := reqs[len(reqs)-1]
	if err := b.Append(context.Background(), lnvault.NewTransaction(last.DataVersion, []string{"SELECT 'again'"})); err != nil {
		t.Fatal(err)
	}
	data, _ = os.ReadFile(path)
	refs, err = refRead(data)
	if err != nil || len(refs) != len(reqs) || string(refs[len(refs)-1].payload) != "SELECT 'again'" {
		t.Fatalf("reference reader after rewind: %d changes, err %v", len(refs), err)
	}
}

func joinNUL(s []string) string {
	var b bytes.Buffer
	for i, x := range s {
		if i > 0 {
			b.WriteByte(0)
		}
		b.WriteString(x)
	}
	return b.String()
}

func copyVector(t *testing.T) (string, string) {
	data, err := os.ReadFile("../testdata/pre-4090-backup.dbak")
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != 79811 {
		t.Fatalf("vector is %d bytes", len(data))
	}
	url, path := tempURL(t, "pre-4090.dbak")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return url, path
}

func TestPre4090Vector(t *testing.T) {
	url, path := copyVector(t)
	rb := mustOpen(t, url, lnvault.OpenOptions{ReadOnly: true})
	m := rb.Metadata()
	if m.Version != 46 || m.PrevVersion != 45 || m.VersionCount != 0 {
		t.Fatalf("metadata %+v", m)
	}
	all := streamAll(t, rb, 0)
	if len(all) != 46 || all[45].Version != 46 {
		t.Fatalf("streamed %d changes, last version %d", len(all), all[len(all)-1].Version)
	}
	for i, g := range all {
		if g.Kind != lnvault.KindTransaction || g.Version != uint32(i+1) || len(g.Statements) == 0 {
			t.Fatalf("change %d: %+v", i, g.Version)
		}
	}
	data, _ := os.ReadFile(path)
	refs, err := refRead(data)
	if err != nil || len(refs) != 46 {
		t.Fatalf("reference reader: %d, %v", len(refs), err)
	}
	for i := range refs {
		if joinNUL(all[i].Statements) != string(refs[i].payload) {
			t.Fatalf("change %d differs from the reference reader's", i)
		}
	}
	st, err := rb.Status(context.Background())
	if err != nil || st.Format != "file v1" || st.Records != 46 || st.Size != 79811 {
		t.Fatalf("status %+v %v", st, err)
	}
	rb.Close()

	// Appending keeps format 1, and the reference reader still reads it.
	wb := mustOpen(t, url, lnvault.OpenOptions{}) // default format 2 must not convert it
	if wb.Format() != 1 {
		t.Fatalf("format %d", wb.Format())
	}
	if err := wb.Append(context.Background(), lnvault.NewTransaction(47, []string{"UPDATE vars SET intval = intval + 1 WHERE name = 'data_version'"})); err != nil {
		t.Fatal(err)
	}
	wb.Close()
	data, _ = os.ReadFile(path)
	refs, err = refRead(data)
	if err != nil || len(refs) != 47 || refs[46].version != 47 {
		t.Fatalf("reference reader after append: %d, %v", len(refs), err)
	}
	if binary.BigEndian.Uint64(data[28:]) != 1 {
		t.Fatalf("version_count %d after one append", binary.BigEndian.Uint64(data[28:]))
	}
}

// A file as the reference plugin leaves it after a rewind: the rewound record
// stays, the new one is appended after it, the header's end_offset matches
// neither. We read what the reference reads, and a writer makes the file
// consistent with that before appending.
func TestV1ReferenceRewindOrphans(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ref.dbak")
	rec := func(v uint32, s string) []byte {
		var h [9]byte
		binary.BigEndian.PutUint32(h[:], uint32(len(s)))
		binary.BigEndian.PutUint32(h[4:], v)
		h[8] = 1
		return append(h[:], s...)
	}
	r1, r2stale, r2new := rec(1, "SELECT 1"), rec(2, "SELECT 'stale'"), rec(2, "SELECT 'the new one, longer'")
	body := slices.Concat(r1, r2stale, r2new)
	hdr := make([]byte, 512)
	x := uint64(512 + len(r1)) // offsets[1] after the reference's rewind + add_change
	binary.BigEndian.PutUint32(hdr[0:], 1)
	binary.BigEndian.PutUint32(hdr[4:], 2)
	binary.BigEndian.PutUint64(hdr[8:], x+uint64(len(r2new)))
	binary.BigEndian.PutUint32(hdr[16:], 1)
	binary.BigEndian.PutUint64(hdr[20:], x)
	binary.BigEndian.PutUint64(hdr[28:], 3)
	if err := os.WriteFile(path, append(hdr, body...), 0o600); err != nil {
		t.Fatal(err)
	}
	refs, err := refRead(append(hdr, body...))
	if err != nil {
		t.Fatal(err)
	}
	rb := mustOpen(t, "file://"+path, lnvault.OpenOptions{ReadOnly: true})
	all := streamAll(t, rb, 0)
	if len(all) != len(refs) || len(all) != 2 || all[1].Statements[0] != "SELECT 'stale'" {
		t.Fatalf("got %+v", all)
	}
	wb := mustOpen(t, "file://"+path, lnvault.OpenOptions{})
	defer wb.Close()
	if err := wb.Append(context.Background(), lnvault.NewTransaction(3, []string{"SELECT 3"})); err != nil {
		t.Fatal(err)
	}
	all = streamAll(t, wb, 0)
	if len(all) != 3 || all[2].Statements[0] != "SELECT 3" {
		t.Fatalf("after append: %+v", all)
	}
	data, _ := os.ReadFile(path)
	if refs, err := refRead(data); err != nil || len(refs) != 3 {
		t.Fatalf("reference reader after append: %d %v", len(refs), err)
	}
}
