package harness

import (
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"strings"

	"github.com/lnvault/lnvault/internal/corpus"
)

// Synthetic returns n CLN-shaped db_write requests with data_version first,
// first+1, ... Each stores about size bytes in the datastore table (the blob
// is inlined as x'..', as lightningd does) and ends with lightningd's
// data_version bump. With schema, an extra first request (version first)
// creates corpus.Schema and the data_version row, so that the workload runs
// against an empty database; the n changes follow it.
func Synthetic(first uint32, n, size int, schema bool, seed uint64) []corpus.Request {
	rng := rand.New(rand.NewPCG(seed, 0x6c6e7661756c74))
	var out []corpus.Request
	v := first
	if schema {
		var writes []string
		for _, s := range strings.Split(corpus.Schema, ";\n") {
			if s = strings.TrimSpace(s); s != "" {
				writes = append(writes, strings.TrimSuffix(s, ";")+";")
			}
		}
		writes = append(writes, fmt.Sprintf("INSERT INTO vars (name, intval) VALUES ('data_version', %d);", v))
		out = append(out, corpus.Request{ID: fmt.Sprintf("cln:db_write#s%d", v), DataVersion: v, Writes: writes})
		v++
	}
	payload := max(size-180, 16) / 2 // hex doubles the bytes; ~180 bytes of SQL around
	buf := make([]byte, payload)
	for i := 0; i < n; i++ {
		for j := range buf {
			buf[j] = byte(rng.Uint32())
		}
		key := fmt.Sprintf("lnvault-bench/%d/%d", seed, v)
		writes := []string{
			fmt.Sprintf("INSERT OR REPLACE INTO datastore VALUES (x'%s', x'%s', %d);", hex.EncodeToString([]byte(key)), hex.EncodeToString(buf), i),
			fmt.Sprintf("UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = %d", v-1),
		}
		out = append(out, corpus.Request{ID: fmt.Sprintf("cln:db_write#s%d", v), DataVersion: v, Writes: writes})
		v++
	}
	return out
}
