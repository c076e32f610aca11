package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
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
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n, UID: types.UID("uid-" + n), Labels: map[string]string{}},
			Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}},
				Addresses: []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: n}, {Type: corev1.NodeInternalIP, Address: "192.0.2.10"}}}}
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
		csr.Status.Certificate = []byte("issued-for-" + csr.Name + "-" + csr.Spec.SignerName)
		err := c.Tracker().Update(certificatesv1.SchemeGroupVersion.WithResource("certificatesigningrequests"), csr, "")
		return true, csr, err
	})
	// Kubelets renew their leases all the time.
	c.PrependReactor("get", "leases", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetNamespace() != "kube-node-lease" {
			return false, nil, nil
		}
		now := metav1.NewMicroTime(time.Now())
		return true, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: a.(k8stesting.GetAction).GetName(), Namespace: "kube-node-lease"}, Spec: coordinationv1.LeaseSpec{RenewTime: &now}}, nil
	})
	c.PrependReactor("create", "selfsubjectreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		r := a.(k8stesting.CreateAction).GetObject().(*authenticationv1.SelfSubjectReview)
		r.Status.UserInfo.Username = "kubernetes-admin"
		return true, r, nil
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
	failOutcome                api.Outcome // of failAction (default restored)
	issued                     map[string]string
	backups                    map[string][]api.Backup // node -> the backups its transactions committed
	// csrs, if set, answers KubeletCSR instead of the node's own request.
	csrs func(node string) []api.CSR
	// renewStarted is told each node whose Renew began; renewGate, if
	// set, holds a Renew until it can be received from.
	renewStarted chan string
	renewGate    chan struct{}
	// afterInstall, if set, is called when a KubeletInstall answered.
	afterInstall func(node string)
	// breakStream: the exec stream of these actions breaks once per node
	// after the agent performed them (as when an action restarts
	// kube-apiserver); their results are filed for "result --id".
	breakStream map[api.Action]bool
	broken      map[string]bool
	filed       map[string][]byte
	// latency, if set, is how long each action takes.
	latency func(api.Action) time.Duration
	// onRenew, if set, runs during each Renew; noKCMRestart makes Renew
	// report no restart of kube-controller-manager.
	onRenew      func()
	noKCMRestart bool
	// kubeletRefuses counts, per "node action", the execs the node's
	// kubelet refuses before it lets one through.
	kubeletRefuses map[string]int
}

func newFakeAgents(t *testing.T, c *fake.Clientset) *fakeAgents {
	return &fakeAgents{client: c, pid: map[string]int{}, problems: map[string]string{}, failAction: map[string]api.Action{},
		issued: map[string]string{}, backups: map[string][]api.Backup{}, kubeletRefuses: map[string]int{}}
}

// nodeCSR is the request an honest agent on node makes.
func nodeCSR(node string) api.CSR {
	_, csr, err := pki.NewCSR(pki.KubeletClientSubject(node), nil, nil, nil)
	if err != nil {
		panic(err)
	}
	return api.CSR{Name: "kubelet-client", Request: string(csr)}
}

func (f *fakeAgents) Exec(ctx context.Context, ns, pod, container string, cmd []string, stdin []byte) ([]byte, error) {
	if len(cmd) == 5 && cmd[2] == "result" {
		f.mu.Lock()
		defer f.mu.Unlock()
		if out, ok := f.filed[cmd[4]]; ok {
			return out, nil
		}
		return json.Marshal(api.Result{AgentVersion: version.Version, Outcome: api.NotReceived, Error: "no such request"})
	}
	if stdin == nil {
		return nil, nil // ping
	}
	var sent api.Request
	_ = json.Unmarshal(stdin, &sent)
	f.mu.Lock()
	refuse := f.kubeletRefuses[sent.Node+" "+string(sent.Action)] > 0
	if refuse {
		f.kubeletRefuses[sent.Node+" "+string(sent.Action)]--
	}
	f.mu.Unlock()
	if refuse {
		return nil, fmt.Errorf("unable to upgrade connection: Forbidden (user=kube-apiserver-kubelet-client, verb=create, resource=nodes, subresource(s)=[proxy])")
	}
	out, err := f.perform(stdin)
	if err != nil {
		return out, err
	}
	var req api.Request
	_ = json.Unmarshal(stdin, &req)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.breakStream[req.Action] && !f.broken[req.Node+string(req.Action)] {
		if f.broken == nil {
			f.broken, f.filed = map[string]bool{}, map[string][]byte{}
		}
		f.broken[req.Node+string(req.Action)] = true
		f.filed[req.ID] = out
		return nil, fmt.Errorf("exec in %s/%s: error sending request: Post \"https://127.0.0.1:6443/api/v1/namespaces/kube-system/pods/%s/exec\": EOF", ns, pod, pod)
	}
	return out, nil
}

