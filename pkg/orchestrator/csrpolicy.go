package orchestrator

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

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
)

// ErrCSRRefused is wrapped by every refusal of a node's certificate request.
var ErrCSRRefused = errors.New("certificate request refused")

// csrKind is what the plugin itself decides for a certificate a node asks
// for: the node names the certificate, the plugin picks signer and usages.
type csrKind struct {
	signer  string
	usage   certificatesv1.KeyUsage
	serving bool
}

var csrKinds = map[string]csrKind{
	"kubelet-client":  {certificatesv1.KubeAPIServerClientKubeletSignerName, certificatesv1.UsageClientAuth, false},
	"kubelet-serving": {certificatesv1.KubeletServingSignerName, certificatesv1.UsageServerAuth, true},
}

// maxCSRSize bounds a request's PEM; a kubelet's is well under 2 KiB.
const maxCSRSize = 16 << 10

var (
	oidCommonName   = asn1.ObjectIdentifier{2, 5, 4, 3}
	oidOrganization = asn1.ObjectIdentifier{2, 5, 4, 10}
	oidSubjectAlt   = asn1.ObjectIdentifier{2, 5, 29, 17}
)

// checkedCSR is a node's request that passed checkCSR, with what the plugin
// decided for it.
type checkedCSR struct {
	name   string
	signer string
	usages []certificatesv1.KeyUsage
	pem    []byte // re-encoded from the parsed request: one block, nothing else
}

// checkCSR decides whether the plugin, acting as cluster-admin, may approve
// what a node's agent asked for. The agent is not trusted: root on a node
// controls it. Only a kubelet certificate for that very node passes: CN
// system:node:<node>, O exactly system:nodes, no other subject attribute,
// no e-mail or URI, no extension but the names; a client certificate has
// no names, a serving certificate only names the Node object reports; the
// key is RSA 2048/3072/4096 or ECDSA P-256/P-384 and the request is signed
// with it.
func checkCSR(node *corev1.Node, c api.CSR) (*checkedCSR, error) {
	refuse := func(format string, args ...any) (*checkedCSR, error) {
		return nil, fmt.Errorf("node %s: %w: %s", node.Name, ErrCSRRefused, fmt.Sprintf(format, args...))
	}
	kind, ok := csrKinds[c.Name]
	if !ok {
		return refuse("unknown certificate %q (only kubelet-client and kubelet-serving are signed through the cluster)", c.Name)
	}
	if len(c.Request) > maxCSRSize {
		return refuse("%s: request of %d bytes", c.Name, len(c.Request))
	}
	block, rest := pem.Decode([]byte(c.Request))
	if block == nil || block.Type != "CERTIFICATE REQUEST" || len(bytes.TrimSpace(rest)) > 0 || len(block.Headers) > 0 {
		return refuse("%s: not exactly one PEM CERTIFICATE REQUEST", c.Name)
	}
	req, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return refuse("%s: %v", c.Name, err)
	}
	if err := req.CheckSignature(); err != nil {
		return refuse("%s: not signed by its own key: %v", c.Name, err)
	}
	want := "system:node:" + node.Name
	if req.Subject.CommonName != want {
		return refuse("%s: subject CN %q, want %q", c.Name, req.Subject.CommonName, want)
	}
	if !slices.Equal(req.Subject.Organization, []string{"system:nodes"}) {
		return refuse("%s: subject O %q, want exactly [system:nodes]", c.Name, req.Subject.Organization)
	}
	for _, n := range req.Subject.Names {
		if !n.Type.Equal(oidCommonName) && !n.Type.Equal(oidOrganization) {
			return refuse("%s: subject attribute %v is not allowed", c.Name, n.Type)
		}
	}
	if len(req.Subject.Names) != 2 {
		return refuse("%s: subject must hold one CN and one O", c.Name)
	}
	if len(req.EmailAddresses) > 0 || len(req.URIs) > 0 {
		return refuse("%s: e-mail addresses or URIs are not allowed", c.Name)
	}
	for _, e := range req.Extensions {
		if !e.Id.Equal(oidSubjectAlt) {
			return refuse("%s: extension %v is not allowed", c.Name, e.Id)
		}
	}
	if err := checkCSRNames(node, kind, req); err != nil {
		return refuse("%s: %v", c.Name, err)
	}
	rsaKey, err := checkCSRKey(req)
	if err != nil {
		return refuse("%s: %v", c.Name, err)
	}
	usages := []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, kind.usage}
	if rsaKey {
		usages = append(usages, certificatesv1.UsageKeyEncipherment)
	}
	return &checkedCSR{
		name:   c.Name,
		signer: kind.signer,
		usages: usages,
		pem:    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: req.Raw}),
	}, nil
}

// checkCSRNames allows no names on a client certificate, and on a serving
// certificate at least one name, each one the Node object reports.
func checkCSRNames(node *corev1.Node, kind csrKind, req *x509.CertificateRequest) error {
	if !kind.serving {
		if len(req.DNSNames) > 0 || len(req.IPAddresses) > 0 {
			return fmt.Errorf("a client certificate names %v %v", req.DNSNames, req.IPAddresses)
		}
		return nil
	}
	if len(req.DNSNames)+len(req.IPAddresses) == 0 {
		return errors.New("a serving certificate without names")
	}
	var dns []string
	var ips []net.IP
	for _, a := range node.Status.Addresses {
		switch a.Type {
		case corev1.NodeHostName, corev1.NodeInternalDNS, corev1.NodeExternalDNS:
			dns = append(dns, a.Address)
		case corev1.NodeInternalIP, corev1.NodeExternalIP:
			if ip := net.ParseIP(a.Address); ip != nil {
				ips = append(ips, ip)
			}
		}
	}
	for _, d := range req.DNSNames {
		if !slices.Contains(dns, d) {
			return fmt.Errorf("DNS name %q is not an address of node %s (it has %v)", d, node.Name, dns)
		}
	}
	for _, ip := range req.IPAddresses {
		if !slices.ContainsFunc(ips, ip.Equal) {
			return fmt.Errorf("IP address %s is not an address of node %s (it has %v)", ip, node.Name, ips)
		}
	}
	return nil
}

// checkCSRKey allows the key types and sizes kubeadm and the kubelet make;
// it reports whether the key is RSA (which adds key encipherment).
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
