package s3store_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/backends"
	"github.com/lnvault/lnvault/internal/s3test"
	"github.com/lnvault/lnvault/scb"
	"github.com/lnvault/lnvault/scb/s3store"
)

// Tests open URLs: wire the storage in, as the binary does.
func TestMain(m *testing.M) {
	backends.Register()
	os.Exit(m.Run())
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

// server starts a versitygw for one test (stopped when it ends).
func server(t *testing.T) (endpoint, bucket string) {
	t.Helper()
	return s3test.Start(t)
}

func open(t *testing.T, url string) *s3store.Store {
	t.Helper()
	st, err := s3store.Open(ctx(t), url, scb.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func clnBackup(n int, marker string) scb.Backup {
	var entries []string
	for i := 1; i <= n; i++ {
		entries = append(entries, fmt.Sprintf("%016x%064x%s", i, i, marker))
	}
	set, err := scb.NewCLNSet(entries)
	if err != nil {
		panic(err)
	}
	return set.Backup()
}

func seal(t testing.TB, b scb.Backup, rcpts ...age.Recipient) []byte {
	t.Helper()
	env, err := scb.Seal(b, rcpts)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func rawGet(t *testing.T, endpoint, bucket, key string) []byte {
	t.Helper()
	out, err := s3test.Client(endpoint).GetObject(ctx(t), &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		t.Fatal(err)
	}
	defer out.Body.Close()
	b, _ := io.ReadAll(out.Body)
	return b
}

func rawPut(t *testing.T, endpoint, bucket, key string, data []byte) {
	t.Helper()
	_, err := s3test.Client(endpoint).PutObject(ctx(t), &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Body: bytes.NewReader(data)})
	if err != nil {
		t.Fatal(err)
	}
}

func TestPutListGet(t *testing.T) {
	ep, bkt := server(t)
	url := s3test.URL(ep, bkt, "node1")
	st := open(t, url)
	if vs, err := st.List(ctx(t)); err != nil || len(vs) != 0 {
		t.Fatalf("empty store: %v, %v", vs, err)
	}
	var want [][]byte
	for i := 1; i <= 3; i++ {
		b := clnBackup(i, "")
		env := seal(t, b)
		v, err := st.Put(ctx(t), env)
		if err != nil {
			t.Fatal(err)
		}
		if v.Seq != uint64(i) || v.Kind != scb.KindCLN || v.Channels != i || v.Size != int64(len(env)) || v.PlainSHA256 != b.SHA256 {
			t.Fatalf("put %d returned %+v", i, v)
		}
		want = append(want, b.Data)
		// The object is where the layout says, byte for byte the envelope.
		if got := rawGet(t, ep, bkt, "node1/scb/"+fmt.Sprintf("%012d", i)); !bytes.Equal(got, env) {
			t.Fatalf("object %d differs from the envelope", i)
		}
	}
	// A second handle (another process) sees the same versions and ids.
	vs, err := open(t, url).List(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 3 {
		t.Fatalf("listed %d versions, want 3", len(vs))
	}
	for i, v := range vs {
		if v.Err != nil || v.Seq != uint64(i+1) || v.Channels != i+1 || v.Kind != scb.KindCLN || v.Encrypted {
			t.Fatalf("version %d: %+v", i, v)
		}
		if sha256.Sum256(want[i]) != v.PlainSHA256 {
			t.Fatalf("version %d: plaintext hash from the header differs", i)
		}
		data, env, err := scb.Fetch(ctx(t), st, v, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(data, want[i]) || env.Channels != i+1 {
			t.Fatalf("version %d: got %s", i, data)
		}
	}
	latest, err := scb.Select(ctx(t), st, "", "")
	if err != nil || latest.Seq != 3 {
		t.Fatalf("latest: %+v, %v", latest, err)
	}
	if v, err := scb.Select(ctx(t), st, scb.KindCLN, "2"); err != nil || v.ID != vs[1].ID {
		t.Fatalf("select 2: %+v, %v", v, err)
	}
	if _, err := st.Get(ctx(t), scb.VersionID(2, time.Unix(1, 0))); !errors.Is(err, scb.ErrNoVersion) {
		t.Fatalf("get with a foreign id: %v", err)
	}
	if _, err := st.Get(ctx(t), scb.VersionID(9, time.Now())); !errors.Is(err, scb.ErrNoVersion) {
		t.Fatalf("get of a missing version: %v", err)
	}
	if _, err := st.Put(ctx(t), []byte("not an envelope")); err == nil || !strings.Contains(err.Error(), "invalid envelope") {
		t.Fatalf("put of garbage: %v", err)
	}
	if !strings.HasPrefix(st.String(), "s3://"+bkt+"/node1/scb") || strings.Contains(st.String(), "endpoint") {
		t.Fatalf("String() = %q", st.String())
	}
}

// versitygw v1.8.0 honours If-None-Match: * on PUT; the store's promise that
// a number is never reused rests on it.
func TestConditionalPutHonoured(t *testing.T) {
	ep, bkt := server(t)
	c := s3test.Client(ep)
	put := func() error {
		_, err := c.PutObject(ctx(t), &s3.PutObjectInput{Bucket: aws.String(bkt), Key: aws.String("p/scb/000000000001"),
			Body: strings.NewReader("x"), IfNoneMatch: aws.String("*")})
		return err
	}
	if err := put(); err != nil {
		t.Fatalf("first conditional PUT: %v", err)
	}
	err := put()
	var ae smithy.APIError
	if err == nil || !errors.As(err, &ae) || ae.ErrorCode() != "PreconditionFailed" {
		t.Fatalf("second conditional PUT of the same key: %v, want PreconditionFailed", err)
	}
	if got := rawGet(t, ep, bkt, "p/scb/000000000001"); string(got) != "x" {
		t.Fatalf("object changed to %q", got)
	}
}

// Writers in several processes (separate handles here) racing for the next
// number: every version gets its own number, none is lost or overwritten.
func TestConcurrentWriters(t *testing.T) {
	ep, bkt := server(t)
	url := s3test.URL(ep, bkt, "race")
	const writers, each = 4, 5
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := 0; w < writers; w++ {
		st := open(t, url)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if _, err := st.Put(context.Background(), seal(t, clnBackup(1, fmt.Sprintf("%02x%02x", w, i)))); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	vs, err := open(t, url).List(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != writers*each {
		t.Fatalf("%d versions, want %d", len(vs), writers*each)
	}
	seen := map[[32]byte]bool{}
	for i, v := range vs {
		if v.Seq != uint64(i+1) || v.Err != nil {
			t.Fatalf("version %d: %+v", i, v)
		}
		seen[v.PlainSHA256] = true
	}
	if len(seen) != writers*each {
		t.Fatalf("%d distinct backups stored, want %d (one overwrote another)", len(seen), writers*each)
	}
}

func TestEncrypted(t *testing.T) {
	ep, bkt := server(t)
	id, _ := age.GenerateX25519Identity()
	other, _ := age.GenerateX25519Identity()
	st := open(t, s3test.URL(ep, bkt, "enc"))
	const marker = "c0ffee0123456789c0ffee0123456789"
	b := clnBackup(2, marker)
	v, err := st.Put(ctx(t), seal(t, b, id.Recipient()))
	if err != nil {
		t.Fatal(err)
	}
	raw := rawGet(t, ep, bkt, "enc/"+s3store.Key(v.Seq))
	if bytes.Contains(raw, []byte(marker)) || bytes.Contains(raw, b.Data) || bytes.Contains(raw, b.SHA256[:]) {
		t.Fatal("the encrypted object holds plaintext or its hash")
	}
	vs, err := st.List(ctx(t))
	if err != nil || len(vs) != 1 {
		t.Fatalf("list: %v %v", vs, err)
	}
	if !vs[0].Encrypted || vs[0].Channels != 2 || vs[0].PlainSHA256 != [32]byte{} || vs[0].Err != nil {
		t.Fatalf("listed without the key: %+v", vs[0])
	}
	if _, _, err := scb.Fetch(ctx(t), st, vs[0], nil); !errors.Is(err, scb.ErrEncrypted) {
		t.Fatalf("fetch without identity: %v", err)
	}
	if _, _, err := scb.Fetch(ctx(t), st, vs[0], []age.Identity{other}); !errors.Is(err, scb.ErrWrongIdentity) {
		t.Fatalf("fetch with the wrong identity: %v", err)
	}
	data, _, err := scb.Fetch(ctx(t), st, vs[0], []age.Identity{id})
	if err != nil || !bytes.Equal(data, b.Data) {
		t.Fatalf("fetch with the identity: %v", err)
	}
}

// Damage is listed, never hidden; a damaged latest version is an error, not
// a silent fallback; foreign objects are ignored.
func TestDamageAndForeignObjects(t *testing.T) {
	ep, bkt := server(t)
	st := open(t, s3test.URL(ep, bkt, "dmg"))
	var envs [][]byte
	for i := 1; i <= 4; i++ {
		env := seal(t, clnBackup(i, ""))
		envs = append(envs, env)
		if _, err := st.Put(ctx(t), env); err != nil {
			t.Fatal(err)
		}
	}
	// 2: truncated; 3: a payload byte flipped (the header is intact, so the
	// listing cannot tell; fetching must); 4: header flipped.
	rawPut(t, ep, bkt, "dmg/"+s3store.Key(2), envs[1][:len(envs[1])-5])
	flipped := bytes.Clone(envs[2])
	flipped[len(flipped)-40] ^= 1
	rawPut(t, ep, bkt, "dmg/"+s3store.Key(3), flipped)
	hdr := bytes.Clone(envs[3])
	hdr[12] ^= 0x80
	rawPut(t, ep, bkt, "dmg/"+s3store.Key(4), hdr)
	rawPut(t, ep, bkt, "dmg/scb/README", []byte("notes"))
	rawPut(t, ep, bkt, "dmg/scb/000000000000", []byte("zero is never a version"))

	vs, err := st.List(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 4 {
		t.Fatalf("listed %d versions, want 4 (foreign objects ignored): %+v", len(vs), vs)
	}
	var ce *lnvault.CorruptError
	if vs[0].Err != nil {
		t.Fatalf("version 1 damaged: %v", vs[0].Err)
	}
	if !errors.As(vs[1].Err, &ce) || !strings.Contains(ce.Error(), "truncated") {
		t.Fatalf("version 2: %v", vs[1].Err)
	}
	if vs[2].Err != nil {
		t.Fatalf("version 3 (payload damage) should list: %v", vs[2].Err)
	}
	if _, _, err := scb.Fetch(ctx(t), st, vs[2], nil); !errors.As(err, &ce) {
		t.Fatalf("fetch of a damaged payload: %v", err)
	}
	if !errors.As(vs[3].Err, &ce) || !strings.Contains(ce.Error(), "checksum") {
		t.Fatalf("version 4: %v", vs[3].Err)
	}
	if _, err := scb.Select(ctx(t), st, "", ""); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("select latest with a damaged latest: %v", err)
	}
	// The next Put still takes a fresh number.
	v, err := st.Put(ctx(t), envs[0])
	if err != nil || v.Seq != 5 {
		t.Fatalf("put after damage: %+v, %v", v, err)
	}
}

func TestOpenErrors(t *testing.T) {
	ep, bkt := server(t)
	for _, tc := range []struct{ url, want string }{
		{s3test.URL(ep, "no-such-bucket", "x"), "does not exist"},
		{s3test.URL(ep, bkt, "x", "colour=blue"), "unknown parameter"},
		{"s3:///prefix?endpoint=" + ep, "names no bucket"},
		{"s3://" + bkt + "/x?endpoint=ftp://host", "endpoint"},
	} {
		_, err := scb.OpenStore(ctx(t), tc.url, scb.StoreOptions{})
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, want one line with %q", tc.url, err, tc.want)
		}
	}
	// Replica parameters in a backup.lock URL are accepted.
	st, err := scb.OpenStore(ctx(t), s3test.URL(ep, bkt, "x", "retention=72h"), scb.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
}

// The keeper with the S3 store as a destination: every changed set becomes a
// new version, and a restarted keeper does not store an unchanged set again.
func TestKeeperToS3(t *testing.T) {
	ep, bkt := server(t)
	url := s3test.URL(ep, bkt, "kp")
	src := &setSource{}
	src.set(clnBackup(1, ""))
	run := func(wantAfter int, change func()) {
		st := open(t, url)
		k, err := scb.New(scb.Config{Kind: scb.KindCLN, Source: src, Swappers: []scb.Swapper{&scb.StoreSwapper{Store: st}},
			Debounce: 10 * time.Millisecond, RetryMin: 10 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		c, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- k.Run(c) }()
		waitFor(t, "the keeper to be healthy", func() bool { return k.Status().Healthy() })
		if change != nil {
			change()
			k.Notify(scb.Event{Type: scb.EventOpened})
			waitFor(t, "the new set stored", func() bool {
				vs, _ := st.List(context.Background())
				return len(vs) == wantAfter
			})
		}
		cancel()
		<-done
		vs, err := st.List(ctx(t))
		if err != nil || len(vs) != wantAfter {
			t.Fatalf("%d versions (%v), want %d", len(vs), err, wantAfter)
		}
		data, _, err := scb.Fetch(ctx(t), st, vs[len(vs)-1], nil)
		if err != nil || !bytes.Equal(data, src.get().Data) {
			t.Fatalf("latest version is not the current set: %v", err)
		}
	}
	run(1, nil)
	run(1, nil) // restart, unchanged: nothing new
	run(2, func() { src.set(clnBackup(3, "")) })
}

type setSource struct {
	mu sync.Mutex
	b  scb.Backup
}

func (s *setSource) set(b scb.Backup) { s.mu.Lock(); s.b = b; s.mu.Unlock() }
func (s *setSource) get() scb.Backup  { s.mu.Lock(); defer s.mu.Unlock(); return s.b }
func (s *setSource) Fetch(context.Context) (scb.Backup, error) {
	return s.get(), nil
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestParseKey(t *testing.T) {
	for _, tc := range []struct {
		key string
		seq uint64
		ok  bool
	}{
		{"scb/000000000001", 1, true},
		{"scb/999999999999", 999999999999, true},
		{"scb/000000000000", 0, false},
		{"scb/00000000001", 0, false},
		{"scb/0000000000010", 0, false},
		{"scb/00000000000a", 0, false},
		{"scb/+00000000001", 0, false},
		{"x/000000000001", 0, false},
		{"scb/000000000001/x", 0, false},
	} {
		seq, ok := s3store.ParseKey(tc.key)
		if seq != tc.seq || ok != tc.ok {
			t.Errorf("ParseKey(%q) = %d, %v", tc.key, seq, ok)
		}
		if ok && s3store.Key(seq) != tc.key {
			t.Errorf("Key(%d) = %q", seq, s3store.Key(seq))
		}
	}
}

func FuzzDecodeListed(f *testing.F) {
	env, _ := scb.Seal(clnBackup(2, ""), nil)
	f.Add(env[:min(len(env), 128)], int64(len(env)), "2026-01-02T15:04:05.123456789Z")
	f.Add(env[:20], int64(len(env)), "")
	f.Add([]byte{}, int64(0), "garbage")
	f.Fuzz(func(t *testing.T, head []byte, size int64, meta string) {
		v := s3store.DecodeListed(7, head, size, meta, time.Unix(1700000000, 0))
		if v.Seq != 7 {
			t.Fatalf("seq %d", v.Seq)
		}
		if seq, _, err := scb.ParseVersionID(v.ID); err != nil || seq != 7 {
			t.Fatalf("id %q: %v", v.ID, err)
		}
		if v.Err == nil {
			if !v.Kind.Valid() || v.Channels < -1 || v.Size != size {
				t.Fatalf("intact version with bad fields: %+v", v)
			}
			h, start, err := scb.DecodeHeader(head)
			if err != nil || int64(start)+h.PayloadLen+32 != size {
				t.Fatalf("accepted a header that does not match: %v", err)
			}
		}
	})
}

func FuzzParseKey(f *testing.F) {
	f.Add("scb/000000000001")
	f.Add("scb/00000000001x")
	f.Add("scb/")
	f.Fuzz(func(t *testing.T, key string) {
		seq, ok := s3store.ParseKey(key)
		if ok != (seq != 0) {
			t.Fatalf("ParseKey(%q) = %d, %v", key, seq, ok)
		}
		// A number maps to one key only: the conditional PUT relies on it.
		if ok && s3store.Key(seq) != key {
			t.Fatalf("ParseKey(%q) = %d, but Key(%d) = %q", key, seq, seq, s3store.Key(seq))
		}
	})
}

// A handle whose idea of the next number is stale (another process stored
// meanwhile) finds out from the conditional PUT and takes the next free one.
func TestStaleHandleTakesNextNumber(t *testing.T) {
	ep, bkt := server(t)
	url := s3test.URL(ep, bkt, "stale")
	a, b := open(t, url), open(t, url)
	for i, tc := range []struct {
		st   *s3store.Store
		want uint64
	}{{a, 1}, {b, 2}, {a, 3}, {a, 4}, {b, 5}} {
		v, err := tc.st.Put(ctx(t), seal(t, clnBackup(i+1, "")))
		if err != nil || v.Seq != tc.want {
			t.Fatalf("put %d: seq %d (%v), want %d", i, v.Seq, err, tc.want)
		}
	}
	vs, err := a.List(ctx(t))
	if err != nil || len(vs) != 5 {
		t.Fatalf("%d versions (%v)", len(vs), err)
	}
	for i, v := range vs {
		if v.Channels != i+1 {
			t.Fatalf("version %d holds %d channels, want %d (overwritten?)", v.Seq, v.Channels, i+1)
		}
	}
}
