package iofault

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/lnvault/lnvault/internal/faultfs"
)

func mountFaultFS(t *testing.T) *faultfs.FS {
	t.Helper()
	dir, err := os.MkdirTemp("", "lnv-ff-")
	if err != nil {
		t.Fatal(err)
	}
	f, err := faultfs.Mount(dir)
	if err != nil {
		os.RemoveAll(dir)
		need(t, err)
	}
	t.Cleanup(func() {
		f.Close()
		os.RemoveAll(dir)
	})
	return f
}

// A disk that fails one write or one fsync under the backup: the db_write is
// answered with an error, never continue; the backend does not try again on
// the same process (after a failed fsync Linux may have dropped the dirty
// pages, and a second fsync would say success): every later write of that
// process is refused too; a restarted node re-reads the backup from disk,
// settles the unacknowledged change by the first-write rule, and goes on
// with nothing lost.
func TestIOErrors(t *testing.T) {
	cases := []struct {
		name string
		arm  func(ff *faultfs.FS)
	}{
		{"fsync fails", func(ff *faultfs.FS) { ff.FailNext(faultfs.Fsync, "node.dbak", 0, syscall.EIO) }},
		{"record write fails", func(ff *faultfs.FS) { ff.FailNext(faultfs.Write, "node.dbak", 0, syscall.EIO) }},
		// Both formats keep their headers in the first KiB.
		{"header write fails", func(ff *faultfs.FS) { ff.FailNextWriteBelow("node.dbak", 1024, syscall.EIO) }},
	}
	for _, format := range []string{"1", "2"} {
		for _, c := range cases {
			t.Run("format"+format+"/"+c.name, func(t *testing.T) {
				ff := mountFaultFS(t)
				url := "file://" + filepath.Join(ff.Mnt, "node.dbak")
				if out, err := exec.Command(lnvaultBin, "init", "--format", format, url).CombinedOutput(); err != nil {
					t.Fatalf("lnvault init: %v: %s", err, out)
				}
				n := newNode(t, url)
				for i := 0; i < 60; i++ {
					if err := n.write(); err != nil {
						t.Fatalf("write %d on a working disk: %v", i, err)
					}
				}
				c.arm(ff)
				err := n.write()
				if ff.Pending() {
					t.Fatal("the injected failure did not happen")
				}
				if err == nil {
					t.Fatalf("the db_write went through though %v", ff.Failed())
				}
				if !strings.Contains(err.Error(), "input/output error") || !strings.Contains(err.Error(), "disk") {
					t.Errorf("the error does not name the I/O error and what to do: %v", err)
				}
				// The same process writes nothing more: the state on
				// disk is unknown until the file is read again.
				if err := n.write(); err == nil {
					t.Fatal("a db_write after the failure was acknowledged by the same process")
				}
				n.checkBackup("after the I/O error")
				n.restart()
				for i := 0; i < 60; i++ {
					if err := n.write(); err != nil {
						t.Fatalf("write %d after the restart: %v", i, err)
					}
				}
				n.checkBackup("after the restart")
				n.finish()
			})
		}
	}
}
