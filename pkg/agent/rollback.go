package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

func (a *Agent) listBackups() ([]api.Backup, error) {
	all, err := listBackups(a.Root)
	if err != nil {
		return nil, err
	}
	out := make([]api.Backup, 0, len(all))
	for _, b := range all {
		out = append(out, b.info())
	}
	return out, nil
}

// rollback puts back, as one transaction of its own (so it can be undone
// too), the files as they were before a run (RollbackRun) or one of its
// steps (Backup) changed them on this node; then it restarts what read the
// restored files and proves the rest reloaded them, like a renewal. A
// certificate that has expired since is never put back.
func (a *Agent) rollback(ctx context.Context, req api.Request) (*api.RenewResult, *api.KubeletProcess, error) {
	l, t, res, err := a.beginTxn(req)
	if err != nil {
		return nil, nil, err
	}
	sources, entries, err := a.rollbackEntries(req)
	if err != nil {
		t.end()
		return res, nil, err
	}
	if err := t.start("rollback"); err != nil {
		t.end()
		return res, nil, err
	}
	res.Backup = t.b.Name
	txCtx, cancel := context.WithTimeout(ctx, api.WorkTimeout(a.Timeout))
	defer cancel()
	kubeletRestarted := false
	var proc *api.KubeletProcess
	err = func() error {
		changed := map[pki.Service]bool{}
		serials := map[string]string{}
		for _, e := range entries {
			if err := a.restoreEntry(t, e); err != nil {
				return err
			}
			for _, c := range inventoryFor(e.entry.Path) {
				changed[c.Service] = true
				if _, dup := serials[c.Name]; dup {
					continue
				}
				if cert, err := pki.ReadCertificate(a.Root, c); err == nil {
					serials[c.Name] = cert.SerialNumber.String()
					res.Changes = append(res.Changes, api.Change{Name: c.Name, Path: "/" + c.Path(), NewSerial: cert.SerialNumber.String(), NewNotAfter: cert.NotAfter.UTC()})
				}
			}
		}
		if err := a.settle(txCtx, l, changed, changed, serials, false, false, res); err != nil {
			return err
		}
		if changed[pki.ServiceKubelet] {
			kubeletRestarted = true
			var err error
			if proc, err = a.restartKubeletAndWait(txCtx, 0, res); err != nil {
				return err
			}
		}
		return nil
	}()
	if err != nil {
		return res, nil, a.abortKubelet(t, err, kubeletRestarted)
	}
	if err := a.commit(t, res); err != nil {
		return res, proc, err
	}
	for _, b := range sources {
		_ = b.setState(api.BackupRolledBack)
	}
	return res, proc, nil
}

// rollbackEntry is one path and what it held before the run changed it.
type rollbackEntry struct {
	from  *backup
	entry backupEntry
}

// rollbackEntries selects the committed backups to undo and, for every
// path they touched, its state before the first of them.
func (a *Agent) rollbackEntries(req api.Request) ([]*backup, []rollbackEntry, error) {
	var sources []*backup
	switch {
	case req.Backup != "":
		b, err := openBackup(a.Root, req.Backup)
		if err != nil {
			return nil, nil, err
		}
		sources = []*backup{b}
	case req.RollbackRun != "":
		all, err := listBackups(a.Root)
		if err != nil {
			return nil, nil, err
		}
		for _, b := range all {
			if b.Run == req.RollbackRun && b.State == api.BackupCommitted {
				sources = append(sources, b)
			}
		}
	default:
		return nil, nil, errors.New("rollback needs a run or a backup")
	}
	var out []rollbackEntry
	seen := map[string]bool{}
	for _, b := range sources { // oldest first: its entries hold the state before the run
		if b.State != api.BackupCommitted {
			return nil, nil, fmt.Errorf("backup %s is %s, not committed: nothing of it to roll back", b.Name, b.State)
		}
		for _, e := range b.Entries {
			if !seen[e.Path] {
				seen[e.Path] = true
				out = append(out, rollbackEntry{b, e})
			}
		}
	}
	if len(sources) == 0 {
		return nil, nil, fmt.Errorf("no backup of run %s on this node", req.RollbackRun)
	}
	now := a.Now()
	for _, e := range out {
		if e.entry.Kind != "file" {
			continue
		}
		data, err := e.from.content(e.entry)
		if err != nil {
			return nil, nil, fmt.Errorf("backup %s: %w", e.from.Name, err)
		}
		if cert, err := pki.CertificateIn(data); err == nil && now.After(cert.NotAfter) {
			return nil, nil, fmt.Errorf("rolling back would put back /%s, whose certificate expired %s: renew instead", e.entry.Path, cert.NotAfter.UTC().Format("2006-01-02 15:04 MST"))
		}
	}
	return sources, out, nil
}

func (a *Agent) restoreEntry(t *txn, e rollbackEntry) error {
	switch e.entry.Kind {
	case "absent":
		return t.remove(e.entry.Path)
	case "symlink":
		return t.link(e.entry.Path, e.entry.Target)
	}
	data, err := e.from.content(e.entry)
	if err != nil {
		return err
	}
	return t.write(pki.File{Path: e.entry.Path, Data: data, Attr: e.entry.Attr})
}

// inventoryFor returns the inventory entries a path belongs to (a kubelet
// file belongs to the kubelet's).
func inventoryFor(rel string) []pki.Cert {
	var out []pki.Cert
	for _, c := range append(append([]pki.Cert{}, pki.Inventory...), pki.KubeletServingCSR) {
		if rel == c.Path() || rel == c.KeyFile {
			out = append(out, c)
		}
	}
	if len(out) == 0 && (strings.HasPrefix(rel, pki.KubeletPKIDir+"/") || rel == pki.KubeletKubeconfig) {
		out = append(out, pki.Cert{Name: "kubelet", Service: pki.ServiceKubelet})
	}
	return out
}
