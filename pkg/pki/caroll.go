package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	certutil "k8s.io/client-go/util/cert"
)

// CA rotation (issue 12) replaces a CA by a successor with the same subject
// and a new key. Old and new are both trusted for a while, through bundles
// that carry both certificates. Because the two share their subject, a
// verifier can tell them apart only by key: it takes every bundled CA whose
// subject matches the leaf's issuer as a candidate and uses the leaf's
// Authority Key Identifier (AKID) to pick the one whose Subject Key
// Identifier (SKID) matches. Go's verifier orders candidates that way and
// then tries each signature, so it finds the right CA in any case. OpenSSL
// (X509_check_issued) skips a candidate whose SKID differs from the leaf's
// AKID and otherwise takes the first one, in file order, that is valid now
// and does not look further: with OpenSSL 3.0 and a {old,new} CAfile, a
// leaf of the new CA without an AKID fails ("certificate signature
// failure"), with one it verifies, in either order. A successor CA
// therefore always has an SKID (NewCALike), and every leaf signed with it
// (Authority.Sign, and so Renew, Issue and SignRequest) carries the AKID
// Go's x509.CreateCertificate copies from the CA's SKID. Leaves of an old
// CA that has no SKID (made before Go 1.15) have no AKID: they verify only
// while their CA comes first, one more reason for the order below.

// CAKeyAlgorithms are the key algorithms a new CA may be given
// (--key-algorithm), spelled as kubeadm's ClusterConfiguration
// encryptionAlgorithm spells them.
var CAKeyAlgorithms = []string{"RSA-2048", "RSA-3072", "RSA-4096", "ECDSA-P256", "ECDSA-P384"}

// NewKey generates a key of a named algorithm: one of CAKeyAlgorithms, in
// kubeadm's spelling ("ECDSA-P384") or KeyAlgorithm's ("ECDSA-P-384").
func NewKey(algorithm string) (crypto.Signer, error) {
	switch normalKeyAlgorithm(algorithm) {
	case "RSA-2048":
		return rsa.GenerateKey(rand.Reader, 2048)
	case "RSA-3072":
		return rsa.GenerateKey(rand.Reader, 3072)
	case "RSA-4096":
		return rsa.GenerateKey(rand.Reader, 4096)
	case "ECDSA-P256":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ECDSA-P384":
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	}
	return nil, fmt.Errorf("unknown key algorithm %q: valid ones are %s", algorithm, strings.Join(CAKeyAlgorithms, ", "))
}

// NewCALike generates the successor of a CA: the same subject (kubeadm's
// CN kubernetes, etcd-ca or front-proxy-ca, byte for byte, so that leaves
// of either name the same issuer) and names, a new key, serial and subject
// key identifier, kubeadm's CA key usages (certificate signing, digital
// signature, key encipherment), NotBefore backdated by ClockSkew as kubeadm
// backdates its CAs, and NotAfter validity after now. The key has the
// algorithm and size of the current CA's unless algorithm names one of
// CAKeyAlgorithms; a current key that is not one of those (RSA-1024, say)
// is not copied and needs an explicit algorithm.
//
// It takes the current CA's Authority rather than its certificate alone:
// only a CA whose key is on disk is ours to rotate (LoadAuthority returns
// ErrExternalCA for the others).
func NewCALike(current *Authority, algorithm string, validity time.Duration, now time.Time) (*Authority, *Issued, error) {
	if current == nil || current.Cert == nil || current.Key == nil {
		return nil, nil, errors.New("no current CA to rotate")
	}
	name := current.CA.Name
	if !current.Cert.IsCA {
		return nil, nil, fmt.Errorf("CA %s: the current certificate is not a CA", name)
	}
	if validity <= 0 {
		return nil, nil, fmt.Errorf("CA %s: validity %s is not positive", name, validity)
	}
	if algorithm == "" {
		algorithm = KeyAlgorithm(current.Cert.PublicKey)
		if !isCAKeyAlgorithm(algorithm) {
			return nil, nil, fmt.Errorf("CA %s has a %s key, which a new CA does not copy: choose one of %s", name, algorithm, strings.Join(CAKeyAlgorithms, ", "))
		}
	}
	key, err := NewKey(algorithm)
	if err != nil {
		return nil, nil, fmt.Errorf("CA %s: %w", name, err)
	}
	tmpl, err := Template(current.Cert, validity, now)
	if err != nil {
		return nil, nil, err
	}
	tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
	tmpl.MaxPathLen, tmpl.MaxPathLenZero = current.Cert.MaxPathLen, current.Cert.MaxPathLenZero
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	// SubjectKeyId stays empty: CreateCertificate derives it from the new
	// public key for a CA, so it differs from the old CA's.
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("CA %s: %w", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	if len(cert.SubjectKeyId) == 0 || bytes.Equal(cert.SubjectKeyId, current.Cert.SubjectKeyId) {
		return nil, nil, fmt.Errorf("CA %s: the new CA has no subject key identifier of its own", name)
	}
	keyPEM, err := EncodeKeyPEM(key)
	if err != nil {
		return nil, nil, err
	}
	return &Authority{CA: current.CA, Cert: cert, Key: key}, &Issued{Cert: cert, CertPEM: EncodeCertPEM(cert), KeyPEM: keyPEM}, nil
}

func isCAKeyAlgorithm(name string) bool {
	for _, a := range CAKeyAlgorithms {
		if normalKeyAlgorithm(name) == a {
			return true
		}
	}
	return false
}

// normalKeyAlgorithm spells an algorithm name as CAKeyAlgorithms does.
func normalKeyAlgorithm(name string) string {
	return strings.ReplaceAll(strings.ToUpper(strings.TrimSpace(name)), "P-", "P")
}

// Bundles. A trust bundle (ca.crt, a kubeconfig's certificate-authority-data,
// kube-root-ca.crt) is concatenated PEM certificates. Two entries are the
// same CA when they have the same subject and public key: a CA re-issued
// with its key kept is a duplicate, not a second CA.
//
// Order. MergeCABundles keeps the order its arguments give, and the caller
// puts first the CA whose key is in the matching .key file: kubeadm (certs
// renew, upgrade, join) and this package's ParseCertificatePEM read the
// first certificate of ca.crt as the CA that ca.key belongs to. While the
// old CA still signs, that is old first and the new CA last (so leaves
// without an AKID, all of them the old CA's, keep verifying with OpenSSL);
// once the new one signs, new first. Go's verifier does not depend on the
// order, OpenSSL does only for leaves without an AKID (see above), and
// every leaf this package signs with a new CA has one.

// parseTrustBundle is ParseCABundle for a bundle this package writes: any
// PEM block that is not a certificate, a private key above all, is an error
// (certutil would skip it), because a trust bundle is published and must
// never carry a key.
func parseTrustBundle(data []byte) ([]*x509.Certificate, error) {
	for rest := data; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		if block.Type != certutil.CertificateBlockType {
			return nil, fmt.Errorf("bundle holds a %q PEM block: only certificates belong in a trust bundle", block.Type)
		}
	}
	return ParseCABundle(data)
}

