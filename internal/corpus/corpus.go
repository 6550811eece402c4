// Package corpus embeds the real Core Lightning traffic that tests, benchmarks
// and the demo replay: every db_write request a CLN v26.06.6 node sent from
// its first start (migrations included), and the SHA-256 of `sqlite3 .dump`
// of the database that results.
package corpus

import (
	"bufio"
	"bytes"
	"compress/gzip"
	_ "embed"
	"encoding/json"
	"fmt"
	"strings"
	"sync"

	"github.com/lnvault/lnvault"
)

//go:embed db_write-corpus.jsonl.gz
var gz []byte

//go:embed db_write-corpus.final-dump.sha256
var finalDump string

//go:embed schema.sql
var Schema string

// FinalDumpSHA256 is the hex SHA-256 of `sqlite3 DB .dump` after every
// request of the corpus is applied.
func FinalDumpSHA256() string { return strings.TrimSpace(finalDump) }

// Request is one db_write hook request as lightningd sent it.
type Request struct {
	ID          string   // JSON-RPC id, e.g. "cln:db_write#21"
	DataVersion uint32   // params.data_version
	Writes      []string // params.writes
	Line        []byte   // the raw JSON-RPC line, without newline
}

// Change returns the request as a transaction change.
func (r Request) Change() *lnvault.Change {
	return lnvault.NewTransaction(r.DataVersion, r.Writes)
}

var (
	once    sync.Once
	loaded  []Request
	loadErr error
)

// Load returns every request of the corpus, in the order lightningd sent them.
// The slice is shared: do not modify it.
func Load() ([]Request, error) {
	once.Do(func() { loaded, loadErr = parse(gz) })
	return loaded, loadErr
}

// MustLoad is Load for tests and benchmarks.
func MustLoad() []Request {
	r, err := Load()
	if err != nil {
		panic(err)
	}
	return r
}

// Changes returns the corpus as changes.
func Changes() ([]*lnvault.Change, error) {
	reqs, err := Load()
	if err != nil {
		return nil, err
	}
	out := make([]*lnvault.Change, len(reqs))
	for i, r := range reqs {
		out[i] = r.Change()
	}
	return out, nil
}

func parse(data []byte) ([]Request, error) {
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("corpus: %w", err)
	}
	sc := bufio.NewScanner(zr)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	var out []Request
	for sc.Scan() {
		line := append([]byte(nil), sc.Bytes()...)
		var msg struct {
			ID     string `json:"id"`
			Method string `json:"method"`
			Params struct {
				DataVersion uint32   `json:"data_version"`
				Writes      []string `json:"writes"`
			} `json:"params"`
		}
		if err := json.Unmarshal(line, &msg); err != nil {
			return nil, fmt.Errorf("corpus line %d: %w", len(out)+1, err)
		}
		if msg.Method != "db_write" {
			return nil, fmt.Errorf("corpus line %d: method %q", len(out)+1, msg.Method)
		}
		out = append(out, Request{ID: msg.ID, DataVersion: msg.Params.DataVersion, Writes: msg.Params.Writes, Line: line})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("corpus: %w", err)
	}
	return out, nil
}
