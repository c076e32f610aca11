package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki/pkitest"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/version"
)

// newTestAgent is an agent on a node without processes or servers: any
// restart fails, and any connection attempt fails the test.
func newTestAgent(t *testing.T, root string) *Agent {
	a := New(root)
	a.ProcDir = t.TempDir()
	a.Timeout = time.Second
	a.Signal = func(int, syscall.Signal) error { return errors.New("no processes in this test") }
	a.RestartUnit = func(context.Context, string) error { return errors.New("no systemd in this test") }
	a.Dial = func(_ context.Context, _, addr string) (net.Conn, error) {
		t.Errorf("the agent dialed %s in a test without servers", addr)
		return nil, errors.New("no network in this test")
	}
	return a
}

const testRun = "rc-00000000000000a1"

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func request(action api.Action, services ...string) api.Request {
	return api.Request{Version: version.Version, Action: action, Node: "cp-1", Run: testRun, Services: services, Validity: 8760 * time.Hour, Restart: api.RestartNeeded}
}

// tree returns path -> sha256 of every file and link target below root,
// leaving out the backup folder.
func tree(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if strings.HasPrefix(rel, BackupRoot) || d.IsDir() {
			return nil
		}
		if d.Type()&fs.ModeSymlink != 0 {
			l, _ := os.Readlink(p)
			out[rel] = "-> " + l
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		s := sha256.Sum256(b)
		out[rel] = hex.EncodeToString(s[:])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func diff(a, b map[string]string) []string {
	var out []string
	for k, v := range a {
		if b[k] != v {
			out = append(out, k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, k)
		}
	}
	return out
}

func TestInspectControlPlane(t *testing.T) {
	root := t.TempDir()
	pkitest.ControlPlane(t, root, "cp-1", pkitest.ECDSA)
	must(t, os.MkdirAll(filepath.Join(root, "run/systemd"), 0o755))
	must(t, os.WriteFile(filepath.Join(root, "run/systemd/private"), nil, 0o600)) // stands in for the socket
	res := newTestAgent(t, root).Handle(context.Background(), request(api.Inspect, "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "admin"))
	if res.Error != "" {
		t.Fatal(res.Error)
	}
	in := res.Inspect
	if !in.ControlPlane || len(in.Problems) > 0 {
		t.Fatalf("controlPlane=%v problems=%v", in.ControlPlane, in.Problems)
	}
	if len(in.Certs) != len(pki.Inventory) || len(in.CAs) != 3 {
		t.Errorf("%d certificates and %d CAs, want %d and 3", len(in.Certs), len(in.CAs), len(pki.Inventory))
	}
	for _, c := range in.Certs {
		if c.Missing || c.Error != "" || c.NotAfter == nil || c.ResidualSeconds <= 0 || c.ExternallyManaged {
			t.Errorf("%s: %+v", c.Name, c)
		}
	}
	if len(in.Plan) != len(pki.Inventory) {
		t.Errorf("plan has %d entries, want %d", len(in.Plan), len(pki.Inventory))
	}
}

func TestInspectRejectsOtherLayouts(t *testing.T) {
	root := t.TempDir()
	res := newTestAgent(t, root).Handle(context.Background(), request(api.Inspect))
	if !strings.Contains(res.Error, "not a kubeadm-layout node") {
		t.Errorf("empty root: %q", res.Error)
	}
	must(t, os.MkdirAll(filepath.Join(root, pki.ManifestsDir), 0o755))
	must(t, os.WriteFile(filepath.Join(root, pki.ManifestsDir, "kube-apiserver.yaml"), []byte("{}"), 0o600))
	res = newTestAgent(t, root).Handle(context.Background(), request(api.Inspect))
	if !strings.Contains(res.Error, "ca.crt does not") {
		t.Errorf("manifests without pki: %q", res.Error)
	}
}

func TestProblemsBlockRenewAndChangeNothing(t *testing.T) {
	root := t.TempDir()
	pkitest.ControlPlane(t, root, "cp-1", pkitest.RSA)
	must(t, os.WriteFile(filepath.Join(root, "etc/kubernetes/pki/apiserver.crt"), []byte("garbage"), 0o644))
	must(t, os.Remove(filepath.Join(root, pki.EtcdCA.KeyFile)))
	before := tree(t, root)
	a := newTestAgent(t, root)
	in := a.Handle(context.Background(), request(api.Inspect, "etcd", "kube-apiserver")).Inspect
	if in == nil {
		t.Fatal("no inspect result")
	}
	if len(in.Problems) != 1 || !strings.Contains(in.Problems[0], "apiserver") {
		t.Errorf("problems %v, want the corrupt apiserver.crt", in.Problems)
	}
	if len(in.Notes) == 0 || !strings.Contains(strings.Join(in.Notes, " "), "etcd-ca is externally managed") {
		t.Errorf("notes %v, want the external etcd CA", in.Notes)
	}
	res := a.Handle(context.Background(), request(api.Renew, "etcd", "kube-apiserver"))
	if res.Outcome != api.Unchanged || !strings.Contains(res.Error, "nothing was changed") {
		t.Errorf("renew: %s %q", res.Outcome, res.Error)
	}
	if d := diff(before, tree(t, root)); len(d) > 0 {
		t.Errorf("changed %v", d)
	}
}

func TestRenewRollsBackWhenARestartFails(t *testing.T) {
	root := t.TempDir()
	pkitest.ControlPlane(t, root, "cp-1", pkitest.ECDSA)
	before := tree(t, root)
	res := newTestAgent(t, root).Handle(context.Background(), request(api.Renew, "kube-scheduler", "admin"))
	if res.Outcome != api.Restored || !strings.Contains(res.Error, "kube-scheduler process") {
		t.Fatalf("want a restart failure and a restore, got %s: %q", res.Outcome, res.Error)
	}
	if d := diff(before, tree(t, root)); len(d) > 0 {
		t.Errorf("not restored: %v", d)
	}
}

func TestRenewAdminWritesAndBacksUp(t *testing.T) {
	root := t.TempDir()
	pkitest.ControlPlane(t, root, "cp-1", pkitest.RSA)
	before := tree(t, root)
	oldAdmin, _ := os.ReadFile(filepath.Join(root, "etc/kubernetes/admin.conf"))
	res := newTestAgent(t, root).Handle(context.Background(), request(api.Renew, "admin"))
	if res.Error != "" {
		t.Fatal(res.Error)
	}
	got := diff(before, tree(t, root))
	if len(got) != 2 || len(res.Renew.Changes) != 2 {
		t.Errorf("changed files %v and changes %v, want admin.conf and super-admin.conf", got, res.Renew.Changes)
	}
	backedUp, err := os.ReadFile(filepath.Join(root, BackupRoot, res.Renew.Backup, "files/etc/kubernetes/admin.conf"))
	if err != nil || !bytes.Equal(backedUp, oldAdmin) {
		t.Errorf("backup of admin.conf missing or different: %v", err)
	}
	st, _ := os.Stat(filepath.Join(root, BackupRoot, res.Renew.Backup, "files/etc/kubernetes/admin.conf"))
	if st.Mode().Perm() != 0o600 {
		t.Errorf("backup mode %v, want 0600", st.Mode().Perm())
	}
	// The backup undoes the change exactly.
	if r := newTestAgent(t, root).Handle(context.Background(), api.Request{Version: version.Version, Action: api.Rollback, Run: "rc-00000000000000b2", Backup: res.Renew.Backup}); r.Error != "" {
		t.Fatal(r.Error)
	}
	if d := diff(before, tree(t, root)); len(d) > 0 {
		t.Errorf("rollback left %v changed", d)
	}
}

// signAsCluster plays the cluster's CSR signer with the CA on disk.
func signAsCluster(t *testing.T, root string, csrPEM string) string {
	t.Helper()
	a, err := pki.LoadAuthority(root, pki.ClusterCA)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pemDecode([]byte(csrPEM))
	req, err := x509.ParseCertificateRequest(block)
	if err != nil {
		t.Fatal(err)
	}
	tmpl, _ := pki.Template(&x509.Certificate{Subject: req.Subject, RawSubject: req.RawSubject, DNSNames: req.DNSNames, IPAddresses: req.IPAddresses,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, time.Hour*24*365, time.Now())
	cert, _, err := a.Sign(tmpl, req.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return string(pki.EncodeCertPEM(cert))
}

func TestKubeletCSRAndInstall(t *testing.T) {
	f := newFakeNode(t, "cp-1", pkitest.ECDSA, nil)
	root, a := f.root, f.agent()
	client := pki.Inventory[len(pki.Inventory)-2]
	oldClient, _ := pki.ReadCertificate(root, client)
	oldPID := f.proc.pid("kubelet")
	before := tree(t, root)

	res := a.Handle(context.Background(), request(api.KubeletCSR))
	if res.Error != "" || len(res.CSRs) != 1 {
		t.Fatalf("csr: %q %v", res.Error, res.CSRs)
	}
	c := res.CSRs[0]
	if c.Name != "kubelet-client" || strings.Contains(c.Request, "PRIVATE KEY") {
		t.Fatalf("unexpected request %+v", c)
	}
	issued := signAsCluster(t, root, c.Request)
	req := request(api.KubeletInstall)
	req.Issued = map[string]string{"kubelet-client": issued}
	inst := a.Handle(context.Background(), req)
	if inst.Outcome != api.Done {
		t.Fatal(inst.Error)
	}
	newClient, err := pki.ReadCertificate(root, client)
	if err != nil || newClient.SerialNumber.Cmp(oldClient.SerialNumber) == 0 || newClient.Subject.CommonName != "system:node:cp-1" {
		t.Fatalf("kubelet-client-current.pem not switched: %v", err)
	}
	bundle, _ := pki.ReadFile(root, pki.KubeletClientCurrent)
	key, err := pki.ParsePrivateKeyPEM(bundle)
	if err != nil || !pki.SamePublicKey(key.Public(), newClient.PublicKey) {
		t.Errorf("bundle's key does not match its certificate: %v", err)
	}
	if pki.Exists(root, pendingKeyPath(testRun, "kubelet-client")) {
		t.Error("pending key left behind")
	}
	// The kubelet was restarted, serves the new serving certificate, and
	// the API server accepted the new client certificate.
	serving, _ := pki.ReadCertificate(root, pki.Cert{CertFile: pki.KubeletSelfSignedCert})
	if len(inst.Renew.Changes) != 2 || serving.DNSNames[0] != "cp-1" {
		t.Errorf("changes %+v, want client and serving", inst.Renew.Changes)
	}
	if inst.Kubelet == nil || inst.Kubelet.PID == oldPID || f.proc.pid("kubelet") != inst.Kubelet.PID {
		t.Errorf("kubelet process %+v, want a new one (was %d)", inst.Kubelet, oldPID)
	}
	verified := strings.Join(inst.Renew.Verified, "\n")
	if !strings.Contains(verified, "serial "+serving.SerialNumber.String()) || !strings.Contains(verified, "accepts the new kubelet client certificate") {
		t.Errorf("verified %q", verified)
	}
	// An installed certificate for a foreign key is refused.
	res = a.Handle(context.Background(), request(api.KubeletCSR))
	req.Issued = map[string]string{"kubelet-client": issued} // for the previous key
	if r := a.Handle(context.Background(), req); r.Outcome != api.Unchanged || !strings.Contains(r.Error, "not for the key generated on this node") {
		t.Errorf("foreign certificate: %s %q", r.Outcome, r.Error)
	}
	// Rolling back restores the previous link and files, and restarts the
	// kubelet on them.
	pid := f.proc.pid("kubelet")
	rb := api.Request{Version: version.Version, Action: api.Rollback, Run: "rc-00000000000000b2", Backup: inst.Renew.Backup}
	if r := a.Handle(context.Background(), rb); r.Outcome != api.Done {
		t.Fatal(r.Error)
	}
	if f.proc.pid("kubelet") == pid {
		t.Error("rollback did not restart the kubelet")
	}
	after := tree(t, root)
	delete(after, pendingKeyPath(testRun, "kubelet-client"))
	if d := diff(before, after); len(d) > 0 {
		t.Errorf("rollback left %v changed", d)
	}
}

// The kubelet's transaction ends restored when the API server does not
// accept the new client certificate: every file as before, and the kubelet
// restarted again on them.
func TestKubeletInstallRestoresWhenTheAPIRefuses(t *testing.T) {
	f := newFakeNode(t, "cp-1", pkitest.RSA, nil)
	a := f.agent()
	before := tree(t, f.root)
	res := a.Handle(context.Background(), request(api.KubeletCSR))
	req := request(api.KubeletInstall)
	req.Issued = map[string]string{"kubelet-client": signAsCluster(t, f.root, res.CSRs[0].Request)}
	f.mu.Lock()
	f.apiRejects = true
	f.mu.Unlock()
	inst := a.Handle(context.Background(), req)
	if inst.Outcome != api.Restored || !strings.Contains(inst.Error, "does not accept the new kubelet client certificate") {
		t.Fatalf("got %s: %s", inst.Outcome, inst.Error)
	}
	after := tree(t, f.root)
	delete(after, pendingKeyPath(testRun, "kubelet-client"))
	if d := diff(before, after); len(d) > 0 {
		t.Errorf("not restored: %v", d)
	}
	if n := f.restartsOf("kubelet"); n != 2 {
		t.Errorf("kubelet restarted %d times, want 2 (new files, then restored ones)", n)
	}
}

func TestKubeletConfWithEmbeddedCertIsRepointed(t *testing.T) {
	f := newFakeNode(t, "cp-1", pkitest.ECDSA, nil)
	root := f.root
	cfg, _ := clientcmd.LoadFromFile(filepath.Join(root, pki.KubeletKubeconfig))
	for _, u := range cfg.AuthInfos {
		u.ClientCertificate, u.ClientKey = "", ""
		u.ClientCertificateData, u.ClientKeyData = []byte("cert"), []byte("key")
	}
	must(t, clientcmd.WriteToFile(*cfg, filepath.Join(root, pki.KubeletKubeconfig)))
	a := f.agent()
	res := a.Handle(context.Background(), request(api.KubeletCSR))
	req := request(api.KubeletInstall)
	req.Issued = map[string]string{"kubelet-client": signAsCluster(t, root, res.CSRs[0].Request)}
	if r := a.Handle(context.Background(), req); r.Error != "" {
		t.Fatal(r.Error)
	}
	cfg, _ = clientcmd.LoadFromFile(filepath.Join(root, pki.KubeletKubeconfig))
	for name, u := range cfg.AuthInfos {
		if len(u.ClientCertificateData) > 0 || u.ClientCertificate != "/"+pki.KubeletClientCurrent {
			t.Errorf("user %s still embeds its certificate", name)
		}
	}
}

func TestVersionMismatchRefused(t *testing.T) {
	req := request(api.Inspect)
	req.Version = "v9.9.9"
	if res := New(t.TempDir()).Handle(context.Background(), req); !strings.Contains(res.Error, "cannot serve plugin version v9.9.9") {
		t.Errorf("got %q", res.Error)
	}
}

func TestExecFilesResultForFetch(t *testing.T) {
	root, results := t.TempDir(), t.TempDir()
	pkitest.ControlPlane(t, root, "cp-1", pkitest.ECDSA)
	req := request(api.Inspect)
	req.ID = "abc-1"
	in, _ := json.Marshal(req)
	// The launcher runs the filed request as the detached child would.
	launch := func(id string) (func() error, error) {
		done := make(chan error, 1)
		go func() { done <- newTestAgent(t, root).RunFiled(context.Background(), results, id) }()
		return func() error { return <-done }, nil
	}
	var out, fetched bytes.Buffer
	if err := Exec(context.Background(), bytes.NewReader(in), &out, results, launch); err != nil {
		t.Fatal(err)
	}
	if err := FetchResult(context.Background(), "abc-1", results, time.Second, &fetched); err != nil {
		t.Fatal(err)
	}
	if out.String() != fetched.String() || !strings.Contains(out.String(), `"controlPlane":true`) {
		t.Errorf("filed result differs from the answer:\n%s\n%s", out.String(), fetched.String())
	}
	fetched.Reset()
	if err := FetchResult(context.Background(), "never-sent", results, 200*time.Millisecond, &fetched); err != nil || !strings.Contains(fetched.String(), `"outcome":"not-received"`) {
		t.Errorf("unknown request: %v %s", err, fetched.String())
	}
}

// The status view of a node: expired, near expiry, missing, corrupt,
// externally managed and ECDSA certificates are all reported, none skipped.
func TestInspectReportsEveryState(t *testing.T) {
	root := t.TempDir()
	n := pkitest.ControlPlane(t, root, "cp-1", pkitest.ECDSA)
	ca, err := pki.LoadAuthority(root, pki.ClusterCA)
	if err != nil {
		t.Fatal(err)
	}
	n.Start, n.Validity = time.Now().Add(-400*24*time.Hour), 365*24*time.Hour // expired 35 days ago
	c, k := n.Leaf(t, ca, pkix.Name{CommonName: "kube-apiserver"}, []string{"cp-1"}, nil, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth})
	must(t, os.WriteFile(filepath.Join(root, "etc/kubernetes/pki/apiserver.crt"), c, 0o644))
	must(t, os.WriteFile(filepath.Join(root, "etc/kubernetes/pki/apiserver.key"), k, 0o600))
	must(t, os.Remove(filepath.Join(root, "etc/kubernetes/super-admin.conf")))
	must(t, os.WriteFile(filepath.Join(root, "etc/kubernetes/pki/etcd/peer.crt"), []byte("not a certificate"), 0o644))
	must(t, os.Remove(filepath.Join(root, pki.FrontProxyCA.KeyFile)))

	in := newTestAgent(t, root).Handle(context.Background(), request(api.Inspect)).Inspect
	got := map[string]api.CertInfo{}
	for _, c := range append(in.Certs, in.CAs...) {
		got[c.Name] = c
	}
	if c := got["apiserver"]; c.ResidualSeconds > -34*24*3600 || c.NotAfter == nil {
		t.Errorf("expired apiserver: residual %ds", c.ResidualSeconds)
	}
	if c := got["super-admin.conf"]; !c.Missing {
		t.Errorf("super-admin.conf: %+v, want missing", c)
	}
	if c := got["etcd-peer"]; c.Error == "" || c.Missing {
		t.Errorf("corrupt etcd-peer: %+v", c)
	}
	if !got["front-proxy-client"].ExternallyManaged || !got["front-proxy-ca"].ExternallyManaged || got["apiserver"].ExternallyManaged {
		t.Error("only front-proxy-ca and its leaf are externally managed")
	}
	if a := got["scheduler.conf"].KeyAlgorithm; a != "ECDSA-P-256" {
		t.Errorf("scheduler.conf key %q", a)
	}
	if c := got["etcd-server"]; c.ResidualSeconds < 60*24*3600 || c.CA != "etcd-ca" || len(c.SANs) == 0 {
		t.Errorf("etcd-server: %+v", c)
	}
}

// A worker has the cluster CA's certificate and never its key: that is not
// an externally managed CA. Its only certificates are the kubelet's.
func TestInspectWorker(t *testing.T) {
	cpRoot, root := t.TempDir(), t.TempDir()
	pkitest.ControlPlane(t, cpRoot, "cp-1", pkitest.RSA)
	ca, err := pki.LoadAuthority(cpRoot, pki.ClusterCA)
	if err != nil {
		t.Fatal(err)
	}
	pkitest.Worker(t, root, "w-1", pkitest.RSA, ca)
	req := request(api.Inspect)
	req.Node = "w-1"
	in := newTestAgent(t, root).Handle(context.Background(), req).Inspect
	if in == nil || in.ControlPlane || len(in.CAs) != 1 || in.CAs[0].ExternallyManaged {
		t.Fatalf("worker: %+v", in)
	}
	for _, c := range in.Certs {
		if c.Service != "kubelet" || c.Missing || c.Error != "" {
			t.Errorf("worker certificate %+v", c)
		}
	}
}

// With serverTLSBootstrap the serving certificate also comes through a CSR
// (signer kubelet-serving) that keeps the node's names.
func TestKubeletServingThroughCSR(t *testing.T) {
	f := newFakeNode(t, "cp-1", pkitest.ECDSA, nil)
	root := f.root
	ca, err := pki.LoadAuthority(root, pki.ClusterCA)
	must(t, err)
	f.node.ServingByCSR(t, ca)
	f.reloadKubelet()
	selfSigned, _ := os.ReadFile(filepath.Join(root, pki.KubeletSelfSignedCert))
	oldServing, err := pki.ReadCertificate(root, pki.KubeletServingCSR)
	must(t, err)

	a := f.agent()
	res := a.Handle(context.Background(), request(api.KubeletCSR))
	if res.Error != "" || len(res.CSRs) != 2 || res.CSRs[1].Name != "kubelet-serving" {
		t.Fatalf("csrs %q %+v", res.Error, res.CSRs)
	}
	block, _ := pemDecode([]byte(res.CSRs[1].Request))
	req, err := x509.ParseCertificateRequest(block)
	must(t, err)
	if len(req.DNSNames) != 1 || req.DNSNames[0] != "cp-1" || len(req.IPAddresses) != 1 || req.Subject.CommonName != "system:node:cp-1" {
		t.Errorf("serving request %v %v %v, want the current certificate's names and the node's identity", req.Subject, req.DNSNames, req.IPAddresses)
	}
	inst := request(api.KubeletInstall)
	inst.Issued = map[string]string{}
	for _, c := range res.CSRs {
		inst.Issued[c.Name] = signAsCluster(t, root, c.Request)
	}
	r := a.Handle(context.Background(), inst)
	if r.Error != "" {
		t.Fatal(r.Error)
	}
	newServing, err := pki.ReadCertificate(root, pki.KubeletServingCSR)
	must(t, err)
	if newServing.SerialNumber.Cmp(oldServing.SerialNumber) == 0 {
		t.Error("kubelet-server-current.pem not switched")
	}
	if !strings.Contains(strings.Join(r.Renew.Verified, " "), "kubelet serves kubelet-serving serial "+newServing.SerialNumber.String()) {
		t.Errorf("the restarted kubelet's serving certificate was not verified: %v", r.Renew.Verified)
	}
	if now, _ := os.ReadFile(filepath.Join(root, pki.KubeletSelfSignedCert)); !bytes.Equal(now, selfSigned) {
		t.Error("the unused self-signed kubelet.crt was changed")
	}
}
