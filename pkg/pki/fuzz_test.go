package pki_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki/pkitest"
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

// A hand-over comes through the plugin: untrusted input. The receiver's key
// is derived from a fixed seed so that the committed corpus (hand-overs
// sealed to it, testdata/fuzz/FuzzOpenHandover) opens and the fuzzer
// mutates real ones. Whatever the bytes, Open refuses or returns CAs whose
// keys belong to their certificates.
var fuzzReceiverSeed = bytes.Repeat([]byte("rotate-certs fuzz"), 2)

func FuzzOpenHandover(f *testing.F) {
	r, err := pki.NewHandoverReceiverFromSeed(fuzzReceiverSeed)
	if err != nil {
		f.Fatal(err)
	}
	p, err := pki.NewHandoverPayload(newCAs(f, pkitest.ECDSA)...)
	if err != nil {
		f.Fatal(err)
	}
	sealed, err := pki.SealHandover(r.PublicKey(), binding, p)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(sealed)
	f.Add(sealed[:len(sealed)/2])
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := pki.NewHandoverReceiverFromSeed(fuzzReceiverSeed) // one open per receiver
		if err != nil {
			t.Fatal(err)
		}
		p, err := r.Open(binding, data)
		if err != nil {
			if !errors.Is(err, pki.ErrHandoverRefused) {
				t.Errorf("refusal not wrapping ErrHandoverRefused: %v", err)
			}
			return
		}
		checkOpened(t, p)
	})
}

// FuzzDecodeHandoverPayload fuzzes what Open decodes once decrypted.
func FuzzDecodeHandoverPayload(f *testing.F) {
	p, err := pki.NewHandoverPayload(newCAs(f, pkitest.ECDSA)[:2]...)
	if err != nil {
		f.Fatal(err)
	}
	plain, err := json.Marshal(p)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(plain)
	f.Add([]byte(`{"version":1,"cas":[{"name":"ca","cert":"","key":""}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := pki.DecodeHandoverPayload(data)
		if err != nil {
			if !errors.Is(err, pki.ErrHandoverRefused) {
				t.Errorf("refusal not wrapping ErrHandoverRefused: %v", err)
			}
			return
		}
		checkOpened(t, p)
	})
}

func checkOpened(t *testing.T, p *pki.HandoverPayload) {
	t.Helper()
	as, err := p.Authorities()
	if err != nil {
		t.Fatalf("accepted a payload that does not check: %v", err)
	}
	for _, a := range as {
		if !a.Cert.IsCA || !pki.SamePublicKey(a.Cert.PublicKey, a.Key.Public()) {
			t.Fatalf("accepted CA %s whose key does not belong to it", a.CA.Name)
		}
	}
}

// A static pod manifest is a file on the node: untrusted input. Whatever
// the bytes, the split refuses or returns a manifest that splitting again
// leaves as it is.
func FuzzSplitControllerManagerSigner(f *testing.F) {
	for name := range kubeadmManifests {
		b, err := os.ReadFile(filepath.Join("testdata/kube-controller-manager", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("spec: {containers: [{name: kube-controller-manager, command: [--cluster-signing-cert-file=/p/ca.crt, --cluster-signing-key-file=/p/ca.key], volumeMounts: [{name: v, mountPath: /p}]}], volumes: [{name: v, hostPath: {path: /h}}]}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := pki.SplitControllerManagerSigner(data)
		if err != nil {
			return
		}
		if s.Changed == bytes.Equal(s.Manifest, data) {
			t.Fatalf("changed=%v but the manifest is %s", s.Changed, map[bool]string{true: "the same", false: "different"}[!s.Changed])
		}
		again, err := pki.SplitControllerManagerSigner(s.Manifest)
		if err != nil || again.Changed || !bytes.Equal(again.Manifest, s.Manifest) || again.CertFile != s.CertFile || again.KeyFile != s.KeyFile {
			t.Fatalf("splitting the split manifest again: %v %+v", err, again)
		}
	})
}
