package pki_test

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki/pkitest"
)

// reissue makes a new certificate for a CA's key: another serial and
// expiry, the subject given.
func reissue(t *testing.T, a *pki.Authority, cn string) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: a.Cert.NotBefore, NotAfter: a.Cert.NotAfter.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, a.Key.Public(), a.Key)
	must(t, err)
	c, err := x509.ParseCertificate(der)
	must(t, err)
	return c
}

func TestCAIDIsTheTrustAnchor(t *testing.T) {
	n := &pkitest.Node{Root: t.TempDir(), Alg: pkitest.ECDSA, Start: time.Now()}
	a := n.NewCA(t, pki.ClusterCA, "kubernetes")
	other := n.NewCA(t, pki.ClusterCA, "kubernetes") // same name, new key
	id := pki.CAID(a.Cert)
	if !pki.ValidCAID(id) || len(id) != pki.CAIDLength {
		t.Fatalf("id %q", id)
	}
	if got := pki.CAID(reissue(t, a, "kubernetes")); got != id {
		t.Errorf("a CA re-issued with the same key and subject has id %s, want %s", got, id)
	}
	if pki.CAID(reissue(t, a, "kubernetes-2")) == id {
		t.Error("the same key under another subject must be another CA")
	}
	if pki.CAID(other.Cert) == id {
		t.Error("a new key under the same subject must be another CA")
	}
	for _, bad := range []string{"", "ABCDEF0123456789", "0123456789abcde", "0123456789abcdef0", "0123456789abcdeg"} {
		if pki.ValidCAID(bad) {
			t.Errorf("ValidCAID(%q)", bad)
		}
	}
}

func TestParseCABundle(t *testing.T) {
	n := pkitest.ControlPlane(t, t.TempDir(), "cp-1", pkitest.ECDSA)
	old, err := pki.LoadAuthority(n.Root, pki.ClusterCA)
	must(t, err)
	fresh := n.NewCA(t, pki.CA{Name: "new", CertFile: "new/ca.crt", KeyFile: "new/ca.key"}, "kubernetes-new")
	both := append(pki.EncodeCertPEM(old.Cert), pki.EncodeCertPEM(fresh.Cert)...)
	cas, err := pki.ParseCABundle(both)
	if err != nil || len(cas) != 2 || pki.CAID(cas[0]) != pki.CAID(old.Cert) || pki.CAID(cas[1]) != pki.CAID(fresh.Cert) {
		t.Fatalf("two CAs: %v, %d certificates", err, len(cas))
	}

	leaf, _ := n.Leaf(t, old, pkix.Name{CommonName: "leaf"}, nil, nil, nil)
	if _, err := pki.ParseCABundle(append(append([]byte{}, both...), leaf...)); err == nil || !strings.Contains(err.Error(), `certificate 3 of the bundle (subject "CN=leaf") is not a CA`) {
		t.Errorf("a bundle with a leaf: %v", err)
	}
	if _, err := pki.ParseCABundle([]byte("not PEM")); err == nil {
		t.Error("garbage parsed as a bundle")
	}
	if _, err := pki.ReadCABundle(n.Root, "etc/kubernetes/pki/apiserver.crt"); err == nil || !strings.Contains(err.Error(), "/etc/kubernetes/pki/apiserver.crt: certificate 1") {
		t.Errorf("a leaf file read as a bundle: %v", err)
	}
}

func TestSignedByChecksTheSignature(t *testing.T) {
	n := pkitest.ControlPlane(t, t.TempDir(), "cp-1", pkitest.RSA)
	ca, err := pki.LoadAuthority(n.Root, pki.ClusterCA)
	must(t, err)
	etcdCA, err := pki.LoadAuthority(n.Root, pki.EtcdCA)
	must(t, err)
	apiserver := mustRead(t, n.Root, pki.Cert{CertFile: "etc/kubernetes/pki/apiserver.crt"})
	got, err := pki.SignedBy(apiserver, []*x509.Certificate{etcdCA.Cert, ca.Cert})
	if err != nil || pki.CAID(got) != pki.CAID(ca.Cert) {
		t.Errorf("apiserver.crt: signed by %v, %v; want the cluster CA", got, err)
	}
	// Same name as the cluster CA, another key: the name is no proof.
	impostor := n.NewCA(t, pki.CA{Name: "x", CertFile: "x/ca.crt", KeyFile: "x/ca.key"}, "kubernetes")
	if got, err := pki.SignedBy(apiserver, []*x509.Certificate{impostor.Cert, etcdCA.Cert}); !errors.Is(err, pki.ErrUnknownIssuer) {
		t.Errorf("a CA with the issuer's name but another key: %v, %v", got, err)
	}
}
