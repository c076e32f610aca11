package orchestrator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

func lastRun(t *testing.T, c *fake.Clientset) RunRecord {
	t.Helper()
	l, err := c.CoordinationV1().Leases(Namespace).Get(context.Background(), LeaseName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var rec RunRecord
	if err := json.Unmarshal([]byte(l.Annotations[runAnnotation]), &rec); err != nil {
		t.Fatal(err)
	}
	return rec
}

// syncBuffer is a log several goroutines write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// logger logs every message up to verbosity v into the buffer, a line each.
func (s *syncBuffer) logger(v int) logr.Logger {
	return funcr.New(func(_, args string) { fmt.Fprintln(s, args) }, funcr.Options{Verbosity: v})
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Ctrl-C while a control plane is renewed: nothing new starts, the renewal
// in progress is waited for and its outcome reported with its node, the
// run is recorded as interrupted, and the next run resumes it, skipping
// what was done.
func TestInterruptWaitsForTheNodeAndTheNextRunResumes(t *testing.T) {
	c := fakeCluster(t, []string{"cp-1", "cp-2", "cp-3"}, []string{"w-1"})
	f := newFakeAgents(t, c)
	f.renewStarted, f.renewGate = make(chan string, 10), make(chan struct{})
	r := newTestRunner(c, f)
	var log syncBuffer
	r.Log = log.logger(0)
	ctx, interrupt := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := r.Rotate(ctx, allOptions())
		done <- err
	}()
	if n := <-f.renewStarted; n != "cp-1" {
		t.Fatalf("first renewal on %s", n)
	}
	f.renewGate <- struct{}{}
	if n := <-f.renewStarted; n != "cp-2" {
		t.Fatalf("second renewal on %s", n)
	}
	interrupt()
	if got := r.InFlight(); len(got) != 1 || got[0] != "node cp-2 (renew)" {
		t.Errorf("in flight %v", got)
	}
	time.Sleep(50 * time.Millisecond) // the interrupt does not cut the renewal off
	f.renewGate <- struct{}{}
	err := <-done
	if err == nil || !strings.Contains(err.Error(), "interrupted") || !strings.Contains(err.Error(), "completed nodes: cp-1;") {
		t.Fatalf("got %v", err)
	}
	if !strings.Contains(log.String(), "node cp-2: the renew in progress when interrupted ended: completed") {
		t.Errorf("the outcome of cp-2 is not reported:\n%s", log.String())
	}
	if got := f.callsOf(api.Renew); strings.Join(got, ",") != "cp-1,cp-2" {
		t.Errorf("renewed %v after the interrupt", got)
	}
	if got := f.callsOf(api.KubeletInstall); strings.Join(got, ",") != "cp-1" {
		t.Errorf("kubelets installed on %v, want only cp-1's (before the interrupt)", got)
	}
	if rec := lastRun(t, c); rec.State != RunInterrupted || strings.Join(rec.Done, ",") != "cp-1" {
		t.Errorf("run record %+v", rec)
	}
	if n := remainingPods(t, c); n != 0 {
		t.Errorf("%d agent pods left", n)
	}

	// The next run resumes: cp-1 is skipped, cp-2 only needs its kubelet.
	f.renewStarted, f.renewGate = nil, nil
	f.calls = nil
	rep, err := r.Rotate(context.Background(), allOptions())
	if err != nil {
		t.Fatal(err)
	}
	if got := f.callsOf(api.Renew); strings.Join(got, ",") != "cp-3" {
		t.Errorf("resumed run renewed %v, want cp-3", got)
	}
	if got := f.callsOf(api.KubeletInstall); strings.Join(got, ",") != "cp-2,cp-3,w-1" {
		t.Errorf("resumed run installed kubelets on %v", got)
	}
	if notes := strings.Join(rep.Notes, "\n"); !strings.Contains(notes, "resuming run") || !strings.Contains(notes, "cp-1 (control-plane certificates, kubelet)") {
		t.Errorf("notes %s", notes)
	}
	if rec := lastRun(t, c); rec.State != RunCompleted {
		t.Errorf("run record %+v", rec)
	}
	// A run after a completed one renews everything again.
	f.calls = nil
	o := allOptions()
	if _, err := r.Rotate(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	if got := f.callsOf(api.Renew); len(got) != 3 {
		t.Errorf("a run after a completed one renewed %v, want every control plane", got)
	}
}

// A second run while one holds the cluster's lock fails at once, naming
// the holder and since when; a lock whose holder stopped renewing it is
// taken over; a dry run needs no lock.
func TestClusterLock(t *testing.T) {
	c := fakeCluster(t, []string{"cp-1"}, nil)
	since := metav1.NewMicroTime(time.Date(2026, 11, 27, 9, 30, 0, 0, time.UTC))
	now := metav1.NowMicro()
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: LeaseName, Namespace: Namespace},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To("alice on laptop (pid 7), run rc-00000000000000aa"),
			AcquireTime: &since, RenewTime: &now, LeaseDurationSeconds: ptr.To[int32](120)}}
	if _, err := c.CoordinationV1().Leases(Namespace).Create(context.Background(), lease, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	f := newFakeAgents(t, c)
	_, err := newTestRunner(c, f).Rotate(context.Background(), allOptions())
	if !errors.Is(err, ErrClusterLocked) || !strings.Contains(err.Error(), "alice on laptop (pid 7), run rc-00000000000000aa, since 2026-11-27T09:30:00Z") {
		t.Fatalf("got %v", err)
	}
	if len(f.calls) > 0 || remainingPods(t, c) > 0 {
		t.Error("something ran while another run holds the lock")
	}
	o := allOptions()
	o.DryRun = true
	if _, err := newTestRunner(c, f).Rotate(context.Background(), o); err != nil {
		t.Errorf("a dry run is refused: %v", err)
	}
	// The holder vanished 10 minutes ago.
	old := metav1.NewMicroTime(time.Now().Add(-10 * time.Minute))
	lease, _ = c.CoordinationV1().Leases(Namespace).Get(context.Background(), LeaseName, metav1.GetOptions{})
	lease.Spec.RenewTime = &old
	if _, err := c.CoordinationV1().Leases(Namespace).Update(context.Background(), lease, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := newTestRunner(c, f).Rotate(context.Background(), allOptions()); err != nil {
		t.Fatalf("an expired lock is not taken over: %v", err)
	}
	lease, _ = c.CoordinationV1().Leases(Namespace).Get(context.Background(), LeaseName, metav1.GetOptions{})
	if lease.Spec.HolderIdentity != nil {
		t.Errorf("lock not released: %s", *lease.Spec.HolderIdentity)
	}
}

// The preflight list is the one list of what the plugin does: running every
// command against a fake cluster makes no request that is not on it.
func TestPreflightCoversEveryRequest(t *testing.T) {
	kubelet := allOptions()
	kubelet.Services = []pki.Service{pki.ServiceKubelet}
	dry := allOptions()
	dry.DryRun = true
	cases := map[string]struct {
		perms permissions
		run   func(r *Runner) error
	}{
		"--all":   {allOptions().permissions(), func(r *Runner) error { _, err := r.Rotate(context.Background(), allOptions()); return err }},
		"kubelet": {kubelet.permissions(), func(r *Runner) error { _, err := r.Rotate(context.Background(), kubelet); return err }},
		"dry run": {dry.permissions(), func(r *Runner) error { _, err := r.Rotate(context.Background(), dry); return err }},
		"status":  {permsAgents, func(r *Runner) error { _, err := r.Status(context.Background(), nil, ""); return err }},
		"rollback": {RollbackOptions{}.permissions(), func(r *Runner) error {
			_, err := r.Rollback(context.Background(), RollbackOptions{Parallelism: Parallelism{Count: 1}})
			return err
		}},
		"rollback dry run": {RollbackOptions{DryRun: true}.permissions(), func(r *Runner) error {
			_, err := r.Rollback(context.Background(), RollbackOptions{Parallelism: Parallelism{Count: 1}, DryRun: true})
			return err
		}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c := fakeCluster(t, []string{"cp-1"}, []string{"w-1"})
			if err := tc.run(newTestRunner(c, newFakeAgents(t, c))); err != nil {
				t.Fatal(err)
			}
			for _, a := range c.Actions() {
				res := a.GetResource()
				if res.Resource == "selfsubjectaccessreviews" || res.Resource == "selfsubjectreviews" {
					continue // the checks themselves, and the best-effort name of the lock's holder
				}
				if !tc.perms.cover(a) {
					t.Errorf("%s %s/%s in %q is not in the preflight list", a.GetVerb(), res.Resource, a.GetSubresource(), a.GetNamespace())
				}
			}
		})
	}
}

