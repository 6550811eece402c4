package socket

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/internal/testnet"
	"github.com/lnvault/lnvault/wire"
)

// slowRestoreServer answers METADATA at once and, after RESTORE, stays silent
// for delay (a server compressing a large snapshot) before its first packet.
func slowRestoreServer(t *testing.T, delay time.Duration) string {
	t.Helper()
	ln := testnet.Serve(t, "tcp", "127.0.0.1:0", func(c net.Conn) {
		rd, wr := wire.NewReader(c, wire.Limits{}), wire.NewWriter(c)
		defer rd.Close()
		for {
			p, err := rd.Next()
			if err != nil {
				return
			}
			switch p.Type {
			case wire.TypeReqMetadata:
				wr.WriteMetadata(lnvault.Metadata{Version: 7, PrevVersion: 6, VersionCount: 1})
			case wire.TypeRestore:
				time.Sleep(delay)
				wr.WriteChange(lnvault.NewTransaction(7, []string{"SELECT 1"}))
				wr.WriteEmpty(wire.TypeDone)
			}
		}
	})
	return ln.Addr().String()
}

// A restore waits for the server's first packet as long as a compaction may
// take (compact_timeout), not one request's timeout; past it, the error
// names compact_timeout.
func TestRestoreWaitsForASlowFirstPacket(t *testing.T) {
	ctx := context.Background()
	addr := slowRestoreServer(t, 800*time.Millisecond)
	stream := func(params string) ([]uint32, error) {
		b, err := Open(ctx, "socket:"+addr+"?"+params, lnvault.OpenOptions{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		var got []uint32
		err = b.Stream(ctx, 0, func(c *lnvault.Change) error { got = append(got, c.Version); return nil })
		return got, err
	}
	if got, err := stream("timeout=200ms&compact_timeout=10s"); err != nil || len(got) != 1 || got[0] != 7 {
		t.Fatalf("restore with a silent first packet within compact_timeout: %v %v", got, err)
	}
	if _, err := stream("timeout=200ms&compact_timeout=400ms"); err == nil || !strings.Contains(err.Error(), "compact_timeout=") {
		t.Fatalf("restore past compact_timeout: %v", err)
	}
}
