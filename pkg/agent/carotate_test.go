package agent

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki/pkitest"
)

const testRotation = "rot-test-1"

func caReq(action api.Action, node string, ca api.CARequest) api.Request {
	r := request(action)
	r.Node = node
	ca.Rotation = testRotation
	r.CA = &ca
	return r
}

func handleOK(t *testing.T, a *Agent, req api.Request) api.Result {
	t.Helper()
	res := a.Handle(context.Background(), req)
	if res.Outcome != api.Done {
		t.Fatalf("%s on %s: %s: %s", req.Action, req.Node, res.Outcome, res.Error)
	}
	return res
}

// trustIDs maps each trust point (path and setting) to the CA ids it holds.
func trustIDs(t *testing.T, f *fakeNode) map[string][]string {
	t.Helper()
	l, err := f.agent().detectLayout()
	must(t, err)
	tr := f.agent().readTrust(l)
	out := map[string][]string{}
	for _, tp := range tr.points {
		if tp.Error != "" {
			t.Fatalf("trust point %s %s: %s", tp.Path, tp.Setting, tp.Error)
		}
		out[tp.CA+" "+tp.Path+" "+tp.Setting] = tp.CAs
	}
	return out
}

// A rotation's first two steps on a control plane, a second control plane
// and a worker: the new CAs are made and staged once, handed over
// encrypted, and then every trust point holds the old and the new CA, the
// components that read them once were restarted, and kube-apiserver, etcd
// and the kubelet accept certificates of the new CAs. Undoing the trust
// puts back the old CAs alone.
func TestCARotationPrepareHandoverTrust(t *testing.T) {
	cp := newFakeNode(t, "cp-1", pkitest.ECDSA, nil)
	a := cp.agent()
	oldIDs := map[string]string{}
	for _, ca := range pki.CAs {
		oldIDs[ca.Name] = caID(t, cp.root, ca)
	}

	prep := handleOK(t, a, caReq(api.CAPrepare, "cp-1", api.CARequest{Validity: 24 * time.Hour}))
	staged := prep.CA.Staged
	if len(staged) != 3 {
		t.Fatalf("staged %d CAs, want 3", len(staged))
	}
	for _, ca := range pki.CAs {
		c, err := pki.ParseCertificatePEM([]byte(staged[ca.Name]))
		must(t, err)
		if pki.CAID(c) == oldIDs[ca.Name] {
			t.Errorf("CA %s: the new CA is the old one", ca.Name)
		}
		if time.Until(c.NotAfter) > 25*time.Hour {
			t.Errorf("CA %s: valid until %s, asked for 24h", ca.Name, c.NotAfter)
		}
		st, err := os.Stat(filepath.Join(cp.root, pki.Staged(ca).KeyFile))
		must(t, err)
		if st.Mode().Perm() != 0o600 {
			t.Errorf("staged key %s has mode %o", pki.Staged(ca).KeyFile, st.Mode().Perm())
		}
	}
	if st, err := os.Stat(filepath.Join(cp.root, pki.StagingDir)); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("staging folder: %v %v", st, err)
	}
	if again := handleOK(t, a, caReq(api.CAPrepare, "cp-1", api.CARequest{Validity: 24 * time.Hour})); again.CA.Staged[pki.ClusterCA.Name] != staged[pki.ClusterCA.Name] {
		t.Error("a second prepare made other CAs")
	}
	other := caReq(api.CAPrepare, "cp-1", api.CARequest{})
	other.CA.Rotation = "rot-other"
	if res := a.Handle(context.Background(), other); res.Outcome != api.Unchanged || !strings.Contains(res.Error, "another CA rotation") {
		t.Errorf("prepare of another rotation: %s %s", res.Outcome, res.Error)
	}

	// Hand-over to a second control plane.
	cp2 := newFakeNode(t, "cp-2", pkitest.ECDSA, nil)
	b := cp2.agent()
	key := handleOK(t, b, caReq(api.CAHandoverKey, "cp-2", api.CARequest{}))
	if !pki.Exists(cp2.root, pki.HandoverKeyFile) || len(key.CA.PublicKey) == 0 {
		t.Fatal("no hand-over key")
	}
	sealed := handleOK(t, a, caReq(api.CAHandoverSeal, "cp-1", api.CARequest{Peer: "cp-2", PublicKey: key.CA.PublicKey}))
	if strings.Contains(string(sealed.CA.Sealed), "PRIVATE KEY") {
		t.Fatal("the sealed hand-over carries a readable key")
	}
	tampered := append([]byte{}, sealed.CA.Sealed...)
	tampered[len(tampered)/2] ^= 1
	before := tree(t, cp2.root)
	if res := b.Handle(context.Background(), caReq(api.CAHandoverOpen, "cp-2", api.CARequest{Peer: "cp-1", Sealed: tampered, New: staged})); res.Outcome != api.Unchanged || !strings.Contains(res.Error, "refused") {
		t.Errorf("tampered hand-over: %s %s", res.Outcome, res.Error)
	}
	if d := diff(before, tree(t, cp2.root)); len(d) > 0 {
		t.Errorf("a refused hand-over changed files: %v", d)
	}
	opened := handleOK(t, b, caReq(api.CAHandoverOpen, "cp-2", api.CARequest{Peer: "cp-1", Sealed: sealed.CA.Sealed, New: staged}))
	for name, pem := range staged {
		if opened.CA.Staged[name] != pem {
			t.Errorf("cp-2 staged another CA %s", name)
		}
		got, err := pki.LoadAuthority(cp2.root, pki.Staged(pki.CA{Name: name}))
		must(t, err)
		want, err := pki.LoadAuthority(cp.root, pki.Staged(pki.CA{Name: name}))
		must(t, err)
		if !pki.SamePublicKey(got.Key.Public(), want.Key.Public()) {
			t.Errorf("cp-2 has another key for CA %s", name)
		}
	}
	if pki.Exists(cp2.root, pki.HandoverKeyFile) {
		t.Error("the hand-over key stayed after opening")
	}

	// Trust both on the first control plane.
	restarts := map[string]int{}
	for _, c := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet"} {
		restarts[c] = cp.restartsOf(c)
	}
	res := handleOK(t, a, caReq(api.CATrust, "cp-1", api.CARequest{New: staged, Trust: pki.TrustBoth}))
	newIDs := map[string]string{}
	for name, p := range staged {
		c, _ := pki.ParseCertificatePEM([]byte(p))
		newIDs[name] = pki.CAID(c)
	}
	for point, ids := range trustIDs(t, cp) {
		ca := strings.Fields(point)[0]
		if len(ids) != 2 || ids[0] != oldIDs[ca] || ids[1] != newIDs[ca] {
			t.Errorf("%s holds %v, want [old %s, new %s]", point, ids, oldIDs[ca], newIDs[ca])
		}
	}
	for c, n := range restarts {
		if cp.restartsOf(c) <= n {
			t.Errorf("%s was not restarted", c)
		}
	}
	verified := strings.Join(res.Renew.Verified, "\n")
	for _, c := range []string{"kube-apiserver accepts", "kubelet accepts", "etcd accepts", "the kubelet re-created kube-controller-manager"} {
		if !strings.Contains(verified, c) {
			t.Errorf("not verified: %s (%s)", c, verified)
		}
	}
	manifest, err := pki.ReadFile(cp.root, pki.ControllerManagerManifest)
	must(t, err)
	if !strings.Contains(string(manifest), "--cluster-signing-cert-file=/etc/kubernetes/pki/ca-signer.crt") {
		t.Error("kube-controller-manager's signer was not split")
	}
	signer, err := pki.ReadFile(cp.root, "etc/kubernetes/pki/ca-signer.crt")
	must(t, err)
	if sc, err := pki.ParseCABundle(signer); err != nil || len(sc) != 1 || pki.CAID(sc[0]) != oldIDs["ca"] {
		t.Errorf("ca-signer.crt is not the old CA alone: %v", err)
	}
	if a, err := pki.LoadAuthority(cp.root, pki.ClusterCA); err != nil || pki.CAID(a.Cert) != oldIDs["ca"] {
		t.Errorf("the cluster CA's signer changed: %v", err)
	}
	snapshot := tree(t, cp.root)
	again := handleOK(t, a, caReq(api.CATrust, "cp-1", api.CARequest{New: staged, Trust: pki.TrustBoth}))
	if len(again.CA.Changed) > 0 || again.Renew.Backup != "" {
		t.Errorf("a second trust changed %v", again.CA.Changed)
	}
	if d := diff(snapshot, tree(t, cp.root)); len(d) > 0 {
		t.Errorf("a second trust wrote %v", d)
	}

	// A worker of that cluster, then its rollback.
	w := newFakeNode(t, "w-1", pkitest.ECDSA, cp)
	wa := w.agent()
	kubeletBefore := w.restartsOf("kubelet")
	res = handleOK(t, wa, caReq(api.CATrust, "w-1", api.CARequest{New: staged, Trust: pki.TrustBoth}))
	points := trustIDs(t, w)
	if len(points) == 0 {
		t.Fatal("the worker has no trust points")
	}
	for point, ids := range points {
		if len(ids) != 2 || ids[1] != newIDs["ca"] {
			t.Errorf("worker %s holds %v", point, ids)
		}
	}
	if w.restartsOf("kubelet") <= kubeletBefore {
		t.Error("the worker's kubelet was not restarted")
	}
	if len(res.CA.Changed) != 2 {
		t.Errorf("worker changed %v, want its CA file and kubelet.conf", res.CA.Changed)
	}
	handleOK(t, wa, caReq(api.CATrust, "w-1", api.CARequest{New: staged, Trust: pki.TrustOld}))
	for point, ids := range trustIDs(t, w) {
		if len(ids) != 1 || ids[0] != oldIDs["ca"] {
			t.Errorf("after undoing, worker %s holds %v", point, ids)
		}
	}

	// Discarding the staged CAs leaves no key behind.
	handleOK(t, b, caReq(api.CADiscard, "cp-2", api.CARequest{}))
	for _, ca := range pki.CAs {
		if pki.Exists(cp2.root, pki.Staged(ca).KeyFile) {
			t.Errorf("%s stayed", pki.Staged(ca).KeyFile)
		}
	}
	if pki.Exists(cp2.root, pki.StagingDir) {
		t.Error("the staging folder stayed")
	}
}

