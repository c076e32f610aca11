package pki_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki/pkitest"
)

func ids(t *testing.T, bundle []byte) []string {
	t.Helper()
	out, err := pki.BundleIDs(bundle)
	must(t, err)
	return out
}

func TestRetrustBundleModes(t *testing.T) {
	old := loadCA(t, pkitest.ECDSA, pki.ClusterCA)
	next, _, err := pki.NewCALike(old, "", tenYears, time.Now())
	must(t, err)
	oldPEM := pki.EncodeCertPEM(old.Cert)
	oldID, newID := pki.CAID(old.Cert), pki.CAID(next.Cert)

	both, changed, err := pki.RetrustBundle(oldPEM, next.Cert, pki.TrustBoth)
	must(t, err)
	if got := ids(t, both); !changed || len(got) != 2 || got[0] != oldID || got[1] != newID {
		t.Fatalf("both: %v (changed %v), want [%s %s]", got, changed, oldID, newID)
	}
	again, changed, err := pki.RetrustBundle(both, next.Cert, pki.TrustBoth)
	must(t, err)
	if changed || !bytes.Equal(again, both) {
		t.Error("adding the new CA twice changed the bundle")
	}
	back, changed, err := pki.RetrustBundle(both, next.Cert, pki.TrustOld)
	must(t, err)
	if got := ids(t, back); !changed || len(got) != 1 || got[0] != oldID {
		t.Errorf("old: %v, want [%s]", got, oldID)
	}
	if same, changed, _ := pki.RetrustBundle(oldPEM, next.Cert, pki.TrustOld); changed || !bytes.Equal(same, oldPEM) {
		t.Error("removing an absent new CA changed the bundle")
	}
	only, changed, err := pki.RetrustBundle(both, next.Cert, pki.TrustNew)
	must(t, err)
	if got := ids(t, only); !changed || len(got) != 1 || got[0] != newID {
		t.Errorf("new: %v, want [%s]", got, newID)
	}
	if _, _, err := pki.RetrustBundle(oldPEM, next.Cert, pki.TrustNew); !errors.Is(err, pki.ErrNotInBundle) {
		t.Errorf("keeping only a CA the bundle lacks: %v, want ErrNotInBundle", err)
	}
	if _, _, err := pki.RetrustBundle(oldPEM, next.Cert, "everything"); err == nil {
		t.Error("an unknown mode was accepted")
	}
}

func TestRetrustKubeconfigKeepsCredentials(t *testing.T) {
	root := t.TempDir()
	pkitest.ControlPlane(t, root, "cp-1", pkitest.ECDSA)
	old, err := pki.LoadAuthority(root, pki.ClusterCA)
	must(t, err)
	next, _, err := pki.NewCALike(old, "", tenYears, time.Now())
	must(t, err)
	data, err := os.ReadFile(filepath.Join(root, "etc/kubernetes/admin.conf"))
	must(t, err)
	out, changed, err := pki.RetrustKubeconfig(data, next.Cert, pki.TrustBoth)
	must(t, err)
	if !changed {
		t.Fatal("not changed")
	}
	before, err := clientcmd.Load(data)
	must(t, err)
	after, err := clientcmd.Load(out)
	must(t, err)
	for name, c := range after.Clusters {
		if got := ids(t, c.CertificateAuthorityData); len(got) != 2 || got[1] != pki.CAID(next.Cert) {
			t.Errorf("cluster %s trusts %v", name, got)
		}
		if c.Server != before.Clusters[name].Server {
			t.Errorf("server changed: %s", c.Server)
		}
	}
	for name, u := range after.AuthInfos {
		if !bytes.Equal(u.ClientCertificateData, before.AuthInfos[name].ClientCertificateData) || !bytes.Equal(u.ClientKeyData, before.AuthInfos[name].ClientKeyData) {
			t.Errorf("user %s's credentials changed", name)
		}
	}
	if _, changed, err := pki.RetrustKubeconfig(out, next.Cert, pki.TrustBoth); err != nil || changed {
		t.Errorf("second time: changed %v, %v", changed, err)
	}
	if _, _, err := pki.RetrustKubeconfig([]byte("not: [a kubeconfig"), next.Cert, pki.TrustBoth); err == nil {
		t.Error("a broken kubeconfig was accepted")
	}
}

// LoadAuthority finds the signer in a bundle by its key, in either order.
func TestLoadAuthorityFromBundle(t *testing.T) {
	root := t.TempDir()
	pkitest.ControlPlane(t, root, "cp-1", pkitest.RSA)
	old, err := pki.LoadAuthority(root, pki.ClusterCA)
	must(t, err)
	next, _, err := pki.NewCALike(old, "", tenYears, time.Now())
	must(t, err)
	path := filepath.Join(root, pki.ClusterCA.CertFile)
	for _, order := range [][]byte{
		append(pki.EncodeCertPEM(old.Cert), pki.EncodeCertPEM(next.Cert)...),
		append(pki.EncodeCertPEM(next.Cert), pki.EncodeCertPEM(old.Cert)...),
	} {
		must(t, os.WriteFile(path, order, 0o644))
		got, err := pki.LoadAuthority(root, pki.ClusterCA)
		must(t, err)
		if !got.Cert.Equal(old.Cert) {
			t.Errorf("loaded %s, want the CA of ca.key", pki.CAID(got.Cert))
		}
	}
	must(t, os.WriteFile(path, pki.EncodeCertPEM(next.Cert), 0o644))
	if _, err := pki.LoadAuthority(root, pki.ClusterCA); err == nil {
		t.Error("a CA file without the key's certificate was accepted")
	}
}

// A receiver kept on disk between two processes opens what was sealed to
// the one that made it; once opened it cannot be used again.
func TestHandoverReceiverStoredOnDisk(t *testing.T) {
	a := loadCA(t, pkitest.ECDSA, pki.ClusterCA)
	r, err := pki.NewHandoverReceiver()
	must(t, err)
	priv, err := r.PrivateKeyBytes()
	must(t, err)
	b := pki.HandoverBinding{RunID: "rot-1", Sender: "cp-1", Receiver: "cp-2"}
	p, err := pki.NewHandoverPayload(a)
	must(t, err)
	sealed, err := pki.SealHandover(r.PublicKey(), b, p)
	must(t, err)
	loaded, err := pki.LoadHandoverReceiver(priv)
	must(t, err)
	if !bytes.Equal(loaded.PublicKey(), r.PublicKey()) {
		t.Fatal("the loaded receiver has another public key")
	}
	got, err := loaded.Open(b, sealed)
	must(t, err)
	cas, err := got.Authorities()
	must(t, err)
	if len(cas) != 1 || !cas[0].Cert.Equal(a.Cert) {
		t.Error("the opened hand-over carries another CA")
	}
	if _, err := loaded.PrivateKeyBytes(); err == nil {
		t.Error("an opened receiver still hands out its key")
	}
	if _, err := pki.LoadHandoverReceiver([]byte("short")); !errors.Is(err, pki.ErrHandoverRefused) {
		t.Errorf("a bad stored key: %v", err)
	}
}
