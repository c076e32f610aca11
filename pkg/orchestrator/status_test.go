package orchestrator

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	k8stesting "k8s.io/client-go/testing"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
)

// CAStatus asks every agent for its trust points, from read-only pods that
// also see the kubelet's config.yaml; Status's pods do not.
func TestCAStatusAsksForTrust(t *testing.T) {
	for _, trust := range []bool{false, true} {
		c := fakeCluster(t, []string{"cp-1"}, []string{"w-1"})
		f := newFakeAgents(t, c)
		r := newTestRunner(c, f)
		status := r.Status
		if trust {
			status = r.CAStatus
		}
		out, err := status(context.Background(), nil, "")
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range out {
			if n.Error != "" || (len(n.TrustPoints) == 1 && len(n.Authorities) == 1) != trust {
				t.Errorf("trust %v: node %s: %+v", trust, n.Node, n)
			}
		}
		pods := 0
		for _, a := range c.Actions() {
			create, ok := a.(k8stesting.CreateAction)
			if !ok || a.GetResource().Resource != "pods" {
				continue
			}
			pods++
			got := mounts(create.GetObject().(*corev1.Pod))
			if readOnly, ok := got["/host/var/lib/kubelet/config.yaml"]; ok != trust || (ok && !readOnly) {
				t.Errorf("trust %v: pod mounts %v", trust, got)
			}
		}
		if pods != 2 {
			t.Errorf("trust %v: %d agent pods created, want 2", trust, pods)
		}
		if n := remainingPods(t, c); n != 0 {
			t.Errorf("%d agent pods left", n)
		}
	}
}

// A consistent answer with trust points passes the checks that refuse
// made-up CA ids (run_test.go).
func TestDecodeResultAcceptsTrust(t *testing.T) {
	res, err := decodeResult([]byte(`{"node":"w-1","outcome":"done","inspect":{"certs":[{"node":"w-1","name":"kubelet-client","path":"/k","residualSeconds":0,"externallyManaged":false,"missing":false,"issuer":"3f1c0a9e5b7d2c48"},`+
		`{"node":"w-1","name":"kubelet-serving","path":"/s","residualSeconds":0,"externallyManaged":false,"missing":false,"issuer":"self-signed"}],"cas":[],`+
		`"trustPoints":[{"path":"/etc/kubernetes/kubelet.conf","reader":"kubelet","setting":"kubelet.conf certificate-authority-data","cas":["3f1c0a9e5b7d2c48","a0b1c2d3e4f56789"]}],`+
		`"authorities":[{"id":"3f1c0a9e5b7d2c48","commonName":"kubernetes","notAfter":"2035-11-27T00:00:00Z"},{"id":"a0b1c2d3e4f56789","commonName":"kubernetes-next","notAfter":"2036-11-27T00:00:00Z"}]}}`), "w-1")
	if err != nil || len(res.Inspect.TrustPoints[0].CAs) != 2 || res.Inspect.Certs[1].Issuer != "self-signed" {
		t.Fatalf("%v %+v", err, res)
	}
}

func TestTrustFindings(t *testing.T) {
	const a, b = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"
	point := func(path, ca string, ids ...string) api.TrustPoint {
		return api.TrustPoint{Path: path, Reader: "r", Setting: "s", CA: ca, CAs: ids}
	}
	nodes := func() []NodeStatus {
		return []NodeStatus{
			{Node: "cp-1", Authorities: []api.Authority{{ID: a, CommonName: "kubernetes"}, {ID: b, CommonName: "next"}},
				TrustPoints: []api.TrustPoint{point("/ca.crt", "ca", a), point("/admin.conf", "ca", a), point("/etcd/ca.crt", "etcd-ca", b)},
				Signers:     []api.TrustPoint{point("/ca.crt", "ca", a)},
				Certs:       []api.CertInfo{{Name: "apiserver", CA: "ca", Issuer: a}, {Name: "etcd-server", CA: "etcd-ca", Issuer: b}, {Name: "kubelet-serving", Issuer: api.IssuerSelfSigned}}},
			{Node: "w-1", Authorities: []api.Authority{{ID: a, CommonName: "kubernetes"}},
				TrustPoints: []api.TrustPoint{point("/ca.crt", "ca", a), point("/kubelet.conf", "ca", a)},
				Certs:       []api.CertInfo{{Name: "kubelet-client", CA: "ca", Issuer: a}}},
		}
	}
	if f := TrustFindings(nodes()); len(f) != 0 {
		t.Errorf("a consistent cluster: %q", f)
	}

	n := nodes()
	n[1].TrustPoints[1].CAs = []string{a, b} // kubelet.conf trusts a second CA
	n[1].Certs[0].Issuer = b                 // signed by a CA the others do not trust
	n[0].Certs[0].Issuer = api.IssuerUnknown // signed by no CA file
	n[0].Signers[0].CAs = []string{b}        // the signer's CA is not trusted everywhere
	n[0].TrustPoints[1] = api.TrustPoint{Path: "/admin.conf", Reader: "admin", Setting: "s", CA: "ca", Error: "boom"}
	want := []string{
		"CA bbbbbbbbbbbbbbbb (next) is trusted by 1 of the 3 trust points of ca; not by cp-1:/ca.crt (r s), w-1:/ca.crt (r s)",
		"r s on cp-1 signs with CA bbbbbbbbbbbbbbbb (next), which 2 trust point(s) of ca do not trust: cp-1:/ca.crt (r s), w-1:/ca.crt (r s)",
		"1 certificate(s) of ca are signed by CA bbbbbbbbbbbbbbbb (next), which 2 trust point(s) of ca do not trust: cp-1:/ca.crt (r s), w-1:/ca.crt (r s); certificates: w-1:kubelet-client",
		"1 certificate(s) signed by no CA file of their node: cp-1:apiserver",
		"1 trust point(s) could not be read: cp-1:/admin.conf (admin s): boom",
	}
	got := TrustFindings(n)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("findings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
