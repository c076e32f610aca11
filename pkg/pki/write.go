package pki

import (
	"fmt"
	"os"
	"path/filepath"
)

// WriteAtomic replaces root/f.Path so that no reader ever sees a partly
// written file: the data goes to a temporary file in the same directory, is
// synced, and is renamed over the target. Note that a single-file bind mount
// (kubeadm mounts *.conf into static pods that way) keeps showing the old
// inode until its container restarts, which rotation does anyway.
func WriteAtomic(root string, f File) error {
	target := filepath.Join(root, f.Path)
	dir := filepath.Dir(target)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(target)+".rotate-certs-*")
	if err != nil {
		return fmt.Errorf("writing /%s: %w", f.Path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if err := tmp.Chmod(os.FileMode(f.Mode)); err != nil {
		tmp.Close()
		return fmt.Errorf("writing /%s: %w", f.Path, err)
	}
	if _, err := tmp.Write(f.Data); err != nil {
		tmp.Close()
		return fmt.Errorf("writing /%s: %w", f.Path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("writing /%s: %w", f.Path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing /%s: %w", f.Path, err)
	}
	if err := os.Rename(tmp.Name(), target); err != nil {
		return fmt.Errorf("writing /%s: %w", f.Path, err)
	}
	return syncDir(dir)
}

// SymlinkAtomic points root/link at target (a name relative to the link's
// directory) by renaming a new symlink over the old one.
func SymlinkAtomic(root, link, target string) error {
	full := filepath.Join(root, link)
	tmp := filepath.Join(filepath.Dir(full), "."+filepath.Base(full)+".rotate-certs-tmp")
	_ = os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("linking /%s: %w", link, err)
	}
	if err := os.Rename(tmp, full); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("linking /%s: %w", link, err)
	}
	return syncDir(filepath.Dir(full))
}

// CheckWritable proves a directory accepts new files (a read-only
// /etc/kubernetes mount is found before anything is changed).
func CheckWritable(root, relDir string) error {
	f, err := os.CreateTemp(filepath.Join(root, relDir), ".rotate-certs-probe-*")
	if err != nil {
		return fmt.Errorf("/%s is not writable: %w", relDir, err)
	}
	f.Close()
	return os.Remove(f.Name())
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