// perform plays the agent for one request.
func (f *fakeAgents) perform(stdin []byte) ([]byte, error) {
	var req api.Request
	if err := json.Unmarshal(stdin, &req); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.calls = append(f.calls, req.Node+" "+string(req.Action))
	f.mu.Unlock()
	if f.latency != nil {
		time.Sleep(f.latency(req.Action))
	}
	res := api.Result{AgentVersion: version.Version, Node: req.Node, Outcome: api.Done}
	if f.failAction[req.Node] == req.Action {
		res.Outcome, res.Error = api.Restored, "injected failure"
		if f.failOutcome != "" {
			res.Outcome = f.failOutcome
		}
		return json.Marshal(res)
	}
	cp := strings.HasPrefix(req.Node, "cp")
	switch req.Action {
	case api.Inspect:
		f.mu.Lock()
		res.Inspect = &api.InspectResult{ControlPlane: cp, Backups: f.backups[req.Node], Plan: []api.PlannedChange{{Name: "kubelet-client", Service: "kubelet", Serial: "1"}}}
		if cp {
			res.Inspect.Plan = append(res.Inspect.Plan, api.PlannedChange{Name: "apiserver", Service: "kube-apiserver", Serial: "1"})
		}
		f.mu.Unlock()
		if p := f.problems[req.Node]; p != "" {
			res.Inspect.Problems = []string{p}
		}
		res.Inspect.Notes = proxyNote(req)
		if req.Trust {
			res.Inspect.Authorities = []api.Authority{{ID: "0123456789abcdef", CommonName: "kubernetes", NotAfter: time.Date(2035, 1, 1, 0, 0, 0, 0, time.UTC)}}
			res.Inspect.TrustPoints = []api.TrustPoint{{Path: "/etc/kubernetes/kubelet.conf", Reader: "kubelet", Setting: "kubelet.conf certificate-authority-data", CAs: []string{"0123456789abcdef"}}}
		}
	case api.Renew:
		f.mu.Lock()
		f.busyControlPlanes++
		f.maxBusy = max(f.maxBusy, f.busyControlPlanes)
		started, gate := f.renewStarted, f.renewGate
		f.mu.Unlock()
		if started != nil {
			started <- req.Node
		}
		if gate != nil {
			<-gate
		}
		time.Sleep(20 * time.Millisecond)
		if f.onRenew != nil {
			f.onRenew()
		}
		f.mu.Lock()
		f.busyControlPlanes--
		f.backups[req.Node] = append(f.backups[req.Node], api.Backup{Name: "b0", Run: req.Run, Action: "renew", State: api.BackupCommitted})
		f.mu.Unlock()
		res.Renew = &api.RenewResult{Backup: "b0", Changes: []api.Change{{Name: "apiserver", OldSerial: "1", NewSerial: "2", NewNotAfter: time.Now().Add(8760 * time.Hour).UTC()}},
			Restarted: []api.Restarted{{Component: "kube-controller-manager", OldPID: 10, NewPID: 11, Seconds: 1.5}},
			Verified:  []string{"kube-apiserver serves apiserver serial 2 on 127.0.0.1:6443"}, Notes: proxyNote(req)}
		if f.noKCMRestart {
			res.Renew.Restarted = nil
		}
	case api.KubeletCSR:
		if f.csrs != nil {
			res.CSRs = f.csrs(req.Node)
		} else {
			res.CSRs = []api.CSR{nodeCSR(req.Node)}
		}
	case api.KubeletInstall:
		f.mu.Lock()
		f.issued[req.Node] = req.Issued["kubelet-client"]
		f.backups[req.Node] = append(f.backups[req.Node], api.Backup{Name: "b1", Run: req.Run, Action: "kubelet", State: api.BackupCommitted})
		f.pid[req.Node]++
		res.Kubelet = &api.KubeletProcess{PID: 100 + f.pid[req.Node], StartedAt: time.Now().Add(-time.Second), Healthy: true}
		f.mu.Unlock()
		res.Renew = &api.RenewResult{Backup: "b1", Changes: []api.Change{{Name: "kubelet-client", OldSerial: "1", NewSerial: "2"}}}
		if f.afterInstall != nil {
			defer f.afterInstall(req.Node)
		}
	case api.RestartKubelet:
		f.mu.Lock()
		f.pid[req.Node]++
		res.Kubelet = &api.KubeletProcess{PID: 100 + f.pid[req.Node], StartedAt: time.Now().Add(-time.Second), Healthy: true}
		f.mu.Unlock()
	case api.KubeletStatus:
		f.mu.Lock()
		res.Kubelet = &api.KubeletProcess{PID: 100 + f.pid[req.Node], Healthy: true}
		f.mu.Unlock()
	case api.ListBackups:
		res.Backups = []api.Backup{{Name: "b0", Run: "rc-00000000000000aa", Action: "renew", State: api.BackupCommitted, Created: time.Now(), Paths: []string{"/etc/kubernetes/admin.conf"}}}
	case api.Rollback:
		res.Renew = &api.RenewResult{Backup: "b2", Changes: []api.Change{{Name: "admin.conf", Path: "/etc/kubernetes/admin.conf", NewSerial: "1", NewNotAfter: time.Now().Add(time.Hour).UTC()}}}
	}
	return json.Marshal(res)
}

