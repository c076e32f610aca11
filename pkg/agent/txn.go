package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// txn is one transaction on the node: every file it changes is backed up
// (journaled) first, and it ends either committed (all new files, verified)
// or restored (all old files). It holds the node's lock from lockTxn to
// end, so two rotations never interleave on one node; a transaction whose
// agent died is restored by the next one before anything else happens.
type txn struct {
	a    *Agent
	req  api.Request
	lock *nodeLock
	b    *backup
	// notes tell what the transaction found (an interrupted one restored).
	notes []string
}

// outcomeError is an error that says what became of the node.
type outcomeError struct {
	outcome api.Outcome
	err     error
}

func (e *outcomeError) Error() string { return e.err.Error() }
func (e *outcomeError) Unwrap() error { return e.err }

// outcomeOf is the typed outcome of an action's error: an error that does
// not say otherwise was returned before anything changed.
func outcomeOf(err error) api.Outcome {
	var oe *outcomeError
	switch {
	case err == nil:
		return api.Done
	case errors.As(err, &oe):
		return oe.outcome
	case errors.Is(err, errLocked):
		return api.Busy
	}
	return api.Unchanged
}

// beginTxn reads the node's layout and takes its lock (restoring an
// interrupted transaction first). The result carries what that found.
func (a *Agent) beginTxn(req api.Request) (layout, *txn, *api.RenewResult, error) {
	l, err := a.detectLayout()
	if err != nil {
		return l, nil, nil, err
	}
	t, err := a.lockTxn(req)
	if err != nil {
		return l, nil, nil, err
	}
	return l, t, &api.RenewResult{Notes: t.notes}, nil
}

// abortKubelet restores the transaction's files and, if the kubelet was
// restarted on the new ones, restarts it on the restored ones.
func (a *Agent) abortKubelet(t *txn, cause error, restarted bool) error {
	err := t.abort(cause)
	if restarted {
		ctx, cancel := a.restoreContext()
		defer cancel()
		if _, rerr := a.restartKubeletAndWait(ctx, 0, nil); rerr != nil {
			err = fmt.Errorf("%w; the kubelet did not come back on the restored files: %v", err, rerr)
		}
	}
	return err
}

// lockTxn takes the node's lock and restores whatever transaction an agent
// left unfinished (killed pod, node reboot).
func (a *Agent) lockTxn(req api.Request) (*txn, error) {
	lock, err := lockNode(a.Root, lockHolder{Run: req.Run, Node: req.Node, PID: os.Getpid(), Since: a.Now().UTC()})
	if err != nil {
		return nil, err
	}
	t := &txn{a: a, req: req, lock: lock}
	if err := t.recoverInterrupted(); err != nil {
		lock.unlock()
		return nil, &outcomeError{api.RestoreFailed, err}
	}
	return t, nil
}

func (t *txn) recoverInterrupted() error {
	all, err := listBackups(t.a.Root)
	if err != nil {
		return fmt.Errorf("reading the node's backups: %w", err)
	}
	for i := len(all) - 1; i >= 0; i-- {
		b := all[i]
		if b.State != api.BackupInProgress {
			continue
		}
		if err := b.restore(); err != nil {
			return fmt.Errorf("a transaction of run %s (%s) was interrupted and restoring its files failed: %w; restore %s by hand", b.Run, b.Action, err, b.Dir())
		}
		if err := b.setState(api.BackupRestored); err != nil {
			return err
		}
		t.notes = append(t.notes, fmt.Sprintf("a %s transaction of run %s had been interrupted: its files were restored from %s first", b.Action, b.Run, b.Dir()))
	}
	return nil
}

// start opens the transaction's backup; nothing is changed before.
func (t *txn) start(action string) error {
	b, err := newBackup(t.a.Root, t.req.Run, action, t.a.Now())
	if err != nil {
		return err
	}
	t.b = b
	return nil
}

// write replaces a file (at a link's target) after backing it up. A
// restore may write where a later transaction removed the folder: it is
// made again, root-only.
func (t *txn) write(f pki.File) error {
	if err := t.b.addFile(f.Path); err != nil {
		return err
	}
	if err := ensureParent(t.a.Root, f.Path); err != nil {
		return err
	}
	return pki.WriteAtomic(t.a.Root, f)
}

// link re-points a symbolic link after backing it up.
func (t *txn) link(rel, target string) error {
	if err := t.b.addLink(rel); err != nil {
		return err
	}
	return pki.SymlinkAtomic(t.a.Root, rel, target)
}

// remove deletes a file or link after backing it up.
func (t *txn) remove(rel string) error {
	if err := t.b.addLink(rel); err != nil {
		return err
	}
	return pki.Remove(t.a.Root, rel)
}

// commit ends the transaction with its new files and prunes the backups of
// old runs. It returns the backups removed.
func (t *txn) commit() ([]string, error) {
	defer t.end()
	if t.b == nil {
		return nil, nil
	}
	if err := t.b.setState(api.BackupCommitted); err != nil {
		return nil, t.abort(err)
	}
	removed, err := prune(t.a.Root, t.req.KeepBackups)
	if err != nil {
		t.notes = append(t.notes, fmt.Sprintf("removing old backups: %v", err))
	}
	return removed, nil
}

// abort restores every file the transaction changed and returns cause with
// the outcome: restored, or (if restoring failed) restore-failed.
func (t *txn) abort(cause error) error {
	defer t.end()
	if t.b == nil {
		return cause
	}
	if err := t.b.restore(); err != nil {
		return &outcomeError{api.RestoreFailed, fmt.Errorf("%w; restoring the backup %s also failed: %v (restore it by hand)", cause, t.b.Dir(), err)}
	}
	if err := t.b.setState(api.BackupRestored); err != nil {
		return &outcomeError{api.RestoreFailed, fmt.Errorf("%w; the files were restored but the backup %s could not be marked restored: %v", cause, t.b.Dir(), err)}
	}
	return &outcomeError{api.Restored, fmt.Errorf("%w; every file was restored from %s", cause, t.b.Dir())}
}

func (t *txn) end() {
	t.lock.unlock()
	t.lock = nil
}

// restoreContext bounds what a failed transaction still does after its
// files are restored (restart a component again), whatever the
// transaction's own deadline left.
func (a *Agent) restoreContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), a.Timeout)
}

// restoreInterrupted restores a transaction whose agent died, if any.
func (a *Agent) restoreInterrupted(req api.Request) error {
	t, err := a.lockTxn(req)
	if err != nil {
		return err
	}
	t.end()
	if len(t.notes) > 0 {
		return &outcomeError{api.Restored, errors.New(strings.Join(t.notes, "; "))}
	}
	return nil
}
