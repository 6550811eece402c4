package bench

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lnvault/lnvault"
	"github.com/lnvault/lnvault/server"
)

// Against a backup server there is no local disk to fdatasync on: the
// baseline is the server's request round trip, measured in the same run.
// The server's backup, empty before, is emptied again after the run.
func TestRunSocketHasRoundTripBaseline(t *testing.T) {
	ctx := context.Background()
	fb, err := lnvault.Open(ctx, "file://"+filepath.Join(t.TempDir(), "srv.dbak"), lnvault.OpenOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- server.New(server.Config{}, fb).Serve(sctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	res, err := Run(ctx, Options{Bin: os.Args[0], URL: "socket:" + ln.Addr().String(), Changes: 50, Size: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if res.Ack.N != 51 || res.Raw == nil || res.RawLabel != "round trip" || res.Raw.N != roundTripsPerSlice || res.Raw.P50 <= 0 || res.P50Ratio <= 0 {
		t.Fatalf("result: %+v", res)
	}
	var out bytes.Buffer
	res.Print(&out)
	if !strings.Contains(out.String(), "round trip") || !strings.Contains(out.String(), "ratio") {
		t.Fatalf("printed:\n%s", out.String())
	}
	// The bench's changes reached the server (51 acknowledged, above),
	// and were deleted after the run: the server serves its backup empty.
	if m := fb.Metadata(); m != (lnvault.Metadata{}) {
		t.Fatalf("after the bench the server holds %+v, want its backup emptied", m)
	}
}
