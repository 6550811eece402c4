package backupplugin

import (
	"errors"
	"testing"

	"github.com/lnvault/lnvault"
)

func TestFirstWrite(t *testing.T) {
	tx := []string{"UPDATE vars SET intval = intval + 1 WHERE name = 'data_version'"}
	off := []string{"PRAGMA foreign_keys = OFF;"}
	md := func(b, p uint32, n uint64) lnvault.Metadata {
		return lnvault.Metadata{Version: b, PrevVersion: p, VersionCount: n}
	}
	tests := []struct {
		name   string
		m      lnvault.Metadata
		d      uint32
		writes []string
		want   Action
		err    error
	}{
		{"in sync B==D-1", md(10, 9, 10), 11, tx, Append, nil},
		{"uncommitted change P==D-1: rewind", md(11, 10, 11), 11, tx, RewindAppend, nil},
		{"lost state: node behind by two", md(12, 11, 12), 11, tx, 0, ErrLostState},
		{"lost state: P > D-1", md(20, 19, 20), 5, tx, 0, ErrLostState},
		{"out of date: backup behind", md(5, 4, 5), 11, tx, 0, ErrOutOfDate},
		{"out of date: one behind", md(9, 8, 9), 11, tx, 0, ErrOutOfDate},
		{"migration repeat D==B PRAGMA only: append, no rewind", md(1, 0, 1), 1, off, Append, nil},
		{"migration repeat after a repeat", md(2, 2, 4), 2, []string{"PRAGMA foreign_keys = ON;"}, Append, nil},
		{"PRAGMA after an uncommitted change: rewind", md(3, 2, 5), 2, off, RewindAppend, nil},
		{"D==B transaction is the uncommitted change", md(1, 0, 1), 1, tx, RewindAppend, nil},
		{"empty backup accepts any version", md(0, 0, 0), 4711, tx, Append, nil},
		{"empty backup accepts version 1", md(0, 0, 0), 1, tx, Append, nil},
		{"after a rewind the reference sets prev 0: cannot rewind again", md(11, 0, 11), 11, tx, 0, ErrOutOfDate},
		{"mixed PRAGMA and SQL is a transaction", md(5, 4, 5), 5, append(off, tx...), RewindAppend, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := FirstWrite(tc.m, tc.d, tc.writes)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err = %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("FirstWrite = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestParseLock(t *testing.T) {
	for _, tc := range []struct {
		in   string
		urls []string
		bad  bool
	}{
		{`{"backend_url": "file:///a.dbak"}`, []string{"file:///a.dbak"}, false},
		{`{"backend_url": "file:///a", "backend_urls": ["socket:h:1", "file:///a"]}`, []string{"file:///a", "socket:h:1"}, false},
		{`{"backend_urls": ["s3://b/p"]}`, []string{"s3://b/p"}, false},
		{`{}`, nil, true},
		{`{"backend_url": ""}`, nil, true},
		{`not json`, nil, true},
		{``, nil, true},
	} {
		l, err := ParseLock([]byte(tc.in))
		if tc.bad {
			if err == nil {
				t.Errorf("ParseLock(%q) accepted", tc.in)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseLock(%q): %v", tc.in, err)
			continue
		}
		got := l.URLs()
		if len(got) != len(tc.urls) {
			t.Errorf("ParseLock(%q).URLs() = %v, want %v", tc.in, got, tc.urls)
			continue
		}
		for i := range got {
			if got[i] != tc.urls[i] {
				t.Errorf("ParseLock(%q).URLs() = %v, want %v", tc.in, got, tc.urls)
			}
		}
	}
}

func FuzzParseLock(f *testing.F) {
	f.Add([]byte(`{"backend_url": "file:///a.dbak"}`))
	f.Add([]byte(`{"backend_urls": ["socket:localhost:1", "s3://b/p"]}`))
	f.Add([]byte(`{"backend_url": 1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := ParseLock(data)
		if err == nil && len(l.URLs()) == 0 {
			t.Fatalf("accepted a lock without destination: %q", data)
		}
	})
}
