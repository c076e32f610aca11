package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"syscall"
	"time"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// BackupRoot holds one folder per backup, below the root.
const BackupRoot = "etc/kubernetes/rotate-certs-backup"

// validName is what run IDs and backup folder names may look like: they
// become path elements on the node.
var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.-]{0,127}$`)

// backupEntry records one path as it was before the change: a regular file
// (its copy lies beside the index), a symlink, or nothing at all.
type backupEntry struct {
	Path   string    `json:"path"`
	Kind   string    `json:"kind"` // file, symlink, absent
	Attr   *pki.Attr `json:"attr,omitempty"`
	Target string    `json:"target,omitempty"`
}

// backup is a folder with copies of the files a transaction changes, so
// the transaction can be undone exactly. Its index is saved before every
// change (a journal): a transaction whose agent died is found in state
// in-progress and restored by the next one.
type backup struct {
	root    string
	Name    string        `json:"name"`
	Run     string        `json:"run,omitempty"`
	Action  string        `json:"action"`
	Created time.Time     `json:"created"`
	State   string        `json:"state"`
	Entries []backupEntry `json:"entries"`
}

func newBackup(root, run, action string, now time.Time) (*backup, error) {
	name := now.UTC().Format("20060102T150405.000000000Z")
	if run != "" {
		name += "-" + run
	}
	name += "-" + action
	if !validName.MatchString(name) {
		return nil, fmt.Errorf("invalid backup name %q", name)
	}
	dir, err := backupDir(root)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, name, "files"), 0o700); err != nil {
		return nil, fmt.Errorf("creating backup folder: %w", err)
	}
	b := &backup{root: root, Name: name, Run: run, Action: action, Created: now.UTC(), State: api.BackupInProgress}
	return b, b.save()
}

// backupDir is the host's backup folder below root, created (0700) if
// needed.
func backupDir(root string) (string, error) {
	dir, err := pki.Resolve(root, BackupRoot)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("creating /%s: %w", BackupRoot, err)
	}
	return dir, nil
}

// backupDirNoCreate is the host's backup folder below root, if it exists.
func backupDirNoCreate(root string) (string, error) {
	dir, err := pki.Resolve(root, BackupRoot)
	if err != nil {
		return "", err
	}
	_, err = os.Stat(dir)
	return dir, err
}

func openBackup(root, name string) (*backup, error) {
	if !validName.MatchString(name) {
		return nil, fmt.Errorf("invalid backup name %q", name)
	}
	data, err := pki.ReadFile(root, filepath.Join(BackupRoot, name, "index.json"))
	if err != nil {
		return nil, fmt.Errorf("opening backup %s: %w", name, err)
	}
	b := &backup{root: root}
	if err := json.Unmarshal(data, b); err != nil {
		return nil, fmt.Errorf("opening backup %s: %w", name, err)
	}
	if b.Name != name {
		return nil, fmt.Errorf("opening backup %s: its index names %q", name, b.Name)
	}
	if b.State == "" { // written by v0.1, which had no journal
		b.State = api.BackupCommitted
	}
	return b, nil
}

// listBackups returns the node's backups, oldest first. Folders that are
// not backups are left out.
func listBackups(root string) ([]*backup, error) {
	dir, err := pki.Resolve(root, BackupRoot)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*backup
	for _, e := range entries {
		if !e.IsDir() || !validName.MatchString(e.Name()) {
			continue
		}
		if b, err := openBackup(root, e.Name()); err == nil {
			out = append(out, b)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// Dir is the backup folder as seen on the host.
func (b *backup) Dir() string { return "/" + BackupRoot + "/" + b.Name }

func (b *backup) info() api.Backup {
	out := api.Backup{Name: b.Name, Run: b.Run, Action: b.Action, Created: b.Created, State: b.State}
	for _, e := range b.Entries {
		out.Paths = append(out.Paths, "/"+e.Path)
	}
	return out
}

// addFile records the file rel names, following symbolic links as writes
// do (pki.WriteAtomic replaces a linked file where the link points): its
// content, owner, group and mode, or that it does not exist. Key material
// is copied with mode 0600 into the backup folder, which is itself 0700.
func (b *backup) addFile(rel string) error {
	if b.has(rel) {
		return nil
	}
	e := backupEntry{Path: rel, Kind: "file"}
	data, err := pki.ReadFile(b.root, rel)
	switch {
	case errors.Is(err, pki.ErrMissing):
		e.Kind = "absent"
	case err != nil:
		return fmt.Errorf("backing up /%s: %w", rel, err)
	default:
		attr, err := pki.Stat(b.root, rel)
		if err != nil {
			return fmt.Errorf("backing up /%s: %w", rel, err)
		}
		e.Attr = &attr
		copyPath := b.copyPath(rel)
		if err := os.MkdirAll(filepath.Join(b.root, filepath.Dir(copyPath)), 0o700); err != nil {
			return fmt.Errorf("backing up /%s: %w", rel, err)
		}
		if err := pki.WriteAtomic(b.root, pki.File{Path: copyPath, Data: data, Attr: &pki.Attr{Mode: 0o600}}); err != nil {
			return fmt.Errorf("backing up /%s: %w", rel, err)
		}
	}
	b.Entries = append(b.Entries, e)
	return b.save()
}

// addLink records the symbolic link rel names (its target), for a change
// that re-points the link itself; a regular file there is recorded as such.
func (b *backup) addLink(rel string) error {
	if b.has(rel) {
		return nil
	}
	target, err := pki.Readlink(b.root, rel)
	switch {
	case errors.Is(err, syscall.EINVAL): // not a link
		return b.addFile(rel)
	case errors.Is(err, fs.ErrNotExist):
		b.Entries = append(b.Entries, backupEntry{Path: rel, Kind: "absent"})
	case err != nil:
		return fmt.Errorf("backing up /%s: %w", rel, err)
	default:
		b.Entries = append(b.Entries, backupEntry{Path: rel, Kind: "symlink", Target: target})
	}
	return b.save()
}

func (b *backup) has(rel string) bool {
	for _, e := range b.Entries {
		if e.Path == rel {
			return true
		}
	}
	return false
}

func (b *backup) copyPath(rel string) string {
	return filepath.Join(BackupRoot, b.Name, "files", rel)
}

// content returns the recorded content of a file entry.
func (b *backup) content(e backupEntry) ([]byte, error) {
	return pki.ReadFile(b.root, b.copyPath(e.Path))
}

func (b *backup) save() error {
	data, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return err
	}
	return pki.WriteAtomic(b.root, pki.File{Path: filepath.Join(BackupRoot, b.Name, "index.json"), Data: data, Attr: &pki.Attr{Mode: 0o600}})
}

func (b *backup) setState(state string) error {
	b.State = state
	return b.save()
}

// restore puts every recorded path back as it was, newest change first,
// with its owner, group and mode.
func (b *backup) restore() error {
	var errs []error
	for i := len(b.Entries) - 1; i >= 0; i-- {
		e := b.Entries[i]
		var err error
		switch e.Kind {
		case "absent":
			err = pki.Remove(b.root, e.Path)
		case "symlink":
			err = pki.SymlinkAtomic(b.root, e.Path, e.Target)
		case "file":
			var data []byte
			if data, err = b.content(e); err == nil {
				err = ensureParent(b.root, e.Path)
			}
			if err == nil {
				err = pki.WriteAtomic(b.root, pki.File{Path: e.Path, Data: data, Attr: e.Attr})
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("restoring /%s: %w", e.Path, err))
		}
	}
	return errors.Join(errs...)
}

// ensureParent makes the folder of a file to restore where it is gone (a
// CA rotation removes its emptied staging folder), root-only.
func ensureParent(root, rel string) error {
	dir, err := pki.Resolve(root, filepath.Dir(rel))
	if err != nil {
		return err
	}
	return os.MkdirAll(dir, 0o700)
}

// prune removes the backups of all but the newest keep runs (at least
// one), so old private keys do not pile up on the node. A backup whose
// transaction has not ended is never removed.
func prune(root string, keep int) (removed []string, err error) {
	keep = max(keep, 1)
	all, err := listBackups(root)
	if err != nil {
		return nil, err
	}
	runOf := func(b *backup) string {
		if b.Run != "" {
			return b.Run
		}
		return b.Name // v0.1 backups: one run each
	}
	var runs []string // newest first
	seen := map[string]bool{}
	for i := len(all) - 1; i >= 0; i-- {
		if r := runOf(all[i]); !seen[r] {
			seen[r] = true
			runs = append(runs, r)
		}
	}
	kept := map[string]bool{}
	for _, r := range runs[:min(keep, len(runs))] {
		kept[r] = true
	}
	dir, err := pki.Resolve(root, BackupRoot)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, b := range all {
		if kept[runOf(b)] || b.State == api.BackupInProgress {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, b.Name)); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, b.Name)
	}
	return removed, errors.Join(errs...)
}
