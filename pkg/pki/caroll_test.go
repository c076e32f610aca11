package pki_test

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki/pkitest"
)

const tenYears = 10 * 365 * 24 * time.Hour

// loadCA lays out a control plane and loads one of its CAs.
func loadCA(t *testing.T, alg pkitest.Algorithm, ca pki.CA) *pki.Authority {
	t.Helper()
	root := t.TempDir()
	pkitest.ControlPlane(t, root, "cp-1", alg)
	a, err := pki.LoadAuthority(root, ca)
	must(t, err)
	return a
}

func TestNewCALikeKeepsSubjectAndAlgorithm(t *testing.T) {
	for _, alg := range []pkitest.Algorithm{pkitest.RSA, pkitest.ECDSA} {
		root := t.TempDir()
		pkitest.ControlPlane(t, root, "cp-1", alg)
		for _, ca := range pki.CAs {
			t.Run(string(alg)+"/"+ca.Name, func(t *testing.T) {
				old, err := pki.LoadAuthority(root, ca)
				must(t, err)
				now := time.Now().Truncate(time.Second)
				nu, issued, err := pki.NewCALike(old, "", tenYears, now)
				must(t, err)
				c := nu.Cert
				if !bytes.Equal(c.RawSubject, old.Cert.RawSubject) || !bytes.Equal(c.RawIssuer, old.Cert.RawSubject) {
					t.Errorf("subject/issuer %q/%q, want %q", c.Subject, c.Issuer, old.Cert.Subject)
				}
				if !reflect.DeepEqual(c.DNSNames, old.Cert.DNSNames) {
					t.Errorf("names %v, want %v", c.DNSNames, old.Cert.DNSNames)
				}
				if got, want := pki.KeyAlgorithm(c.PublicKey), pki.KeyAlgorithm(old.Cert.PublicKey); got != want {
					t.Errorf("key algorithm %s, want %s", got, want)
				}
				if pki.SamePublicKey(c.PublicKey, old.Cert.PublicKey) {
					t.Error("the new CA has the old key")
				}
				if !pki.SamePublicKey(c.PublicKey, nu.Key.Public()) {
					t.Error("the new CA's key does not match its certificate")
				}
				if c.SerialNumber.Cmp(old.Cert.SerialNumber) == 0 || c.SerialNumber.Sign() <= 0 {
					t.Errorf("serial %s (old %s)", c.SerialNumber, old.Cert.SerialNumber)
				}
				if len(c.SubjectKeyId) == 0 || bytes.Equal(c.SubjectKeyId, old.Cert.SubjectKeyId) {
					t.Errorf("subject key id %x, old %x", c.SubjectKeyId, old.Cert.SubjectKeyId)
				}
				if !c.IsCA || !c.BasicConstraintsValid {
					t.Error("not a CA")
				}
				if want := x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment; c.KeyUsage != want {
					t.Errorf("key usage %b, want %b", c.KeyUsage, want)
				}
				if !c.NotBefore.Equal(now.Add(-pki.ClockSkew)) || !c.NotAfter.Equal(now.Add(tenYears)) {
					t.Errorf("validity %s..%s, want %s..%s", c.NotBefore, c.NotAfter, now.Add(-pki.ClockSkew), now.Add(tenYears))
				}
				if err := c.CheckSignatureFrom(c); err != nil {
					t.Errorf("not self-signed: %v", err)
				}
				if nu.CA != old.CA {
					t.Errorf("authority for %v, want %v", nu.CA, old.CA)
				}
				pc, err := pki.ParseCertificatePEM(issued.CertPEM)
				must(t, err)
				pk, err := pki.ParsePrivateKeyPEM(issued.KeyPEM)
				must(t, err)
				if !pc.Equal(c) || !pki.SamePublicKey(pc.PublicKey, pk.Public()) {
					t.Error("the PEM encodings are not the new CA and its key")
				}
			})
		}
	}
}

func TestNewCALikeExplicitAlgorithm(t *testing.T) {
	old := loadCA(t, pkitest.ECDSA, pki.ClusterCA)
	for _, alg := range append([]string{"ecdsa-p-384"}, pki.CAKeyAlgorithms...) {
		nu, _, err := pki.NewCALike(old, alg, tenYears, time.Now())
		must(t, err)
		norm := func(s string) string { return strings.ReplaceAll(strings.ToUpper(s), "P-", "P") }
		if norm(pki.KeyAlgorithm(nu.Cert.PublicKey)) != norm(alg) {
			t.Errorf("asked for %s, got %s", alg, pki.KeyAlgorithm(nu.Cert.PublicKey))
		}
	}
	if _, _, err := pki.NewCALike(old, "Ed25519", tenYears, time.Now()); err == nil || !strings.Contains(err.Error(), "RSA-2048") {
		t.Errorf("Ed25519: %v, want an error listing the valid algorithms", err)
	}
	if _, _, err := pki.NewCALike(old, "", 0, time.Now()); err == nil {
		t.Error("a zero validity was accepted")
	}
}

