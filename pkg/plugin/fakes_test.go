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
	"k8s.io/client-go/rest"
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
func (f *fakeFactory) RESTConfig() (*rest.Config, error) {
	return &rest.Config{Host: "https://fake"}, nil
}
func (f *fakeFactory) TrustCAs([]byte) error { return nil }

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
		if req.Trust {
			trustOf(req.Node, res.Inspect)
		}
	}
	return json.Marshal(res)
}

// Two CAs of the fake cluster: w-1's kubelet.conf trusts the second one
// too, which no other trust point does.
const (
	fakeCA     = "3f1c0a9e5b7d2c48"
	fakeNextCA = "a0b1c2d3e4f56789"
)

// trustOf is what the fake agents answer ca status: the cluster CA file
// and kubelet.conf on every node, the kubelet's certificates, and on cp-1
// the apiserver certificate and kube-controller-manager's signer.
func trustOf(node string, in *api.InspectResult) {
	in.Authorities = []api.Authority{{ID: fakeCA, CommonName: "kubernetes", NotAfter: time.Date(2035, 1, 1, 0, 0, 0, 0, time.UTC)}}
	kubeletConf := []string{fakeCA}
	if node == "w-1" {
		in.Authorities = append(in.Authorities, api.Authority{ID: fakeNextCA, CommonName: "kubernetes-next", NotAfter: time.Date(2036, 1, 1, 0, 0, 0, 0, time.UTC)})
		kubeletConf = append(kubeletConf, fakeNextCA)
	}
	in.TrustPoints = []api.TrustPoint{
		{Path: "/etc/kubernetes/pki/ca.crt", Reader: "kubeadm", Setting: "ca", CA: "ca", CAs: []string{fakeCA}},
		{Path: "/etc/kubernetes/kubelet.conf", Reader: "kubelet", Setting: "kubelet.conf certificate-authority-data", CA: "ca", CAs: kubeletConf},
	}
	in.Certs = []api.CertInfo{
		{Node: node, Name: "kubelet-client", CA: "ca", Issuer: fakeCA},
		{Node: node, Name: "kubelet-serving", Issuer: api.IssuerSelfSigned},
	}
	if node == "cp-1" {
		in.Signers = []api.TrustPoint{{Path: "/etc/kubernetes/pki/ca.crt", Reader: "kube-controller-manager", Setting: "--cluster-signing-cert-file", CA: "ca", CAs: []string{fakeCA}}}
		in.Certs = append(in.Certs, api.CertInfo{Node: node, Name: "apiserver", CA: "ca", Issuer: fakeCA})
	}
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
