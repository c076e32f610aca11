package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/keyutil"
)

// ClockSkew is subtracted from "now" for NotBefore, so nodes whose clocks lag
// a little accept a freshly issued certificate.
const ClockSkew = 5 * time.Minute

// ErrExternalCA is returned (wrapped) when a CA certificate is present but
// its key is not: the CA is managed outside the cluster and its leaves are
// not ours to renew.
var ErrExternalCA = errors.New("CA key not on disk (externally managed CA)")

// Authority is a loaded CA: certificate and signing key.
type Authority struct {
	CA   CA
	Cert *x509.Certificate
	Key  crypto.Signer
	// Replaces is the CA this one succeeds in a CA rotation: Renew
	// re-issues its leaves too (the switch of issuers).
	Replaces *x509.Certificate
}

// LoadAuthority reads a CA and checks that key and certificate match. The
// certificate file may be a bundle (old and new CA, while a CA rotation
// has both trusted): the CA is the certificate whose public key is the
// key's. A CA whose certificate exists without its key yields
// ErrExternalCA.
func LoadAuthority(root string, ca CA) (*Authority, error) {
	certPEM, err := ReadFile(root, ca.CertFile)
	if err != nil {
		return nil, fmt.Errorf("CA %s: %w", ca.Name, err)
	}
	certs, err := certutil.ParseCertsPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("CA %s: /%s: %w", ca.Name, ca.CertFile, err)
	}
	keyPEM, err := ReadFile(root, ca.KeyFile)
	if errors.Is(err, ErrMissing) {
		return nil, fmt.Errorf("CA %s: /%s: %w", ca.Name, ca.KeyFile, ErrExternalCA)
	}
	if err != nil {
		return nil, fmt.Errorf("CA %s: %w", ca.Name, err)
	}
	key, err := ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA %s: /%s: %w", ca.Name, ca.KeyFile, err)
	}
	// During a CA rotation the file is a bundle of the old and the new CA;
	// the signer is the one whose key is the key file.
	for _, cert := range certs {
		if !publicKeysEqual(cert.PublicKey, key.Public()) {
			continue
		}
		if !cert.IsCA {
			return nil, fmt.Errorf("CA %s: /%s is not a CA certificate", ca.Name, ca.CertFile)
		}
		return &Authority{CA: ca, Cert: cert, Key: key}, nil
	}
	return nil, fmt.Errorf("CA %s: /%s does not match /%s", ca.Name, ca.KeyFile, ca.CertFile)
}

// NewKeyLike generates a new private key of the same algorithm and size as
// pub: renewal keeps RSA-2048 as RSA-2048 and ECDSA-P256 as ECDSA-P256.
func NewKeyLike(pub crypto.PublicKey) (crypto.Signer, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return rsa.GenerateKey(rand.Reader, k.N.BitLen())
	case *ecdsa.PublicKey:
		return ecdsa.GenerateKey(k.Curve, rand.Reader)
	case ed25519.PublicKey:
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		return priv, err
	}
	return nil, fmt.Errorf("unsupported public key type %T", pub)
}

// NewECDSAKey is the default for keys with no predecessor.
func NewECDSAKey() (crypto.Signer, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

// Template returns a certificate template that keeps what identifies and
// limits old (subject, SANs, key usages, basic constraints) and gets a new
// serial and validity.
func Template(old *x509.Certificate, validity time.Duration, now time.Time) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generating serial: %w", err)
	}
	return &x509.Certificate{
		SerialNumber:          serial.Add(serial, big.NewInt(1)), // never zero
		RawSubject:            old.RawSubject,
		Subject:               old.Subject,
		DNSNames:              old.DNSNames,
		IPAddresses:           old.IPAddresses,
		URIs:                  old.URIs,
		EmailAddresses:        old.EmailAddresses,
		KeyUsage:              old.KeyUsage,
		ExtKeyUsage:           old.ExtKeyUsage,
		UnknownExtKeyUsage:    old.UnknownExtKeyUsage,
		BasicConstraintsValid: old.BasicConstraintsValid,
		IsCA:                  old.IsCA,
		NotBefore:             now.Add(-ClockSkew).UTC(),
		NotAfter:              now.Add(validity).UTC(),
	}, nil
}