// A control plane whose kube-apiserver does not accept the new CA's
// certificates after the restart gets every file back as it was.
func TestCATrustRestoresWhenNotAccepted(t *testing.T) {
	cp := newFakeNode(t, "cp-1", pkitest.ECDSA, nil)
	a := cp.agent()
	staged := handleOK(t, a, caReq(api.CAPrepare, "cp-1", api.CARequest{Validity: 24 * time.Hour})).CA.Staged
	before := tree(t, cp.root)
	cp.mu.Lock()
	cp.apiRejects = true
	cp.mu.Unlock()
	res := a.Handle(context.Background(), caReq(api.CATrust, "cp-1", api.CARequest{New: staged, Trust: pki.TrustBoth}))
	if res.Outcome != api.Restored || !strings.Contains(res.Error, "kube-apiserver does not accept") {
		t.Fatalf("%s: %s", res.Outcome, res.Error)
	}
	if d := diff(before, tree(t, cp.root)); len(d) > 0 {
		t.Errorf("files differ after the restore: %v", d)
	}
	// A request whose new CA is not the staged one changes nothing.
	wrong := map[string]string{}
	for k, v := range staged {
		wrong[k] = v
	}
	wrong["ca"] = wrong["front-proxy-ca"]
	res = a.Handle(context.Background(), caReq(api.CATrust, "cp-1", api.CARequest{New: wrong, Trust: pki.TrustBoth}))
	if res.Outcome != api.Unchanged || !strings.Contains(res.Error, "not the rotation's new CA") {
		t.Errorf("%s: %s", res.Outcome, res.Error)
	}
}

