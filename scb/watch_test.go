package scb

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// lndMulti returns a plausible packed multi: random nonce, ciphertext, tag.
func lndMulti(t testing.TB) []byte {
	return randBytes(t, LNDMinMulti+rand.IntN(3000))
}

// lndSwap replaces path the way lnd's MultiFile.UpdateAndSwap does: a temp
// file in the same folder, fsync, rename over the old one.
func lndSwap(t testing.TB, path string, data []byte) {
	tmp := filepath.Join(filepath.Dir(path), "temp-dont-use.backup")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// slowInPlace rewrites path in place in small chunks with sleeps shorter
// than the settle time; keepOpen holds one descriptor for the whole write
// (the lease check sees it), otherwise each chunk reopens the file (only the
// two-read check can tell).
func slowInPlace(t testing.TB, path string, data []byte, keepOpen bool) {
	const chunk = 97
	if keepOpen {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(data); i += chunk {
			f.Write(data[i:min(i+chunk, len(data))])
			time.Sleep(time.Duration(5+rand.IntN(25)) * time.Millisecond)
		}
		f.Close()
		return
	}
	if err := os.Truncate(path, 0); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for i := 0; i < len(data); i += chunk {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		f.Write(data[i:min(i+chunk, len(data))])
		f.Close()
		time.Sleep(time.Duration(5+rand.IntN(25)) * time.Millisecond)
	}
}

func TestWatchShipsOnlyWholeVersions(t *testing.T) {
	writers := []struct {
		name     string
		versions int
		write    func(t testing.TB, path string, data []byte)
	}{
		{"lnd rename", 15, lndSwap},
		{"in place, one descriptor", 5, func(t testing.TB, p string, d []byte) { slowInPlace(t, p, d, true) }},
		{"in place, reopened per chunk", 5, func(t testing.TB, p string, d []byte) { slowInPlace(t, p, d, false) }},
	}
	for _, w := range writers {
		t.Run(w.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			dir := t.TempDir()
			path := filepath.Join(dir, "channel.backup")
			st, _ := OpenDir(filepath.Join(dir, "dest"), StoreOptions{})
			k, err := New(Config{
				Kind:     KindLNDMulti,
				Source:   &FileSource{Path: path, Kind: KindLNDMulti, Settle: 300 * time.Millisecond},
				Swappers: []Swapper{&StoreSwapper{Store: st}},
				// A short debounce and MaxDelay make fetches happen while the
				// writer is mid-file: the source's checks must hold alone.
				Debounce: 10 * time.Millisecond,
				MaxDelay: 20 * time.Millisecond,
				RetryMin: 20 * time.Millisecond,
				RetryMax: 200 * time.Millisecond,
				Logger:   quiet,
			})
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- k.Run(ctx) }()
			go WatchFile(ctx, path, 40*time.Millisecond, k, quiet)

			written := map[string]bool{}
			var last []byte
			for i := 0; i < w.versions; i++ {
				data := lndMulti(t)
				written[string(data)] = true
				w.write(t, path, data)
				last = data
				time.Sleep(time.Duration(rand.IntN(400)) * time.Millisecond)
			}
			waitFor(t, "the last version shipped", func() bool {
				v, err := Select(ctx, st, KindLNDMulti, "")
				if err != nil {
					return false
				}
				data, _, err := Fetch(ctx, st, v, nil)
				return err == nil && string(data) == string(last)
			})
			vs, err := st.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range vs {
				data, _, err := Fetch(ctx, st, v, nil)
				if err != nil {
					t.Fatal(err)
				}
				if !written[string(data)] {
					t.Errorf("version %d (%d bytes) is not one of the complete files written", v.Seq, len(data))
				}
			}
			t.Logf("%d versions written, %d shipped", w.versions, len(vs))
			cancel()
			<-done
		})
	}
}

func TestValidateLND(t *testing.T) {
	good := lndMulti(t)
	cases := []struct {
		name string
		data []byte
		ok   bool
	}{
		{"whole", good, true},
		{"nil multi (no channels)", randBytes(t, LNDMinMulti), true},
		{"empty", nil, false},
		{"too short", good[:LNDMinMulti-1], false},
		{"text", []byte(`{"scb": ["0000000000000001aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]}`), false},
		{"zero nonce", append(make([]byte, 24), good[24:]...), false},
		{"zero tail", append(good[:len(good)-16:len(good)-16], make([]byte, 16)...), false},
	}
	for _, tc := range cases {
		err := ValidateLND(tc.data)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v", tc.name, err)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v is not ErrInvalid", tc.name, err)
		}
	}
}

func TestReadStable(t *testing.T) {
	ctx := context.Background()
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, []byte("hello"), 0o600)
	if b, err := ReadStable(ctx, p, 20*time.Millisecond); err != nil || string(b) != "hello" {
		t.Fatalf("%q %v", b, err)
	}
	// Changed between the two reads.
	go func() {
		time.Sleep(30 * time.Millisecond)
		os.WriteFile(p, []byte("hello world"), 0o600)
	}()
	if _, err := ReadStable(ctx, p, 100*time.Millisecond); !errors.Is(err, ErrUnstable) {
		t.Fatalf("change not noticed: %v", err)
	}
	// Held open for writing.
	f, _ := os.OpenFile(p, os.O_WRONLY, 0)
	_, err := ReadStable(ctx, p, time.Millisecond)
	f.Close()
	if !errors.Is(err, ErrUnstable) || !strings.Contains(err.Error(), "open for writing") {
		t.Fatalf("a file held open for writing was read as stable: %v", err)
	}
}
