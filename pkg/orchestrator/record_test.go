package orchestrator

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
)

// The report records, per node in the order worked on, what its agents
// said: backups, restarts, verified reloads, each note once (the agents
// repeat kube-proxy's in every inspection and renewal), and the user.
func TestReportRecordsEachNode(t *testing.T) {
	c := fakeCluster(t, []string{"cp-1"}, []string{"w-1", "w-2"})
	f := newFakeAgents(t, c)
	rep, err := newTestRunner(c, f).Rotate(context.Background(), allOptions())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range rep.Nodes {
		names = append(names, n.Node)
	}
	if strings.Join(names, ",") != "cp-1,w-1,w-2" || !rep.Nodes[0].ControlPlane || rep.Nodes[1].ControlPlane {
		t.Fatalf("nodes %v", rep.Nodes)
	}
	cp := rep.Nodes[0]
	if strings.Join(cp.Backups, ",") != "b0,b1" || len(cp.Restarted) != 1 || cp.Restarted[0].Component != "kube-controller-manager" ||
		len(cp.Verified) != 1 || cp.Failure != nil {
		t.Errorf("cp-1: %+v", cp)
	}
	for _, n := range rep.Nodes {
		if len(n.Notes) != 1 || !strings.HasPrefix(n.Notes[0], "kube-proxy authenticates") {
			t.Errorf("node %s notes %q, want kube-proxy's once", n.Node, n.Notes)
		}
	}
	if w := rep.Nodes[2]; strings.Join(w.Backups, ",") != "b1" {
		t.Errorf("w-2: %+v", w)
	}
	if rep.User != "kubernetes-admin" {
		t.Errorf("user %q, want the SelfSubjectReview's", rep.User)
	}
}

// A node whose step failed carries the step and the outcome its agent
// reported; a worker's failure is merged into the report.
func TestReportRecordsFailures(t *testing.T) {
	for name, tc := range map[string]struct {
		outcome api.Outcome
		want    string
	}{
		"restored":       {api.Restored, "restored"},
		"restore failed": {api.RestoreFailed, "restore-failed"},
		"lost":           {api.Lost, OutcomeUnknown},
	} {
		t.Run(name, func(t *testing.T) {
			c := fakeCluster(t, []string{"cp-1"}, []string{"w-1"})
			f := newFakeAgents(t, c)
			f.failAction["w-1"], f.failOutcome = api.KubeletInstall, tc.outcome
			rep, err := newTestRunner(c, f).Rotate(context.Background(), allOptions())
			if err == nil {
				t.Fatal("no error")
			}
			w := rep.Nodes[1]
			if w.Node != "w-1" || w.Failure == nil || w.Failure.Step != api.KubeletInstall || w.Failure.Outcome != tc.want || !strings.Contains(w.Failure.Message, "injected failure") {
				t.Errorf("w-1 %+v failure %+v", w, w.Failure)
			}
			if rep.Nodes[0].Failure != nil || len(rep.Rows) != 2 {
				t.Errorf("cp-1 %+v, rows %v", rep.Nodes[0], rep.Rows)
			}
		})
	}
	// A refused CSR changed nothing on the node.
	if f := failureOf(errors.Join(errors.New("x"), ErrCSRRefused)); f.Outcome != string(api.Unchanged) || f.Step != api.KubeletCSR {
		t.Errorf("refused CSR: %+v", f)
	}
}

// rollback --dry-run records the files to restore per node and the run
// they come from; a rollback records what it restored.
func TestRollbackReport(t *testing.T) {
	c := fakeCluster(t, []string{"cp-1"}, []string{"w-1"})
	f := newFakeAgents(t, c)
	rep, err := newTestRunner(c, f).Rollback(context.Background(), RollbackOptions{Parallelism: Parallelism{Count: 1}, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.RolledBack != "rc-00000000000000aa" || len(rep.Nodes) != 2 || strings.Join(rep.Nodes[1].Restore, ",") != "/etc/kubernetes/admin.conf" || len(rep.Rows) != 0 {
		t.Errorf("plan %+v nodes %+v", rep, rep.Nodes)
	}
	rep, err = newTestRunner(c, f).Rollback(context.Background(), RollbackOptions{Parallelism: Parallelism{Count: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.RolledBack != "rc-00000000000000aa" || len(rep.Nodes) != 2 || strings.Join(rep.Nodes[1].Backups, ",") != "b2" {
		t.Errorf("rollback %+v nodes %+v", rep, rep.Nodes)
	}
}
