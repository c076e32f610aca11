//go:build !windows

package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// nodeLock is the node-wide lock of a transaction: an flock on a file in the
// backup folder of the host. Every agent of every run, in whatever pod or
// transport, locks the same inode, and the kernel drops the lock when its
// holder dies, so a crashed agent never leaves the node locked.
type nodeLock struct{ f *os.File }

// lockHolder is written into the lock file by its holder, for the error
// another run gets.
type lockHolder struct {
	Run   string    `json:"run,omitempty"`
	Node  string    `json:"node,omitempty"`
	PID   int       `json:"pid"`
	Since time.Time `json:"since"`
}

// errLocked is wrapped by the error of a lock held by someone else.
var errLocked = errors.New("another rotation holds this node")

// lockNode takes the node's lock without waiting. When another agent holds
// it, the error names its run, process and since when.
func lockNode(root string, me lockHolder) (*nodeLock, error) {
	dir, err := backupDir(root)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening the node lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", errLocked, describeHolder(f))
		}
		return nil, fmt.Errorf("locking the node: %w", err)
	}
	// Written in place: replacing the file would give others a new inode
	// to lock.
	data, _ := json.Marshal(me)
	if err := errors.Join(f.Truncate(0), writeAt0(f, data)); err != nil {
		f.Close()
		return nil, fmt.Errorf("writing the node lock: %w", err)
	}
	return &nodeLock{f: f}, nil
}

func writeAt0(f *os.File, data []byte) error {
	_, err := f.WriteAt(data, 0)
	return err
}

// lockedBy reports who holds the node's lock, or "" if nobody does. It
// needs no write access (read-only pods ask it).
func lockedBy(root string) string {
	dir, err := backupDirNoCreate(root)
	if err != nil {
		return ""
	}
	f, err := os.Open(filepath.Join(dir, ".lock"))
	if err != nil {
		return ""
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		return describeHolder(f)
	}
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return ""
}

func describeHolder(f *os.File) string {
	var h lockHolder
	buf := make([]byte, 4096)
	n, _ := f.ReadAt(buf, 0)
	if json.Unmarshal(buf[:n], &h) != nil || h.PID == 0 {
		return "held by an unknown process"
	}
	s := fmt.Sprintf("run %s (agent pid %d) since %s", h.Run, h.PID, h.Since.UTC().Format(time.RFC3339))
	if h.Run == "" {
		s = fmt.Sprintf("agent pid %d since %s", h.PID, h.Since.UTC().Format(time.RFC3339))
	}
	return s
}

func (l *nodeLock) unlock() {
	if l != nil && l.f != nil {
		_ = l.f.Truncate(0)
		_ = unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
		l.f.Close()
	}
}

// hold locks path (shared with nobody) until release is called or the
// process ends.
func hold(path string) (release func(), err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// held tells whether some process holds path with hold.
func held(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		return true
	}
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}
