package orchestrator

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/version"
)

// fakeCluster is a fake clientset that behaves enough like a cluster:
// pods get names and run, access reviews allow (unless denied), approved
// CSRs get a certificate.
func fakeCluster(t *testing.T, cps, workers []string, denied ...string) *fake.Clientset {
	t.Helper()
	var objs []runtime.Object
	for _, n := range append(append([]string{}, cps...), workers...) {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n, Labels: map[string]string{}},
			Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}}
		for _, c := range cps {
			if c == n {
				node.Labels["node-role.kubernetes.io/control-plane"] = ""
			}
		}
		objs = append(objs, node)
	}
	c := fake.NewClientset(objs...)
	var mu sync.Mutex
	count := 0
	c.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		p := a.(k8stesting.CreateAction).GetObject().(*corev1.Pod)
		mu.Lock()
		count++
		p.Name = fmt.Sprintf("%s%d", p.GenerateName, count)
		mu.Unlock()
		p.Status.Phase = corev1.PodRunning
		return false, p, nil
	})
	c.PrependReactor("create", "certificatesigningrequests", func(a k8stesting.Action) (bool, runtime.Object, error) {
		csr := a.(k8stesting.CreateAction).GetObject().(*certificatesv1.CertificateSigningRequest)
		mu.Lock()
		count++
		csr.Name = fmt.Sprintf("%s%d", csr.GenerateName, count)
		mu.Unlock()
		return false, csr, nil
	})
	c.PrependReactor("update", "certificatesigningrequests", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "approval" {
			return false, nil, nil
		}
		csr := a.(k8stesting.UpdateAction).GetObject().(*certificatesv1.CertificateSigningRequest).DeepCopy()
		csr.Status.Certificate = []byte("issued-for-" + csr.Name)
		err := c.Tracker().Update(certificatesv1.SchemeGroupVersion.WithResource("certificatesigningrequests"), csr, "")
		return true, csr, err
	})
	// Kubelets renew their leases all the time.
	c.PrependReactor("get", "leases", func(a k8stesting.Action) (bool, runtime.Object, error) {
		now := metav1.NewMicroTime(time.Now())
		return true, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: a.(k8stesting.GetAction).GetName(), Namespace: "kube-node-lease"}, Spec: coordinationv1.LeaseSpec{RenewTime: &now}}, nil
	})
	c.PrependReactor("create", "selfsubjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		r := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SelfSubjectAccessReview)
		attr := r.Spec.ResourceAttributes
		r.Status.Allowed = true
		for _, d := range denied {
			if d == attr.Verb+" "+attr.Resource {
				r.Status.Allowed = false
			}
		}
		return true, r, nil
	})
	return c
}

// fakeAgents plays every node's agent and records what happened.
type fakeAgents struct {
	client *fake.Clientset
	mu     sync.Mutex
	calls  []string // "node action"
	// busyControlPlanes counts control-plane renewals in flight.
	busyControlPlanes, maxBusy int
	pid                        map[string]int
	problems                   map[string]string // node -> inspect problem
	failAction                 map[string]api.Action
	issued                     map[string]string
}

func newFakeAgents(t *testing.T, c *fake.Clientset) *fakeAgents {
	return &fakeAgents{client: c, pid: map[string]int{}, problems: map[string]string{}, failAction: map[string]api.Action{}, issued: map[string]string{}}
}

func (f *fakeAgents) Exec(ctx context.Context, ns, pod, container string, cmd []string, stdin []byte) ([]byte, error) {
	var req api.Request
	if err := json.Unmarshal(stdin, &req); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.calls = append(f.calls, req.Node+" "+string(req.Action))
	f.mu.Unlock()
	res := api.Result{AgentVersion: version.Version, Node: req.Node}
	if f.failAction[req.Node] == req.Action {
		res.Error = "injected failure"
		return json.Marshal(res)
	}
	cp := strings.HasPrefix(req.Node, "cp")
	switch req.Action {
	case api.Inspect:
		res.Inspect = &api.InspectResult{ControlPlane: cp, Plan: []api.PlannedChange{{Name: "apiserver", Serial: "1"}}}
		if p := f.problems[req.Node]; p != "" {
			res.Inspect.Problems = []string{p}
		}
	case api.Renew:
		f.mu.Lock()
		f.busyControlPlanes++
		f.maxBusy = max(f.maxBusy, f.busyControlPlanes)
		f.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
		f.mu.Lock()
		f.busyControlPlanes--
		f.mu.Unlock()
		res.Renew = &api.RenewResult{Changes: []api.Change{{Name: "apiserver", OldSerial: "1", NewSerial: "2"}}}
	case api.KubeletCSR:
		res.CSRs = []api.CSR{{Name: "kubelet-client", SignerName: certificatesv1.KubeAPIServerClientKubeletSignerName, Request: "CSR-" + req.Node, Usages: []string{"digital signature", "client auth"}}}
	case api.KubeletInstall:
		f.mu.Lock()
		f.issued[req.Node] = req.Issued["kubelet-client"]
		f.mu.Unlock()
		res.Renew = &api.RenewResult{Backup: "b1", Changes: []api.Change{{Name: "kubelet-client", OldSerial: "1", NewSerial: "2"}}}
	case api.RestartKubelet:
		f.mu.Lock()
		f.pid[req.Node]++
		f.mu.Unlock()
	case api.KubeletStatus:
		f.mu.Lock()
		res.Kubelet = &api.KubeletProcess{PID: 100 + f.pid[req.Node], Healthy: true}
		f.mu.Unlock()
	case api.Rollback:
	}
	return json.Marshal(res)
}

