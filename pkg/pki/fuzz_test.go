package pki_test

import (
	"testing"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// Files on a node are untrusted input: a node may be compromised. The
// parsers must never panic, whatever the bytes.

func FuzzCertificateIn(f *testing.F) {
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("apiVersion: v1\nkind: Config\ncurrent-context: a\ncontexts: [{name: a, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {client-certificate-data: AAAA, client-key-data: AAAA}}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := pki.CertificateIn(data)
		if err == nil && c == nil {
			t.Error("no certificate and no error")
		}
	})
}

func FuzzParsePrivateKeyPEM(f *testing.F) {
	f.Add([]byte("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIA==\n-----END EC PRIVATE KEY-----\n"))
	f.Add([]byte("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := pki.ParsePrivateKeyPEM(data)
		if err == nil && k == nil {
			t.Error("no key and no error")
		}
	})
}
