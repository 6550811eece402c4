package s3_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/dumphash"
	"github.com/lnvault/lnvault/internal/s3test"
	"github.com/lnvault/lnvault/replica"
	s3store "github.com/lnvault/lnvault/replica/s3"
	"github.com/lnvault/lnvault/restore"
)

func openStore(t *testing.T, endpoint, bucket, prefix string) *s3store.Store {
	t.Helper()
	u, _ := url.Parse(s3test.URL(endpoint, bucket, prefix))
	st, err := s3store.Open(context.Background(), u, u.Query())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// The store's primitives against versitygw, including the conditional PUTs
// the lease relies on (If-None-Match: * and If-Match).
func TestStoreConditionalPut(t *testing.T) {
	ctx := context.Background()
	endpoint, bucket := s3test.Start(t)
	st := openStore(t, endpoint, bucket, "p")
	if _, _, err := st.Get(ctx, "x"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Get missing: %v, want fs.ErrNotExist", err)
	}
	tag1, err := st.PutIf(ctx, "x", []byte("one"), "")
	if err != nil {
		t.Fatalf("PutIf absent: %v", err)
	}
	if _, err := st.PutIf(ctx, "x", []byte("two"), ""); !errors.Is(err, replica.ErrPrecondition) {
		t.Fatalf("PutIf on existing object: %v, want ErrPrecondition", err)
	}
	if _, err := st.PutIf(ctx, "x", []byte("two"), `"deadbeef"`); !errors.Is(err, replica.ErrPrecondition) {
		t.Fatalf("PutIf with wrong etag: %v, want ErrPrecondition", err)
	}
	if _, err := st.PutIf(ctx, "x", []byte("three"), tag1); err != nil {
		t.Fatalf("PutIf with right etag: %v", err)
	}
	data, _, err := st.Get(ctx, "x")
	if err != nil || string(data) != "three" {
		t.Fatalf("Get = %q, %v", data, err)
	}
	if err := st.Put(ctx, "a/b/c", []byte("abc")); err != nil {
		t.Fatal(err)
	}
	objs, err := st.List(ctx, "")
	if err != nil || len(objs) != 2 || objs[0].Key != "a/b/c" || objs[1].Key != "x" {
		t.Fatalf("List = %+v, %v", objs, err)
	}
	if err := st.Delete(ctx, "a/b/c", "x", "never-existed"); err != nil {
		t.Fatal(err)
	}
	if objs, _ := st.List(ctx, ""); len(objs) != 0 {
		t.Fatalf("after delete: %+v", objs)
	}
}

func TestURLErrors(t *testing.T) {
	ctx := context.Background()
	endpoint, bucket := s3test.Start(t)
	for _, tc := range []struct {
		url, want string
	}{
		{s3test.URL(endpoint, bucket, "p", "colour=blue"), `unknown parameter "colour"`},
		{s3test.URL(endpoint, "nosuchbucket", "p"), `bucket "nosuchbucket" does not exist`},
		{s3test.URL("http://127.0.0.1:1", bucket, "p"), "cannot reach the endpoint"},
		{"s3:///prefix?endpoint=" + endpoint, "names no bucket"},
		{s3test.URL(endpoint, bucket, "p", "retention=forever"), "retention="},
		{"s3://" + bucket + "/p?endpoint=" + endpoint + "&path-style=maybe", "path-style="},
		{s3test.URL(endpoint, bucket, "p", "region=eu-west-1"), `parameter "region" is given twice`},
	} {
		t.Run(tc.want, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			b, err := lnvault.Open(ctx, tc.url, lnvault.OpenOptions{Create: true})
			if err == nil {
				b.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("Open(%s) = %v, want one line containing %q", tc.url, err, tc.want)
			}
		})
	}
}