// Issued is a renewed certificate and its new key, PEM encoded.
type Issued struct {
	Cert    *x509.Certificate
	CertPEM []byte
	KeyPEM  []byte
	// Capped is set when the requested validity reached past the CA's
	// expiry and NotAfter was limited to the CA's NotAfter.
	Capped bool
}

// Sign issues tmpl for pub with the authority, limiting NotAfter to the
// CA's own expiry.
func (a *Authority) Sign(tmpl *x509.Certificate, pub crypto.PublicKey) (*x509.Certificate, bool, error) {
	capped := false
	if tmpl.NotAfter.After(a.Cert.NotAfter) {
		tmpl.NotAfter = a.Cert.NotAfter
		capped = true
	}
	if !tmpl.NotAfter.After(tmpl.NotBefore) {
		return nil, false, fmt.Errorf("CA %s expires %s, before the new certificate would begin: it cannot sign", a.CA.Name, a.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.Cert, pub, a.Key)
	if err != nil {
		return nil, false, fmt.Errorf("signing with CA %s: %w", a.CA.Name, err)
	}
	cert, err := x509.ParseCertificate(der)
	return cert, capped, err
}

// Renew issues a successor of old: same subject, SANs, usages and key
// algorithm, a new key and serial, signed by a. old must be signed by a,
// or by the CA a replaces.
func (a *Authority) Renew(old *x509.Certificate, validity time.Duration, now time.Time) (*Issued, error) {
	if err := old.CheckSignatureFrom(a.Cert); err != nil && (a.Replaces == nil || old.CheckSignatureFrom(a.Replaces) != nil) {
		return nil, fmt.Errorf("certificate %q was not signed by CA %s (%v): refusing to re-sign it with a different CA", old.Subject.CommonName, a.CA.Name, err)
	}
	return a.Issue(old, old.PublicKey, validity, now)
}

// EncodeCertPEM encodes a certificate as PEM.
func EncodeCertPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: certutil.CertificateBlockType, Bytes: c.Raw})
}

// EncodeKeyPEM encodes a key the way kubeadm writes them (client-go's
// keyutil): PKCS#1 for RSA, SEC 1 for ECDSA; PKCS#8 for Ed25519, which
// keyutil does not know.
func EncodeKeyPEM(key crypto.Signer) ([]byte, error) {
	if _, ok := key.(ed25519.PrivateKey); ok {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
	}
	return keyutil.MarshalPrivateKeyToPEM(key)
}

// Renewal is the planned renewal of one inventory entry: the old and new
// certificate and the files that carry the new one.
type Renewal struct {
	Cert  Cert
	Old   *x509.Certificate
	New   *Issued
	Files []File
}

// PlanRenewal computes (in memory, writing nothing) the renewal of an entry
// signed on disk: a new key and certificate, and for kubeconfigs the file
// with the new embedded credentials and everything else unchanged.
func PlanRenewal(root string, c Cert, a *Authority, validity time.Duration, now time.Time) (*Renewal, error) {
	if c.Method != SignedOnDisk {
		return nil, fmt.Errorf("%s is not signed by a CA on disk", c.Name)
	}
	old, _, err := readKeyPair(root, c)
	if err != nil {
		return nil, err
	}
	issued, err := a.Renew(old, validity, now)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.Name, err)
	}
	r := &Renewal{Cert: c, Old: old, New: issued}
	if c.Kubeconfig != "" {
		cfg, user, err := readKubeconfigUser(root, c.Kubeconfig)
		if err != nil {
			return nil, err
		}
		user.ClientCertificateData = issued.CertPEM
		user.ClientKeyData = issued.KeyPEM
		data, err := clientcmd.Write(*cfg)
		if err != nil {
			return nil, fmt.Errorf("/%s: encoding kubeconfig: %w", c.Kubeconfig, err)
		}
		r.Files = []File{{Path: c.Kubeconfig, Data: data, Mode: 0o600}}
		return r, nil
	}
	r.Files = []File{
		{Path: c.CertFile, Data: issued.CertPEM, Mode: 0o644},
		{Path: c.KeyFile, Data: issued.KeyPEM, Mode: 0o600},
	}
	return r, nil
}

