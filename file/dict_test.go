package file

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"regexp"
	"sort"
	"testing"

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

// TestGenerateDict rebuilds cln-sql-v1.dict (LNVAULT_GEN_DICT=1): Core
// Lightning's statement templates, literals blanked (numbers to 0, blobs to
// x”), so the dictionary holds SQL shapes and no node's data. The most
// frequent templates go last, closest to the data.
func TestGenerateDict(t *testing.T) {
	if os.Getenv("LNVAULT_GEN_DICT") != "1" {
		t.Skip("set LNVAULT_GEN_DICT=1 to regenerate the dictionary (only with a new codec number)")
	}
	hexLit := regexp.MustCompile(`x'[0-9a-fA-F]*'`)
	num := regexp.MustCompile(`\b\d+\b`)
	freq := map[string]int{}
	for _, r := range corpus.MustLoad() {
		for _, w := range r.Writes {
			s := num.ReplaceAllString(hexLit.ReplaceAllString(w, "x''"), "0")
			if len(s) > 2000 {
				continue
			}
			freq[s]++
		}
	}
	tpls := make([]string, 0, len(freq))
	for s := range freq {
		tpls = append(tpls, s)
	}
	sort.Slice(tpls, func(i, j int) bool {
		if freq[tpls[i]] != freq[tpls[j]] {
			return freq[tpls[i]] < freq[tpls[j]]
		}
		return tpls[i] < tpls[j]
	})
	var d []byte
	for _, s := range tpls {
		d = append(d, s...)
		d = append(d, 0)
	}
	if len(d) > dictSize {
		d = d[len(d)-dictSize:]
	}
	if err := os.WriteFile("cln-sql-v1.dict", d, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(d)
	t.Logf("wrote %d bytes, %d templates, sha256 %s", len(d), len(tpls), hex.EncodeToString(sum[:]))
}
