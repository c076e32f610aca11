package orchestrator

import (
	"context"
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
)

func nodeEvents(t *testing.T, c *fake.Clientset) map[string]corev1.Event {
	t.Helper()
	list, err := c.CoreV1().Events(EventNamespace).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]corev1.Event{}
	for _, e := range list.Items {
		if _, dup := out[e.InvolvedObject.Name]; dup {
			t.Errorf("node %s has two events", e.InvolvedObject.Name)
		}
		out[e.InvolvedObject.Name] = e
	}
	return out
}

// Every node a rotation changed carries an event on its Node object (as
// kubectl describe node finds them: by the node's UID, in namespace
// default) naming the run, the user, the certificates, their new expiry
// and the backups; a node whose step failed carries a warning saying what
// failed and what became of its files.
func TestRotationEvents(t *testing.T) {
	c := fakeCluster(t, []string{"cp-1"}, []string{"w-1", "w-2"})
	f := newFakeAgents(t, c)
	f.failAction["w-2"] = api.KubeletInstall
	rep, err := newTestRunner(c, f).Rotate(context.Background(), allOptions())
	if err == nil {
		t.Fatal("w-2's failure is not reported")
	}
	events := nodeEvents(t, c)
	if len(events) != 3 {
		t.Fatalf("events %v", events)
	}
	for node, e := range events {
		o := e.InvolvedObject
		if o.Kind != "Node" || o.APIVersion != "v1" || string(o.UID) != "uid-"+node || o.Namespace != "" ||
			e.Source.Component != "kubectl-rotate-certs" || e.Count != 1 || e.FirstTimestamp.IsZero() || e.Labels[LabelRun] != rep.Run {
			t.Errorf("node %s: event %+v", node, e)
		}
		if !strings.Contains(e.Message, "run "+rep.Run+" by kubernetes-admin") {
			t.Errorf("node %s: message %q does not name the run and the user", node, e.Message)
		}
	}
	cp := events["cp-1"]
	if cp.Reason != ReasonRotated || cp.Type != corev1.EventTypeNormal ||
		!strings.Contains(cp.Message, " rotated 2 certificate(s): apiserver, kubelet-client") ||
		!strings.Contains(cp.Message, "; new expiry ") || !strings.Contains(cp.Message, "backed up in /etc/kubernetes/rotate-certs-backup: b0, b1") {
		t.Errorf("cp-1: %s %s %q", cp.Type, cp.Reason, cp.Message)
	}
	if w := events["w-2"]; w.Reason != ReasonRotationFailed || w.Type != corev1.EventTypeWarning ||
		!strings.Contains(w.Message, "failed at kubelet-install, node files restored: node w-2: injected failure") {
		t.Errorf("w-2: %s %s %q", w.Type, w.Reason, w.Message)
	}
	if rep.Nodes[0].Event != ReasonRotated {
		t.Errorf("the report does not say cp-1's event was recorded: %+v", rep.Nodes[0])
	}

	// A dry run changes nothing and records nothing.
	c = fakeCluster(t, []string{"cp-1"}, nil)
	o := allOptions()
	o.DryRun = true
	if _, err := newTestRunner(c, newFakeAgents(t, c)).Rotate(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	if events := nodeEvents(t, c); len(events) > 0 {
		t.Errorf("a dry run recorded %v", events)
	}
}

// An event that cannot be recorded fails no rotation: the report says so.
// Without the RBAC to create events, the rotation still runs, tries none,
// and says so once.
func TestEventsNeverFailARotation(t *testing.T) {
	c := fakeCluster(t, []string{"cp-1"}, []string{"w-1"})
	c.PrependReactor("create", "events", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("admission webhook said no")
	})
	rep, err := newTestRunner(c, newFakeAgents(t, c)).Rotate(context.Background(), allOptions())
	if err != nil {
		t.Fatalf("a failed event failed the rotation: %v", err)
	}
	for _, n := range rep.Nodes {
		if !strings.Contains(strings.Join(n.Notes, "\n"), "its CertificatesRotated event could not be recorded on the Node object (admission webhook said no); the certificates are not affected") {
			t.Errorf("node %s notes %q", n.Node, n.Notes)
		}
	}

	c = fakeCluster(t, []string{"cp-1"}, []string{"w-1"}, "create events")
	rep, err = newTestRunner(c, newFakeAgents(t, c)).Rotate(context.Background(), allOptions())
	if err != nil {
		t.Fatalf("missing RBAC for events stopped the rotation: %v", err)
	}
	if notes := strings.Join(rep.Notes, "\n"); strings.Count(notes, "no audit events were recorded: your user may not create events in namespace default") != 1 {
		t.Errorf("notes %q", notes)
	}
	for _, a := range c.Actions() {
		if a.GetVerb() == "create" && a.GetResource().Resource == "events" {
			t.Error("an event was created although RBAC denies it")
		}
	}
}

// A rollback records CertificatesRolledBack, naming the run it undid.
func TestRollbackEvents(t *testing.T) {
	c := fakeCluster(t, []string{"cp-1"}, []string{"w-1"})
	rep, err := newTestRunner(c, newFakeAgents(t, c)).Rollback(context.Background(), RollbackOptions{Parallelism: Parallelism{Count: 1}})
	if err != nil {
		t.Fatal(err)
	}
	events := nodeEvents(t, c)
	for _, n := range []string{"cp-1", "w-1"} {
		e := events[n]
		if e.Reason != ReasonRolledBack || !strings.Contains(e.Message, "kubectl rotate-certs rollback run "+rep.Run+" by kubernetes-admin (undoing run rc-00000000000000aa) restored 1 certificate(s): admin.conf") {
			t.Errorf("node %s: %s %q", n, e.Reason, e.Message)
		}
	}
}
