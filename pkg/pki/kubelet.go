package pki

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"net"
	"strings"
	"time"
)

// KubeletClientSubject is the identity the Node authorizer expects.
func KubeletClientSubject(node string) pkix.Name {
	return pkix.Name{CommonName: "system:node:" + node, Organization: []string{"system:nodes"}}
}

// NewCSR generates a new key on this node, of the same algorithm and size
// as keyLike (ECDSA P-256 when nil), and a PKCS#10 request for it naming
// subject, dns and ips. The key stays here; only the request travels.
func NewCSR(subject pkix.Name, keyLike crypto.PublicKey, dns []string, ips []net.IP) (keyPEM, csrPEM []byte, err error) {
	var key crypto.Signer
	if keyLike != nil {
		key, err = NewKeyLike(keyLike)
	} else {
		key, err = NewECDSAKey()
	}
	if err != nil {
		return nil, nil, err
	}
	req := &x509.CertificateRequest{Subject: subject, DNSNames: dns, IPAddresses: ips}
	der, err := x509.CreateCertificateRequest(rand.Reader, req, key)
	if err != nil {
		return nil, nil, fmt.Errorf("creating certificate request: %w", err)
	}
	if keyPEM, err = EncodeKeyPEM(key); err != nil {
		return nil, nil, err
	}
	return keyPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// CheckIssued verifies that certPEM (as returned by the CSR API) is for the
// key in keyPEM and is signed by ca, so a wrong or foreign certificate is
// never installed.
func CheckIssued(certPEM, keyPEM []byte, ca *x509.Certificate) (*x509.Certificate, error) {
	cert, err := ParseCertificatePEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("issued certificate: %w", err)
	}
	key, err := ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("pending key: %w", err)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, fmt.Errorf("issued certificate %s is not for the key generated on this node", cert.SerialNumber)
	}
	if ca != nil {
		if err := cert.CheckSignatureFrom(ca); err != nil {
			return nil, fmt.Errorf("issued certificate %s is not signed by the cluster CA: %w", cert.SerialNumber, err)
		}
	}
	return cert, nil
}

// KubeletBundle is the layout of kubelet-client-<ts>.pem: certificate
// followed by its key, as the kubelet's certificate manager writes it.
func KubeletBundle(certPEM, keyPEM []byte) []byte {
	return append(append([]byte{}, certPEM...), keyPEM...)
}

// KubeletRotatedName is the file name the kubelet's certificate store uses
// for a certificate issued at t (pem files named <prefix>-<timestamp>.pem).
func KubeletRotatedName(prefix string, t time.Time) string {
	return fmt.Sprintf("%s/%s-%s.pem", KubeletPKIDir, prefix, t.UTC().Format("2006-01-02-15-04-05"))
}

// NewSelfSignedServing renews the kubelet's self-signed serving certificate
// the way the kubelet makes it: a throwaway CA named after the host signs a
// leaf with the old leaf's subject and SANs; the file holds leaf then CA.
func NewSelfSignedServing(old *x509.Certificate, validity time.Duration, now time.Time) (certPEM, keyPEM []byte, leaf *x509.Certificate, err error) {
	caKey, err := NewKeyLike(old.PublicKey)
	if err != nil {
		return nil, nil, nil, err
	}
	// The kubelet names its own <host>@<unix time>, with issuer
	// <host>-ca@<unix time>; tools that recognise kubelet-made certificates
	// rely on it.
	host, _, _ := strings.Cut(old.Subject.CommonName, "@")
	caTmpl, err := Template(old, validity, now)
	if err != nil {
		return nil, nil, nil, err
	}
	caTmpl.RawSubject = nil
	caTmpl.Subject = pkix.Name{CommonName: fmt.Sprintf("%s-ca@%d", host, now.Unix())}
	caTmpl.DNSNames, caTmpl.IPAddresses, caTmpl.URIs, caTmpl.EmailAddresses = nil, nil, nil, nil
	caTmpl.IsCA, caTmpl.BasicConstraintsValid = true, true
	caTmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
	caTmpl.ExtKeyUsage = nil
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("kubelet serving CA: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, nil, nil, err
	}
	a := &Authority{CA: CA{Name: caCert.Subject.CommonName}, Cert: caCert, Key: caKey}
	key, err := NewKeyLike(old.PublicKey)
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl, err := Template(old, validity, now)
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl.IsCA = false
	tmpl.RawSubject = nil
	tmpl.Subject = pkix.Name{CommonName: fmt.Sprintf("%s@%d", host, now.Unix())}
	leaf, _, err = a.Sign(tmpl, key.Public())
	if err != nil {
		return nil, nil, nil, err
	}
	if keyPEM, err = EncodeKeyPEM(key); err != nil {
		return nil, nil, nil, err
	}
	return append(EncodeCertPEM(leaf), EncodeCertPEM(caCert)...), keyPEM, leaf, nil
}
