package pki_test

import (
	"testing"
	"time"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki/pkitest"
)

// BenchmarkRenewControlPlane plans the renewal of every CA-signed
// certificate of a control plane (what the agent computes before writing),
// for both key algorithms kubeadm supports.
func BenchmarkRenewControlPlane(b *testing.B) {
	for _, alg := range []pkitest.Algorithm{pkitest.RSA, pkitest.ECDSA} {
		b.Run(string(alg), func(b *testing.B) {
			root := b.TempDir()
			pkitest.ControlPlane(b, root, "cp-1", alg)
			auth := map[string]*pki.Authority{}
			for _, ca := range pki.CAs {
				a, err := pki.LoadAuthority(root, ca)
				if err != nil {
					b.Fatal(err)
				}
				auth[ca.Name] = a
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				for _, c := range pki.Inventory {
					if c.Method != pki.SignedOnDisk {
						continue
					}
					if _, err := pki.PlanRenewal(root, c, auth[c.CA.Name], 8760*time.Hour, time.Now()); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