// proxyNote is the note agents make, in every inspection and renewal, when
// kube-proxy is among the services.
func proxyNote(req api.Request) []string {
	for _, s := range req.Services {
		if s == string(pki.ServiceKubeProxy) {
			return []string{"kube-proxy authenticates with a ServiceAccount token in kubeadm clusters: no certificate file to renew; its pods are restarted"}
		}
	}
	return nil
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
	return RotateOptions{Services: append(append([]pki.Service{}, pki.Services...), pki.ServiceAdmin), Validity: time.Hour * 8760, Restart: api.RestartNeeded, Parallelism: Parallelism{Count: 2}, Resume: true}
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
	if len(f.callsOf(api.KubeletInstall)) != 6 || len(f.issued) != 6 {
		t.Errorf("kubelet installed on %v, certificates issued for %v; want all 6 nodes", f.callsOf(api.KubeletInstall), f.issued)
	}
	for n, cert := range f.issued {
		if !strings.HasPrefix(cert, "issued-for-rotate-certs-"+n) || !strings.HasSuffix(cert, "-kubernetes.io/kube-apiserver-client-kubelet") {
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

// A kubelet whose new process never renews its node's lease is rolled
// back by the plugin (the node's own checks passed, the cluster's did not).
func TestRotateRollsBackAKubeletThatDoesNotComeBack(t *testing.T) {
	c := fakeCluster(t, nil, []string{"w-1"})
	c.PrependReactor("get", "leases", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetNamespace() != "kube-node-lease" {
			return false, nil, nil
		}
		stale := metav1.NewMicroTime(time.Now().Add(-time.Hour))
		return true, &coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{RenewTime: &stale}}, nil
	})
	f := newFakeAgents(t, c)
	o := allOptions()
	o.Services = []pki.Service{pki.ServiceKubelet}
	_, err := newTestRunner(c, f).Rotate(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "node w-1: node lease not renewed") || !strings.Contains(err.Error(), "previous files were restored") {
		t.Fatalf("got %v", err)
	}
	if len(f.callsOf(api.Rollback)) != 1 {
		t.Errorf("rollback calls %v", f.callsOf(api.Rollback))
	}
}

// A kubelet transaction the node restored itself is reported as such and
// stops the run; nothing more is done to that node.
func TestRotateStopsWhenANodeRestored(t *testing.T) {
	c := fakeCluster(t, []string{"cp-1"}, []string{"w-1", "w-2"})
	f := newFakeAgents(t, c)
	f.failAction["cp-1"] = api.KubeletInstall
	_, err := newTestRunner(c, f).Rotate(context.Background(), allOptions())
	var ae *AgentError
	if !errors.As(err, &ae) || ae.Node != "cp-1" || ae.Outcome != api.Restored {
		t.Fatalf("got %v", err)
	}
	if calls := f.callsOf(api.KubeletCSR); len(calls) != 1 || len(f.callsOf(api.Rollback)) != 0 {
		t.Errorf("after cp-1 restored: kubelet requests on %v, rollbacks %v", calls, f.callsOf(api.Rollback))
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
	if len(rep.Rows) != 3 || !rep.DryRun {
		t.Errorf("plan rows %v", rep.Rows)
	}
}

// mounts maps a pod's mount paths to whether they are read-only.
func mounts(p *corev1.Pod) map[string]bool {
	out := map[string]bool{}
	for _, m := range p.Spec.Containers[0].VolumeMounts {
		out[m.MountPath] = m.ReadOnly
	}
	return out
}

func TestAgentPodSpec(t *testing.T) {
	o := PodSpecOptions{Node: "node-1", Image: "img:v1", RunID: "rc-1", Access: Access{ControlPlane: true, Kubelet: true},
		Idle: 5 * time.Minute, Deadline: time.Hour, Grace: 21 * time.Minute}
	p := AgentPod(o)
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
	// A deadline, and a grace period that lets a transaction end.
	if s.ActiveDeadlineSeconds == nil || *s.ActiveDeadlineSeconds != 3600 || s.TerminationGracePeriodSeconds == nil || *s.TerminationGracePeriodSeconds != 21*60 {
		t.Errorf("deadline %v grace %v", s.ActiveDeadlineSeconds, s.TerminationGracePeriodSeconds)
	}
	if cmd := strings.Join(c.Command, " "); !strings.Contains(cmd, "--idle 5m0s") || !strings.Contains(cmd, "--drain 21m0s") {
		t.Errorf("command %q", cmd)
	}
	// Only what the work needs: never all of /var/lib/kubelet.
	want := map[string]bool{"/host/etc/kubernetes": false, "/host/var/lib/kubelet/pki": false, "/host/var/lib/kubelet/config.yaml": true, "/host/run/systemd": false}
	got := mounts(p)
	delete(got, "/results")
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("mounts %v, want %v (path: read-only)", got, want)
	}
	o.Access = Access{ControlPlane: true}
	got = mounts(AgentPod(o))
	if got["/host/var/lib/kubelet/pki"] != true || len(got) != 3 {
		t.Errorf("a control-plane-only pod mounts %v; the kubelet's files must be read-only and systemd absent", got)
	}
	o.Access = Access{ReadOnly: true}
	ro := AgentPod(o)
	if ro.Spec.HostPID || ro.Spec.HostNetwork || *ro.Spec.Containers[0].SecurityContext.Privileged {
		t.Error("status pods must not be privileged or share host namespaces")
	}
	for path, readOnly := range mounts(ro) {
		if strings.HasPrefix(path, "/host") && !readOnly {
			t.Errorf("status pod mounts %s writable", path)
		}
	}
	o.Access = Access{ReadOnly: true, Kubelet: true} // a dry run of the kubelet
	if _, ok := mounts(AgentPod(o))["/host/var/lib/kubelet/config.yaml"]; ok {
		t.Error("a dry run's pod mounts the kubelet's config.yaml")
	}
	// ca status reads the kubelet's clientCAFile: its config.yaml, read-only.
	o.Access = Access{ReadOnly: true, KubeletConfig: true}
	ro = AgentPod(o)
	want = map[string]bool{"/host/etc/kubernetes": true, "/host/var/lib/kubelet/pki": true, "/host/var/lib/kubelet/config.yaml": true}
	got = mounts(ro)
	delete(got, "/results")
	if fmt.Sprint(got) != fmt.Sprint(want) || ro.Spec.HostPID || *ro.Spec.Containers[0].SecurityContext.Privileged {
		t.Errorf("a read-only pod reading the kubelet's config mounts %v, want %v, unprivileged", got, want)
	}
}

func TestStatusReportsUnreachableNodes(t *testing.T) {
	c := fakeCluster(t, []string{"cp-1"}, []string{"w-1"})
	f := newFakeAgents(t, c)
	f.failAction["w-1"] = api.Inspect
	out, err := newTestRunner(c, f).Status(context.Background(), []string{"cp-1", "w-1", "w-9"}, "")
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

// Right after --restart=all restarted a control plane's kube-apiserver, that
// node's kubelet may refuse the API server's exec for a while (its
// authorizer asks the local kube-apiserver, which denies until its RBAC
// cache synced, and the kubelet caches a denial for 30 s): the request
// never reached the agent, so it is sent again, not given up after three
// tries (measured: a make bench run failed so).
func TestRotateSendsAgainWhatTheKubeletRefused(t *testing.T) {
	c := fakeCluster(t, []string{"cp-1"}, []string{"w-1"})
	f := newFakeAgents(t, c)
	f.kubeletRefuses["cp-1 kubelet-csr"] = 5
	if _, err := newTestRunner(c, f).Rotate(context.Background(), allOptions()); err != nil {
		t.Fatal(err)
	}
	if f.issued["cp-1"] == "" {
		t.Error("cp-1's kubelet certificate was not installed")
	}
}
