package orchestrator

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki/pkitest"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/version"
)

// fakeCANodes plays the nodes of a CA rotation: what each has staged,
// what its trust points hold, whether its issuers switched and who issued
// its kubelet's certificate; the cluster's CSR signer is
// kube-controller-manager's, which signs with the new CA only once every
// control plane switched (a leader elsewhere still signs with the old).
type fakeCANodes struct {
	t        *testing.T
	c        *fake.Clientset
	old, new map[string]*pki.Authority // by kubeadm CA name
	mu       sync.Mutex
	calls    []string
	staged   map[string]bool
	keys     map[string]bool   // receiver nodes holding a hand-over key
	trust    map[string]string // node -> both, old, new ("" = old)
	switched map[string]bool
	kubelet  map[string]string // node -> CA id of its kubelet client certificate
	cps      []string
	fail     map[string]api.Action // node -> action that fails once
	// bare: node -> action it answers "done" without its result, once.
	bare map[string]api.Action
}

func newFakeCANodes(t *testing.T, c *fake.Clientset, cps, workers []string) *fakeCANodes {
	root := t.TempDir()
	pkitest.ControlPlane(t, root, "cp", pkitest.ECDSA)
	f := &fakeCANodes{t: t, c: c, old: map[string]*pki.Authority{}, new: map[string]*pki.Authority{}, staged: map[string]bool{}, keys: map[string]bool{},
		trust: map[string]string{}, switched: map[string]bool{}, kubelet: map[string]string{}, cps: cps, fail: map[string]api.Action{}, bare: map[string]api.Action{}}
	for _, ca := range pki.CAs {
		old, err := pki.LoadAuthority(root, ca)
		if err != nil {
			t.Fatal(err)
		}
		next, _, err := pki.NewCALike(old, "", 24*time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		f.old[ca.Name], f.new[ca.Name] = old, next
	}
	for _, n := range append(append([]string{}, cps...), workers...) {
		f.kubelet[n] = pki.CAID(f.old["ca"].Cert)
	}
	// kube-controller-manager signs approved CSRs; kube-root-ca.crt and
	// cluster-info exist in a kubeadm cluster.
	c.PrependReactor("update", "certificatesigningrequests", f.sign)
	for _, ns := range []string{"default", "kube-system"} {
		_ = c.Tracker().Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
		_ = c.Tracker().Add(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "kube-root-ca.crt"}, Data: map[string]string{"ca.crt": string(pki.EncodeCertPEM(f.old["ca"].Cert))}})
	}
	_ = c.Tracker().Add(clusterInfo(t, pki.EncodeCertPEM(f.old["ca"].Cert)))
	return f
}

func (f *fakeCANodes) sign(a k8stesting.Action) (bool, runtime.Object, error) {
	if a.GetSubresource() != "approval" {
		return false, nil, nil
	}
	csr := a.(k8stesting.UpdateAction).GetObject().(*certificatesv1.CertificateSigningRequest).DeepCopy()
	f.mu.Lock()
	ca := f.new["ca"]
	for _, cp := range f.cps {
		if !f.switched[cp] {
			ca = f.old["ca"]
		}
	}
	f.mu.Unlock()
	block, _ := pem.Decode(csr.Spec.Request)
	req, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return true, nil, err
	}
	certPEM, err := ca.SignRequest(req, pki.KubeletClientTemplate(strings.TrimPrefix(req.Subject.CommonName, "system:node:"), false), time.Hour, time.Now())
	if err != nil {
		return true, nil, err
	}
	csr.Status.Certificate = certPEM
	return true, csr, f.c.Tracker().Update(certificatesv1.SchemeGroupVersion.WithResource("certificatesigningrequests"), csr, "")
}

func pemsOf(as map[string]*pki.Authority, names ...string) map[string]string {
	out := map[string]string{}
	for _, n := range names {
		out[n] = string(pki.EncodeCertPEM(as[n].Cert))
	}
	return out
}