func (f *fakeAgents) callsOf(action api.Action) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.calls {
		if strings.HasSuffix(c, " "+string(action)) {
			out = append(out, strings.TrimSuffix(c, " "+string(action)))
		}
	}
	return out
}

func newTestRunner(c *fake.Clientset, f *fakeAgents) *Runner {
	return &Runner{Client: c, Exec: f, Image: "agent:test", Timeout: 2 * time.Second, Poll: 10 * time.Millisecond}
}

func allOptions() RotateOptions {
	return RotateOptions{Services: append(append([]pki.Service{}, pki.Services...), pki.ServiceAdmin), Validity: time.Hour * 8760, Restart: api.RestartNeeded, Parallelism: 2}
}

func remainingPods(t *testing.T, c *fake.Clientset) int {
	pods, err := c.CoreV1().Pods(Namespace).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return len(pods.Items)
}

func TestRotateOrdersControlPlanesOneAtATimeThenWorkers(t *testing.T) {
	c := fakeCluster(t, []string{"cp-1", "cp-2", "cp-3"}, []string{"w-1", "w-2", "w-3"})
	f := newFakeAgents(t, c)
	rep, err := newTestRunner(c, f).Rotate(context.Background(), allOptions())
	if err != nil {
		t.Fatal(err)
	}
	if f.maxBusy != 1 {
		t.Errorf("%d control planes renewed at once, want 1", f.maxBusy)
	}
	if got := f.callsOf(api.Renew); strings.Join(got, ",") != "cp-1,cp-2,cp-3" {
		t.Errorf("renew order %v, want the control planes in order", got)
	}
	// Every control plane's kubelet is done before any worker starts.
	lastCP, firstWorker := -1, len(f.calls)
	for i, call := range f.calls {
		if strings.HasSuffix(call, string(api.KubeletCSR)) {
			if strings.HasPrefix(call, "cp") {
				lastCP = i
			} else if i < firstWorker {
				firstWorker = i
			}
		}
	}
	if lastCP > firstWorker {
		t.Errorf("a worker started before the control planes were done: %v", f.calls)
	}
	if len(f.callsOf(api.RestartKubelet)) != 6 || len(f.issued) != 6 {
		t.Errorf("kubelet restarted on %v, certificates issued for %v; want all 6 nodes", f.callsOf(api.RestartKubelet), f.issued)
	}
	for n, cert := range f.issued {
		if !strings.HasPrefix(cert, "issued-for-rotate-certs-"+n) {
			t.Errorf("node %s got certificate %q, not the one its CSR was issued", n, cert)
		}
	}
	if len(rep.Rows) != 3+6 {
		t.Errorf("%d report rows, want 9", len(rep.Rows))
	}
	if n := remainingPods(t, c); n != 0 {
		t.Errorf("%d agent pods left", n)
	}
	csrs, _ := c.CertificatesV1().CertificateSigningRequests().List(context.Background(), metav1.ListOptions{})
	if len(csrs.Items) != 0 {
		t.Errorf("%d CSR objects left", len(csrs.Items))
	}
}

func TestRotateChangesNothingWhenAnyNodeHasAProblem(t *testing.T) {
	c := fakeCluster(t, []string{"cp-1"}, []string{"w-1"})
	f := newFakeAgents(t, c)
	f.problems["w-1"] = "corrupt certificate"
	_, err := newTestRunner(c, f).Rotate(context.Background(), allOptions())
	if err == nil || !strings.Contains(err.Error(), "w-1: corrupt certificate") || !strings.Contains(err.Error(), "no file on any node was changed") {
		t.Fatalf("got %v", err)
	}
	for _, a := range []api.Action{api.Renew, api.KubeletCSR, api.KubeletInstall} {
		if calls := f.callsOf(a); len(calls) > 0 {
			t.Errorf("%s called on %v", a, calls)
		}
	}
	if n := remainingPods(t, c); n != 0 {
		t.Errorf("%d agent pods left after a refused run", n)
	}
}

func TestRotateCleansUpAfterAFailure(t *testing.T) {
	c := fakeCluster(t, []string{"cp-1", "cp-2"}, []string{"w-1"})
	f := newFakeAgents(t, c)
	f.failAction["cp-1"] = api.Renew
	_, err := newTestRunner(c, f).Rotate(context.Background(), allOptions())
	if err == nil || !strings.Contains(err.Error(), "injected failure") {
		t.Fatalf("got %v", err)
	}
	if calls := f.callsOf(api.Renew); len(calls) != 1 {
		t.Errorf("renew went on to %v after cp-1 failed", calls)
	}
	if n := remainingPods(t, c); n != 0 {
		t.Errorf("%d agent pods left", n)
	}
}

