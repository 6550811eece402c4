// Package lazyfs mounts LazyFS (a FUSE filesystem with its own page cache
// that loses every unsynced write on command, and can tear a sequence of
// writes) for power-cut tests. The binary is $LNVAULT_LAZYFS, or
// <repo>/.tools/lazyfs/bin/lazyfs, built there from ../shared/tools/lazyfs
// when missing (root, /dev/fuse and Debian's packages needed).
package lazyfs

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Binary finds or builds lazyfs. The error says what is missing.
func Binary() (string, error) {
	binOnce.Do(func() {
		if p := os.Getenv("LNVAULT_LAZYFS"); p != "" {
			binPath = p
			return
		}
		dest := filepath.Join(repoRoot(), ".tools", "lazyfs")
		local := filepath.Join(dest, "bin", "lazyfs")
		if _, err := os.Stat(local); err == nil {
			binPath = local
			return
		}
		script := filepath.Join(repoRoot(), "..", "shared", "tools", "lazyfs", "build.sh")
		if _, err := os.Stat(script); err != nil {
			binErr = fmt.Errorf("the power-cut tests need LazyFS: its source and build script are in ../shared/tools/lazyfs/ beside the repository (or set LNVAULT_LAZYFS to a lazyfs binary): %w", err)
			return
		}
		if out, err := exec.Command("bash", script, dest).CombinedOutput(); err != nil {
			binErr = fmt.Errorf("building LazyFS with %s %s (needs root, /dev/fuse and apt: g++ cmake libfuse3-dev fuse3 libtoml11-dev libspdlog-dev): %v\n%s", script, dest, err, out)
			return
		}
		binPath = local
	})
	return binPath, binErr
}

// FS is one LazyFS mount of Root (a real directory) at Mnt.
type FS struct {
	bin   string
	dir   string
	Root  string // where the data really is
	Mnt   string // the mount point: what the code under test uses
	cfg   string
	fifo  string
	done  *os.File // the completion fifo, held open
	lines *bufio.Reader
	cmd   *exec.Cmd
	exit  chan struct{}
}

// Mount mounts a new LazyFS under dir (short: FUSE and unix paths).
func Mount(dir string) (*FS, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	fs := &FS{bin: bin, dir: dir, Root: filepath.Join(dir, "root"), Mnt: filepath.Join(dir, "mnt"),
		cfg: filepath.Join(dir, "lazyfs.toml"), fifo: filepath.Join(dir, "faults.fifo")}
	for _, d := range []string{fs.Root, fs.Mnt} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	done := filepath.Join(dir, "done.fifo")
	cfg := fmt.Sprintf(`[faults]
fifo_path=%q
fifo_path_completed=%q
[cache]
apply_eviction=false
[cache.simple]
custom_size="0.25GB"
blocks_per_page=1
[filesystem]
log_all_operations=false
logfile=%q
`, fs.fifo, done, filepath.Join(dir, "lazyfs.log"))
	if err := os.WriteFile(fs.cfg, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	if err := syscall.Mkfifo(done, 0o600); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, err
	}
	// Held open for reading and writing, or lazyfs reads no commands.
	if fs.done, err = os.OpenFile(done, os.O_RDWR, 0); err != nil {
		return nil, err
	}
	fs.lines = bufio.NewReader(fs.done)
	if err := fs.start(); err != nil {
		fs.done.Close()
		return nil, err
	}
	return fs, nil
}

