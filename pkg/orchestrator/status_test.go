package orchestrator

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	k8stesting "k8s.io/client-go/testing"
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
