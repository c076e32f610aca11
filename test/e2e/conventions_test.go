//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/report"
)

// The kubectl conventions of issue 13: the machine-readable report, the
// audit trail in events, and completion through kubectl.

// rotateJSON runs the plugin with -o json and parses its report strictly:
// stdout must hold that one object and nothing else.
func (e *env) rotateJSON(args ...string) *report.RotationReport {
	e.t.Helper()
	out := e.mustPlugin(append(args, "-o", "json")...)
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	var rep report.RotationReport
	if err := dec.Decode(&rep); err != nil {
		e.t.Fatalf("-o json: %v\n%s", err, out)
	}
	if dec.More() {
		e.t.Fatalf("-o json printed more than the report:\n%s", out)
	}
	if rep.APIVersion != report.APIVersion || rep.Kind != report.KindRotation || rep.Result != report.Succeeded || rep.RunID == "" {
		e.t.Fatalf("report %s/%s result %s run %q", rep.APIVersion, rep.Kind, rep.Result, rep.RunID)
	}
	return &rep
}

// checkReportMatchesNodes asserts the report covers every node, and that
// each certificate it names has, on the node, the new serial and expiry it
// reports, and had the old serial it reports (the test's own snapshots
// judge, not the plugin).
func (e *env) checkReportMatchesNodes(rep *report.RotationReport, before, after map[string]*snapshot) {
	e.t.Helper()
	inv := inventory()
	seen := map[string]bool{}
	for _, n := range rep.Nodes {
		seen[n.Name] = true
		if len(n.Certificates) == 0 || len(n.Backups) == 0 {
			e.t.Errorf("report: node %s has %d certificates and backups %v", n.Name, len(n.Certificates), n.Backups)
		}
		for _, c := range n.Certificates {
			entry, ok := inv[c.Name]
			if !ok {
				e.t.Errorf("report: node %s: unknown certificate %q", n.Name, c.Name)
				continue
			}
			now, was := after[n.Name].cert(e.t, entry), before[n.Name].cert(e.t, entry)
			if now == nil || was == nil {
				e.t.Errorf("report: node %s: %s is not on the node", n.Name, c.Name)
				continue
			}
			if c.NewSerial != now.SerialNumber.String() || c.NewNotAfter == nil || !c.NewNotAfter.Equal(now.NotAfter) {
				e.t.Errorf("report: node %s: %s new serial %s expiring %v; the node has %s expiring %s", n.Name, c.Name, c.NewSerial, c.NewNotAfter, now.SerialNumber, now.NotAfter)
			}
			if c.OldSerial != was.SerialNumber.String() {
				e.t.Errorf("report: node %s: %s old serial %s; the node had %s", n.Name, c.Name, c.OldSerial, was.SerialNumber)
			}
		}
		if n.ControlPlane && len(n.Restarted) == 0 {
			e.t.Errorf("report: control plane %s restarted nothing", n.Name)
		}
	}
	for _, n := range e.nodes() {
		if !seen[n] {
			e.t.Errorf("report does not cover node %s", n)
		}
	}
}

// checkRotationEvents asserts every node carries a CertificatesRotated event
// of the run, found as users find it (events of kind Node in namespace
// default), naming each certificate the report says the run renewed there.
func (e *env) checkRotationEvents(rep *report.RotationReport) {
	e.t.Helper()
	list, err := e.client.CoreV1().Events("default").List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.kind=Node"})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, n := range rep.Nodes {
		found := false
		for _, ev := range list.Items {
			if ev.InvolvedObject.Name != n.Name || !strings.Contains(ev.Message, "run "+rep.RunID+" ") {
				continue
			}
			found = true
			if ev.Reason != "CertificatesRotated" || ev.Type != "Normal" || ev.Source.Component != "kubectl-rotate-certs" {
				e.t.Errorf("node %s: event %s %s from %s: %s", n.Name, ev.Type, ev.Reason, ev.Source.Component, ev.Message)
			}
			for _, c := range n.Certificates {
				if !regexp.MustCompile(`[:,] ` + regexp.QuoteMeta(c.Name) + `[,;]`).MatchString(ev.Message) {
					e.t.Errorf("node %s: the event does not name %s: %s", n.Name, c.Name, ev.Message)
				}
			}
			if rep.User == "" || !strings.Contains(ev.Message, " by "+rep.User+" ") {
				e.t.Errorf("node %s: the event does not name the user %q: %s", n.Name, rep.User, ev.Message)
			}
			e.t.Logf("node %s: event %s: %s", n.Name, ev.Reason, ev.Message)
		}
		if !found {
			e.t.Errorf("node %s has no event of run %s", n.Name, rep.RunID)
		}
	}
}