// SameCA reports whether two certificates are the same CA: same subject and
// same public key.
func SameCA(a, b *x509.Certificate) bool {
	return bytes.Equal(a.RawSubject, b.RawSubject) && publicKeysEqual(a.PublicKey, b.PublicKey)
}

// MergeCABundles concatenates bundles in the order given, dropping every
// later copy of a CA already present; of the copies of one CA, the one that
// expires last is kept, at the place of the first copy (a CA re-issued with
// its key kept must not be shadowed by its expired predecessor). Every
// certificate must be a CA (CheckCABundle).
func MergeCABundles(bundles ...[]byte) ([]byte, error) {
	var merged []*x509.Certificate
	for i, b := range bundles {
		if err := CheckCABundle(b); err != nil {
			return nil, fmt.Errorf("bundle %d: %w", i+1, err)
		}
		certs, _ := parseTrustBundle(b)
	next:
		for _, c := range certs {
			for j, m := range merged {
				if SameCA(m, c) {
					if c.NotAfter.After(m.NotAfter) {
						merged[j] = c
					}
					continue next
				}
			}
			merged = append(merged, c)
		}
	}
	return encodeTrustBundle(merged), nil
}

// RemoveFromCABundle removes every copy of ca (same subject and public key)
// from a bundle. A bundle without it is returned unchanged, byte for byte.
// Removing the last CA is an error: an empty trust bundle trusts nothing.
func RemoveFromCABundle(bundle []byte, ca *x509.Certificate) ([]byte, error) {
	certs, err := parseTrustBundle(bundle)
	if err != nil {
		return nil, err
	}
	kept := certs[:0:0]
	for _, c := range certs {
		if !SameCA(c, ca) {
			kept = append(kept, c)
		}
	}
	if len(kept) == len(certs) {
		return bundle, nil
	}
	if len(kept) == 0 {
		return nil, fmt.Errorf("removing CA %q would leave the bundle empty", ca.Subject.CommonName)
	}
	return encodeTrustBundle(kept), nil
}

// CheckCABundle checks that a bundle holds at least one certificate, only
// certificates, and that each is a CA: basic constraints CA:TRUE and, where
// key usages are given, certificate signing.
func CheckCABundle(bundle []byte) error {
	certs, err := parseTrustBundle(bundle)
	if err != nil {
		return err
	}
	for i, c := range certs {
		if c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageCertSign == 0 {
			return fmt.Errorf("bundle certificate %d (%q) may not sign certificates (no certSign key usage)", i+1, c.Subject.CommonName)
		}
	}
	return nil
}

func encodeTrustBundle(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, EncodeCertPEM(c)...)
	}
	return out
}
