package s3_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/dbapply"
	"github.com/lnvault/lnvault/internal/corpus"
	"github.com/lnvault/lnvault/internal/dumphash"
	"github.com/lnvault/lnvault/internal/s3test"
	"github.com/lnvault/lnvault/replica"
	"github.com/lnvault/lnvault/restore"
)

// replayHash is the reference: the corpus applied with dbapply up to and
// including the last change of version <= to (0: all).
func replayHash(t *testing.T, reqs []corpus.Request, to uint32) string {
	t.Helper()
	ctx := context.Background()
	p := filepath.Join(t.TempDir(), "ref.sqlite3")
	a, err := dbapply.Create(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range reqs {
		if to != 0 && r.DataVersion > to {
			break
		}
		if err := a.Apply(ctx, r.Change()); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	h, err := dumphash.Of(p)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// restoreTo restores b at version target with restore.Restore (which starts
// at the newest snapshot at or before target through StreamTo) and returns
// the dump hash.
func restoreTo(t *testing.T, b *replica.Backend, target uint32) (string, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pit.sqlite3")
	res, err := restore.Restore(context.Background(), b, p, restore.Options{ToVersion: target})
	if err != nil {
		return "", err
	}
	if res.Version != target {
		t.Fatalf("restore stopped at version %d, want %d", res.Version, target)
	}
	return dumphash.Of(p)
}

func openReplica(t *testing.T, u string, o lnvault.OpenOptions) *replica.Backend {
	t.Helper()
	b, err := lnvault.Open(context.Background(), u, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b.(*replica.Backend)
}

// Point-in-time restores, by version (before and after a snapshot) and by
// time (VersionAt), equal a replay of the corpus cut at that version.
func TestPointInTime(t *testing.T) {
	ctx := context.Background()
	endpoint, bucket := s3test.Start(t)
	u := s3test.URL(endpoint, bucket, "pit", "retention=72h")
	b := openReplica(t, u, lnvault.OpenOptions{Create: true})
	reqs := corpus.MustLoad()[:300]
	stamps := map[int]time.Time{}
	for i, r := range reqs {
		if err := b.Append(ctx, r.Change()); err != nil {
			t.Fatal(err)
		}
		switch i {
		case 60, 149, 220, 299:
			stamps[i] = time.Now()
			time.Sleep(2 * time.Millisecond)
		case 150:
			if _, err := b.Compact(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, i := range []int{60, 149, 220, 299} {
		want := reqs[i].DataVersion
		got, err := b.VersionAt(ctx, stamps[i])
		if err != nil || got != want {
			t.Fatalf("VersionAt(after change %d) = %d, %v; want %d", i, got, err, want)
		}
	}
	if _, err := b.VersionAt(ctx, time.Now().Add(-time.Hour)); err == nil || !strings.Contains(err.Error(), "no change") {
		t.Fatalf("VersionAt before the history: %v", err)
	}
	// Versions before the snapshot (StreamTo picks no snapshot), at it, after it.
	for _, i := range []int{10, 149, 150, 299} {
		v := reqs[i].DataVersion
		got, err := restoreTo(t, b, v)
		if err != nil {
			t.Fatalf("restore to %d: %v", v, err)
		}
		if want := replayHash(t, reqs, v); got != want {
			t.Fatalf("restore to version %d: dump %s, want %s", v, got, want)
		}
	}
	// The restore package (Stream from the newest snapshot) for a version
	// after the snapshot, as `lnvault restore --to-version` does.
	v := reqs[220].DataVersion
	dest := filepath.Join(t.TempDir(), "db")
	if _, err := restore.Restore(ctx, b, dest, restore.Options{ToVersion: v}); err != nil {
		t.Fatal(err)
	}
	if got, _ := dumphash.Of(dest); got != replayHash(t, reqs, v) {
		t.Fatalf("restore.Restore to %d: wrong dump", v)
	}
}

func s3Keys(t *testing.T, endpoint, bucket, prefix string) []string {
	t.Helper()
	out, err := s3test.Client(endpoint).ListObjectsV2(context.Background(), &awss3.ListObjectsV2Input{Bucket: aws.String(bucket), Prefix: aws.String(prefix + "/")})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, o := range out.Contents {
		keys = append(keys, aws.ToString(o.Key))
	}
	return keys
}

// A deleted or damaged segment fails the restore with the object's name; no
// database is left at the destination.
func TestRestoreDamagedReplica(t *testing.T) {
	ctx := context.Background()
	endpoint, bucket := s3test.Start(t)
	reqs := corpus.MustLoad()[:80]
	build := func(prefix string) {
		b := openReplica(t, s3test.URL(endpoint, bucket, prefix), lnvault.OpenOptions{Create: true})
		for _, r := range reqs {
			if err := b.Append(ctx, r.Change()); err != nil {
				t.Fatal(err)
			}
		}
		b.Close()
	}
	cl := s3test.Client(endpoint)
	segKey := func(prefix string, n int) string {
		var segs []string
		for _, k := range s3Keys(t, endpoint, bucket, prefix) {
			if strings.Contains(k, "/segments/") {
				segs = append(segs, k)
			}
		}
		return segs[n]
	}
	for _, tc := range []struct {
		name   string
		damage func(key string)
		want   string
	}{
		{"deleted", func(key string) {
			if _, err := cl.DeleteObject(ctx, &awss3.DeleteObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)}); err != nil {
				t.Fatal(err)
			}
		}, "are missing"},
		{"bitflip", func(key string) {
			out, err := cl.GetObject(ctx, &awss3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			buf.ReadFrom(out.Body)
			out.Body.Close()
			d := buf.Bytes()
			d[len(d)-5] ^= 0x10
			if _, err := cl.PutObject(ctx, &awss3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Body: bytes.NewReader(d)}); err != nil {
				t.Fatal(err)
			}
		}, "checksum mismatch"},
		{"truncated", func(key string) {
			if _, err := cl.PutObject(ctx, &awss3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Body: bytes.NewReader([]byte("LNVO\x01"))}); err != nil {
				t.Fatal(err)
			}
		}, "shorter than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			build(tc.name)
			key := segKey(tc.name, 40)
			tc.damage(key)
			b := openReplica(t, s3test.URL(endpoint, bucket, tc.name), lnvault.OpenOptions{ReadOnly: true})
			dest := filepath.Join(t.TempDir(), "lightningd.sqlite3")
			_, err := restore.Restore(ctx, b, dest, restore.Options{})
			if !errors.Is(err, lnvault.ErrCorrupt) {
				t.Fatalf("restore: %v, want ErrCorrupt", err)
			}
			name := key[strings.LastIndex(key, "/")+1:]
			if tc.name == "deleted" {
				// The missing object is named by its indexes, and the one
				// after the gap by its key.
				name = "indexes 40-40 are missing"
				if next := segKey(tc.name, 40); !strings.Contains(err.Error(), next[strings.LastIndex(next, "/")+1:]) {
					t.Fatalf("error %q does not name the object after the gap %s", err, next)
				}
			}
			if !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not name %s / %q", err, name, tc.want)
			}
			if _, serr := os.Stat(dest); serr == nil {
				t.Fatal("a database was left at the destination")
			}
		})
	}
}

// Rewind removes the head; the change written after it is what restores.
func TestRewind(t *testing.T) {
	ctx := context.Background()
	endpoint, bucket := s3test.Start(t)
	u := s3test.URL(endpoint, bucket, "rw")
	b := openReplica(t, u, lnvault.OpenOptions{Create: true})
	reqs := corpus.MustLoad()[:40]
	for _, r := range reqs {
		if err := b.Append(ctx, r.Change()); err != nil {
			t.Fatal(err)
		}
	}
	before := b.Metadata()
	last := reqs[len(reqs)-1]
	bogus := lnvault.NewTransaction(last.DataVersion+1, []string{"DROP TABLE vars"})
	if err := b.Append(ctx, bogus); err != nil {
		t.Fatal(err)
	}
	if err := b.Rewind(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Rewind(ctx); !errors.Is(err, lnvault.ErrRewindTwice) {
		t.Fatalf("second rewind: %v", err)
	}
	// After a rewind nothing may be rewound: prev_version 0 (lnvault.Backend).
	want := lnvault.Metadata{Version: before.Version, VersionCount: before.VersionCount}
	if md := b.Metadata(); md != want {
		t.Fatalf("after rewind %+v, want %+v", md, want)
	}
	b.Close()
	// A fresh open sees the same head, still refuses a second rewind, and
	// the rewound change never restores.
	b2 := openReplica(t, u, lnvault.OpenOptions{})
	if md := b2.Metadata(); md != want {
		t.Fatalf("reopened %+v, want %+v", md, want)
	}
	if err := b2.Rewind(ctx); !errors.Is(err, lnvault.ErrRewindTwice) {
		t.Fatalf("second rewind after a reopen: %v", err)
	}
	dest := filepath.Join(t.TempDir(), "db")
	if _, err := restore.Restore(ctx, b2, dest, restore.Options{}); err != nil {
		t.Fatal(err)
	}
	if got, want := mustHash(t, dest), replayHash(t, reqs, 0); got != want {
		t.Fatal("restore after rewind differs from replay")
	}
}

func mustHash(t *testing.T, p string) string {
	t.Helper()
	h, err := dumphash.Of(p)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// Retention deletes only objects a kept snapshot covers.
func TestRetention(t *testing.T) {
	ctx := context.Background()
	endpoint, bucket := s3test.Start(t)
	reqs := corpus.MustLoad()[:80]
	run := func(prefix, params string) (*replica.Backend, *replica.Inventory) {
		b := openReplica(t, s3test.URL(endpoint, bucket, prefix, params), lnvault.OpenOptions{Create: true})
		for i, r := range reqs {
			if err := b.Append(ctx, r.Change()); err != nil {
				t.Fatal(err)
			}
			if i == 29 || i == 59 {
				if _, err := b.Compact(ctx); err != nil {
					t.Fatal(err)
				}
			}
		}
		inv, err := b.Client().Inventory(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return b, inv
	}
	check := func(b *replica.Backend, inv *replica.Inventory, wantSnaps []uint64, firstSeg uint64) {
		g := inv.Latest()
		var snaps []uint64
		for _, s := range g.Snapshots {
			snaps = append(snaps, s.Index)
		}
		if fmt.Sprint(snaps) != fmt.Sprint(wantSnaps) {
			t.Fatalf("snapshots at %v, want %v", snaps, wantSnaps)
		}
		if g.Segments[0].FirstIndex != firstSeg || g.Segments[len(g.Segments)-1].LastIndex != uint64(len(reqs)-1) {
			t.Fatalf("segments %d..%d, want %d..%d", g.Segments[0].FirstIndex, g.Segments[len(g.Segments)-1].LastIndex, firstSeg, len(reqs)-1)
		}
		for i := 1; i < len(g.Segments); i++ {
			if g.Segments[i].FirstIndex != g.Segments[i-1].LastIndex+1 {
				t.Fatalf("gap after segment %s", g.Segments[i-1].Key)
			}
		}
		dest := filepath.Join(t.TempDir(), "db")
		if _, err := restore.Restore(ctx, b, dest, restore.Options{}); err != nil {
			t.Fatal(err)
		}
		if mustHash(t, dest) != replayHash(t, reqs, 0) {
			t.Fatal("restore after retention differs from replay")
		}
	}
	// Compaction snapshots the state before the head: indexes 28 and 58.
	b, inv := run("keep1", "retention=0s&retain-snapshots=1")
	check(b, inv, []uint64{58}, 59)
	b, inv = run("keep2", "retention=0s&retain-snapshots=2")
	check(b, inv, []uint64{28, 58}, 29)
	// Within the retention window nothing is deleted.
	b, inv = run("window", "retention=1h&retain-snapshots=1")
	check(b, inv, []uint64{28, 58}, 0)
	// The oldest snapshot still restores its version after retention.
	if _, err := restoreTo(t, b, reqs[40].DataVersion); err != nil {
		t.Fatal(err)
	}
}