func TestRotateRollsBackAKubeletThatDoesNotComeBack(t *testing.T) {
	c := fakeCluster(t, nil, []string{"w-1"})
	f := newFakeAgents(t, c)
	f.failAction["w-1"] = api.RestartKubelet
	o := allOptions()
	o.Services = []pki.Service{pki.ServiceKubelet}
	_, err := newTestRunner(c, f).Rotate(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "previous files") && !strings.Contains(err.Error(), "rollback") {
		t.Fatalf("got %v", err)
	}
	if len(f.callsOf(api.Rollback)) != 1 {
		t.Errorf("rollback calls %v", f.callsOf(api.Rollback))
	}
}

func TestRotateRejectsMissingNodesAndRBAC(t *testing.T) {
	c := fakeCluster(t, []string{"cp-1"}, nil)
	f := newFakeAgents(t, c)
	o := allOptions()
	o.NodeNames = []string{"cp-9"}
	if _, err := newTestRunner(c, f).Rotate(context.Background(), o); err == nil || !strings.Contains(err.Error(), "node cp-9 not found") || !strings.Contains(err.Error(), "cp-1") {
		t.Errorf("missing node: %v", err)
	}
	c = fakeCluster(t, []string{"cp-1"}, nil, "create pods")
	f = newFakeAgents(t, c)
	_, err := newTestRunner(c, f).Rotate(context.Background(), allOptions())
	if err == nil || !strings.Contains(err.Error(), "not allowed to: create pods") {
		t.Errorf("RBAC: %v", err)
	}
	if len(f.calls) > 0 || remainingPods(t, c) > 0 {
		t.Error("something ran although RBAC forbids it")
	}
}

func TestDryRunOnlyInspects(t *testing.T) {
	c := fakeCluster(t, []string{"cp-1"}, []string{"w-1"})
	f := newFakeAgents(t, c)
	o := allOptions()
	o.DryRun = true
	rep, err := newTestRunner(c, f).Rotate(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.calls) != 2 || len(f.callsOf(api.Inspect)) != 2 {
		t.Errorf("calls %v, want one inspect per node", f.calls)
	}
	if len(rep.Rows) != 2 || !rep.DryRun {
		t.Errorf("plan rows %v", rep.Rows)
	}
}

func TestAgentPodSpec(t *testing.T) {
	p := AgentPod(PodSpecOptions{Node: "node-1", Image: "img:v1", RunID: "rc-1"})
	s := p.Spec
	c := s.Containers[0]
	if s.NodeName != "node-1" || !s.HostPID || !s.HostNetwork || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
		t.Errorf("rotation pod must be pinned, hostPID, hostNetwork and privileged: %+v", s)
	}
	if len(s.Tolerations) != 1 || s.Tolerations[0].Operator != corev1.TolerationOpExists || s.Tolerations[0].Key != "" {
		t.Errorf("must tolerate every taint: %+v", s.Tolerations)
	}
	if s.PriorityClassName != "system-node-critical" || p.Namespace != "kube-system" || p.Labels[LabelRun] != "rc-1" {
		t.Errorf("priority %q namespace %q labels %v", s.PriorityClassName, p.Namespace, p.Labels)
	}
	mounts := map[string]bool{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m.ReadOnly
	}
	for _, want := range []string{"/host/etc/kubernetes", "/host/var/lib/kubelet", "/host/run/systemd"} {
		if ro, ok := mounts[want]; !ok || ro {
			t.Errorf("mount %s missing or read-only", want)
		}
	}
	ro := AgentPod(PodSpecOptions{Node: "node-1", Image: "img:v1", RunID: "rc-1", ReadOnly: true})
	if ro.Spec.HostPID || ro.Spec.HostNetwork || *ro.Spec.Containers[0].SecurityContext.Privileged {
		t.Error("status pods must not be privileged or share host namespaces")
	}
	for _, m := range ro.Spec.Containers[0].VolumeMounts {
		if strings.HasPrefix(m.MountPath, "/host") && !m.ReadOnly {
			t.Errorf("status pod mounts %s writable", m.MountPath)
		}
	}
}

func TestStatusReportsUnreachableNodes(t *testing.T) {
	c := fakeCluster(t, []string{"cp-1"}, []string{"w-1"})
	f := newFakeAgents(t, c)
	f.failAction["w-1"] = api.Inspect
	out, err := newTestRunner(c, f).Status(context.Background(), []string{"cp-1", "w-1", "w-9"}, "", 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 3 || out[0].Error != "" || !strings.Contains(out[1].Error, "injected failure") || !strings.Contains(out[2].Error, "not found; nodes are: cp-1, w-1") {
		t.Errorf("status %+v", out)
	}
	if n := remainingPods(t, c); n != 0 {
		t.Errorf("%d agent pods left", n)
	}
}
