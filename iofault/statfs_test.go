package iofault

import "golang.org/x/sys/unix"

type syscallStatfs struct{ unix.Statfs_t }

func (s *syscallStatfs) free() int64 { return int64(s.Bavail) * int64(s.Bsize) }

func statfs(dir string, st *syscallStatfs) error { return unix.Statfs(dir, &st.Statfs_t) }