// publishRootCA plays kube-controller-manager's root-ca-cert-publisher.
func (f *fakeCANodes) publishRootCA(mode string) {
	var bundle []byte
	switch mode {
	case pki.TrustBoth:
		bundle = append(pki.EncodeCertPEM(f.old["ca"].Cert), pki.EncodeCertPEM(f.new["ca"].Cert)...)
	case pki.TrustNew:
		bundle = pki.EncodeCertPEM(f.new["ca"].Cert)
	default:
		bundle = pki.EncodeCertPEM(f.old["ca"].Cert)
	}
	for _, ns := range []string{"default", "kube-system"} {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "kube-root-ca.crt"}, Data: map[string]string{"ca.crt": string(bundle)}}
		_ = f.c.Tracker().Update(corev1.SchemeGroupVersion.WithResource("configmaps"), cm, ns)
	}
}

func (f *fakeCANodes) Exec(ctx context.Context, ns, pod, container string, cmd []string, stdin []byte) ([]byte, error) {
	if stdin == nil {
		return nil, nil // ping
	}
	var req api.Request
	if err := json.Unmarshal(stdin, &req); err != nil {
		return nil, err
	}
	res := api.Result{AgentVersion: version.Version, Node: req.Node, Outcome: api.Done}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, req.Node+" "+string(req.Action))
	if f.fail[req.Node] == req.Action {
		delete(f.fail, req.Node)
		res.Outcome, res.Error = api.Restored, "injected failure"
		return json.Marshal(res)
	}
	if f.bare[req.Node] == req.Action {
		delete(f.bare, req.Node)
		return json.Marshal(res)
	}
	cp := slices.Contains(f.cps, req.Node)
	all := []string{"ca", "etcd-ca", "front-proxy-ca"}
	switch req.Action {
	case api.Inspect:
		in := &api.InspectResult{ControlPlane: cp}
		for _, a := range []*pki.Authority{f.old["ca"], f.new["ca"]} {
			in.Authorities = append(in.Authorities, api.Authority{ID: pki.CAID(a.Cert), CommonName: "kubernetes", NotAfter: a.Cert.NotAfter})
		}
		issuer := pki.CAID(f.old["ca"].Cert)
		if f.switched[req.Node] {
			issuer = pki.CAID(f.new["ca"].Cert)
		}
		if cp {
			in.Certs = append(in.Certs, api.CertInfo{Name: "apiserver", Service: "kube-apiserver", CA: "ca", Issuer: issuer})
		}
		in.Certs = append(in.Certs, api.CertInfo{Name: "kubelet-client", Service: "kubelet", CA: "ca", Issuer: f.kubelet[req.Node]},
			api.CertInfo{Name: "kubelet-serving", Service: "kubelet", Issuer: api.IssuerSelfSigned})
		res.Inspect = in
	case api.CAPrepare:
		f.staged[req.Node] = true
		res.CA = &api.CAResult{Staged: pemsOf(f.new, all...), Current: pemsOf(f.old, all...)}
	case api.CAHandoverKey:
		res.CA = &api.CAResult{}
		if f.staged[req.Node] {
			res.CA.Staged = pemsOf(f.new, all...)
		} else {
			f.keys[req.Node] = true
			res.CA.PublicKey = []byte("public-key-of-" + req.Node)
		}
	case api.CAHandoverSeal:
		if !f.staged[req.Node] || string(req.CA.PublicKey) != "public-key-of-"+req.CA.Peer {
			res.Outcome, res.Error = api.Unchanged, "cannot seal"
			break
		}
		res.CA = &api.CAResult{Sealed: []byte("sealed-by-" + req.Node + "-for-" + req.CA.Peer)}
	case api.CAHandoverOpen:
		if !f.keys[req.Node] || string(req.CA.Sealed) != "sealed-by-"+req.CA.Peer+"-for-"+req.Node || !maps.Equal(req.CA.New, pemsOf(f.new, all...)) {
			res.Outcome, res.Error = api.Unchanged, "refused"
			break
		}
		f.staged[req.Node], f.keys[req.Node] = true, false
		res.CA = &api.CAResult{Staged: pemsOf(f.new, all...)}
	case api.CATrust:
		want := 3
		if !cp {
			want = 1
		}
		if len(req.CA.New) != want || (cp && req.CA.Trust == pki.TrustBoth && !f.staged[req.Node]) {
			res.Outcome, res.Error = api.Unchanged, fmt.Sprintf("bad request: %d new CAs, staged %v", len(req.CA.New), f.staged[req.Node])
			break
		}
		res.CA = &api.CAResult{}
		res.Renew = &api.RenewResult{}
		if f.trust[req.Node] != req.CA.Trust {
			f.trust[req.Node] = req.CA.Trust
			res.CA.Changed = []string{"/etc/kubernetes/pki/ca.crt (kubeadm ca)"}
			res.Renew.Restarted = []api.Restarted{{Component: "kubelet", OldPID: 1, NewPID: 2}}
		}
		if cp {
			f.publishRootCA(req.CA.Trust)
		}
	case api.CASwitch:
		if req.Validity != time.Hour { // the test's LeafValidity
			res.Outcome, res.Error = api.Unchanged, fmt.Sprintf("asked for a validity of %s", req.Validity)
			break
		}
		if f.trust[req.Node] != pki.TrustBoth || !f.staged[req.Node] {
			res.Outcome, res.Error = api.Unchanged, "run the trust phase first"
			break
		}
		res.Renew = &api.RenewResult{}
		if !f.switched[req.Node] {
			f.switched[req.Node] = true
			res.Renew.Changes = []api.Change{{Name: "apiserver", OldSerial: "1", NewSerial: "2"}}
		}
		res.CA = &api.CAResult{}
	case api.CASign:
		res.CA = &api.CAResult{Certificate: "signed"}
	case api.CADiscard:
		f.staged[req.Node] = false
	case api.KubeletCSR:
		res.CSRs = []api.CSR{nodeCSR(req.Node)}
	case api.KubeletInstall:
		c, err := pki.ParseCertificatePEM([]byte(req.Issued["kubelet-client"]))
		if err != nil {
			return nil, err
		}
		for _, ca := range []*pki.Authority{f.old["ca"], f.new["ca"]} {
			if c.CheckSignatureFrom(ca.Cert) == nil {
				f.kubelet[req.Node] = pki.CAID(ca.Cert)
			}
		}
		res.Renew = &api.RenewResult{Backup: "b1", Changes: []api.Change{{Name: "kubelet-client", OldSerial: "1", NewSerial: "2"}}}
		res.Kubelet = &api.KubeletProcess{PID: 200, StartedAt: time.Now().Add(-time.Second), Healthy: true}
	}
	return json.Marshal(res)
}

