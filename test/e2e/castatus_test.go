//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"slices"
	"strings"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/report"
)

// checkCAStatus runs ca status -o json and judges it by the nodes' own CA
// files, read through the node containers: on every node, each trust point
// trusts exactly the CA of its kubeadm CA file there, and every certificate
// is signed by one of the node's three CAs (the kubelet's serving
// certificate by itself). The table's summary must say the same.
func (e *env) checkCAStatus() {
	e.t.Helper()
	out := e.mustPlugin("ca", "status", "-o", "json")
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	var rep report.CAStatusReport
	if err := dec.Decode(&rep); err != nil {
		e.t.Fatalf("ca status -o json: %v\n%s", err, out)
	}
	if rep.Kind != report.KindCAStatus || !rep.Consistent || len(rep.Errors) > 0 {
		e.t.Errorf("ca status: kind %s consistent %v findings %q errors %v", rep.Kind, rep.Consistent, rep.Findings, rep.Errors)
	}
	for _, n := range e.nodes() {
		ids := map[string]string{} // kubeadm CA name -> id of the node's file
		for _, ca := range pki.CAs {
			data, err := e.cluster.Exec(context.Background(), n, nil, "cat", "/"+ca.CertFile)
			if err != nil {
				if ca == pki.ClusterCA || slices.Contains(e.cps, n) {
					e.t.Fatalf("node %s: cat /%s: %v", n, ca.CertFile, err)
				}
				continue
			}
			cert, err := pki.ParseCertificatePEM(data)
			if err != nil {
				e.t.Fatalf("node %s: /%s: %v", n, ca.CertFile, err)
			}
			ids[ca.Name] = pki.CAID(cert)
		}
		points := 0
		for _, tp := range append(append([]report.TrustPoint{}, rep.TrustPoints...), rep.Signers...) {
			if tp.Node != n {
				continue
			}
			points++
			if want := ids[tp.CA]; tp.Error != "" || len(tp.CAs) != 1 || tp.CAs[0] != want {
				e.t.Errorf("node %s: %s %s (%s) trusts %v (%s); the node's %s file is %s", n, tp.Reader, tp.Setting, tp.Path, tp.CAs, tp.Error, tp.CA, want)
			}
		}
		// A worker: ca.crt, kubelet.conf, clientCAFile; a control plane
		// has the static pods' and the other kubeconfigs' too.
		if points < 3 || (slices.Contains(e.cps, n) && points < 15) {
			e.t.Errorf("node %s: only %d trust points reported", n, points)
		}
		certs := 0
		for _, c := range rep.Certificates {
			if c.Node != n || c.Missing {
				continue
			}
			certs++
			signed := slices.Contains([]string{ids["ca"], ids["etcd-ca"], ids["front-proxy-ca"]}, c.Issuer) ||
				(c.Name == "kubelet-serving" && c.Issuer == "self-signed")
			if !signed || c.Issuer == "" {
				e.t.Errorf("node %s: %s is signed by %q, not by one of the node's CAs %v", n, c.Name, c.Issuer, ids)
			}
		}
		if certs == 0 {
			e.t.Errorf("node %s: no certificate reported", n)
		}
	}
	if out := e.mustPlugin("ca", "status"); !strings.Contains(out, "summary: consistent: ") {
		e.t.Errorf("ca status does not say the trust points agree:\n%s", out)
	}
}
