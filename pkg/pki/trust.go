package pki

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"

	certutil "k8s.io/client-go/util/cert"
)

// CAIDLength is the length of a CA id: hex digits of a SHA-256.
const CAIDLength = 16

// CAID names a CA as certificate verification knows it: the first
// CAIDLength hex digits of the SHA-256 of its DER subject followed by its
// DER SubjectPublicKeyInfo.
//
// Verifiers (Go's crypto/x509, OpenSSL, etcd, the kubelet) choose a
// leaf's parent among the trusted certificates by matching the leaf's
// issuer name with their subject, then check the signature with their key:
// subject and key decide which leaves a CA vouches for, nothing else of its
// certificate does. So a CA re-issued with the same key and subject (a new
// expiry, a new serial) keeps its id: it is the same trust anchor. A new key
// makes a new CA even under the same name, and so does the same key under
// another name, since the leaves it signed name the old one as their issuer.
// Both DER encodings are self-delimiting, so their concatenation is
// unambiguous.
func CAID(c *x509.Certificate) string {
	h := sha256.New()
	h.Write(c.RawSubject)
	h.Write(c.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(h.Sum(nil))[:CAIDLength]
}

// ValidCAID tells whether s has the form of a CA id.
func ValidCAID(s string) bool {
	if len(s) != CAIDLength {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// ParseCABundle parses a PEM bundle of one or more CA certificates (what a
// --client-ca-file or a kubeconfig's certificate-authority-data holds).
// A certificate that is not a CA makes it an error: a trust point that
// holds a leaf is not what its reader is meant to trust. PEM blocks of
// other types are skipped, as client-go's certutil, which the components
// load these files with, skips them.
func ParseCABundle(data []byte) ([]*x509.Certificate, error) {
	certs, err := certutil.ParseCertsPEM(data)
	if err != nil {
		return nil, err
	}
	for i, c := range certs {
		if !c.BasicConstraintsValid || !c.IsCA {
			return nil, fmt.Errorf("certificate %d of the bundle (subject %q) is not a CA certificate", i+1, c.Subject.String())
		}
	}
	return certs, nil
}

// BundleIDs are the ids (CAID) of the CAs of a PEM bundle, in its order.
func BundleIDs(data []byte) ([]string, error) {
	certs, err := ParseCABundle(data)
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(certs))
	for _, c := range certs {
		ids = append(ids, CAID(c))
	}
	return ids, nil
}

// ReadCABundle reads a CA bundle file below root (see ReadFile).
func ReadCABundle(root, rel string) ([]*x509.Certificate, error) {
	data, err := ReadFile(root, rel)
	if err != nil {
		return nil, err
	}
	certs, err := ParseCABundle(data)
	if err != nil {
		return nil, fmt.Errorf("/%s: %w", rel, err)
	}
	return certs, nil
}

// ErrUnknownIssuer is returned when none of the CAs given signed a
// certificate.
var ErrUnknownIssuer = errors.New("signed by none of the CAs given")

// SignedBy returns which of cas signed cert, proven by its signature
// (CheckSignatureFrom), never by names: a CA with the leaf's issuer name
// but another key did not sign it.
func SignedBy(cert *x509.Certificate, cas []*x509.Certificate) (*x509.Certificate, error) {
	for _, ca := range cas {
		if cert.CheckSignatureFrom(ca) == nil {
			return ca, nil
		}
	}
	return nil, ErrUnknownIssuer
}
