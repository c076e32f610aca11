package orchestrator

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"net"
	"net/url"
	"slices"
	"strings"
	"testing"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

func testNode() *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "w-1"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
		{Type: corev1.NodeHostName, Address: "w-1"}, {Type: corev1.NodeInternalIP, Address: "192.0.2.11"}, {Type: corev1.NodeInternalDNS, Address: "w-1.internal"},
	}}}
}

func csrPEM(t testing.TB, key crypto.Signer, req *x509.CertificateRequest) string {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, req, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func p256(t testing.TB) crypto.Signer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func nodeSubject(node string) pkix.Name { return pki.KubeletClientSubject(node) }

func TestCheckCSRAcceptsWhatAKubeletAsks(t *testing.T) {
	n := testNode()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, cert string
		key        crypto.Signer
		req        x509.CertificateRequest
		signer     string
		usages     []certificatesv1.KeyUsage
	}{
		{"client ECDSA", "kubelet-client", p256(t), x509.CertificateRequest{Subject: nodeSubject("w-1")},
			certificatesv1.KubeAPIServerClientKubeletSignerName, []certificatesv1.KeyUsage{"digital signature", "client auth"}},
		{"client RSA", "kubelet-client", rsaKey, x509.CertificateRequest{Subject: nodeSubject("w-1")},
			certificatesv1.KubeAPIServerClientKubeletSignerName, []certificatesv1.KeyUsage{"digital signature", "client auth", "key encipherment"}},
		{"serving", "kubelet-serving", p256(t), x509.CertificateRequest{Subject: nodeSubject("w-1"), DNSNames: []string{"w-1", "w-1.internal"}, IPAddresses: []net.IP{net.ParseIP("192.0.2.11")}},
			certificatesv1.KubeletServingSignerName, []certificatesv1.KeyUsage{"digital signature", "server auth"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := checkCSR(n, api.CSR{Name: tc.cert, Request: csrPEM(t, tc.key, &tc.req)})
			if err != nil {
				t.Fatal(err)
			}
			if c.signer != tc.signer || !slices.Equal(c.usages, tc.usages) {
				t.Errorf("signer %s usages %v, want %s %v", c.signer, c.usages, tc.signer, tc.usages)
			}
			// A current certificate with key encipherment (kubeadm gives it to
			// any key) keeps it; it grants nothing.
			c, err = checkCSR(n, api.CSR{Name: tc.cert, Request: csrPEM(t, tc.key, &tc.req), KeyEncipherment: true})
			if err != nil || !slices.Contains(c.usages, certificatesv1.UsageKeyEncipherment) {
				t.Errorf("key encipherment not kept: %v %v", c, err)
			}
		})
	}
}

