package tlskey

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKeysAndPins(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k.key")
	k, created, err := LoadOrCreate(path)
	if err != nil || !created {
		t.Fatalf("create: %v %v", created, err)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v %v", st.Mode(), err)
	}
	again, created, err := LoadOrCreate(path)
	if err != nil || created || again.Pin != k.Pin {
		t.Fatalf("reload: pin %s vs %s, created %v, %v", again.Pin, k.Pin, created, err)
	}
	if p, err := ParsePin(strings.ToUpper(k.Pin[len(PinPrefix):])); err == nil {
		t.Fatalf("a pin without its prefix parsed: %s", p)
	}
	if p, err := ParsePin("SHA256:" + strings.ToUpper(k.Pin[len(PinPrefix):])); err != nil || p != k.Pin {
		t.Fatalf("pin in upper case: %s %v", p, err)
	}
	for _, bad := range []string{"", "sha256:", "sha256:abcd", "md5:" + k.Pin[7:], k.Pin + "00"} {
		if _, err := ParsePin(bad); err == nil {
			t.Errorf("ParsePin(%q) accepted", bad)
		}
	}
	os.WriteFile(path, []byte("not a key"), 0o600)
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), "not a PEM PRIVATE KEY") {
		t.Fatalf("a damaged key file: %v", err)
	}
}

func TestAuthorizedKeys(t *testing.T) {
	k, _, _ := LoadOrCreate(filepath.Join(t.TempDir(), "k.key"))
	good := "# the nodes\n\n" + k.Pin + " alice's node\n"
	m, err := parseAuthorized("f", strings.NewReader(good))
	if err != nil || m[k.Pin] != "alice's node" || len(m) != 1 {
		t.Fatalf("%v %v", m, err)
	}
	for _, bad := range []string{"", "# nothing\n", "sha256:12 x\n"} {
		if _, err := parseAuthorized("f", strings.NewReader(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// An authorized keys file from anywhere never panics, and what it admits
// is canonical pins only.
func FuzzAuthorized(f *testing.F) {
	f.Add("sha256:" + strings.Repeat("ab", 32) + " node\n# c\n")
	f.Add("sha256:zz\n")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := parseAuthorized("f", strings.NewReader(s))
		if err != nil {
			return
		}
		for p := range m {
			if q, err := ParsePin(p); err != nil || q != p {
				t.Fatalf("admitted %q, not a canonical pin", p)
			}
		}
	})
}
