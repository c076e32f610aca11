package pki

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// File is one file to write below the root.
type File struct {
	Path string // relative to the root
	Data []byte
	// Mode is the mode of a file that does not exist yet (owned by the
	// agent's user). A file that exists keeps its owner, group and mode.
	Mode fs.FileMode
	// Attr, when set, is the owner, group and mode the file gets whatever
	// it had: a restore puts back what the backup recorded.
	Attr *Attr
}

// Attr is the owner, group and permission bits of a file.
type Attr struct {
	Mode fs.FileMode `json:"mode"`
	UID  int         `json:"uid"`
	GID  int         `json:"gid"`
}

// Stat returns the attributes of the file rel names below root, following
// symbolic links as Resolve does.
func Stat(root, rel string) (Attr, error) {
	full, err := Resolve(root, rel)
	if err != nil {
		return Attr{}, err
	}
	st, err := os.Stat(full)
	if err != nil {
		return Attr{}, err
	}
	return attrOf(st), nil
}

// WriteAtomic replaces the file rel names so that no reader ever sees a
// partly written file: the data goes to a temporary file in the same
// directory, gets the owner, group and mode (of the file it replaces, else
// f.Attr or f.Mode), is synced, and is renamed over the target. A target
// that is a symbolic link is replaced where it points, so the link stays a
// link. Note that a single-file bind mount (kubeadm mounts *.conf into
// static pods that way) keeps showing the old inode until its container
// restarts, which rotation does anyway.
func WriteAtomic(root string, f File) error {
	target, err := Resolve(root, f.Path)
	if err != nil {
		return fmt.Errorf("writing /%s: %w", f.Path, err)
	}
	attr := Attr{Mode: f.Mode, UID: os.Geteuid(), GID: os.Getegid()}
	if st, err := os.Stat(target); err == nil {
		attr = attrOf(st)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("writing /%s: %w", f.Path, err)
	}
	if f.Attr != nil {
		attr = *f.Attr
	}
	if err := writeAtomic(target, f.Data, attr); err != nil {
		return fmt.Errorf("writing /%s: %w", f.Path, err)
	}
	return nil
}

func writeAtomic(target string, data []byte, attr Attr) error {
	dir := filepath.Dir(target)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(target)+".rotate-certs-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	err = errors.Join(
		tmp.Chmod(attr.Mode.Perm()),
		chown(tmp, attr),
	)
	if err == nil {
		_, err = tmp.Write(data)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), target); err != nil {
		return err
	}
	return syncDir(dir)
}

// SymlinkAtomic points the link rel names at target (as the link will
// store it, e.g. a name relative to the link's directory) by renaming a new
// symlink over the old one. The directories above the link are resolved as
// Resolve does; the link itself is replaced, not what it points to.
func SymlinkAtomic(root, rel, target string) error {
	full, err := resolveParent(root, rel)
	if err != nil {
		return fmt.Errorf("linking /%s: %w", rel, err)
	}
	tmp := filepath.Join(filepath.Dir(full), "."+filepath.Base(full)+".rotate-certs-tmp")
	_ = os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("linking /%s: %w", rel, err)
	}
	if err := os.Rename(tmp, full); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("linking /%s: %w", rel, err)
	}
	return syncDir(filepath.Dir(full))
}

// Remove deletes the file or link rel names (the link, not its target). A
// file that is already gone is not an error.
func Remove(root, rel string) error {
	full, err := resolveParent(root, rel)
	if err != nil {
		return err
	}
	if err := os.Remove(full); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// CheckWritable tells whether files can be created in a directory (a
// read-only /etc/kubernetes mount is found before anything is changed)
// without creating any.
func CheckWritable(root, relDir string) error {
	full, err := Resolve(root, relDir)
	if err != nil {
		return fmt.Errorf("/%s: %w", relDir, err)
	}
	if err := writable(full); err != nil {
		return fmt.Errorf("/%s is not writable: %w", relDir, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Readlink returns the target of the symbolic link rel names. A path that
// is not a link is an error; one that does not exist wraps fs.ErrNotExist.
func Readlink(root, rel string) (string, error) {
	full, err := resolveParent(root, rel)
	if err != nil {
		return "", err
	}
	return os.Readlink(full)
}
