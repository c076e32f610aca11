package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/orchestrator"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/version"
)

// fakeFactory hands commands a fake cluster and fake agents.
type fakeFactory struct {
	client *fake.Clientset
	exec   orchestrator.Executor
	flags  *genericclioptions.ConfigFlags
}

func (f *fakeFactory) KubeClient() (kubernetes.Interface, error) { return f.client, nil }
func (f *fakeFactory) Executor() (orchestrator.Executor, error)  { return f.exec, nil }

// RawKubeConfig reads the kubeconfig the flags name: contexts come from a
// file, not from a cluster.
func (f *fakeFactory) RawKubeConfig() (clientcmdapi.Config, error) {
	return f.flags.ToRawKubeConfigLoader().RawConfig()
}

// fakeCluster has a control plane cp-1 and a worker w-1; agent pods start
// at once; access reviews allow all but denied ("verb resource").
func fakeCluster(denied ...string) *fake.Clientset {
	node := func(name string, labels map[string]string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
			Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}}
	}
	c := fake.NewClientset(node("cp-1", map[string]string{"node-role.kubernetes.io/control-plane": ""}), node("w-1", map[string]string{"pool": "a"}))
	var mu sync.Mutex
	n := 0
	c.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		p := a.(k8stesting.CreateAction).GetObject().(*corev1.Pod)
		mu.Lock()
		n++
		p.Name = fmt.Sprintf("%s%d", p.GenerateName, n)
		mu.Unlock()
		p.Status.Phase = corev1.PodRunning
		return false, p, nil
	})
	c.PrependReactor("create", "selfsubjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		r := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SelfSubjectAccessReview)
		attr := r.Spec.ResourceAttributes
		r.Status.Allowed = true
		for _, d := range denied {
			r.Status.Allowed = r.Status.Allowed && d != attr.Verb+" "+attr.Resource
		}
		return true, r, nil
	})
	return c
}

// inspectingAgents answer inspections with a plan of one certificate per
// node (what --dry-run and status ask).
type inspectingAgents struct{}

func (inspectingAgents) Exec(_ context.Context, _, _, _ string, _ []string, stdin []byte) ([]byte, error) {
	if stdin == nil {
		return nil, nil
	}
	var req api.Request
	if err := json.Unmarshal(stdin, &req); err != nil {
		return nil, err
	}
	res := api.Result{AgentVersion: version.Version, Node: req.Node, Outcome: api.Done}
	if req.Action == api.Inspect {
		res.Inspect = &api.InspectResult{ControlPlane: strings.HasPrefix(req.Node, "cp"), Plan: []api.PlannedChange{{Name: "kubelet-client", Service: "kubelet",
			Path: "/var/lib/kubelet/pki/kubelet-client-current.pem", Serial: "7", NotAfter: time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)}}}
	}
	return json.Marshal(res)
}

// run executes the command line against the fake cluster and returns its
// stdout, stderr and error.
func runWith(t *testing.T, c *fake.Clientset, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	newFactory := func(flags *genericclioptions.ConfigFlags) Factory {
		return &fakeFactory{client: c, exec: inspectingAgents{}, flags: flags}
	}
	cmd := newCmdRotateCerts(genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}, newFactory)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), errOut.String(), err
}

func ioStreams(out *strings.Builder) genericiooptions.IOStreams {
	return genericiooptions.IOStreams{In: strings.NewReader(""), Out: out, ErrOut: &strings.Builder{}}
}