func (fs *FS) start() error {
	cmd := exec.Command(fs.bin, fs.Mnt, "--config-path", fs.cfg, "-o", "allow_other", "-o", "modules=subdir", "-o", "subdir="+fs.Root, "-f")
	out, err := os.Create(filepath.Join(fs.dir, "lazyfs.out"))
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		out.Close()
		return fmt.Errorf("starting lazyfs: %w", err)
	}
	out.Close()
	exit := make(chan struct{})
	go func() { cmd.Wait(); close(exit) }()
	fs.cmd, fs.exit = cmd, exit
	deadline := time.Now().Add(30 * time.Second)
	for {
		if exec.Command("mountpoint", "-q", fs.Mnt).Run() == nil && fs.ready() {
			return nil
		}
		select {
		case <-exit:
			b, _ := os.ReadFile(filepath.Join(fs.dir, "lazyfs.out"))
			return fmt.Errorf("lazyfs exited while mounting: %s", strings.TrimSpace(string(b)))
		default:
		}
		if time.Now().After(deadline) {
			return errors.New("lazyfs did not mount within 30 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ready: lazyfs logs that its fault worker waits for commands.
func (fs *FS) ready() bool {
	b, _ := os.ReadFile(filepath.Join(fs.dir, "lazyfs.log"))
	return strings.Count(string(b), "waiting for fault commands") >= fs.starts()
}

func (fs *FS) starts() int {
	b, _ := os.ReadFile(filepath.Join(fs.dir, "lazyfs.log"))
	return max(1, strings.Count(string(b), "running LazyFS"))
}

// command writes one fault command to lazyfs.
func (fs *FS) command(c string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		f, err := os.OpenFile(fs.fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0)
		if err == nil {
			_, err = f.Write([]byte(c + "\n"))
			f.Close()
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lazyfs does not read its fault fifo: %w", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ClearCache drops every unsynced write: a power cut. Nothing may be doing
// I/O on the mount meanwhile (lazyfs can deadlock then).
func (fs *FS) ClearCache() error {
	if err := fs.command("lazyfs::clear-cache"); err != nil {
		return err
	}
	ch := make(chan error, 1)
	go func() {
		line, err := fs.lines.ReadString('\n')
		if err == nil && !strings.Contains(line, "clear-cache") {
			err = fmt.Errorf("lazyfs answered %q", line)
		}
		ch <- err
	}()
	select {
	case err := <-ch:
		return err
	case <-time.After(30 * time.Second):
		return errors.New("lazyfs did not finish clear-cache within 30 s")
	}
}

// TornSeq makes the next run of writes to path (under Mnt) without a sync in
// between persist only the listed writes (1-based), then crash lazyfs.
func (fs *FS) TornSeq(path string, persist ...int) error {
	ps := make([]string, len(persist))
	for i, p := range persist {
		ps[i] = fmt.Sprint(p)
	}
	return fs.command(fmt.Sprintf("lazyfs::torn-seq::op=write::file=%s::persist=%s", fs.under(path), strings.Join(ps, ",")))
}

// TornOp splits the next write to path into parts and persists only the
// listed parts, then crashes lazyfs.
func (fs *FS) TornOp(path string, parts int, persist ...int) error {
	ps := make([]string, len(persist))
	for i, p := range persist {
		ps[i] = fmt.Sprint(p)
	}
	return fs.command(fmt.Sprintf("lazyfs::torn-op::file=%s::parts=%d::persist=%s", fs.under(path), parts, strings.Join(ps, ",")))
}

// CrashBefore makes lazyfs crash (dropping unsynced data) at the next op
// (fsync, write, rename, ...) on a path matching rgx.
func (fs *FS) CrashBefore(op, rgx string) error { return fs.Crash("before", op, rgx) }

// Crash makes lazyfs crash before or after (timing) the next op on a path
// matching rgx.
func (fs *FS) Crash(timing, op, rgx string) error {
	return fs.command(fmt.Sprintf("lazyfs::crash::timing=%s::op=%s::from_rgx=%s", timing, op, rgx))
}

func (fs *FS) under(path string) string {
	if rel, err := filepath.Rel(fs.Mnt, path); err == nil && !strings.HasPrefix(rel, "..") {
		return filepath.Join(fs.Root, rel)
	}
	return path
}

// Crashed tells whether lazyfs has exited (after a crash fault).
func (fs *FS) Crashed() bool {
	select {
	case <-fs.exit:
		return true
	default:
		return false
	}
}

// WaitCrashed waits up to d for lazyfs to exit and tells whether it did.
func (fs *FS) WaitCrashed(d time.Duration) bool {
	select {
	case <-fs.exit:
		return true
	case <-time.After(d):
		return false
	}
}

// Remount ends lazyfs (discarding what is unsynced) and mounts it again over
// the same root: the machine is back after the power cut.
func (fs *FS) Remount() error {
	fs.kill()
	return fs.start()
}

func (fs *FS) kill() {
	if fs.cmd != nil && fs.cmd.Process != nil {
		fs.cmd.Process.Signal(syscall.SIGKILL)
		<-fs.exit
	}
	exec.Command("fusermount3", "-uz", fs.Mnt).Run()
}

// Close unmounts.
func (fs *FS) Close() error {
	fs.kill()
	return fs.done.Close()
}
