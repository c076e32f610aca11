package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"slices"
)

// ErrCSRRefused is wrapped by every refusal of a node's certificate request.
var ErrCSRRefused = errors.New("certificate request refused")

// MaxCSRSize bounds a request's PEM; a kubelet's is well under 2 KiB.
const MaxCSRSize = 16 << 10

var (
	oidCommonName   = asn1.ObjectIdentifier{2, 5, 4, 3}
	oidOrganization = asn1.ObjectIdentifier{2, 5, 4, 10}
	oidSubjectAlt   = asn1.ObjectIdentifier{2, 5, 29, 17}
)

// NodeNames are the names a node may have on its serving certificate (the
// addresses its Node object reports).
type NodeNames struct {
	DNS []string
	IPs []net.IP
}

// CheckKubeletCSR decides whether a request a node sent may be signed as
// its kubelet's certificate. The node is not trusted: root on it controls
// what it sends. Only a request for that very node passes: exactly one PEM
// CERTIFICATE REQUEST signed by its key, CN system:node:<node>, O exactly
// system:nodes and no other subject attribute, no e-mail or URI, no
// extension but the names; a client certificate has no names, a serving
// one at least one and only names allowed lists; the key is RSA
// 2048/3072/4096 or ECDSA P-256/P-384. It returns the parsed request and
// whether its key is RSA (which adds key encipherment to the usages).
func CheckKubeletCSR(csrPEM []byte, node string, serving bool, allowed NodeNames) (*x509.CertificateRequest, bool, error) {
	refuse := func(format string, args ...any) (*x509.CertificateRequest, bool, error) {
		return nil, false, fmt.Errorf("%w: %s", ErrCSRRefused, fmt.Sprintf(format, args...))
	}
	req, err := parseCSR(csrPEM)
	if err != nil {
		return refuse("%v", err)
	}
	want := "system:node:" + node
	if req.Subject.CommonName != want {
		return refuse("subject CN %q, want %q", req.Subject.CommonName, want)
	}
	if !slices.Equal(req.Subject.Organization, []string{"system:nodes"}) {
		return refuse("subject O %q, want exactly [system:nodes]", req.Subject.Organization)
	}
	for _, n := range req.Subject.Names {
		if !n.Type.Equal(oidCommonName) && !n.Type.Equal(oidOrganization) {
			return refuse("subject attribute %v is not allowed", n.Type)
		}
	}
	if len(req.Subject.Names) != 2 {
		return refuse("subject must hold one CN and one O")
	}
	if len(req.EmailAddresses) > 0 || len(req.URIs) > 0 {
		return refuse("e-mail addresses or URIs are not allowed")
	}
	for _, e := range req.Extensions {
		if !e.Id.Equal(oidSubjectAlt) {
			return refuse("extension %v is not allowed", e.Id)
		}
	}
	if err := checkCSRNames(node, serving, allowed, req); err != nil {
		return refuse("%v", err)
	}
	rsaKey, err := checkCSRKey(req)
	if err != nil {
		return refuse("%v", err)
	}
	return req, rsaKey, nil
}

func checkCSRNames(node string, serving bool, allowed NodeNames, req *x509.CertificateRequest) error {
	if !serving {
		if len(req.DNSNames) > 0 || len(req.IPAddresses) > 0 {
			return fmt.Errorf("a client certificate names %v %v", req.DNSNames, req.IPAddresses)
		}
		return nil
	}
	if len(req.DNSNames)+len(req.IPAddresses) == 0 {
		return errors.New("a serving certificate without names")
	}
	for _, d := range req.DNSNames {
		if !slices.Contains(allowed.DNS, d) {
			return fmt.Errorf("DNS name %q is not an address of node %s (it has %v)", d, node, allowed.DNS)
		}
	}
	for _, ip := range req.IPAddresses {
		if !slices.ContainsFunc(allowed.IPs, ip.Equal) {
			return fmt.Errorf("IP address %s is not an address of node %s (it has %v)", ip, node, allowed.IPs)
		}
	}
	return nil
}

func checkCSRKey(req *x509.CertificateRequest) (rsaKey bool, err error) {
	switch k := req.PublicKey.(type) {
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n != 2048 && n != 3072 && n != 4096 {
			return false, fmt.Errorf("RSA key of %d bits (allowed: 2048, 3072, 4096)", n)
		}
		return true, nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return false, fmt.Errorf("ECDSA key on curve %s (allowed: P-256, P-384)", k.Curve.Params().Name)
		}
		return false, nil
	}
	return false, fmt.Errorf("key type %T is not allowed", req.PublicKey)
}

// CheckClientCSR parses a request for a user's client certificate (a
// kubeconfig's new version during a CA rotation): exactly one PEM
// CERTIFICATE REQUEST of at most MaxCSRSize bytes, signed by its own key
// (an allowed algorithm and size), with a subject and no names or
// extensions: the certificate says who the user is, nothing else.
func CheckClientCSR(csrPEM []byte) (*x509.CertificateRequest, error) {
	refuse := func(format string, args ...any) (*x509.CertificateRequest, error) {
		return nil, fmt.Errorf("%w: %s", ErrCSRRefused, fmt.Sprintf(format, args...))
	}
	req, err := parseCSR(csrPEM)
	if err != nil {
		return refuse("%v", err)
	}
	if req.Subject.CommonName == "" {
		return refuse("no subject common name (the user name)")
	}
	if len(req.DNSNames)+len(req.IPAddresses)+len(req.EmailAddresses)+len(req.URIs) > 0 || len(req.Extensions) > 0 {
		return refuse("names or extensions requested: a client certificate carries a subject only")
	}
	if _, err := checkCSRKey(req); err != nil {
		return refuse("%v", err)
	}
	return req, nil
}

// parseCSR parses exactly one PEM CERTIFICATE REQUEST of at most
// MaxCSRSize bytes, signed by its own key.
func parseCSR(csrPEM []byte) (*x509.CertificateRequest, error) {
	if len(csrPEM) > MaxCSRSize {
		return nil, fmt.Errorf("request of %d bytes", len(csrPEM))
	}
	block, rest := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" || len(bytes.TrimSpace(rest)) > 0 || len(block.Headers) > 0 {
		return nil, errors.New("not exactly one PEM CERTIFICATE REQUEST")
	}
	req, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, err
	}
	if err := req.CheckSignature(); err != nil {
		return nil, fmt.Errorf("not signed by its own key: %w", err)
	}
	return req, nil
}