func TestNewCALikeRefusesToCopyAWeakKey(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 1024)
	must(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubernetes"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	must(t, err)
	cert, _ := x509.ParseCertificate(der)
	old := &pki.Authority{CA: pki.ClusterCA, Cert: cert, Key: key}
	if _, _, err := pki.NewCALike(old, "", tenYears, time.Now()); err == nil || !strings.Contains(err.Error(), "RSA-1024") {
		t.Errorf("copying an RSA-1024 key: %v, want a refusal naming it", err)
	}
	nu, _, err := pki.NewCALike(old, "RSA-2048", tenYears, time.Now())
	must(t, err)
	if pki.KeyAlgorithm(nu.Cert.PublicKey) != "RSA-2048" {
		t.Errorf("got %s", pki.KeyAlgorithm(nu.Cert.PublicKey))
	}
}

func TestNewKeySpellings(t *testing.T) {
	for _, alg := range []string{"RSA-2048", "ECDSA-P256", "ECDSA-P384", "ECDSA-P-384", " ecdsa-p256 "} {
		k, err := pki.NewKey(alg)
		must(t, err)
		// KeyAlgorithm's spelling goes back through NewKey unchanged.
		k2, err := pki.NewKey(pki.KeyAlgorithm(k.Public()))
		must(t, err)
		if pki.KeyAlgorithm(k2.Public()) != pki.KeyAlgorithm(k.Public()) {
			t.Errorf("%s: %s then %s", alg, pki.KeyAlgorithm(k.Public()), pki.KeyAlgorithm(k2.Public()))
		}
	}
	for _, bad := range []string{"", "RSA-1024", "ECDSA-P521", "Ed25519"} {
		if _, err := pki.NewKey(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// rolled is a CA and its successor, with a leaf each signed by the code that
// renews leaves (Authority.Issue, which Renew uses).
type rolled struct {
	old, nu          *pki.Authority
	oldLeaf, newLeaf *x509.Certificate
	oldPEM, newPEM   []byte
	now              time.Time
}

func rollCA(t *testing.T, alg pkitest.Algorithm) *rolled {
	t.Helper()
	root := t.TempDir()
	pkitest.ControlPlane(t, root, "cp-1", alg)
	old, err := pki.LoadAuthority(root, pki.ClusterCA)
	must(t, err)
	now := time.Now()
	nu, _, err := pki.NewCALike(old, "", tenYears, now)
	must(t, err)
	tmpl := mustRead(t, root, pki.Inventory[indexOf(t, "apiserver")])
	oldLeaf, err := old.Issue(tmpl, tmpl.PublicKey, 365*24*time.Hour, now)
	must(t, err)
	newLeaf, err := nu.Issue(tmpl, tmpl.PublicKey, 365*24*time.Hour, now)
	must(t, err)
	return &rolled{old: old, nu: nu, oldLeaf: oldLeaf.Cert, newLeaf: newLeaf.Cert,
		oldPEM: pki.EncodeCertPEM(old.Cert), newPEM: pki.EncodeCertPEM(nu.Cert), now: now}
}

// verifies checks a leaf against the CAs of a PEM bundle with Go's verifier
// and returns the CA of the chain it built.
func verifies(t *testing.T, leaf *x509.Certificate, bundle []byte, now time.Time) (*x509.Certificate, error) {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(bundle) {
		t.Fatal("bundle not parsed")
	}
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return nil, err
	}
	return chains[0][len(chains[0])-1], nil
}

func TestLeavesOfOldAndNewCAVerifyAgainstTheMergedBundle(t *testing.T) {
	for _, alg := range []pkitest.Algorithm{pkitest.RSA, pkitest.ECDSA} {
		t.Run(string(alg), func(t *testing.T) {
			r := rollCA(t, alg)
			for name, l := range map[string]struct {
				leaf *x509.Certificate
				ca   *pki.Authority
			}{"old": {r.oldLeaf, r.old}, "new": {r.newLeaf, r.nu}} {
				if len(l.leaf.AuthorityKeyId) == 0 || !bytes.Equal(l.leaf.AuthorityKeyId, l.ca.Cert.SubjectKeyId) {
					t.Errorf("%s leaf: AKID %x, want its CA's SKID %x", name, l.leaf.AuthorityKeyId, l.ca.Cert.SubjectKeyId)
				}
				if !bytes.Equal(l.leaf.RawIssuer, r.old.Cert.RawSubject) {
					t.Errorf("%s leaf: issuer %q", name, l.leaf.Issuer)
				}
			}
			oldFirst, err := pki.MergeCABundles(r.oldPEM, r.newPEM)
			must(t, err)
			newFirst, err := pki.MergeCABundles(r.newPEM, r.oldPEM)
			must(t, err)
			for bname, bundle := range map[string][]byte{"{old,new}": oldFirst, "{new,old}": newFirst} {
				for lname, l := range map[string]struct {
					leaf *x509.Certificate
					ca   *pki.Authority
				}{"old": {r.oldLeaf, r.old}, "new": {r.newLeaf, r.nu}} {
					ca, err := verifies(t, l.leaf, bundle, r.now)
					if err != nil {
						t.Errorf("%s leaf against %s: %v", lname, bname, err)
						continue
					}
					if !ca.Equal(l.ca.Cert) {
						t.Errorf("%s leaf against %s: chain ends in the other CA", lname, bname)
					}
				}
			}
			// Alone, each CA refuses the other's leaf although the names match.
			var unknown x509.UnknownAuthorityError
			if _, err := verifies(t, r.oldLeaf, r.newPEM, r.now); !errors.As(err, &unknown) {
				t.Errorf("old leaf against {new}: %v, want an unknown authority", err)
			}
			if _, err := verifies(t, r.newLeaf, r.oldPEM, r.now); !errors.As(err, &unknown) {
				t.Errorf("new leaf against {old}: %v, want an unknown authority", err)
			}
		})
	}
}

func TestSignRequestLeavesCarryTheAKID(t *testing.T) {
	r := rollCA(t, pkitest.ECDSA)
	key, err := pki.NewECDSAKey()
	must(t, err)
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pki.KubeletClientSubject("n1")}, key)
	must(t, err)
	req, err := x509.ParseCertificateRequest(csrDER)
	must(t, err)
	certPEM, err := r.nu.SignRequest(req, pki.KubeletClientTemplate("n1", false), time.Hour, r.now)
	must(t, err)
	c, err := pki.ParseCertificatePEM(certPEM)
	must(t, err)
	if !bytes.Equal(c.AuthorityKeyId, r.nu.Cert.SubjectKeyId) {
		t.Errorf("AKID %x, want %x", c.AuthorityKeyId, r.nu.Cert.SubjectKeyId)
	}
}