func (f *fakeCANodes) took(action api.Action) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.calls {
		if node, a, _ := strings.Cut(c, " "); a == string(action) {
			out = append(out, node)
		}
	}
	return out
}

func (f *fakeCANodes) reset() {
	f.mu.Lock()
	f.calls = nil
	f.mu.Unlock()
}

func caRecordOf(t *testing.T, r *Runner) *CARotation {
	t.Helper()
	rec, err := r.CARecord(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// The phases of a CA rotation, in order and out of it, interrupted and
// resumed, rolled back, and to the end, on a cluster of two control planes
// and a worker: what each phase asks of which node, in which order, what
// the cluster records, and what it refuses.
func TestCARotationPhases(t *testing.T) {
	cps, workers := []string{"cp-1", "cp-2"}, []string{"w-1"}
	c := fakeCluster(t, cps, workers)
	f := newFakeCANodes(t, c, cps, workers)
	r := &Runner{Client: c, Exec: f, Image: "agent:test", Timeout: 2 * time.Second, Poll: 10 * time.Millisecond}
	ctx := context.Background()
	o := CAOptions{Validity: 24 * time.Hour, Readers: CAReadersNone, Parallelism: Parallelism{Count: 2}, LeafValidity: time.Hour}

	if _, err := r.CATrust(ctx, o); err == nil || !strings.Contains(err.Error(), "ca prepare") {
		t.Fatalf("trust before prepare: %v", err)
	}
	// A node that says it succeeded but answers nothing is an error, not
	// a crash.
	f.bare["cp-1"] = api.CAPrepare
	if _, err := r.CAPrepare(ctx, o); err == nil || !strings.Contains(err.Error(), "without its result") {
		t.Fatalf("an empty answer: %v", err)
	}
	f.reset()
	if _, err := r.CAPrepare(ctx, o); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.calls, ", "); got != "cp-1 ca-prepare, cp-2 ca-handover-key, cp-1 ca-handover-seal, cp-2 ca-handover-open" {
		t.Errorf("prepare asked: %s", got)
	}
	rec := caRecordOf(t, r)
	if rec == nil || rec.Phase != CAPhasePrepared || !maps.Equal(rec.New, pemsOf(f.new, "ca", "etcd-ca", "front-proxy-ca")) || !maps.Equal(rec.Old, pemsOf(f.old, "ca", "etcd-ca", "front-proxy-ca")) {
		t.Fatalf("record after prepare: %+v", rec)
	}
	f.reset()
	if _, err := r.CAPrepare(ctx, o); err != nil || len(f.took(api.CAPrepare)) > 0 {
		t.Errorf("a second prepare: %v, prepared %v", err, f.took(api.CAPrepare))
	}
	if _, err := r.CASwitch(ctx, o); err == nil || !strings.Contains(err.Error(), "ca trust") {
		t.Errorf("switch before trust: %v", err)
	}

	// Trust, failing on the worker once: the next run does what is left.
	f.reset()
	f.fail["w-1"] = api.CATrust
	if _, err := r.CATrust(ctx, o); err == nil {
		t.Fatal("trust with a failing worker succeeded")
	}
	if rec := caRecordOf(t, r); rec.Phase != CAPhasePrepared {
		t.Errorf("a failed trust recorded phase %s", rec.Phase)
	}
	if got := f.took(api.CATrust); !slices.Equal(got, []string{"cp-1", "cp-2", "w-1"}) {
		t.Errorf("trust went to %v: control planes one at a time, then workers", got)
	}
	rep, err := r.CATrust(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range append(cps, workers...) {
		if f.trust[n] != pki.TrustBoth {
			t.Errorf("node %s trusts %q", n, f.trust[n])
		}
	}
	if caRecordOf(t, r).Phase != CAPhaseTrusted {
		t.Error("trust did not record its phase")
	}
	restarted := 0
	for _, n := range rep.Nodes {
		restarted += len(n.Restarted)
	}
	if restarted != 1 {
		t.Errorf("the resumed trust restarted things on %d nodes, want only the worker left over", restarted)
	}
	info, err := c.CoreV1().ConfigMaps("kube-public").Get(ctx, "cluster-info", metav1.GetOptions{})
	if err != nil || !strings.Contains(info.Data["kubeconfig"], "certificate-authority-data") {
		t.Fatalf("cluster-info: %v", err)
	}
	cfgIDs := caIDsInKubeconfig(t, info.Data["kubeconfig"])
	if !slices.Equal(cfgIDs, []string{pki.CAID(f.old["ca"].Cert), pki.CAID(f.new["ca"].Cert)}) {
		t.Errorf("cluster-info trusts %v", cfgIDs)
	}

	// Rollback from the trust phase.
	f.reset()
	if _, err := r.CARollback(ctx, o); err != nil {
		t.Fatal(err)
	}
	if got := f.took(api.CATrust); !slices.Equal(got, []string{"w-1", "cp-1", "cp-2"}) {
		t.Errorf("rollback went to %v: workers first", got)
	}
	for _, n := range append(cps, workers...) {
		if f.trust[n] != pki.TrustOld || f.staged[n] {
			t.Errorf("after rollback node %s trusts %q, staged %v", n, f.trust[n], f.staged[n])
		}
	}
	if caRecordOf(t, r) != nil {
		t.Error("the record stayed after rollback")
	}

	// Again, to the end.
	for _, phase := range []func(context.Context, CAOptions) (*CAReport, error){r.CAPrepare, r.CATrust} {
		if _, err := phase(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.CAFinish(ctx, o); err == nil || !strings.Contains(err.Error(), "ca switch") {
		t.Errorf("finish before switch: %v", err)
	}
	f.reset()
	var written []byte
	o.ClientCSR = []byte("csr")
	o.OnClientCertificate = func(b []byte) error { written = b; return nil }
	if _, err := r.CASwitch(ctx, o); err != nil {
		t.Fatal(err)
	}
	if signed, switched := slices.Index(f.calls, "cp-1 ca-sign"), slices.Index(f.calls, "cp-1 ca-switch"); string(written) != "signed" || signed < 0 || signed > switched {
		t.Errorf("the user's certificate %q, signed at call %d, before the first switch at %d", written, signed, switched)
	}
	lastSwitch, firstInstall := -1, len(f.calls)
	for i, call := range f.calls {
		if strings.HasSuffix(call, " ca-switch") {
			lastSwitch = i
		}
		if strings.HasSuffix(call, " kubelet-install") && i < firstInstall {
			firstInstall = i
		}
		if strings.HasSuffix(call, " ca-switch") && i > 0 && !strings.HasPrefix(call, "cp-") {
			t.Errorf("a worker switched: %s", call)
		}
	}
	if lastSwitch < 0 || lastSwitch > firstInstall {
		t.Errorf("kubelets were re-issued before every control plane switched: %v", f.calls)
	}
	for n, id := range f.kubelet {
		if id != pki.CAID(f.new["ca"].Cert) {
			t.Errorf("node %s's kubelet certificate is from %s", n, id)
		}
	}
	if _, err := r.CARollback(ctx, o); err == nil || !strings.Contains(err.Error(), "switched") {
		t.Errorf("rollback after switch: %v", err)
	}
	// trust again after the switch changes nothing and keeps the phase.
	f.reset()
	if _, err := r.CATrust(ctx, o); err != nil || len(f.took(api.CATrust)) > 0 || caRecordOf(t, r).Phase != CAPhaseSwitched {
		t.Errorf("trust after switch: %v, trust calls %v, phase %s", err, f.took(api.CATrust), caRecordOf(t, r).Phase)
	}

	// Finish refuses while anything is signed by an old CA.
	f.mu.Lock()
	f.kubelet["w-1"] = pki.CAID(f.old["ca"].Cert)
	f.mu.Unlock()
	f.reset()
	if _, err := r.CAFinish(ctx, o); err == nil || !strings.Contains(err.Error(), "w-1:kubelet-client") || len(f.took(api.CATrust)) > 0 {
		t.Fatalf("finish with an old certificate left: %v, trust calls %v", err, f.took(api.CATrust))
	}
	f.mu.Lock()
	f.kubelet["w-1"] = pki.CAID(f.new["ca"].Cert)
	f.mu.Unlock()
	if _, err := r.CAFinish(ctx, o); err != nil {
		t.Fatal(err)
	}
	for _, n := range append(cps, workers...) {
		if f.trust[n] != pki.TrustNew || f.staged[n] {
			t.Errorf("after finish node %s trusts %q, staged %v", n, f.trust[n], f.staged[n])
		}
	}
	if _, err := c.CoreV1().ConfigMaps(Namespace).Get(ctx, CARecordName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the record stayed after finish: %v", err)
	}

	// Every request of every phase is on the phases' permission lists.
	perms := permissions(permsAgents).with(permsLock, permsCARecord, permsKubeletRestart, permsSignerLease, permsEvents, permsCSR, permsServingCSR,
		permsCAClusterInfo, permsCARootCA, caReadersPermissions(CAReadersNone))
	for _, a := range c.Actions() {
		res := a.GetResource()
		if res.Resource == "selfsubjectaccessreviews" || res.Resource == "selfsubjectreviews" {
			continue
		}
		if !perms.cover(a) {
			t.Errorf("%s %s/%s in %q is not in the permission lists", a.GetVerb(), res.Resource, a.GetSubresource(), a.GetNamespace())
		}
	}
}

func caIDsInKubeconfig(t *testing.T, data string) []string {
	t.Helper()
	cfg, err := clientcmd.Load([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, cl := range cfg.Clusters {
		certs, err := pki.ParseCABundle(cl.CertificateAuthorityData)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range certs {
			ids = append(ids, pki.CAID(c))
		}
	}
	return ids
}