func (p permissions) cover(a k8stesting.Action) bool {
	res := a.GetResource()
	for _, x := range p {
		if x.verb == a.GetVerb() && x.group == res.Group && x.resource == res.Resource && x.subresource == a.GetSubresource() &&
			(x.namespace == "" || x.namespace == a.GetNamespace()) {
			return true
		}
	}
	return false
}

// An agent's answer is untrusted input.
func TestDecodeResultRefusesTamperedAnswers(t *testing.T) {
	const authority = `{"id":"0123456789abcdef","commonName":"kubernetes","notAfter":"2030-01-01T00:00:00Z"}`
	for name, tc := range map[string]struct{ out, want string }{
		"another node":    {`{"agentVersion":"v","node":"cp-1","outcome":"done"}`, `for node "cp-1"`},
		"unknown outcome": {`{"agentVersion":"v","node":"w-1","outcome":"great"}`, "unknown outcome"},
		"done and failed": {`{"agentVersion":"v","node":"w-1","outcome":"done","error":"x"}`, "both done and failed"},
		"two answers":     {`{"node":"w-1","outcome":"done"}{"node":"w-1","outcome":"done"}`, "more than one"},
		"unknown field":   {`{"node":"w-1","outcome":"done","privateKey":"x"}`, "unknown field"},
		"too big":         {`{"node":"w-1","outcome":"done","error":"` + strings.Repeat("x", maxAnswer) + `"}`, "bytes"},
		"nothing":         {"", "no answer"},
		"CA id":           {`{"node":"w-1","outcome":"done","inspect":{"certs":[],"cas":[],"authorities":[{"id":"0123456789ABCDEF","commonName":"x","notAfter":"2030-01-01T00:00:00Z"}]}}`, "not 16 lowercase hex digits"},
		"CA twice":        {`{"node":"w-1","outcome":"done","inspect":{"certs":[],"cas":[],"authorities":[` + authority + `,` + authority + `]}}`, "described twice"},
		"unknown CA":      {`{"node":"w-1","outcome":"done","inspect":{"certs":[],"cas":[],"authorities":[` + authority + `],"trustPoints":[{"path":"/p","reader":"kubelet","setting":"s","cas":["0123456789abcdef","fedcba9876543210"]}]}}`, `/p names CA "fedcba9876543210"`},
		"unknown signer":  {`{"node":"w-1","outcome":"done","inspect":{"certs":[],"cas":[],"signers":[{"path":"/p","reader":"r","setting":"s","cas":["\u001b[2J"]}]}}`, `names CA "?[2J"`},
		"unknown issuer":  {`{"node":"w-1","outcome":"done","inspect":{"certs":[{"node":"w-1","name":"apiserver","path":"/a","residualSeconds":0,"externallyManaged":false,"missing":false,"issuer":"fedcba9876543210"}],"cas":[]}}`, `apiserver: issuer "fedcba9876543210"`},
	} {
		if _, err := decodeResult([]byte(tc.out), "w-1"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
	res, err := decodeResult([]byte(`{"agentVersion":"v","node":"w-1","outcome":"restored","error":"bad \u001b[2Jthing","renew":{"notes":["a\u001b]0;x\u0007b"]}}`), "w-1")
	if err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(res.Error+res.Renew.Notes[0], "\x1b\x07") {
		t.Errorf("terminal escapes kept: %q %q", res.Error, res.Renew.Notes)
	}
}

// rollback finds the latest rotation on the nodes and undoes it on each.
func TestRollbackLatestRun(t *testing.T) {
	c := fakeCluster(t, []string{"cp-1"}, []string{"w-1"})
	f := newFakeAgents(t, c)
	rep, err := newTestRunner(c, f).Rollback(context.Background(), RollbackOptions{Parallelism: Parallelism{Count: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if got := f.callsOf(api.Rollback); strings.Join(got, ",") != "cp-1,w-1" {
		t.Errorf("rolled back %v", got)
	}
	if rep.Run == "" {
		t.Error("no run ID")
	}
	if _, err := newTestRunner(c, f).Rollback(context.Background(), RollbackOptions{Run: "rc-00000000000000bb", Parallelism: Parallelism{Count: 1}}); err == nil || !strings.Contains(err.Error(), "no selected node keeps a backup of run rc-00000000000000bb") {
		t.Errorf("unknown run: %v", err)
	}
}

// An interrupt right after a kubelet's transaction committed still waits
// for the cluster to see the new kubelet, and never rolls it back.
func TestInterruptAfterAKubeletInstallDoesNotRollItBack(t *testing.T) {
	c := fakeCluster(t, nil, []string{"w-1"})
	var renewed sync.Once
	var renewedAt time.Time
	c.PrependReactor("get", "leases", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetNamespace() != "kube-node-lease" {
			return false, nil, nil
		}
		renewed.Do(func() { renewedAt = time.Now().Add(300 * time.Millisecond) })
		rt := metav1.NewMicroTime(time.Now().Add(-time.Hour))
		if time.Now().After(renewedAt) {
			rt = metav1.NowMicro()
		}
		return true, &coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{RenewTime: &rt}}, nil
	})
	f := newFakeAgents(t, c)
	ctx, interrupt := context.WithCancel(context.Background())
	f.afterInstall = func(string) { interrupt() }
	o := allOptions()
	o.Services = []pki.Service{pki.ServiceKubelet}
	_, err := newTestRunner(c, f).Rotate(ctx, o)
	if err == nil || !strings.Contains(err.Error(), "completed nodes: w-1") {
		t.Errorf("got %v, want an interrupt after w-1 completed", err)
	}
	if calls := f.callsOf(api.Rollback); len(calls) > 0 {
		t.Errorf("the interrupt rolled back %v", calls)
	}
}

// noAgent is a node whose agent cannot start: every exec fails without an
// answer, and the result it would have filed never exists.
type noAgent struct{ execs int }

func (n *noAgent) agent(_ context.Context, args []string, _ []byte) ([]byte, error) {
	n.execs++
	if args[0] == "result" {
		return []byte(`{"agentVersion":"v","outcome":"not-received","error":"never reached"}`), nil
	}
	return nil, errors.New("exit status 126: permission denied")
}
func (n *noAgent) id() string { return "n" }

// A request the agent never receives is given up after a few tries, with
// the reason, not retried until the transaction's deadline.
func TestCallGivesUpOnAnAgentThatCannotStart(t *testing.T) {
	c := fakeCluster(t, nil, nil)
	r := newTestRunner(c, nil)
	conn := &noAgent{}
	start := time.Now()
	_, err := r.call(context.Background(), agentPod{node: "w-1", conn: conn}, api.Request{Action: api.Inspect})
	if err == nil || !strings.Contains(err.Error(), "never received the request") || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("got %v", err)
	}
	if conn.execs > 6 || time.Since(start) > time.Second {
		t.Errorf("%d execs in %s", conn.execs, time.Since(start))
	}
}