// reissued is ca re-issued with its key kept and a later expiry.
func reissued(t *testing.T, a *pki.Authority, validity time.Duration) *x509.Certificate {
	t.Helper()
	tmpl, err := pki.Template(a.Cert, validity, time.Now())
	must(t, err)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, a.Key.Public(), a.Key)
	must(t, err)
	c, err := x509.ParseCertificate(der)
	must(t, err)
	return c
}

func TestMergeCABundles(t *testing.T) {
	r := rollCA(t, pkitest.ECDSA)
	both := append(append([]byte{}, r.oldPEM...), r.newPEM...)
	got, err := pki.MergeCABundles(r.oldPEM, r.newPEM)
	must(t, err)
	if !bytes.Equal(got, both) {
		t.Errorf("merge(old, new) is not old then new:\n%s", got)
	}
	for name, args := range map[string][][]byte{
		"again":           {got, r.newPEM},
		"twice each":      {r.oldPEM, r.newPEM, r.oldPEM, r.newPEM},
		"in one bundle":   {both, both},
		"with text lines": {append([]byte("subject=CN = kubernetes\n"), r.oldPEM...), r.newPEM},
	} {
		again, err := pki.MergeCABundles(args...)
		must(t, err)
		if !bytes.Equal(again, both) {
			t.Errorf("%s: changed the bundle:\n%s", name, again)
		}
	}
	rev, err := pki.MergeCABundles(r.newPEM, r.oldPEM)
	must(t, err)
	if want := append(append([]byte{}, r.newPEM...), r.oldPEM...); !bytes.Equal(rev, want) {
		t.Error("merge(new, old) is not new then old")
	}

	// A re-issued copy of the old CA (same key) is the same CA: the one that
	// expires last takes the first copy's place.
	later := reissued(t, r.old, 2*tenYears)
	if !pki.SameCA(later, r.old.Cert) || pki.SameCA(r.nu.Cert, r.old.Cert) {
		t.Error("SameCA: a re-issued CA is the same CA, its successor is not")
	}
	got, err = pki.MergeCABundles(both, pki.EncodeCertPEM(later))
	must(t, err)
	if want := append(pki.EncodeCertPEM(later), r.newPEM...); !bytes.Equal(got, want) {
		t.Error("the later copy of the old CA did not replace the earlier one in place")
	}
	got, err = pki.MergeCABundles(pki.EncodeCertPEM(later), r.oldPEM)
	must(t, err)
	if !bytes.Equal(got, pki.EncodeCertPEM(later)) {
		t.Error("an earlier-expiring copy replaced the later one")
	}

	leafPEM := pki.EncodeCertPEM(r.newLeaf)
	keyPEM, err := pki.EncodeKeyPEM(r.nu.Key)
	must(t, err)
	for name, bad := range map[string][]byte{
		"leaf":    leafPEM,
		"key":     append(append([]byte{}, r.newPEM...), keyPEM...),
		"empty":   nil,
		"garbage": []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
	} {
		if out, err := pki.MergeCABundles(r.oldPEM, bad); err == nil {
			t.Errorf("%s: merged into\n%s", name, out)
		}
	}
}