// Every corpus change appended synchronously to s3://, then restored with
// the restore package: the dump must match the corpus's.
func TestCorpusSyncRestore(t *testing.T) {
	ctx := context.Background()
	endpoint, bucket := s3test.Start(t)
	u := s3test.URL(endpoint, bucket, "node1")
	b, err := lnvault.Open(ctx, u, lnvault.OpenOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	reqs := corpus.MustLoad()
	for i, r := range reqs {
		if err := b.Append(ctx, r.Change()); err != nil {
			t.Fatalf("append %d (version %d): %v", i, r.DataVersion, err)
		}
		if i == len(reqs)/2 {
			// A compaction halfway: the restore then starts from a snapshot.
			if _, err := b.Compact(ctx); err != nil {
				t.Fatalf("compact: %v", err)
			}
		}
	}
	md := b.Metadata()
	last := reqs[len(reqs)-1]
	if md.Version != last.DataVersion || md.VersionCount != uint64(len(reqs)) {
		t.Fatalf("metadata %+v, want version %d count %d", md, last.DataVersion, len(reqs))
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	rb, err := lnvault.Open(ctx, u, lnvault.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rb.Close()
	if got := rb.Metadata(); got != md {
		t.Fatalf("reopened metadata %+v, want %+v", got, md)
	}
	dest := filepath.Join(t.TempDir(), "lightningd.sqlite3")
	res, err := restore.Restore(ctx, rb, dest, restore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Version != last.DataVersion {
		t.Fatalf("restored version %d, want %d", res.Version, last.DataVersion)
	}
	got, err := dumphash.Of(dest)
	if err != nil {
		t.Fatal(err)
	}
	if want := corpus.FinalDumpSHA256(); got != want {
		t.Fatalf("dump sha256 %s, want %s", got, want)
	}
}

// A second writer on the same prefix gets a clear error naming the holder.
func TestLeaseSecondWriter(t *testing.T) {
	ctx := context.Background()
	endpoint, bucket := s3test.Start(t)
	u := s3test.URL(endpoint, bucket, "shared")
	b1, err := lnvault.Open(ctx, u, lnvault.OpenOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := b1.Append(ctx, lnvault.NewTransaction(1, []string{"CREATE TABLE t(x)"})); err != nil {
		t.Fatal(err)
	}
	_, err = lnvault.Open(ctx, u, lnvault.OpenOptions{})
	if !errors.Is(err, lnvault.ErrLocked) {
		t.Fatalf("second writer: %v, want ErrLocked", err)
	}
	for _, want := range []string{"s3://" + bucket + "/shared is being written by another lnvault", "lease held by", "expires"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q does not contain %q", err, want)
		}
	}
	// Readers need no lease.
	r, err := lnvault.Open(ctx, u, lnvault.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("reader while a writer holds the lease: %v", err)
	}
	r.Close()
	// Once the first writer closes, the lease is free at once.
	if err := b1.Close(); err != nil {
		t.Fatal(err)
	}
	b2, err := lnvault.Open(ctx, u, lnvault.OpenOptions{})
	if err != nil {
		t.Fatalf("writer after release: %v", err)
	}
	if md := b2.Metadata(); md.Version != 1 || md.VersionCount != 1 {
		t.Fatalf("metadata %+v", md)
	}
	b2.Close()
}

// The streaming primitives snapshot objects use: PUT from a file, GET to a
// writer, and the ranged GET of a header; then a snapshot object of a few
// MiB through the replica client, and a damaged one named in the error.
func TestStoreStreaming(t *testing.T) {
	ctx := context.Background()
	endpoint, bucket := s3test.Start(t)
	st := openStore(t, endpoint, bucket, "stream")
	src := make([]byte, 3<<20+17)
	rand.NewChaCha8([32]byte{7}).Read(src)
	p := filepath.Join(t.TempDir(), "obj")
	if err := os.WriteFile(p, append(bytes.Clone(src), "trailing bytes not sent"...), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := st.PutFile(ctx, "big", f, int64(len(src))); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := st.GetTo(ctx, "big", &buf); err != nil || !bytes.Equal(buf.Bytes(), src) {
		t.Fatalf("GetTo: %d bytes, %v", buf.Len(), err)
	}
	if head, err := st.GetRange(ctx, "big", 68); err != nil || !bytes.Equal(head, src[:68]) {
		t.Fatalf("GetRange = %d bytes, %v", len(head), err)
	}
	if err := st.Put(ctx, "small", []byte("abc")); err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, "empty", nil); err != nil {
		t.Fatal(err)
	}
	if head, err := st.GetRange(ctx, "small", 68); err != nil || string(head) != "abc" {
		t.Fatalf("GetRange of a short object = %q, %v", head, err)
	}
	if head, err := st.GetRange(ctx, "empty", 68); err != nil || len(head) != 0 {
		t.Fatalf("GetRange of an empty object = %q, %v", head, err)
	}
	if _, err := st.GetRange(ctx, "missing", 68); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("GetRange missing: %v, want fs.ErrNotExist", err)
	}
	if _, err := st.GetTo(ctx, "missing", io.Discard); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("GetTo missing: %v, want fs.ErrNotExist", err)
	}

	c := replica.NewClient(st)
	db := io.NewSectionReader(bytes.NewReader(src), 0, int64(len(src)))
	obj, size, h, err := replica.EncodeSnapshotFile(3, 7, 6, db, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Close()
	info, err := c.WriteSnapshotFile(ctx, "0000000000000001", obj, size, h)
	if err != nil {
		t.Fatal(err)
	}
	if hh, err := c.ReadSnapshotHeader(ctx, info); err != nil || hh.PrevVersion != 6 {
		t.Fatalf("ReadSnapshotHeader = %+v, %v", hh, err)
	}
	_, r, closeDB, err := c.OpenSnapshot(ctx, info)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r)
	closeDB()
	if !bytes.Equal(got, src) {
		t.Fatal("snapshot read back differs")
	}
	whole, _, err := st.Get(ctx, info.Key)
	if err != nil {
		t.Fatal(err)
	}
	whole[len(whole)/2] ^= 1
	if err := st.Put(ctx, info.Key, whole); err != nil {
		t.Fatal(err)
	}
	var ce *lnvault.CorruptError
	if _, _, _, err := c.OpenSnapshot(ctx, info); !errors.As(err, &ce) || !strings.Contains(err.Error(), info.Key) || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("OpenSnapshot of a damaged object: %v", err)
	}
}
