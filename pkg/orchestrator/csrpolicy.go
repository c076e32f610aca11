package orchestrator

import (
	"encoding/pem"
	"fmt"
	"net"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// ErrCSRRefused is wrapped by every refusal of a node's certificate request.
var ErrCSRRefused = pki.ErrCSRRefused

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

// maxCSRSize bounds a request's PEM.
const maxCSRSize = pki.MaxCSRSize

// checkedCSR is a node's request that passed checkCSR, with what the plugin
// decided for it.
type checkedCSR struct {
	name   string
	signer string
	usages []certificatesv1.KeyUsage
	pem    []byte // re-encoded from the parsed request: one block, nothing else
}

// checkCSR decides whether the plugin, acting as cluster-admin, may approve
// what a node's agent asked for (pki.CheckKubeletCSR; a serving
// certificate may only name what the Node object reports), and picks the
// signer and usages itself.
func checkCSR(node *corev1.Node, c api.CSR) (*checkedCSR, error) {
	kind, ok := csrKinds[c.Name]
	if !ok {
		return nil, fmt.Errorf("node %s: %w: unknown certificate %q (only kubelet-client and kubelet-serving are signed through the cluster)", node.Name, ErrCSRRefused, c.Name)
	}
	req, rsaKey, err := pki.CheckKubeletCSR([]byte(c.Request), node.Name, kind.serving, nodeNames(node))
	if err != nil {
		return nil, fmt.Errorf("node %s: %s: %w", node.Name, c.Name, err)
	}
	usages := []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, kind.usage}
	if rsaKey || c.KeyEncipherment {
		usages = append(usages, certificatesv1.UsageKeyEncipherment)
	}
	return &checkedCSR{
		name:   c.Name,
		signer: kind.signer,
		usages: usages,
		pem:    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: req.Raw}),
	}, nil
}

// nodeNames are the addresses a Node object reports.
func nodeNames(node *corev1.Node) pki.NodeNames {
	var n pki.NodeNames
	for _, a := range node.Status.Addresses {
		switch a.Type {
		case corev1.NodeHostName, corev1.NodeInternalDNS, corev1.NodeExternalDNS:
			n.DNS = append(n.DNS, a.Address)
		case corev1.NodeInternalIP, corev1.NodeExternalIP:
			if ip := net.ParseIP(a.Address); ip != nil {
				n.IPs = append(n.IPs, ip)
			}
		}
	}
	return n
}
