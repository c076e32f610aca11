package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
)

// RollbackOptions say which run to undo where.
type RollbackOptions struct {
	// Run names the run to undo; empty: the latest rotation whose backups
	// are on the nodes.
	Run         string
	NodeNames   []string
	Selector    string
	Parallelism Parallelism
	DryRun      bool
}

// Rollback puts back, on every node a rotation run changed, the files as
// they were before it: control planes one at a time, then workers; each node
// as one transaction that restarts what read the restored files and proves
// the rest reloaded them. A kubelet restarted on its restored files must
// renew its lease and be Ready.
func (r *Runner) Rollback(ctx context.Context, o RollbackOptions) (rep *Report, err error) {
	rep = &Report{DryRun: o.DryRun}
	nodes, err := SelectNodes(ctx, r.Client, o.NodeNames, o.Selector)
	if err != nil {
		return rep, err
	}
	if err := r.Preflight(ctx, o.permissions()); err != nil {
		return rep, err
	}
	runID := newRunID()
	rep.Run = runID
	if !o.DryRun {
		lock, _, err := r.lockCluster(ctx, RunRecord{ID: runID, Kind: "rollback", Started: time.Now().UTC()})
		rep.User = r.userName(ctx)
		if err != nil {
			return rep, err
		}
		defer func() {
			state := RunCompleted
			if err != nil {
				state = RunFailed
			}
			_ = lock.release(state)
		}()
	}
	defer func() {
		if derr := deleteRunPods(r.Client, runID); derr != nil {
			err = errors.Join(err, fmt.Errorf("deleting agent pods (label %s=%s): %w", LabelRun, runID, derr))
		}
	}()
	access := func(n *corev1.Node) Access {
		return Access{ReadOnly: o.DryRun, ControlPlane: IsControlPlane(n), Kubelet: true}
	}
	agents, errs := r.startAgents(ctx, nodes, runID, access, podDeadline(r.Timeout, len(nodes), 0, 1), fanout)
	defer r.keepAlive(agents)()
	if err := errors.Join(errs...); err != nil {
		return rep, fmt.Errorf("%w\nno file on any node was changed", err)
	}
	backups := make([][]api.Backup, len(agents))
	errs = forEach(ctx, len(agents), fanout, func(i int) error {
		res, err := r.call(ctx, agents[i], api.Request{Action: api.ListBackups})
		if err == nil {
			backups[i] = res.Backups
		}
		return err
	})
	if err := errors.Join(errs...); err != nil {
		return rep, fmt.Errorf("%w\nno file on any node was changed", err)
	}
	run := o.Run
	if run == "" {
		if run = latestRun(backups); run == "" {
			return rep, errors.New("no node keeps a backup of a rotation run: nothing to roll back")
		}
	}
	var todo []agentPod
	for i, ap := range agents {
		var paths []string
		for _, b := range backups[i] {
			if b.Run != run {
				continue
			}
			switch b.State {
			case api.BackupCommitted:
				paths = append(paths, b.Paths...)
			case api.BackupInProgress:
				return rep, fmt.Errorf("node %s: the transaction of backup %s has not ended (is another run at work there?); nothing was changed", ap.node, b.Name)
			}
		}
		if len(paths) == 0 {
			continue
		}
		todo = append(todo, ap)
		if o.DryRun {
			rep.node(ap).Restore = paths
		}
	}
	rep.RolledBack = run
	if len(todo) == 0 {
		return rep, fmt.Errorf("no selected node keeps a backup of run %s", run)
	}
	r.logf("Rolling back run %s on %d node(s)", run, len(todo))
	if o.DryRun {
		return rep, nil
	}
	one := func(ap agentPod, rep *Report) error {
		r.logf("node %s: restoring the files run %s changed", ap.node, run)
		res, err := r.change(ctx, ap, api.Request{Action: api.Rollback, RollbackRun: run})
		if err != nil {
			return err
		}
		r.addChanges(rep, ap, res.Renew)
		if res.Kubelet != nil {
			return r.waitLeaseRenewed(ctx, ap.node, res.Kubelet)
		}
		return nil
	}
	recorded := func(ap agentPod, rep *Report) error {
		before := len(rep.Rows)
		err := one(ap, rep)
		rep.failed(ap, err)
		r.nodeEvent(rep, ap, rollbackEvent, rep.Rows[before:], err)
		return err
	}
	var workers []agentPod
	for _, ap := range todo {
		if !ap.controlPlane {
			workers = append(workers, ap)
			continue
		}
		if err := recorded(ap, rep); err != nil {
			return rep, err
		}
	}
	return rep, rolloutNodes(ctx, rep, workers, o.Parallelism.Cap(len(workers)), recorded)
}

// permissions are what a rollback with these options needs.
func (o RollbackOptions) permissions() permissions {
	p := permissions(permsAgents)
	if o.DryRun {
		return p
	}
	return p.with(permsLock, permsKubeletRestart, permsEvents)
}

// latestRun is the newest rotation run with committed backups on any node.
func latestRun(perNode [][]api.Backup) string {
	newest := map[string]time.Time{}
	for _, bs := range perNode {
		for _, b := range bs {
			if b.Run == "" || b.Action == "rollback" || b.State != api.BackupCommitted {
				continue
			}
			if b.Created.After(newest[b.Run]) {
				newest[b.Run] = b.Created
			}
		}
	}
	runs := make([]string, 0, len(newest))
	for r := range newest {
		runs = append(runs, r)
	}
	sort.Slice(runs, func(i, j int) bool { return newest[runs[i]].After(newest[runs[j]]) })
	if len(runs) == 0 {
		return ""
	}
	return strings.TrimSpace(runs[0])
}
