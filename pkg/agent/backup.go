package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// BackupRoot holds one folder per backup, below the root.
const BackupRoot = "etc/kubernetes/rotate-certs-backup"

// backupEntry records one path as it was before the change: a regular file
// (its copy lies beside the index), a symlink, or nothing at all.
type backupEntry struct {
	Path   string      `json:"path"`
	Kind   string      `json:"kind"` // file, symlink, absent
	Mode   fs.FileMode `json:"mode,omitempty"`
	Target string      `json:"target,omitempty"`
}

// backup is a folder with copies of the files a step will change, so the
// step can be undone exactly.
type backup struct {
	root    string
	Name    string        `json:"name"`
	Entries []backupEntry `json:"entries"`
}

func newBackup(root, action string, now time.Time) (*backup, error) {
	name := now.UTC().Format("20060102T150405.000000000Z") + "-" + action
	if err := os.MkdirAll(filepath.Join(root, BackupRoot, name), 0o700); err != nil {
		return nil, fmt.Errorf("creating backup folder: %w", err)
	}
	return &backup{root: root, Name: name}, nil
}

func openBackup(root, name string) (*backup, error) {
	if name == "" || filepath.Base(name) != name {
		return nil, fmt.Errorf("invalid backup name %q", name)
	}
	data, err := os.ReadFile(filepath.Join(root, BackupRoot, name, "index.json"))
	if err != nil {
		return nil, fmt.Errorf("opening backup %s: %w", name, err)
	}
	b := &backup{root: root}
	if err := json.Unmarshal(data, b); err != nil {
		return nil, fmt.Errorf("opening backup %s: %w", name, err)
	}
	return b, nil
}

// Dir is the backup folder as seen on the host.
func (b *backup) Dir() string { return "/" + BackupRoot + "/" + b.Name }

// add copies rel into the backup (once) before it is changed. Key material
// keeps mode 0600 in the folder, which is itself 0700.
func (b *backup) add(rel string) error {
	for _, e := range b.Entries {
		if e.Path == rel {
			return nil
		}
	}
	full := filepath.Join(b.root, rel)
	e := backupEntry{Path: rel}
	st, err := os.Lstat(full)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		e.Kind = "absent"
	case err != nil:
		return fmt.Errorf("backing up /%s: %w", rel, err)
	case st.Mode()&fs.ModeSymlink != 0:
		e.Kind = "symlink"
		if e.Target, err = os.Readlink(full); err != nil {
			return fmt.Errorf("backing up /%s: %w", rel, err)
		}
	default:
		e.Kind, e.Mode = "file", st.Mode().Perm()
		data, err := os.ReadFile(full)
		if err != nil {
			return fmt.Errorf("backing up /%s: %w", rel, err)
		}
		copyPath := filepath.Join(BackupRoot, b.Name, "files", rel)
		if err := os.MkdirAll(filepath.Join(b.root, filepath.Dir(copyPath)), 0o700); err != nil {
			return fmt.Errorf("backing up /%s: %w", rel, err)
		}
		if err := pki.WriteAtomic(b.root, pki.File{Path: copyPath, Data: data, Mode: 0o600}); err != nil {
			return fmt.Errorf("backing up /%s: %w", rel, err)
		}
	}
	b.Entries = append(b.Entries, e)
	return b.save()
}

func (b *backup) save() error {
	data, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return err
	}
	return pki.WriteAtomic(b.root, pki.File{Path: filepath.Join(BackupRoot, b.Name, "index.json"), Data: data, Mode: 0o600})
}

// restore puts every recorded path back as it was, newest change first.
func (b *backup) restore() error {
	var errs []error
	for i := len(b.Entries) - 1; i >= 0; i-- {
		e := b.Entries[i]
		var err error
		switch e.Kind {
		case "absent":
			if err = os.Remove(filepath.Join(b.root, e.Path)); errors.Is(err, fs.ErrNotExist) {
				err = nil
			}
		case "symlink":
			err = pki.SymlinkAtomic(b.root, e.Path, e.Target)
		case "file":
			var data []byte
			data, err = os.ReadFile(filepath.Join(b.root, BackupRoot, b.Name, "files", e.Path))
			if err == nil {
				err = pki.WriteAtomic(b.root, pki.File{Path: e.Path, Data: data, Mode: uint32(e.Mode)})
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("restoring /%s: %w", e.Path, err))
		}
	}
	return errors.Join(errs...)
}
