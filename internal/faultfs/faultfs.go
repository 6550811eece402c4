// Package faultfs is a FUSE loopback filesystem (hanwen/go-fuse) that fails
// chosen operations on command: the next write or fsync of a file answers
// EIO (or any errno), as a failing disk does. Tests mount it, put a backup on
// it, and check what lnvault does with the error.
package faultfs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Op is an operation that can be made to fail.
type Op string

const (
	Write Op = "write" // write(2), pwrite(2)
	Fsync Op = "fsync" // fsync(2) and fdatasync(2)
)

// FS is one mount of Root at Mnt.
type FS struct {
	Root string // the real directory
	Mnt  string // what the code under test uses
	srv  *fuse.Server

	mu     sync.Mutex
	rules  []*rule
	failed []string // what failed, for messages
}

type rule struct {
	op    Op
	name  string // base name of the file
	skip  int    // matching operations to let through first
	below int64  // writes only: match those starting below this offset (0: any)
	errno syscall.Errno
}

// Mount mounts a new FS under dir (root/ holds the data, mnt/ is the mount).
func Mount(dir string) (*FS, error) {
	f := &FS{Root: filepath.Join(dir, "root"), Mnt: filepath.Join(dir, "mnt")}
	for _, d := range []string{f.Root, f.Mnt} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	var st syscall.Stat_t
	if err := syscall.Stat(f.Root, &st); err != nil {
		return nil, err
	}
	root := &fs.LoopbackRoot{Path: f.Root, Dev: uint64(st.Dev)}
	root.NewNode = func(r *fs.LoopbackRoot, _ *fs.Inode, _ string, _ *syscall.Stat_t) fs.InodeEmbedder {
		return &node{LoopbackNode: fs.LoopbackNode{RootData: r}, fs: f}
	}
	rootNode := root.NewNode(root, nil, "", &st)
	root.RootNode = rootNode
	sec := time.Second
	srv, err := fs.Mount(f.Mnt, rootNode, &fs.Options{
		AttrTimeout:  &sec,
		EntryTimeout: &sec,
		MountOptions: fuse.MountOptions{FsName: "faultfs", Name: "faultfs", DisableXAttrs: true, DirectMount: true},
	})
	if err != nil {
		return nil, fmt.Errorf("mounting faultfs (FUSE: needs /dev/fuse and fusermount3 or root): %w", err)
	}
	f.srv = srv
	return f, nil
}

// Close unmounts.
func (f *FS) Close() error {
	return f.srv.Unmount()
}

// FailNext makes the next op on the file named name (a base name) fail
// with errno, after letting skip such operations through.
func (f *FS) FailNext(op Op, name string, skip int, errno syscall.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules = append(f.rules, &rule{op: op, name: name, skip: skip, errno: errno})
}

// FailNextWriteBelow makes the next write to name that starts below offset
// fail with errno: the header of a backup file, not its records. (A write
// the kernel splits at a page boundary is several FUSE writes; a failure of
// a later one is a short write, which the writer completes.)
func (f *FS) FailNextWriteBelow(name string, offset int64, errno syscall.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules = append(f.rules, &rule{op: Write, name: name, below: offset, errno: errno})
}

// Pending tells whether a failure asked for has not happened yet.
func (f *FS) Pending() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.rules) > 0
}

// Failed lists the operations that were failed so far.
func (f *FS) Failed() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.failed...)
}

func (f *FS) check(op Op, name string, off int64) syscall.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, r := range f.rules {
		if r.op != op || r.name != name || r.below > 0 && off >= r.below {
			continue
		}
		if r.skip > 0 {
			r.skip--
			return 0
		}
		f.rules = append(f.rules[:i], f.rules[i+1:]...)
		f.failed = append(f.failed, fmt.Sprintf("%s %s: %v", op, name, r.errno))
		return r.errno
	}
	return 0
}

type node struct {
	fs.LoopbackNode
	fs *FS
}

func (n *node) wrap(fh fs.FileHandle, name string) fs.FileHandle {
	if lf, ok := fh.(*fs.LoopbackFile); ok {
		return &file{LoopbackFile: lf, fs: n.fs, name: name}
	}
	return fh
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	fh, ff, errno := n.LoopbackNode.Open(ctx, flags)
	if errno != 0 {
		return nil, 0, errno
	}
	return n.wrap(fh, n.EmbeddedInode().Path(nil)), ff, 0
}

func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	in, fh, ff, errno := n.LoopbackNode.Create(ctx, name, flags, mode, out)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	return in, n.wrap(fh, name), ff, 0
}

// file fails its writes and fsyncs on command; the rest is the loopback's.
type file struct {
	*fs.LoopbackFile
	fs   *FS
	name string // base name at open
}

func (f *file) base() string { return filepath.Base(f.name) }

// PassthroughFd says no: with FUSE passthrough the kernel would read and
// write the backing file itself, past the failures.
func (f *file) PassthroughFd() (int, bool) { return 0, false }

func (f *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if errno := f.fs.check(Write, f.base(), off); errno != 0 {
		return 0, errno
	}
	return f.LoopbackFile.Write(ctx, data, off)
}

func (f *file) Writev(ctx context.Context, data [][]byte, off int64) (uint32, syscall.Errno) {
	if errno := f.fs.check(Write, f.base(), off); errno != 0 {
		return 0, errno
	}
	return f.LoopbackFile.Writev(ctx, data, off)
}

func (f *file) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	if errno := f.fs.check(Fsync, f.base(), 0); errno != 0 {
		return errno
	}
	return f.LoopbackFile.Fsync(ctx, flags)
}

var (
	_ fs.NodeOpener   = (*node)(nil)
	_ fs.NodeCreater  = (*node)(nil)
	_ fs.FileWriter   = (*file)(nil)
	_ fs.FileWritever = (*file)(nil)
	_ fs.FileFsyncer  = (*file)(nil)
	_ fs.FileReleaser = (*file)(nil)
)