func TestRemoveFromCABundle(t *testing.T) {
	r := rollCA(t, pkitest.RSA)
	both, err := pki.MergeCABundles(r.oldPEM, r.newPEM)
	must(t, err)
	got, err := pki.RemoveFromCABundle(both, r.old.Cert)
	must(t, err)
	if !bytes.Equal(got, r.newPEM) {
		t.Errorf("removing old from {old,new} left\n%s", got)
	}
	// Every copy goes, a re-issued one too.
	withCopy := append(append(append([]byte{}, both...), pki.EncodeCertPEM(reissued(t, r.old, tenYears))...), r.newPEM...)
	got, err = pki.RemoveFromCABundle(withCopy, r.old.Cert)
	must(t, err)
	if certs := bytes.Count(got, []byte("BEGIN CERTIFICATE")); certs != 2 || !bytes.HasPrefix(got, r.newPEM) {
		t.Errorf("removing old left %d certificates:\n%s", certs, got)
	}
	// Absent: the very bytes come back (text lines kept).
	in := append([]byte("# new CA\n"), r.newPEM...)
	got, err = pki.RemoveFromCABundle(in, r.old.Cert)
	must(t, err)
	if !bytes.Equal(got, in) {
		t.Error("removing an absent CA changed the bundle")
	}
	if _, err := pki.RemoveFromCABundle(r.newPEM, r.nu.Cert); err == nil {
		t.Error("removing the only CA was allowed")
	}
	if _, err := pki.RemoveFromCABundle([]byte("nothing"), r.nu.Cert); err == nil {
		t.Error("a bundle without certificates was accepted")
	}
}

func TestCheckCABundle(t *testing.T) {
	r := rollCA(t, pkitest.ECDSA)
	both, err := pki.MergeCABundles(r.oldPEM, r.newPEM)
	must(t, err)
	must(t, pki.CheckCABundle(both))
	keyPEM, err := pki.EncodeKeyPEM(r.nu.Key)
	must(t, err)
	noSign := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "no-sign"}, NotBefore: r.now, NotAfter: r.now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, noSign, noSign, r.nu.Key.Public(), r.nu.Key)
	must(t, err)
	for name, c := range map[string]struct {
		bundle []byte
		want   string
	}{
		"leaf":          {append(append([]byte{}, both...), pki.EncodeCertPEM(r.newLeaf)...), `certificate 3 of the bundle (subject "CN=kube-apiserver") is not a CA`},
		"private key":   {append(append([]byte{}, both...), keyPEM...), "only certificates"},
		"no certSign":   {pki.EncodeCertPEM(mustParse(t, der)), "may not sign"},
		"empty":         {[]byte("\n"), "does not contain any valid"},
		"broken base64": {[]byte("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"), "does not contain any valid"},
		"broken DER":    {[]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), "malformed certificate"},
	} {
		if err := pki.CheckCABundle(c.bundle); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, c.want)
		}
	}
}

func mustParse(t *testing.T, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	must(t, err)
	return c
}
