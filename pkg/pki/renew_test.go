package pki_test

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki/pkitest"
)

func TestRenewKeepsIdentityAndCA(t *testing.T) {
	for _, alg := range []pkitest.Algorithm{pkitest.RSA, pkitest.ECDSA} {
		t.Run(string(alg), func(t *testing.T) {
			root := t.TempDir()
			pkitest.ControlPlane(t, root, "cp-1", alg)
			caBefore := readAll(t, root, pki.CAs)
			now := time.Now()
			for _, c := range pki.Inventory {
				if c.Method != pki.SignedOnDisk {
					continue
				}
				a, err := pki.LoadAuthority(root, c.CA)
				if err != nil {
					t.Fatal(err)
				}
				r, err := pki.PlanRenewal(root, c, a, 8760*time.Hour, now)
				if err != nil {
					t.Fatalf("%s: %v", c.Name, err)
				}
				for _, f := range r.Files {
					if err := pki.WriteAtomic(root, f); err != nil {
						t.Fatal(err)
					}
				}
				old, got := r.Old, mustRead(t, root, c)
				if got.SerialNumber.Cmp(old.SerialNumber) == 0 {
					t.Errorf("%s: serial unchanged", c.Name)
				}
				if pki.SamePublicKey(got.PublicKey, old.PublicKey) {
					t.Errorf("%s: key unchanged", c.Name)
				}
				if pki.KeyAlgorithm(got.PublicKey) != pki.KeyAlgorithm(old.PublicKey) {
					t.Errorf("%s: key algorithm %s, was %s", c.Name, pki.KeyAlgorithm(got.PublicKey), pki.KeyAlgorithm(old.PublicKey))
				}
				if !bytes.Equal(got.RawSubject, old.RawSubject) || !reflect.DeepEqual(got.DNSNames, old.DNSNames) ||
					!reflect.DeepEqual(got.IPAddresses, old.IPAddresses) || got.KeyUsage != old.KeyUsage ||
					!reflect.DeepEqual(got.ExtKeyUsage, old.ExtKeyUsage) || got.IsCA {
					t.Errorf("%s: identity changed: %v %v -> %v %v", c.Name, old.Subject, old.DNSNames, got.Subject, got.DNSNames)
				}
				if err := got.CheckSignatureFrom(a.Cert); err != nil {
					t.Errorf("%s: not signed by %s: %v", c.Name, c.CA.Name, err)
				}
				if d := got.NotAfter.Sub(now); d < 8759*time.Hour || d > 8761*time.Hour {
					t.Errorf("%s: validity %s, want 8760h", c.Name, d)
				}
				if got.NotBefore.After(now) || now.Sub(got.NotBefore) > pki.ClockSkew+time.Second {
					t.Errorf("%s: NotBefore %s, want now minus the skew", c.Name, got.NotBefore)
				}
			}
			if !reflect.DeepEqual(caBefore, readAll(t, root, pki.CAs)) {
				t.Error("a CA file changed")
			}
		})
	}
}