// checkCompletionThroughKubectl completes `kubectl rotate-certs --service
// <TAB>` and `--nodes <TAB>` through kubectl with the krew-installed plugin,
// its completion script put on PATH by the command krew's caveats give.
// kubectl is the cluster's own (1.35+, which has plugin completion since
// 1.26), copied out of a node: whatever kubectl this machine has (Debian's
// is 1.20) plays no part.
func (e *env) checkCompletionThroughKubectl() {
	e.t.Helper()
	t := e.t
	if krewPluginBin == "" {
		t.Skip("ROTATE_CERTS_KREW_PLUGIN is not set: no krew-installed plugin to complete")
	}
	kubectlDir := t.TempDir()
	if out, err := exec.Command("docker", "cp", e.cps[0]+":/usr/bin/kubectl", filepath.Join(kubectlDir, "kubectl")).CombinedOutput(); err != nil {
		t.Fatalf("docker cp kubectl out of %s: %v\n%s", e.cps[0], err, out)
	}
	krewRoot := filepath.Dir(filepath.Dir(krewPluginBin))
	receipt, err := os.ReadFile(filepath.Join(krewRoot, "receipts", "rotate-certs.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cp := regexp.MustCompile(`cp "\$\{KREW_ROOT:-\$HOME/\.krew\}/store/rotate-certs/\S+/kubectl_complete-rotate_certs" "\$\{KREW_ROOT:-\$HOME/\.krew\}/bin/"`).Find(receipt)
	if cp == nil {
		t.Fatalf("the caveats krew printed do not say how to install the completion script:\n%s", receipt)
	}
	home := t.TempDir()
	kubectl := filepath.Join(kubectlDir, "kubectl")
	// run runs name (found on the test's PATH unless a path) with the PATH
	// a krew user has: the cluster's kubectl, krew's bin, the system.
	run := func(name string, args ...string) (string, error) {
		cmd := exec.Command(name, args...)
		cmd.Env = []string{"HOME=" + home, "KREW_ROOT=" + krewRoot, "PATH=" + kubectlDir + ":" + filepath.Join(krewRoot, "bin") + ":/usr/bin:/bin"}
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		t.Logf("$ %s %s\n%s%s", name, strings.Join(args, " "), out.String(), errb.String())
		return out.String(), err
	}
	if _, err := run("sh", "-c", string(cp)); err != nil {
		t.Fatalf("the caveats' command: %v", err)
	}
	t.Cleanup(func() { _ = os.Remove(filepath.Join(krewRoot, "bin", "kubectl_complete-rotate_certs")) })
	out, err := run(kubectl, "version", "--client")
	m := regexp.MustCompile(`Client Version: v1\.(\d+)\.`).FindStringSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("the node's kubectl does not run here: %v", err)
	}
	if minor, _ := strconv.Atoi(m[1]); minor < 26 {
		t.Fatalf("the node's kubectl 1.%d predates plugin completion (1.26)", minor)
	}
	lines := func(out string) string { return strings.Join(strings.Fields(out), " ") }
	out, err = run(kubectl, "__complete", "rotate-certs", "--service", "")
	if err != nil || lines(out) != "etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy :4" {
		t.Errorf("kubectl rotate-certs --service <TAB>: %q, %v", out, err)
	}
	out, err = run(kubectl, "__complete", "rotate-certs", "--kubeconfig", e.cluster.KubeconfigPath(), "--nodes", "")
	if err != nil || lines(out) != strings.Join(e.nodes(), " ")+" :4" {
		t.Errorf("kubectl rotate-certs --nodes <TAB>: %q, %v; want %v", out, err, e.nodes())
	}
}
