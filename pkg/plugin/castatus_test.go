package plugin

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/orchestrator"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/report"
)

// ca status against the fake cluster: the tables name every trust point
// and group the certificates by their CA; the summary points at the one
// trust point that trusts a CA the others do not.
func TestCAStatusTables(t *testing.T) {
	out, stderr, err := runWith(t, fakeCluster(), "ca", "status")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	for _, want := range []string{
		"kubernetes             " + fakeCA + "  Jan 01, 2035 00:00 UTC",
		"kubernetes-next        " + fakeNextCA + "  Jan 01, 2036 00:00 UTC",
		"w-1   kubelet                  kubelet.conf certificate-authority-data  /etc/kubernetes/kubelet.conf  kubernetes (" + fakeCA + "), kubernetes-next (" + fakeNextCA + ")",
		"cp-1  kube-controller-manager  --cluster-signing-cert-file              /etc/kubernetes/pki/ca.crt    signs with kubernetes (" + fakeCA + ")",
		"kubernetes (" + fakeCA + ")  cp-1  kubelet-client, apiserver",
		"self-signed                    w-1   kubelet-serving",
		"summary: NOT consistent: 1 finding(s), 0 unreadable node(s)\n  - CA " + fakeNextCA + " (kubernetes-next) is trusted by 1 of the 4 trust points of ca; not by cp-1:/etc/kubernetes/pki/ca.crt (kubeadm ca), cp-1:/etc/kubernetes/kubelet.conf (kubelet kubelet.conf certificate-authority-data), w-1:/etc/kubernetes/pki/ca.crt (kubeadm ca)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestCAStatusJSON(t *testing.T) {
	out, stderr, err := runWith(t, fakeCluster(), "ca", "status", "-o", "json", "--nodes", "cp-1")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	var rep report.CAStatusReport
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if rep.APIVersion != report.APIVersion || rep.Kind != report.KindCAStatus || !rep.Consistent || len(rep.Findings) != 0 ||
		len(rep.CertificateAuthorities) != 1 || len(rep.TrustPoints) != 2 || rep.TrustPoints[0].Node != "cp-1" || len(rep.Signers) != 1 ||
		len(rep.Certificates) != 3 || rep.Certificates[2].Name != "apiserver" || rep.Certificates[2].Issuer != fakeCA {
		t.Errorf("only cp-1, which agrees with itself: %+v", rep)
	}
}

// A node that could not be read fails the command and the consistency.
func TestCAStatusUnreadableNode(t *testing.T) {
	rep := buildCAStatusReport([]orchestrator.NodeStatus{{Node: "w-1", Error: "the agent pod did not start within 5m0s"}})
	err := problemsError(nodeProblems(rep.Errors))
	if rep.Consistent || err == nil || !strings.Contains(err.Error(), "node w-1: the agent pod did not start") {
		t.Errorf("%+v", rep)
	}
}
