package file

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/corpus"
)

// The dictionary is part of format 2 (codec 2): its bytes must never change.
// A new dictionary would need a new codec number.
const dictSHA256 = "1fb23454860b619cdc9a61d8e5c2cc51e91acfdc638a3329cc30bbff2fe9255d"

func TestDictPinned(t *testing.T) {
	sum := sha256.Sum256(clnDict)
	if got := hex.EncodeToString(sum[:]); got != dictSHA256 {
		t.Fatalf("embedded dictionary changed: sha256 %s, pinned %s; files written with codec 2 would become unreadable", got, dictSHA256)
	}
}

// Backups whose transactions lnvault stored with the dictionary (codec 2, as
// earlier releases wrote them; testdata/v2-dict.dbak holds the first 300
// corpus changes) read back exactly, and a writer appends to them (raw).
func TestReadsDictRecords(t *testing.T) {
	reqs := corpus.MustLoad()[:310]
	data, err := os.ReadFile("testdata/v2-dict.dbak")
	if err != nil {
		t.Fatal(err)
	}
	url, path := tempURL(t, "old.dbak")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(data, []byte("INSERT INTO")); n > 10 {
		t.Fatalf("the vector holds %d plain INSERT INTO: its records are not compressed", n)
	}
	r := mustOpen(t, url, lnvault.OpenOptions{ReadOnly: true})
	checkSame(t, streamAll(t, r, 0), reqs[:300])
	r.Close()
	w := mustOpen(t, url, lnvault.OpenOptions{})
	appendAll(t, w, reqs[300:])
	w.Close()
	checkSame(t, streamAll(t, mustOpen(t, url, lnvault.OpenOptions{ReadOnly: true}), 0), reqs)
}
