//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

var (
	allServices  = []pki.Service{pki.ServiceEtcd, pki.ServiceAPIServer, pki.ServiceControllerManager, pki.ServiceScheduler, pki.ServiceKubelet, pki.ServiceAdmin}
	staticPods   = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}
	restartsNeed = []string{"kube-controller-manager", "kube-scheduler"}
	reloadsOnly  = []string{"etcd", "kube-apiserver"}
)

// TestRotate runs the scenarios in order on one cluster with a control
// plane and a worker; each scenario starts from the state the last left.
func TestRotate(t *testing.T) {
	e := setup(t, "rotate-certs-e2e", 1, 1)
	e.enableAuditLog(e.cps[0])

	t.Run("bad input changes nothing", func(t *testing.T) {
		e.t = t
		before := e.snapshots()
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"--service", "etcdd"}, "valid services are etcd, kube-apiserver"},
			{[]string{"--all", "--nodes", "no-such-node"}, "node no-such-node not found; nodes are: " + e.cps[0]},
			{[]string{"--all", "--service", "etcd"}, "--all and --service exclude each other"},
		} {
			_, stderr, err := e.plugin(pluginBin, tc.args...)
			if err == nil {
				t.Errorf("%v: exit 0, want an error", tc.args)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("%v: error does not say %q: %s", tc.args, tc.want, stderr)
			}
		}
		e.checkUnchanged(before, "bad input")
		e.checkNoAgentPods()
	})

	t.Run("dry run changes nothing", func(t *testing.T) {
		e.t = t
		before := e.snapshots()
		out := e.mustPlugin("--all", "--dry-run")
		for _, n := range e.nodes() {
			if !strings.Contains(out, n) {
				t.Errorf("plan does not mention node %s", n)
			}
		}
		for _, c := range []string{"apiserver", "etcd-server", "controller-manager.conf", "kubelet-client"} {
			if !strings.Contains(out, c) {
				t.Errorf("plan does not mention %s", c)
			}
		}
		e.checkUnchanged(before, "dry run")
		e.checkNoAgentPods()
	})

	t.Run("status matches kubeadm", func(t *testing.T) {
		e.t = t
		certs := e.status()
		snaps := e.snapshots()
		inv := inventory()
		seen := map[string]bool{}
		for _, c := range certs {
			seen[c.Node] = true
			entry, ok := inv[c.Name]
			if !ok || c.Missing {
				continue
			}
			cert := snaps[c.Node].cert(t, entry)
			if cert == nil || c.NotAfter == nil || !cert.NotAfter.Equal(*c.NotAfter) {
				t.Errorf("status says node %s %s expires %v; the file says %v", c.Node, c.Name, c.NotAfter, cert)
			}
		}
		for _, n := range e.nodes() {
			if !seen[n] {
				t.Errorf("status does not cover node %s", n)
			}
		}
		e.checkKubeadmAgrees(snaps)

		// A node that does not exist is named; the others are still reported.
		out, stderr, err := e.plugin(pluginBin, "status", "--nodes", e.cps[0]+",no-such-node")
		if err == nil || !strings.Contains(stderr, "node no-such-node: not found") || !strings.Contains(out, e.cps[0]+"  apiserver") {
			t.Errorf("status with an unknown node: err=%v, stderr=%q, stdout lacks %s", err, stderr, e.cps[0])
		}
	})

	t.Run("service etcd", func(t *testing.T) {
		e.t = t
		before, procs := e.snapshots(), e.processes()
		e.mustPlugin("--service", "etcd")
		after, procsAfter := e.snapshots(), e.processes()
		e.checkRenewed(before, after, pki.ServiceEtcd)
		e.checkAfterRotation(before, after) // versions_test.go
		if c := changed(procs, procsAfter, append(keysFor(e.cps, staticPods...), keysFor(e.nodes(), "kubelet")...)...); len(c) > 0 {
			t.Errorf("--service etcd restarted %v", c)
		}
		e.checkServes(after)
		e.checkNoAgentPods()
	})

	t.Run("all keeps the API up", func(t *testing.T) {
		e.t = t
		before, procs := e.snapshots(), e.processes()
		failures, stop := e.pollAPI()
		rep := e.rotateJSON("--all") // conventions_test.go
		stop()
		after, procsAfter := e.snapshots(), e.processes()
		e.checkRenewed(before, after, allServices...)
		e.checkReportMatchesNodes(rep, before, after)
		e.checkRotationEvents(rep)
		e.checkAfterRotation(before, after) // versions_test.go
		if f := failures.Load(); f > 0 {
			t.Errorf("%d API requests failed during --all with --restart=needed", f)
		}
		if c := changed(procs, procsAfter, keysFor(e.cps, reloadsOnly...)...); len(c) > 0 {
			t.Errorf("--restart=needed restarted %v (they reload)", c)
		}
		want := append(keysFor(e.cps, restartsNeed...), keysFor(e.nodes(), "kubelet")...)
		if c := changed(procs, procsAfter, want...); len(c) != len(want) {
			t.Errorf("restarted %v, want all of %v", c, want)
		}
		e.checkServes(after)
		e.checkNodesReady()
		e.checkNoAgentPods()
		e.checkKubeadmAgrees(after)
		e.checkNoKeyMaterialAudited(before, after)
		// status, the read-only half, shows every renewed certificate with
		// about the requested validity left.
		for _, c := range e.status() {
			if c.Missing {
				continue
			}
			if left := time.Duration(c.ResidualSeconds) * time.Second; left < 364*24*time.Hour || left > 366*24*time.Hour {
				t.Errorf("status after --all: node %s %s has %s left, want about 8760h", c.Node, c.Name, left.Round(time.Hour))
			}
		}
	})

	t.Run("ca status after the rotation", func(t *testing.T) {
		e.t = t
		e.checkCAStatus() // castatus_test.go
		e.checkNoAgentPods()
	})

	t.Run("all again right after, restarting everything", func(t *testing.T) {
		e.t = t
		before, procs := e.snapshots(), e.processes()
		e.mustPlugin("--all", "--restart=all")
		after, procsAfter := e.snapshots(), e.processes()
		e.checkRenewed(before, after, allServices...)
		e.checkAfterRotation(before, after) // versions_test.go
		want := append(keysFor(e.cps, staticPods...), keysFor(e.nodes(), "kubelet")...)
		if c := changed(procs, procsAfter, want...); len(c) != len(want) {
			t.Errorf("--restart=all restarted %v, want all of %v", c, want)
		}
		e.checkServes(after)
		e.checkNodesReady()
		e.checkNoAgentPods()
	})

	t.Run("service kubelet", func(t *testing.T) {
		e.t = t
		bin := pluginBin
		if krewPluginBin != "" {
			bin = krewPluginBin // what users install is what is tested
			t.Logf("using the krew-installed plugin %s", bin)
		}
		before, procs := e.snapshots(), e.processes()
		if _, _, err := e.plugin(bin, "--service", "kubelet"); err != nil {
			t.Fatalf("--service kubelet: %v", err)
		}
		after, procsAfter := e.snapshots(), e.processes()
		e.checkRenewed(before, after, pki.ServiceKubelet)
		e.checkAfterRotation(before, after) // versions_test.go
		want := keysFor(e.nodes(), "kubelet")
		if c := changed(procs, procsAfter, want...); len(c) != len(want) {
			t.Errorf("restarted %v, want %v", c, want)
		}
		if c := changed(procs, procsAfter, keysFor(e.cps, staticPods...)...); len(c) > 0 {
			t.Errorf("--service kubelet restarted %v", c)
		}
		e.checkNodesReady()
		e.checkNoAgentPods()
	})

	t.Run("completion through kubectl", func(t *testing.T) {
		e.t = t
		e.checkCompletionThroughKubectl() // conventions_test.go
	})

	t.Run("interrupted while a control plane is renewed, then resumed", func(t *testing.T) {
		e.t = t
		e.interruptAndResume(e.cps[0], "renew", "node "+e.cps[0]+": renewing")
	})

	t.Run("interrupted while a worker's kubelet is renewed, then resumed", func(t *testing.T) {
		e.t = t
		e.interruptAndResume(e.workers[0], "kubelet", "node "+e.workers[0]+": installing the kubelet's certificates")
	})

	t.Run("rollback of a run", func(t *testing.T) {
		e.t = t
		e.rollbackLastRun()
	})

	t.Run("kubespray layout: pki linked to ssl", func(t *testing.T) {
		e.t = t
		e.kubesprayLayout(e.cps[0])
		before := e.snapshots()
		e.mustPlugin("--all")
		after := e.snapshots()
		e.checkRenewed(before, after, allServices...)
		e.checkServes(after)
		e.checkConsistent(after)
		e.checkNodesReady()
		out, err := e.cluster.Exec(context.Background(), e.cps[0], nil, "sh", "-c", "test -L /etc/kubernetes/pki && test -f /etc/kubernetes/ssl/apiserver.crt && echo ok")
		if err != nil || strings.TrimSpace(string(out)) != "ok" {
			t.Errorf("the layout changed: %v %s", err, out)
		}
	})

	t.Run("ca rotation: prepare, trust, rollback", func(t *testing.T) {
		e.t = t
		failures, stop := e.pollAPI()
		old, next, prepare := e.caPrepare()
		// Interrupted while the control plane's trust changes, then resumed.
		e.interruptCAPhase(e.cps[0], "trust points to both CAs", "ca-trust-both", "ca", "trust")
		trust := e.caTrust(old, next)
		stop()
		// One control plane: etcd and kube-apiserver restart to read the
		// bundles, an outage of seconds (measured, reported).
		t.Logf("ca prepare %s, ca trust %s; %d API polls (every 200 ms) failed during them", prepare.Round(100*time.Millisecond), trust.Round(100*time.Millisecond), failures.Load())
		e.checkNodesReady()
		e.checkNoAgentPods()
		e.caRollback(old, next)
		e.checkNodesReady()
		e.checkNoAgentPods()
	})
}

