package lnvault_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/backends"
)

// Tests open URLs: wire the storage in, as the binary does.
func TestMain(m *testing.M) {
	backends.Register()
	os.Exit(m.Run())
}

func TestCheckNext(t *testing.T) {
	for _, tc := range []struct {
		name string
		head lnvault.Metadata
		next uint32
		kind lnvault.Kind
		ok   bool
	}{
		{"empty backup takes any version", lnvault.Metadata{}, 4711, lnvault.KindTransaction, true},
		{"next version", lnvault.Metadata{Version: 5, PrevVersion: 4, VersionCount: 5}, 6, lnvault.KindTransaction, true},
		{"migration repeat", lnvault.Metadata{Version: 1, VersionCount: 1}, 1, lnvault.KindTransaction, true},
		{"skip", lnvault.Metadata{Version: 5, VersionCount: 5}, 7, lnvault.KindTransaction, false},
		{"backwards", lnvault.Metadata{Version: 5, VersionCount: 5}, 4, lnvault.KindTransaction, false},
		{"rewound to zero but not empty", lnvault.Metadata{Version: 0, VersionCount: 1}, 3, lnvault.KindTransaction, false},
		{"snapshot jumps ahead (a healed gap)", lnvault.Metadata{Version: 5, VersionCount: 5}, 90, lnvault.KindSnapshot, true},
		{"snapshot at the next version", lnvault.Metadata{Version: 5, VersionCount: 5}, 6, lnvault.KindSnapshot, true},
		{"snapshot behind the head", lnvault.Metadata{Version: 5, VersionCount: 5}, 4, lnvault.KindSnapshot, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := lnvault.CheckNext(tc.head, tc.next, tc.kind)
			if (err == nil) != tc.ok {
				t.Fatalf("CheckNext(%+v, %s %d) = %v, want ok=%v", tc.head, tc.kind, tc.next, err, tc.ok)
			}
			if err != nil && !errors.Is(err, lnvault.ErrVersion) {
				t.Fatalf("error %v does not wrap ErrVersion", err)
			}
		})
	}
}

func TestCorruptError(t *testing.T) {
	err := error(&lnvault.CorruptError{Offset: 1024, Version: 7, Reason: "checksum mismatch"})
	if !errors.Is(err, lnvault.ErrCorrupt) {
		t.Fatal("CorruptError must wrap ErrCorrupt")
	}
	if got := err.Error(); got != "backup is corrupt at offset 1024 (version 7): checksum mismatch" {
		t.Fatalf("message %q", got)
	}
	obj := &lnvault.CorruptError{Offset: -1, Object: "g/segments/1-2.seg.zst", Reason: "missing"}
	if !strings.Contains(obj.Error(), "in object g/segments/1-2.seg.zst") {
		t.Fatalf("message %q does not name the object", obj.Error())
	}
}

func TestSchemeAndUnknownURL(t *testing.T) {
	for in, want := range map[string]string{
		"file:///x":        "file",
		"socket:host:1":    "socket",
		"S3://bucket/p":    "s3",
		"/no/scheme":       "",
		":empty":           "",
		"socket:[::1]:123": "socket",
	} {
		if got := lnvault.Scheme(in); got != want {
			t.Errorf("Scheme(%q) = %q, want %q", in, got, want)
		}
	}
	_, err := lnvault.Open(context.Background(), "ftp://host/x", lnvault.OpenOptions{})
	if err == nil || !strings.Contains(err.Error(), `unsupported backup URL "ftp://host/x"`) {
		t.Fatalf("unknown scheme: %v", err)
	}
}

func TestRegisterTwicePanics(t *testing.T) {
	open := func(context.Context, string, lnvault.OpenOptions) (lnvault.Backend, error) { return nil, nil }
	lnvault.Register("test-twice", open)
	defer func() {
		if recover() == nil {
			t.Fatal("registering a scheme twice must panic")
		}
	}()
	lnvault.Register("test-twice", open)
}

func TestIsPragmaOnly(t *testing.T) {
	for _, tc := range []struct {
		w    []string
		want bool
	}{
		{[]string{"PRAGMA foreign_keys = OFF;"}, true},
		{[]string{"pragma  FOREIGN_KEYS=on"}, true},
		{[]string{"PRAGMA foreign_keys = OFF;", "PRAGMA foreign_keys = ON;"}, true},
		{[]string{"PRAGMA journal_mode = WAL"}, false},
		{[]string{"PRAGMA foreign_keys = OFF;", "DELETE FROM x"}, false},
		{nil, false},
	} {
		if got := lnvault.IsPragmaOnly(tc.w); got != tc.want {
			t.Errorf("IsPragmaOnly(%q) = %v", tc.w, got)
		}
	}
}