func TestKubeconfigRewriteKeepsEverythingElse(t *testing.T) {
	root := t.TempDir()
	pkitest.ControlPlane(t, root, "cp-1", pkitest.ECDSA)
	c := pki.Inventory[indexOf(t, "scheduler.conf")]
	before, err := clientcmd.LoadFromFile(filepath.Join(root, c.Kubeconfig))
	if err != nil {
		t.Fatal(err)
	}
	a, _ := pki.LoadAuthority(root, c.CA)
	r, err := pki.PlanRenewal(root, c, a, time.Hour*24, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteAtomic(root, r.Files[0]); err != nil {
		t.Fatal(err)
	}
	after, err := clientcmd.LoadFromFile(filepath.Join(root, c.Kubeconfig))
	if err != nil {
		t.Fatalf("rewritten kubeconfig does not parse: %v", err)
	}
	if !reflect.DeepEqual(before.Clusters, after.Clusters) || before.CurrentContext != after.CurrentContext || !reflect.DeepEqual(before.Contexts, after.Contexts) {
		t.Error("cluster, server or context changed")
	}
	user := after.AuthInfos["system:kube-scheduler"]
	if bytes.Equal(user.ClientCertificateData, before.AuthInfos["system:kube-scheduler"].ClientCertificateData) {
		t.Error("embedded certificate unchanged")
	}
	key, err := pki.ParsePrivateKeyPEM(user.ClientKeyData)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := pki.ParseCertificatePEM(user.ClientCertificateData)
	if !pki.SamePublicKey(cert.PublicKey, key.Public()) {
		t.Error("embedded key does not match the embedded certificate")
	}
	if st, _ := os.Stat(filepath.Join(root, c.Kubeconfig)); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
}

func TestBadInput(t *testing.T) {
	root := t.TempDir()
	pkitest.ControlPlane(t, root, "cp-1", pkitest.RSA)
	apiserver := pki.Inventory[indexOf(t, "apiserver")]

	t.Run("corrupt certificate", func(t *testing.T) {
		dir := copyTree(t, root)
		must(t, os.WriteFile(filepath.Join(dir, apiserver.CertFile), []byte("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"), 0o644))
		a, _ := pki.LoadAuthority(dir, apiserver.CA)
		if _, err := pki.PlanRenewal(dir, apiserver, a, time.Hour, time.Now()); err == nil {
			t.Error("renewed a corrupt certificate")
		}
	})
	t.Run("key does not match", func(t *testing.T) {
		dir := copyTree(t, root)
		other, _ := os.ReadFile(filepath.Join(dir, "etc/kubernetes/pki/front-proxy-client.key"))
		must(t, os.WriteFile(filepath.Join(dir, apiserver.KeyFile), other, 0o600))
		a, _ := pki.LoadAuthority(dir, apiserver.CA)
		if _, err := pki.PlanRenewal(dir, apiserver, a, time.Hour, time.Now()); err == nil {
			t.Error("renewed a certificate whose key does not match")
		}
	})
	t.Run("missing CA key is external", func(t *testing.T) {
		dir := copyTree(t, root)
		must(t, os.Remove(filepath.Join(dir, pki.ClusterCA.KeyFile)))
		if _, err := pki.LoadAuthority(dir, pki.ClusterCA); !errors.Is(err, pki.ErrExternalCA) {
			t.Errorf("got %v, want ErrExternalCA", err)
		}
	})
	t.Run("signed by another CA", func(t *testing.T) {
		a, _ := pki.LoadAuthority(root, pki.FrontProxyCA)
		if _, err := pki.PlanRenewal(root, apiserver, a, time.Hour, time.Now()); err == nil {
			t.Error("re-signed a certificate with a CA that did not sign it")
		}
	})
}

func TestValidityCappedAtCAExpiry(t *testing.T) {
	root := t.TempDir()
	pkitest.ControlPlane(t, root, "cp-1", pkitest.ECDSA)
	c := pki.Inventory[indexOf(t, "apiserver")]
	a, _ := pki.LoadAuthority(root, c.CA)
	r, err := pki.PlanRenewal(root, c, a, 100*365*24*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !r.New.Capped || !r.New.Cert.NotAfter.Equal(a.Cert.NotAfter) {
		t.Errorf("NotAfter %s, want capped at the CA's %s", r.New.Cert.NotAfter, a.Cert.NotAfter)
	}
}

func TestKubeletSymlinkResolvedBelowRoot(t *testing.T) {
	root := t.TempDir()
	pkitest.ControlPlane(t, root, "cp-1", pkitest.ECDSA)
	c := pki.Inventory[indexOf(t, "kubelet-client")]
	cert := mustRead(t, root, c)
	if cert.Subject.CommonName != "system:node:cp-1" {
		t.Errorf("kubelet-client CN %q", cert.Subject.CommonName)
	}
}

func TestParseService(t *testing.T) {
	if _, err := pki.ParseService("etcdd"); err == nil || !bytes.Contains([]byte(err.Error()), []byte("kube-apiserver")) {
		t.Errorf("unknown service error should list the valid ones: %v", err)
	}
	if s, err := pki.ParseService("kubelet"); err != nil || s != pki.ServiceKubelet {
		t.Errorf("kubelet: %v %v", s, err)
	}
}

func indexOf(t *testing.T, name string) int {
	for i, c := range pki.Inventory {
		if c.Name == name {
			return i
		}
	}
	t.Fatalf("no %s in the inventory", name)
	return -1
}

// A renewed self-signed kubelet serving certificate is named as the kubelet
// names its own: <host>@<unix time>, issued by <host>-ca@<unix time>, not
// <old subject>-ca@... .
func TestSelfSignedServingNamedAsTheKubelet(t *testing.T) {
	root := t.TempDir()
	pkitest.ControlPlane(t, root, "node-1", pkitest.ECDSA)
	old := mustRead(t, root, pki.Cert{CertFile: pki.KubeletSelfSignedCert})
	now := time.Unix(1795788570, 0)
	certPEM, _, leaf, err := pki.NewSelfSignedServing(old, 24*time.Hour, now)
	must(t, err)
	if leaf.Subject.CommonName != "node-1@1795788570" || leaf.Issuer.CommonName != "node-1-ca@1795788570" {
		t.Errorf("subject %q issuer %q, want node-1@1795788570 and node-1-ca@1795788570", leaf.Subject.CommonName, leaf.Issuer.CommonName)
	}
	if strings.Join(leaf.DNSNames, ",") != strings.Join(old.DNSNames, ",") {
		t.Errorf("names %v, want %v", leaf.DNSNames, old.DNSNames)
	}
	rest := certPEM
	var certs []*x509.Certificate
	for {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		must(t, err)
		certs = append(certs, c)
	}
	if len(certs) != 2 || certs[0].CheckSignatureFrom(certs[1]) != nil {
		t.Error("the file does not hold the leaf then the CA that signed it")
	}
}
