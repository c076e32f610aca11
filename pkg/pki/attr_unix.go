//go:build !windows

package pki

import (
	"io/fs"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

func attrOf(st fs.FileInfo) Attr {
	a := Attr{Mode: st.Mode().Perm()}
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		a.UID, a.GID = int(s.Uid), int(s.Gid)
	}
	return a
}

func chown(f *os.File, a Attr) error { return f.Chown(a.UID, a.GID) }

// writable asks the kernel (access(2)): it answers EROFS for a read-only
// mount and EACCES where the user may not write, and creates nothing.
func writable(dir string) error { return unix.Access(dir, unix.W_OK) }
