package scb

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/lnvault/lnvault"
)

func mustSeal(t testing.TB, b Backup) []byte {
	t.Helper()
	raw, err := Seal(b, nil)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestDirStorePutListGet(t *testing.T) {
	ctx := context.Background()
	base := filepath.Join(t.TempDir(), "node.dbak")
	st, err := OpenStore(ctx, "file://"+base, StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.List(ctx); !errors.Is(err, lnvault.ErrNotFound) {
		t.Fatalf("empty store: %v", err)
	}
	var want [][]byte
	for i := 0; i < 5; i++ {
		data := []byte(fmt.Sprintf(`["%04x"]`, i))
		want = append(want, data)
		v, err := st.Put(ctx, mustSeal(t, NewBackup(KindCLN, data, 1)))
		if err != nil {
			t.Fatal(err)
		}
		if v.Seq != uint64(i+1) {
			t.Fatalf("seq %d, want %d", v.Seq, i+1)
		}
	}
	if fi, err := os.Stat(base + DirSuffix); err != nil || !fi.IsDir() {
		t.Fatalf("file: URL must keep SCBs in %s: %v", base+DirSuffix, err)
	}
	vs, err := st.List(ctx)
	if err != nil || len(vs) != 5 {
		t.Fatalf("list: %v %d", err, len(vs))
	}
	for i, v := range vs {
		if v.Err != nil || v.Kind != KindCLN || v.Channels != 1 {
			t.Fatalf("version %d: %+v", i, v)
		}
		data, _, err := Fetch(ctx, st, v, nil)
		if err != nil || string(data) != string(want[i]) {
			t.Fatalf("version %d: %q %v", i, data, err)
		}
	}
	latest, err := Select(ctx, st, "", "")
	if err != nil || latest.Seq != 5 {
		t.Fatalf("latest: %+v %v", latest, err)
	}
	if v, err := Select(ctx, st, KindCLN, "2"); err != nil || v.Seq != 2 {
		t.Fatalf("select 2: %+v %v", v, err)
	}
	if _, err := Select(ctx, st, "", "99"); !errors.Is(err, ErrNoVersion) {
		t.Fatalf("select 99: %v", err)
	}
	// Refuses an invalid envelope, stores nothing.
	if _, err := st.Put(ctx, []byte("garbage")); err == nil {
		t.Fatal("garbage stored")
	}
	if vs, _ := st.List(ctx); len(vs) != 5 {
		t.Fatalf("garbage changed the store: %d versions", len(vs))
	}
}

func TestDirStoreSeveralKindsAndDamage(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "scb")
	st, err := OpenStore(ctx, "dir://"+dir, StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []Backup{
		NewBackup(KindCLN, []byte(`[]`), 0),
		NewBackup(KindCLNEmergency, randBytes(t, 100), -1),
		NewBackup(KindCLN, []byte(`["00"]`), 1),
	} {
		if _, err := st.Put(ctx, mustSeal(t, b)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Select(ctx, st, "", ""); err == nil || !strings.Contains(err.Error(), "--kind") {
		t.Fatalf("ambiguous latest: %v", err)
	}
	if v, err := Select(ctx, st, KindCLNEmergency, ""); err != nil || v.Seq != 2 {
		t.Fatalf("latest emergency: %+v %v", v, err)
	}
	// Damage the latest cln-scb version: it is listed as damaged and get of
	// the latest refuses instead of silently falling back to version 1.
	vs, _ := st.List(ctx)
	p := filepath.Join(dir, vs[2].ID+"."+string(KindCLN)+".scb")
	raw, _ := os.ReadFile(p)
	raw[len(raw)-40] ^= 0xff
	if err := os.WriteFile(p, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	vs, err = st.List(ctx)
	if err != nil || len(vs) != 3 || vs[2].Err == nil || !errors.Is(vs[2].Err, lnvault.ErrCorrupt) {
		t.Fatalf("damaged version not reported: %v %+v", err, vs)
	}
	if _, err := Select(ctx, st, KindCLN, ""); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("damaged latest: %v", err)
	}
	if v, err := Select(ctx, st, KindCLN, "1"); err != nil || v.Seq != 1 {
		t.Fatalf("older version: %v", err)
	}
	// Foreign files and crash leftovers are ignored.
	os.WriteFile(filepath.Join(dir, ".tmp-123"), []byte("partial"), 0o600)
	os.WriteFile(filepath.Join(dir, "README"), []byte("x"), 0o600)
	if vs, _ := st.List(ctx); len(vs) != 3 {
		t.Fatalf("leftovers listed: %d", len(vs))
	}
}

func TestDirStoreBadURLs(t *testing.T) {
	ctx := context.Background()
	f := filepath.Join(t.TempDir(), "plainfile")
	os.WriteFile(f, []byte("x"), 0o600)
	for _, u := range []string{"dir://host/x", "dir://" + f, "nope:///x", "dir:///x?y=1", "file://"} {
		if _, err := OpenStore(ctx, u, StoreOptions{}); err == nil {
			t.Errorf("%s accepted", u)
		}
	}
	st, _ := OpenStore(ctx, "dir:///nonexistent-parent-lnvault/x/y", StoreOptions{})
	if _, err := st.Put(ctx, mustSeal(t, NewBackup(KindCLN, []byte("[]"), 0))); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("missing parent: %v", err)
	}
}

// Concurrent writers (two stores on one folder, as two processes would be)
// never overwrite each other: every Put gets its own sequence number.
func TestDirStoreConcurrentPuts(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "scb")
	a, _ := OpenDir(dir, StoreOptions{})
	b, _ := OpenDir(dir, StoreOptions{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	seqs := map[uint64]bool{}
	for w, st := range []*DirStore{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				v, err := st.Put(ctx, mustSeal(t, NewBackup(KindCLN, []byte(fmt.Sprintf(`["%d%02d"]`, w, i)), 1)))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if seqs[v.Seq] {
					t.Errorf("seq %d given twice", v.Seq)
				}
				seqs[v.Seq] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	vs, err := a.List(ctx)
	if err != nil || len(vs) != 40 {
		t.Fatalf("%v: %d versions, want 40", err, len(vs))
	}
}