// The switch re-issues every certificate of a control plane's CAs with the
// new CAs, which become the signers (new first in each CA file, the new
// key, kube-controller-manager's signer), and it needs the trust phase
// before it. A user's request is signed with the new cluster CA.
func TestCASwitch(t *testing.T) {
	cp := newFakeNode(t, "cp-1", pkitest.ECDSA, nil)
	a := cp.agent()
	staged := handleOK(t, a, caReq(api.CAPrepare, "cp-1", api.CARequest{Validity: 24 * time.Hour})).CA.Staged
	before := tree(t, cp.root)
	if res := a.Handle(context.Background(), caReq(api.CASwitch, "cp-1", api.CARequest{New: staged})); res.Outcome != api.Unchanged || !strings.Contains(res.Error, "run the trust phase first") {
		t.Fatalf("switch before trust: %s %s", res.Outcome, res.Error)
	}
	if d := diff(before, tree(t, cp.root)); len(d) > 0 {
		t.Errorf("a refused switch wrote %v", d)
	}
	handleOK(t, a, caReq(api.CATrust, "cp-1", api.CARequest{New: staged, Trust: pki.TrustBoth}))
	oldCA, err := pki.LoadAuthority(cp.root, pki.ClusterCA)
	must(t, err)

	res := handleOK(t, a, caReq(api.CASwitch, "cp-1", api.CARequest{New: staged}))
	for _, ca := range pki.CAs {
		next, err := pki.ParseCertificatePEM([]byte(staged[ca.Name]))
		must(t, err)
		now, err := pki.LoadAuthority(cp.root, ca)
		must(t, err)
		if !now.Cert.Equal(next) {
			t.Errorf("CA %s: the signer is %s, want the new %s", ca.Name, pki.CAID(now.Cert), pki.CAID(next))
		}
		data, err := pki.ReadFile(cp.root, ca.CertFile)
		must(t, err)
		first, err := pki.ParseCertificatePEM(data)
		must(t, err)
		if !first.Equal(next) {
			t.Errorf("/%s does not start with the new CA", ca.CertFile)
		}
	}
	l, err := a.detectLayout()
	must(t, err)
	reissued := 0
	for _, c := range l.certsOnNode() {
		if c.Method != pki.SignedOnDisk {
			continue
		}
		cert, err := pki.ReadCertificate(cp.root, c)
		must(t, err)
		next, err := pki.ParseCertificatePEM([]byte(staged[c.CA.Name]))
		must(t, err)
		if err := cert.CheckSignatureFrom(next); err != nil {
			t.Errorf("%s is not signed by the new CA %s: %v", c.Name, c.CA.Name, err)
		}
		reissued++
	}
	if reissued < 10 || len(res.Renew.Changes) != reissued {
		t.Errorf("%d certificates re-issued, %d reported", reissued, len(res.Renew.Changes))
	}
	signer, err := pki.ReadFile(cp.root, "etc/kubernetes/pki/ca-signer.crt")
	must(t, err)
	if string(signer) != staged["ca"] {
		t.Error("kube-controller-manager does not sign with the new CA")
	}
	verified := strings.Join(res.Renew.Verified, "\n")
	for _, want := range []string{"kube-apiserver serves apiserver serial", "etcd serves etcd-server serial"} {
		if !strings.Contains(verified, want) {
			t.Errorf("not verified: %s (%s)", want, verified)
		}
	}
	snapshot := tree(t, cp.root)
	if again := handleOK(t, a, caReq(api.CASwitch, "cp-1", api.CARequest{New: staged})); again.Renew.Backup != "" || len(again.Renew.Changes) > 0 {
		t.Errorf("a second switch changed %v", again.Renew.Changes)
	}
	if d := diff(snapshot, tree(t, cp.root)); len(d) > 0 {
		t.Errorf("a second switch wrote %v", d)
	}

	// A user's new client certificate.
	key, err := pki.NewECDSAKey()
	must(t, err)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "kubernetes-admin", Organization: []string{"kubeadm:cluster-admins"}}}, key)
	must(t, err)
	csrPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}))
	signed := handleOK(t, a, caReq(api.CASign, "cp-1", api.CARequest{CSR: csrPEM}))
	cert, err := pki.ParseCertificatePEM([]byte(signed.CA.Certificate))
	must(t, err)
	next, _ := pki.ParseCertificatePEM([]byte(staged["ca"]))
	if cert.CheckSignatureFrom(next) != nil || cert.CheckSignatureFrom(oldCA.Cert) == nil || cert.Subject.CommonName != "kubernetes-admin" || !pki.SamePublicKey(cert.PublicKey, key.Public()) {
		t.Errorf("the user's certificate: %s signed by new %v", cert.Subject, cert.CheckSignatureFrom(next))
	}
	withName, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "u"}, DNSNames: []string{"evil.example"}}, key)
	must(t, err)
	if res := a.Handle(context.Background(), caReq(api.CASign, "cp-1", api.CARequest{CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: withName}))})); res.Outcome == api.Done {
		t.Error("a request with names was signed")
	}
}

// Rolling back the discard of staged CAs (rollback of its run) puts them
// back, although the emptied staging folder was removed.
func TestCADiscardRolledBack(t *testing.T) {
	cp := newFakeNode(t, "cp-1", pkitest.ECDSA, nil)
	a := cp.agent()
	handleOK(t, a, caReq(api.CAPrepare, "cp-1", api.CARequest{Validity: 24 * time.Hour}))
	staged := tree(t, cp.root)
	discard := caReq(api.CADiscard, "cp-1", api.CARequest{})
	discard.Run = "rc-00000000000000d1"
	handleOK(t, a, discard)
	if pki.Exists(cp.root, pki.StagingDir) {
		t.Fatal("the staging folder stayed")
	}
	rb := request(api.Rollback)
	rb.RollbackRun = discard.Run
	handleOK(t, a, rb)
	for _, ca := range pki.CAs {
		if !pki.Exists(cp.root, pki.Staged(ca).KeyFile) {
			t.Errorf("%s was not restored", pki.Staged(ca).KeyFile)
		}
	}
	if d := diff(staged, tree(t, cp.root)); len(d) > 0 {
		t.Errorf("after the rollback: %v", d)
	}
}
