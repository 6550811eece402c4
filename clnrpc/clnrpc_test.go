package clnrpc

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lnvault/lnvault/internal/testnet"
)

// serve answers each request on a unix socket with reply(request).
func serve(t testing.TB, reply func(req map[string]any) []byte) string {
	d, err := os.MkdirTemp("", "clnrpc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	path := filepath.Join(d, "lightning-rpc")
	testnet.Serve(t, "unix", path, func(c net.Conn) {
		var req map[string]any
		if json.NewDecoder(c).Decode(&req) != nil {
			return
		}
		c.Write(reply(req))
	})
	return path
}

func TestCall(t *testing.T) {
	path := serve(t, func(req map[string]any) []byte {
		id, _ := json.Marshal(req["id"])
		switch req["method"] {
		case "getinfo":
			// A notification first, and the answer split from it.
			return []byte(`{"jsonrpc":"2.0","method":"message","params":{}}` + "\n" + `{"jsonrpc":"2.0","id":` + string(id) + `,"result":{"id":"02ab","blockheight":7}}`)
		case "fail":
			return []byte(`{"jsonrpc":"2.0","id":` + string(id) + `,"error":{"code":-32601,"message":"Unknown command 'fail'"}}`)
		case "wrongid":
			return []byte(`{"jsonrpc":"2.0","id":"other","result":{}}`)
		case "slow":
			time.Sleep(2 * time.Second)
		}
		return []byte(`garbage`)
	})
	c := New(path)
	ctx := context.Background()
	var info struct {
		ID          string `json:"id"`
		BlockHeight int    `json:"blockheight"`
	}
	if err := c.Call(ctx, "getinfo", nil, &info); err != nil || info.ID != "02ab" || info.BlockHeight != 7 {
		t.Fatalf("getinfo: %+v %v", info, err)
	}
	var rerr *Error
	if err := c.Call(ctx, "fail", map[string]any{}, nil); !errors.As(err, &rerr) || rerr.Code != -32601 || rerr.Method != "fail" {
		t.Fatalf("fail: %v", err)
	}
	if err := c.Call(ctx, "wrongid", nil, nil); err == nil || !strings.Contains(err.Error(), "expected") {
		t.Fatalf("wrongid: %v", err)
	}
	if err := c.Call(ctx, "garbage", nil, nil); err == nil {
		t.Fatal("garbage answer accepted")
	}
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := c.Call(cctx, "slow", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow: %v", err)
	}
	if err := New(filepath.Join(t.TempDir(), "none")).Call(ctx, "getinfo", nil, nil); err == nil || !strings.Contains(err.Error(), "connecting to lightningd") {
		t.Fatalf("missing socket: %v", err)
	}
	c.Close()
	if err := c.Call(ctx, "getinfo", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("closed: %v", err)
	}
}

// FuzzCallAnswer: whatever lightningd answers, Call returns (an error or a
// result) without panicking.
func FuzzCallAnswer(f *testing.F) {
	f.Add([]byte(`{"jsonrpc":"2.0","id":"lnvault:x#1","result":{"a":1}}`))
	f.Add([]byte(`{"jsonrpc":"2.0","id":"lnvault:x#1","error":{"code":1,"message":"m","data":{}}}`))
	f.Add([]byte(`{"method":"log"}{"id":"lnvault:x#1","result":null}`))
	f.Fuzz(func(t *testing.T, answer []byte) {
		path := serve(t, func(map[string]any) []byte { return answer })
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var out any
		New(path).Call(ctx, "x", nil, &out)
	})
}