// status runs `kubectl rotate-certs status -o json` and returns its
// certificates.
func (e *env) status() []api.CertInfo {
	e.t.Helper()
	out := e.mustPlugin("status", "-o", "json")
	var rep struct {
		Certificates []api.CertInfo `json:"certificates"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		e.t.Fatalf("status -o json: %v", err)
	}
	return rep.Certificates
}

// TestRotateHA rotates a cluster with three control planes and checks that
// the API stayed reachable through kind's load balancer.
func TestRotateHA(t *testing.T) {
	if os.Getenv("ROTATE_CERTS_E2E_HA") == "" {
		t.Skip("set ROTATE_CERTS_E2E_HA=1 for the 3-control-plane scenario")
	}
	e := setup(t, "rotate-certs-e2e-ha", 3, 1)
	before := e.snapshots()
	failures, stop := e.pollAPI()
	e.mustPlugin("--all")
	stop()
	after := e.snapshots()
	e.checkRenewed(before, after, allServices...)
	e.checkAfterRotation(before, after) // versions_test.go
	if f := failures.Load(); f > 0 {
		t.Errorf("%d API requests through the load balancer failed during --all", f)
	}
	e.checkServes(after)
	e.checkNodesReady()
	e.checkNoAgentPods()

	t.Run("ca rotation under load", func(t *testing.T) {
		e.t = t
		inCluster, stopProbe := e.inClusterProbe()
		old, next, prepare := e.caPrepare()
		// From here the API server may present a certificate of either CA.
		failures, stop := e.pollAPIBoth(next)
		check := e.watchCluster(next)
		trust := e.caTrust(old, next)
		switchTime, finish := e.caSwitchAndFinish(old)
		stop()
		for _, p := range check() {
			t.Error(p)
		}
		n, log := inCluster()
		stopProbe()
		t.Logf("ca prepare %s, trust %s, switch %s, finish %s", prepare.Round(100*time.Millisecond), trust.Round(100*time.Millisecond),
			switchTime.Round(100*time.Millisecond), finish.Round(100*time.Millisecond))
		t.Logf("in-cluster client (ServiceAccount, every 200 ms): %d failed requests\n%s", n, log)
		if f := failures.Load(); f > 0 {
			t.Errorf("%d API requests through the load balancer failed during the CA rotation's phases", f)
		}
		// In-cluster clients reach the API servers through the kubernetes
		// Service, whose endpoints kube-proxy stops using only after a
		// drained kube-apiserver (which closes its listener at SIGTERM:
		// kubeadm sets no --shutdown-delay-duration) left them: a new
		// connection in that window is refused. Measured and reported;
		// anything else, or more than one per kube-apiserver restart (3
		// phases restart all 3), fails.
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, " FAIL ") && !strings.Contains(line, "connect: connection refused") {
				t.Errorf("the in-cluster client failed otherwise than a refused connection: %s", line)
			}
		}
		if n > 3*len(e.cps) {
			t.Errorf("%d API requests of the in-cluster client failed during the CA rotation's phases, more than one per kube-apiserver restart", n)
		}
		e.checkNodesReady()
		e.checkNoAgentPods()
	})
}