// A tampered agent (root on its node controls it) asks for more than its
// kubelet's certificate: every such request is refused with the node named.
func TestCheckCSRRefusesTamperedRequests(t *testing.T) {
	n := testNode()
	honest := func() x509.CertificateRequest { return x509.CertificateRequest{Subject: nodeSubject("w-1")} }
	with := func(f func(*x509.CertificateRequest)) x509.CertificateRequest { r := honest(); f(&r); return r }
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	cases := []struct {
		name, cert string
		key        crypto.Signer
		req        x509.CertificateRequest
		want       string
	}{
		{"cluster admin group", "kubelet-client", nil, with(func(r *x509.CertificateRequest) { r.Subject.Organization = []string{"kubeadm:cluster-admins"} }), "subject O"},
		{"an extra group", "kubelet-client", nil, with(func(r *x509.CertificateRequest) { r.Subject.Organization = []string{"system:nodes", "system:masters"} }), "subject O"},
		{"another node", "kubelet-client", nil, with(func(r *x509.CertificateRequest) { r.Subject.CommonName = "system:node:cp-1" }), `want "system:node:w-1"`},
		{"not a node", "kubelet-client", nil, with(func(r *x509.CertificateRequest) { r.Subject.CommonName = "kubernetes-admin" }), "subject CN"},
		{"an OU", "kubelet-client", nil, with(func(r *x509.CertificateRequest) { r.Subject.OrganizationalUnit = []string{"x"} }), "subject attribute"},
		{"a URI", "kubelet-client", nil, with(func(r *x509.CertificateRequest) {
			r.URIs = []*url.URL{{Scheme: "spiffe", Host: "cluster", Path: "/ns/kube-system"}}
		}), "URIs"},
		{"an e-mail", "kubelet-client", nil, with(func(r *x509.CertificateRequest) { r.EmailAddresses = []string{"a@b.c"} }), "e-mail"},
		{"client with names", "kubelet-client", nil, with(func(r *x509.CertificateRequest) { r.DNSNames = []string{"w-1"} }), "client certificate names"},
		{"serving for the API", "kubelet-serving", nil, with(func(r *x509.CertificateRequest) { r.DNSNames = []string{"w-1", "kubernetes.default.svc"} }), `"kubernetes.default.svc" is not an address of node w-1`},
		{"serving for another IP", "kubelet-serving", nil, with(func(r *x509.CertificateRequest) { r.IPAddresses = []net.IP{net.ParseIP("10.96.0.1")} }), "10.96.0.1 is not an address"},
		{"serving without names", "kubelet-serving", nil, honest(), "without names"},
		{"an extension", "kubelet-client", nil, with(func(r *x509.CertificateRequest) {
			r.ExtraExtensions = []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Value: []byte{0x30, 0x03, 0x01, 0x01, 0xff}}} // basicConstraints CA:TRUE
		}), "extension 2.5.29.19"},
		{"RSA 1024", "kubelet-client", rsa1024, honest(), "RSA key of 1024 bits"},
		{"P-521", "kubelet-client", p521, honest(), "curve P-521"},
		{"Ed25519", "kubelet-client", ed, honest(), "key type"},
		{"another certificate", "admin", nil, honest(), `unknown certificate "admin"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key := tc.key
			if key == nil {
				key = p256(t)
			}
			_, err := checkCSR(n, api.CSR{Name: tc.cert, Request: csrPEM(t, key, &tc.req)})
			if !errors.Is(err, ErrCSRRefused) || !strings.Contains(err.Error(), "node w-1") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want a refusal naming node w-1 and %q", err, tc.want)
			}
		})
	}
	good := x509.CertificateRequest{Subject: nodeSubject("w-1")}
	req := csrPEM(t, p256(t), &good)
	for name, bad := range map[string]string{
		"two requests":       req + req,
		"trailing data":      req + "garbage",
		"a private key":      "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
		"not PEM":            "hello",
		"too big":            strings.Repeat("A", maxCSRSize+1),
		"a forged signature": strings.Replace(req, req[len(req)-40:len(req)-30], strings.Repeat("A", 10), 1),
	} {
		if _, err := checkCSR(n, api.CSR{Name: "kubelet-client", Request: bad}); !errors.Is(err, ErrCSRRefused) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// A refused request stops the node before any CertificateSigningRequest
// exists: nothing is created, nothing approved, and the keys made for it are
// discarded.
func TestRotateApprovesNothingForATamperedNode(t *testing.T) {
	c := fakeCluster(t, nil, []string{"w-1", "w-2"})
	f := newFakeAgents(t, c)
	f.csrs = func(node string) []api.CSR {
		if node == "w-2" {
			r := x509.CertificateRequest{Subject: pkix.Name{CommonName: "system:node:w-2", Organization: []string{"system:masters"}}}
			return []api.CSR{nodeCSR(node), {Name: "kubelet-serving", Request: csrPEM(t, p256(t), &r)}}
		}
		return []api.CSR{nodeCSR(node)}
	}
	o := allOptions()
	o.Services = []pki.Service{pki.ServiceKubelet}
	o.Parallelism = Parallelism{Count: 1}
	_, err := newTestRunner(c, f).Rotate(context.Background(), o)
	if !errors.Is(err, ErrCSRRefused) || !strings.Contains(err.Error(), "node w-2") {
		t.Fatalf("got %v", err)
	}
	for _, a := range c.Actions() {
		if a.GetResource().Resource == "certificatesigningrequests" && a.GetVerb() != "delete" && a.GetVerb() != "list" {
			if cr, ok := a.(interface{ GetObject() runtime.Object }); ok {
				if csr, ok := cr.GetObject().(*certificatesv1.CertificateSigningRequest); ok && strings.Contains(csr.GenerateName, "w-2") {
					t.Errorf("a CSR was %sd for the tampered node: %s", a.GetVerb(), csr.Name)
				}
			}
		}
	}
	if f.issued["w-2"] != "" || len(f.callsOf(api.DiscardPending)) != 1 {
		t.Errorf("issued %q; discard calls %v", f.issued["w-2"], f.callsOf(api.DiscardPending))
	}
}

// The agent cannot name a signer: a result that tries is not even read.
func TestDecodeResultRefusesASigner(t *testing.T) {
	out := []byte(`{"agentVersion":"x","node":"w-1","outcome":"done","csrs":[{"name":"kubelet-client","request":"r","signerName":"kubernetes.io/kube-apiserver-client"}]}`)
	if _, err := decodeResult(out, "w-1"); err == nil || !strings.Contains(err.Error(), "signerName") {
		t.Errorf("got %v", err)
	}
}
