package agent

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki/pkitest"
)

// A control plane whose every certificate expired a month ago, and which
// lacks the front-proxy CA and client and etcd's healthcheck client (an
// old cluster), is recovered: everything renewed or created, valid for a
// year, the kubelet's client certificate signed here, and after the restart
// step every component serves and answers with the new certificates.
func TestRecoverAnExpiredControlPlane(t *testing.T) {
	f := newFakeNodeSince(t, "cp-1", pkitest.ECDSA, nil, time.Now().Add(-395*24*time.Hour))
	root := f.root
	for _, p := range []string{pki.FrontProxyCA.CertFile, pki.FrontProxyCA.KeyFile, "etc/kubernetes/pki/front-proxy-client.crt", "etc/kubernetes/pki/front-proxy-client.key",
		"etc/kubernetes/pki/etcd/healthcheck-client.crt", "etc/kubernetes/pki/etcd/healthcheck-client.key"} {
		must(t, os.Remove(filepath.Join(root, p)))
	}
	caBefore, _ := os.ReadFile(filepath.Join(root, pki.ClusterCA.CertFile))
	a := f.agent()

	// --all's plan refuses what recover creates; recover's plans it.
	if in := a.Handle(context.Background(), request(api.Inspect, cpServices...)).Inspect; len(in.Problems) == 0 {
		t.Error("a rotation planned on a node missing its front-proxy client")
	}
	req := request(api.Inspect, append(cpServices, "kubelet")...)
	req.Recover = true
	in := a.Handle(context.Background(), req).Inspect
	if in == nil || len(in.Problems) > 0 || in.NodeName != "cp-1" {
		t.Fatalf("recover plan: %+v", in)
	}

	ren := request(api.RecoverRenew, append(cpServices, "kubelet")...)
	res := a.Handle(context.Background(), ren)
	if res.Outcome != api.Done {
		t.Fatalf("%s: %s", res.Outcome, res.Error)
	}
	for _, c := range append(pki.Inventory, pki.Cert{Name: "front-proxy-ca", CertFile: pki.FrontProxyCA.CertFile}) {
		cert, err := pki.ReadCertificate(root, c)
		if err != nil {
			t.Errorf("%s: %v", c.Name, err)
			continue
		}
		if left := time.Until(cert.NotAfter); left < 360*24*time.Hour {
			t.Errorf("%s expires in %s", c.Name, left.Round(time.Hour))
		}
	}
	if now, _ := os.ReadFile(filepath.Join(root, pki.ClusterCA.CertFile)); string(now) != string(caBefore) {
		t.Error("the cluster CA changed")
	}
	client, _ := pki.ReadCertificate(root, pki.Cert{CertFile: pki.KubeletClientCurrent})
	ca, _ := pki.LoadAuthority(root, pki.ClusterCA)
	if client.Subject.CommonName != "system:node:cp-1" || client.CheckSignatureFrom(ca.Cert) != nil || client.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Errorf("kubelet client %v", client.Subject)
	}
	fp, _ := pki.LoadAuthority(root, pki.FrontProxyCA)
	proxy, _ := pki.ReadCertificate(root, pki.Cert{CertFile: "etc/kubernetes/pki/front-proxy-client.crt"})
	if fp == nil || proxy.CheckSignatureFrom(fp.Cert) != nil || proxy.Subject.CommonName != "front-proxy-client" {
		t.Error("front-proxy-client is not signed by the new front-proxy CA")
	}

	pids := map[string]int{}
	for _, c := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "etcd"} {
		pids[c] = f.proc.pid(c)
	}
	rs := a.Handle(context.Background(), request(api.RecoverRestart))
	if rs.Outcome != api.Done {
		t.Fatalf("%s: %s", rs.Outcome, rs.Error)
	}
	for c, pid := range pids {
		if restarted := f.proc.pid(c) != pid; restarted != (c != "etcd") {
			t.Errorf("%s restarted=%v", c, restarted)
		}
	}
	verified := strings.Join(rs.Renew.Verified, "\n")
	for _, want := range []string{"etcd serves etcd-server serial " + serialOf(t, root, "etcd-server"), "kube-apiserver serves apiserver serial", "accepts the new kubelet client certificate", "kube-scheduler is healthy"} {
		if !strings.Contains(verified, want) {
			t.Errorf("not verified: %s\n%s", want, verified)
		}
	}
	kc := a.Handle(context.Background(), request(api.ReadAdminKubeconfig))
	if kc.Outcome != api.Done || !strings.Contains(kc.Kubeconfig, "client-certificate-data") {
		t.Errorf("admin.conf: %s %s", kc.Outcome, kc.Error)
	}
}

// A control plane signs a worker's kubelet client request only if it is
// exactly that node's, with the CA it keeps.
func TestSignKubeletClient(t *testing.T) {
	root := t.TempDir()
	pkitest.ControlPlane(t, root, "cp-1", pkitest.ECDSA)
	a := newTestAgent(t, root)
	_, csr, err := pki.NewCSR(pki.KubeletClientSubject("w-1"), nil, nil, nil)
	must(t, err)
	req := request(api.SignKubeletClient)
	req.CSR, req.SignFor = &api.CSR{Name: "kubelet-client", Request: string(csr)}, "w-1"
	res := a.Handle(context.Background(), req)
	if res.Outcome != api.Done {
		t.Fatal(res.Error)
	}
	cert, err := pki.ParseCertificatePEM([]byte(res.Certificate))
	must(t, err)
	ca, _ := pki.LoadAuthority(root, pki.ClusterCA)
	if cert.Subject.CommonName != "system:node:w-1" || cert.CheckSignatureFrom(ca.Cert) != nil || len(cert.DNSNames) > 0 {
		t.Errorf("issued %v", cert.Subject)
	}
	_, bad, _ := pki.NewCSR(pkix.Name{CommonName: "system:node:w-1", Organization: []string{"system:masters"}}, nil, nil, nil)
	req.CSR.Request = string(bad)
	if r := a.Handle(context.Background(), req); r.Outcome != api.Unchanged || !strings.Contains(r.Error, "certificate request refused") {
		t.Errorf("a tampered request: %s %s", r.Outcome, r.Error)
	}
	req.CSR.Request, req.SignFor = string(csr), "w-2"
	if r := a.Handle(context.Background(), req); r.Outcome != api.Unchanged {
		t.Errorf("another node's request was signed: %s", r.Outcome)
	}
}

// A worker whose kubelet died of its expired certificate gets the new one
// installed and the kubelet started.
func TestKubeletInstallStartsADeadKubelet(t *testing.T) {
	cp := newFakeNode(t, "cp-1", pkitest.ECDSA, nil)
	w := newFakeNode(t, "w-1", pkitest.ECDSA, cp)
	must(t, os.RemoveAll(filepath.Join(w.proc.dir, strconv.Itoa(w.proc.pid("kubelet")))))
	a := w.agent()
	req := request(api.KubeletCSR)
	req.Node = "w-1"
	res := a.Handle(context.Background(), req)
	if res.Outcome != api.Done {
		t.Fatal(res.Error)
	}
	inst := request(api.KubeletInstall)
	inst.Node = "w-1"
	inst.Issued = map[string]string{"kubelet-client": signAsCluster(t, cp.root, res.CSRs[0].Request)}
	if r := a.Handle(context.Background(), inst); r.Outcome != api.Done || r.Kubelet == nil {
		t.Fatalf("%s: %s", r.Outcome, r.Error)
	}
}
