package plugin

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/report"
)

// complete runs `__complete args...` (what kubectl_complete-rotate_certs
// runs for kubectl) and returns the candidates and cobra's directive.
func complete(t *testing.T, args ...string) ([]string, string) {
	t.Helper()
	out, _, err := runWith(t, fakeCluster(), append([]string{"__complete"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[:len(lines)-1], lines[len(lines)-1]
}

func TestCompletion(t *testing.T) {
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "config")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: kind-dev, cluster: {server: "https://127.0.0.1:1"}}, {name: prod, cluster: {server: "https://127.0.0.1:2"}}]
users: [{name: admin, user: {}}]
contexts: [{name: kind-dev, context: {cluster: kind-dev, user: admin}}, {name: prod-admin, context: {cluster: prod, user: admin}}]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"services":             {[]string{"--service", ""}, "etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy"},
		"more services":        {[]string{"--service", "etcd,kube-"}, "etcd,kube-apiserver etcd,kube-controller-manager etcd,kube-scheduler etcd,kube-proxy"},
		"nodes from the API":   {[]string{"--nodes", ""}, "cp-1 w-1"},
		"more nodes":           {[]string{"--nodes", "w-1,"}, "w-1,cp-1"},
		"nodes of a selector":  {[]string{"-l", "pool=a", "--nodes", ""}, "w-1"},
		"status nodes":         {[]string{"status", "--nodes", "c"}, "cp-1"},
		"rollback nodes":       {[]string{"rollback", "--nodes", ""}, "cp-1 w-1"},
		"output":               {[]string{"-o", ""}, "json yaml"},
		"status output":        {[]string{"status", "-o", "y"}, "yaml"},
		"recover output":       {[]string{"recover", "-o", ""}, "json yaml"},
		"restart":              {[]string{"--restart", ""}, "needed all"},
		"contexts of the line": {[]string{"--kubeconfig", kubeconfig, "--context", ""}, "kind-dev prod-admin"},
		"a context":            {[]string{"--kubeconfig", kubeconfig, "--context", "p"}, "prod-admin"},
		"rollback contexts":    {[]string{"rollback", "--kubeconfig", kubeconfig, "--context", "k"}, "kind-dev"},
		"clusters":             {[]string{"--kubeconfig", kubeconfig, "--cluster", ""}, "kind-dev prod"},
		"ca":                   {[]string{"c"}, "ca completion"},
		"ca subcommands":       {[]string{"ca", ""}, "finish prepare rollback status switch trust"},
		"ca trust workloads":   {[]string{"ca", "trust", "--restart-workloads", ""}, "all kube-system none"},
		"ca status nodes":      {[]string{"ca", "status", "-l", "pool=a", "--nodes", ""}, "w-1"},
		"ca status output":     {[]string{"ca", "status", "-o", ""}, "json yaml"},
	} {
		t.Run(name, func(t *testing.T) {
			got, directive := complete(t, tc.args...)
			for i, g := range got {
				got[i], _, _ = strings.Cut(g, "\t") // a command's description
			}
			if strings.Join(got, " ") != tc.want || directive != ":4" {
				t.Errorf("got %q %s, want %q :4 (no file completion)", got, directive, tc.want)
			}
		})
	}
}

// Contexts come from the kubeconfig the line names, read by the real
// factory (no cluster needed).
func TestContextCompletionReadsTheKubeconfigOfTheLine(t *testing.T) {
	kubeconfig := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(kubeconfig, []byte("apiVersion: v1\nkind: Config\ncontexts: [{name: only-here, context: {cluster: c, user: u}}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	cmd := NewCmdRotateCerts(ioStreams(&out))
	cmd.SetArgs([]string{"__complete", "status", "--kubeconfig", kubeconfig, "--context", ""})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if out.String() != "only-here\n:4\n" {
		t.Errorf("got %q", out.String())
	}
}

// Run against fakes: --dry-run -o json prints the plan as a RotationReport.
func TestRunDryRunJSON(t *testing.T) {
	out, stderr, err := runWith(t, fakeCluster(), "--all", "--dry-run", "-o", "json")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	var rep report.RotationReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if rep.Kind != report.KindRotation || !rep.DryRun || rep.Result != report.Succeeded || len(rep.Nodes) != 2 ||
		rep.Nodes[0].Name != "cp-1" || !rep.Nodes[0].ControlPlane || rep.Nodes[1].Certificates[0].OldSerial != "7" || rep.Nodes[1].Certificates[0].NewSerial != "" {
		t.Errorf("%+v", rep)
	}
	if !strings.Contains(stderr, "dry run: nothing was changed") {
		t.Errorf("stderr %q", stderr)
	}
}

// A run refused before it started still prints its report with -o, and
// fails.
func TestRunFailureStillReports(t *testing.T) {
	out, stderr, err := runWith(t, fakeCluster("create pods"), "--service", "kubelet", "-o", "yaml")
	if err == nil || !strings.Contains(err.Error(), "not allowed to: create pods") {
		t.Fatalf("got %v", err)
	}
	if !strings.Contains(out, "kind: RotationReport") || !strings.Contains(out, "result: Failed") || !strings.Contains(out, "not allowed to: create pods") {
		t.Errorf("stdout:\n%s\nstderr:\n%s", out, stderr)
	}
}
