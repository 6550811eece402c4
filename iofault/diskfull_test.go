package iofault

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// mountTmpfs mounts a tmpfs of size bytes at a new directory.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "small")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		need(t, errors.New("the disk-full test mounts a small tmpfs: it needs root (mount -t tmpfs): "+strings.TrimSpace(string(out))))
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

// fill writes a filler file until the filesystem holding dir has at most
// free bytes left.
func fill(t *testing.T, dir string, free int64) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		var st syscallStatfs
		if err := statfs(dir, &st); err != nil {
			t.Fatal(err)
		}
		if st.free() <= free {
			return p
		}
		if _, err := f.Write(buf); err != nil {
			return p // full already
		}
	}
}

// A disk that fills up under the backup: the db_write that does not fit is
// answered with an error (never continue), the backup still verifies, a
// restarted node on the still-full disk is refused again, and once space is
// freed the restarted node goes on where it was, with nothing lost.
func TestDiskFull(t *testing.T) {
	for _, format := range []string{"1", "2"} {
		t.Run("format"+format, func(t *testing.T) {
			dir := mountTmpfs(t, "4m")
			url := "file://" + filepath.Join(dir, "node.dbak")
			if out, err := exec.Command(lnvaultBin, "init", "--format", format, url).CombinedOutput(); err != nil {
				t.Fatalf("lnvault init: %v: %s", err, out)
			}
			n := newNode(t, url)
			for i := 0; i < 50; i++ {
				if err := n.write(); err != nil {
					t.Fatalf("write %d with space left: %v", i, err)
				}
			}
			// Less room than format 2 preallocates ahead (1 MiB): the
			// appends themselves run out of space.
			filler := fill(t, dir, 160<<10)
			var full error
			for n.next < len(n.reqs)-200 && full == nil {
				full = n.write()
			}
			if full == nil {
				t.Fatalf("%d writes went through on a full disk", n.next)
			}
			if !strings.Contains(full.Error(), "no space left") {
				t.Errorf("the error does not say the disk is full: %v", full)
			}
			t.Logf("full after %d changes: %v", n.next, full)
			n.checkBackup("disk full")
			// lightningd stops on the error and is started again: still full.
			n.restart()
			if err := n.write(); err == nil {
				t.Fatal("a write on the still-full disk was acknowledged")
			}
			n.checkBackup("still full after a restart")
			// The operator frees space; lightningd starts again.
			if err := os.Remove(filler); err != nil {
				t.Fatal(err)
			}
			n.restart()
			for i := 0; i < 100; i++ {
				if err := n.write(); err != nil {
					t.Fatalf("write %d after space was freed: %v", i, err)
				}
			}
			n.checkBackup("after space was freed")
			n.finish()
		})
	}
}
