package iofault

import (
	"path/filepath"
	"syscall"
	"testing"

	"github.com/lnvault/lnvault/internal/faultfs"
	"github.com/lnvault/lnvault/internal/harness"
)

// lnvault server's disk fails an fsync: the change is refused (the plugin
// answers an error, never continue), the server stores nothing more until it
// is restarted (the state of its file is unknown: no second fsync that would
// pretend), its store verifies, and once it is restarted the restarted node
// goes on with nothing lost.
func TestServerStoreIOError(t *testing.T) {
	ff := mountFaultFS(t)
	srv := harness.NewServerProc(t, lnvaultBin, "file://"+filepath.Join(ff.Mnt, "store.dbak"))
	srv.Start(true)
	n := newNode(t, "socket:"+srv.Addr+"?retries=1&retry_delay=50ms")
	for i := 0; i < 60; i++ {
		if err := n.write(); err != nil {
			t.Fatalf("write %d on a working disk: %v", i, err)
		}
	}
	ff.FailNext(faultfs.Fsync, "store.dbak", 0, syscall.EIO)
	if err := n.write(); err == nil {
		t.Fatalf("the db_write went through though the server's fsync failed (%v)", ff.Failed())
	}
	if ff.Pending() {
		t.Fatal("the injected failure did not happen")
	}
	if err := n.write(); err == nil {
		t.Fatal("the server stored a change after its fsync failed, without re-reading its file")
	}
	srv.Kill()
	n.url = srv.URL // check the store itself
	n.checkBackup("the server's store after the I/O error")
	n.url = "socket:" + srv.Addr
	srv.Start(false)
	n.restart()
	for i := 0; i < 60; i++ {
		if err := n.write(); err != nil {
			t.Fatalf("write %d after the restarts: %v; server: %s", i, err, srv.Tail())
		}
	}
	n.finish()
}