// created are kubeadm's leaf certificates that recover creates when the
// static pods reference them but they are missing (clusters made by older
// tools lack the front-proxy client; some lost etcd's healthcheck client):
// kubeadm's subject and usages, signed by their CA.
var created = map[string]string{
	"front-proxy-client":      "front-proxy-client",
	"etcd-healthcheck-client": "kube-etcd-healthcheck-client",
}

// Creatable tells whether a missing inventory entry can be created anew.
func Creatable(c Cert) bool {
	_, ok := created[c.Name]
	return ok && c.Method == SignedOnDisk && c.Kubeconfig == ""
}

// PlanCreation computes (in memory) a new certificate and key for a
// missing entry that Creatable allows, with a key like keyLike.
func PlanCreation(c Cert, a *Authority, keyLike crypto.PublicKey, validity time.Duration, now time.Time) (*Renewal, error) {
	cn, ok := created[c.Name]
	if !ok {
		return nil, fmt.Errorf("%s is not created anew: restore it or re-create it with kubeadm", c.Name)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	issued, err := a.Issue(tmpl, keyLike, validity, now)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.Name, err)
	}
	return &Renewal{Cert: c, New: issued, Files: []File{
		{Path: c.CertFile, Data: issued.CertPEM, Mode: 0o644},
		{Path: c.KeyFile, Data: issued.KeyPEM, Mode: 0o600},
	}}, nil
}

// Issue signs tmpl (subject, names, usages) for a new key like keyLike,
// with a new serial and the given validity.
func (a *Authority) Issue(tmpl *x509.Certificate, keyLike crypto.PublicKey, validity time.Duration, now time.Time) (*Issued, error) {
	key, err := NewKeyLike(keyLike)
	if err != nil {
		return nil, err
	}
	t, err := Template(tmpl, validity, now)
	if err != nil {
		return nil, err
	}
	cert, capped, err := a.Sign(t, key.Public())
	if err != nil {
		return nil, err
	}
	keyPEM, err := EncodeKeyPEM(key)
	if err != nil {
		return nil, err
	}
	return &Issued{Cert: cert, CertPEM: EncodeCertPEM(cert), KeyPEM: keyPEM, Capped: capped}, nil
}

// NewCA makes a new self-signed CA (for a front-proxy CA that is missing
// altogether), with a key like keyLike.
func NewCA(ca CA, cn string, keyLike crypto.PublicKey, validity time.Duration, now time.Time) (*Authority, []File, error) {
	key, err := NewKeyLike(keyLike)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial.Add(serial, big.NewInt(1)), Subject: pkix.Name{CommonName: cn},
		NotBefore: now.Add(-ClockSkew).UTC(), NotAfter: now.Add(validity).UTC(),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("CA %s: %w", ca.Name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := EncodeKeyPEM(key)
	if err != nil {
		return nil, nil, err
	}
	files := []File{{Path: ca.CertFile, Data: EncodeCertPEM(cert), Mode: 0o644}, {Path: ca.KeyFile, Data: keyPEM, Mode: 0o600}}
	return &Authority{CA: ca, Cert: cert, Key: key}, files, nil
}

// KubeletClientTemplate is what the cluster's kubelet client signer issues
// for a node: system:node:<node> in system:nodes, client auth, digital
// signature, and key encipherment if asked (RSA keys; kubeadm gives it to
// any key).
func KubeletClientTemplate(node string, keyEncipherment bool) *x509.Certificate {
	t := &x509.Certificate{
		Subject:     KubeletClientSubject(node),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if keyEncipherment {
		t.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	return t
}

// SignRequest signs a checked certificate request with tmpl's usages and
// the request's subject and names.
func (a *Authority) SignRequest(req *x509.CertificateRequest, tmpl *x509.Certificate, validity time.Duration, now time.Time) ([]byte, error) {
	t, err := Template(&x509.Certificate{Subject: req.Subject, RawSubject: req.RawSubject, DNSNames: req.DNSNames, IPAddresses: req.IPAddresses,
		KeyUsage: tmpl.KeyUsage, ExtKeyUsage: tmpl.ExtKeyUsage}, validity, now)
	if err != nil {
		return nil, err
	}
	cert, _, err := a.Sign(t, req.PublicKey)
	if err != nil {
		return nil, err
	}
	return EncodeCertPEM(cert), nil
}
