package orchestrator

import (
	"crypto/x509"
	"encoding/pem"
	"net"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// What a node sends back is untrusted input: the decoders and the CSR
// policy must never panic, and what they accept must hold their promises.

func FuzzDecodeResult(f *testing.F) {
	f.Add([]byte(`{"agentVersion":"v","node":"w-1","outcome":"done","renew":{"changes":[{"name":"a","path":"/p","oldSerial":"1","newSerial":"2"}]}}`))
	f.Add([]byte(`{"agentVersion":"v","node":"w-1","outcome":"restored","error":"x\u001b[2J"}`))
	f.Add([]byte(`{"node":"w-1","outcome":"done","csrs":[{"name":"kubelet-client","request":"-----BEGIN CERTIFICATE REQUEST-----"}]}`))
	f.Add([]byte(`{"node":"w-1","outcome":"done","inspect":{"certs":[{"node":"w-1","name":"apiserver","path":"/a","residualSeconds":0,"externallyManaged":false,"missing":false,"issuer":"0123456789abcdef"}],"cas":[],` +
		`"authorities":[{"id":"0123456789abcdef","commonName":"kubernetes","notAfter":"2035-01-01T00:00:00Z"}],` +
		`"trustPoints":[{"path":"/etc/kubernetes/pki/ca.crt","reader":"kubeadm","setting":"ca","cas":["0123456789abcdef"]}],"signers":[{"path":"/p","reader":"r","setting":"s","error":"x"}]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		res, err := decodeResult(data, "w-1")
		if err != nil {
			return
		}
		if res.Node != "w-1" {
			t.Errorf("accepted an answer for node %q", res.Node)
		}
		if strings.ContainsFunc(res.Error, func(r rune) bool { return unicode.IsControl(r) && r != '\n' && r != '\t' }) {
			t.Errorf("control characters kept: %q", res.Error)
		}
		if in := res.Inspect; in != nil {
			for _, tp := range append(append([]api.TrustPoint{}, in.TrustPoints...), in.Signers...) {
				for _, id := range tp.CAs {
					if !pki.ValidCAID(id) {
						t.Errorf("accepted CA id %q", id)
					}
				}
			}
			for _, a := range in.Authorities {
				if !pki.ValidCAID(a.ID) {
					t.Errorf("accepted CA id %q", a.ID)
				}
			}
		}
	})
}

func FuzzCheckCSR(f *testing.F) {
	good := x509.CertificateRequest{Subject: nodeSubject("w-1"), DNSNames: []string{"w-1"}, IPAddresses: []net.IP{net.ParseIP("192.0.2.11")}}
	f.Add("kubelet-serving", csrPEM(f, p256(f), &good))
	client := x509.CertificateRequest{Subject: nodeSubject("w-1")}
	f.Add("kubelet-client", csrPEM(f, p256(f), &client))
	f.Add("kubelet-client", "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n")
	node := testNode()
	f.Fuzz(func(t *testing.T, name, request string) {
		c, err := checkCSR(node, api.CSR{Name: name, Request: request})
		if err != nil {
			return
		}
		// Judge what was accepted independently of checkCSR.
		block, _ := pem.Decode(c.pem)
		req, perr := x509.ParseCertificateRequest(block.Bytes)
		if perr != nil {
			t.Fatalf("accepted an unparsable request: %v", perr)
		}
		if req.Subject.CommonName != "system:node:w-1" || !slices.Equal(req.Subject.Organization, []string{"system:nodes"}) ||
			len(req.URIs) > 0 || len(req.EmailAddresses) > 0 {
			t.Errorf("accepted %v %v %v", req.Subject, req.URIs, req.EmailAddresses)
		}
		for _, d := range req.DNSNames {
			if d != "w-1" && d != "w-1.internal" {
				t.Errorf("accepted DNS name %q", d)
			}
		}
		if name == "kubelet-client" && len(req.DNSNames)+len(req.IPAddresses) > 0 {
			t.Error("accepted names on a client certificate")
		}
	})
}
