//go:build e2e

package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rotate-certs/kubectl-rotate-certs/test/e2e/framework"
)

// Environment: ROTATE_CERTS_NODE_IMAGE (hack/e2e-env.sh), ROTATE_CERTS_E2E_KEEP=1 keeps the
// clusters, ROTATE_CERTS_E2E_LOGS=DIR collects kind's logs of a failed test's cluster under DIR.

// TestFrameworkSmoke checks the e2e harness itself: a 1 control-plane + 1 worker cluster comes
// up Ready with CoreDNS running, and kubeadm works inside the control-plane node.
func TestFrameworkSmoke(t *testing.T) {
	frameworkSmoke(t, "rc-smoke", 1, 1)
}

// TestFrameworkSmokeHA is the same with 3 control planes (kind's load balancer) and one
// worker. It needs ~2 GB of RAM and ~1.5 minutes; set ROTATE_CERTS_E2E_HA=1 to run it.
func TestFrameworkSmokeHA(t *testing.T) {
	if os.Getenv("ROTATE_CERTS_E2E_HA") != "1" {
		t.Skip("set ROTATE_CERTS_E2E_HA=1 to create a 3 control-plane cluster")
	}
	frameworkSmoke(t, "rc-smoke-ha", 3, 1)
}

type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func frameworkSmoke(t *testing.T, name string, controlPlanes, workers int) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := framework.CreateCluster(ctx, framework.Options{
		Name: name, ControlPlanes: controlPlanes, Workers: workers, NodeImage: framework.NodeImageFromEnv(),
	}, testLog{t})
	if err != nil {
		t.Fatalf("CreateCluster: %v", err)
	}
	t.Logf("cluster %s: %d+%d nodes Ready with CoreDNS running after %s", c.Name(), controlPlanes, workers, time.Since(start).Round(time.Second))
	defer func() {
		if dir := os.Getenv("ROTATE_CERTS_E2E_LOGS"); dir != "" && t.Failed() {
			if err := c.CollectLogs(filepath.Join(dir, c.Name())); err != nil {
				t.Logf("collecting logs: %v", err)
			} else {
				t.Logf("cluster logs in %s", filepath.Join(dir, c.Name()))
			}
		}
		if os.Getenv("ROTATE_CERTS_E2E_KEEP") == "1" {
			t.Logf("keeping cluster %s (kubeconfig %s)", c.Name(), c.KubeconfigPath())
			return
		}
		start := time.Now()
		if err := c.Delete(); err != nil {
			t.Errorf("Delete: %v", err)
		}
		t.Logf("deleted in %s", time.Since(start).Round(100*time.Millisecond))
	}()

	cps, ws, err := c.Nodes()
	if err != nil {
		t.Fatalf("Nodes: %v", err)
	}
	if len(cps) != controlPlanes || len(ws) != workers {
		t.Fatalf("Nodes() = %v, %v; want %d control planes and %d workers", cps, ws, controlPlanes, workers)
	}

	client, _, err := c.Client()
	if err != nil {
		t.Fatalf("Client: %v", err)
	}
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("listing nodes: %v", err)
	}
	if len(nodes.Items) != controlPlanes+workers {
		t.Errorf("API lists %d nodes, want %d", len(nodes.Items), controlPlanes+workers)
	}
	for _, n := range nodes.Items {
		ready := false
		for _, cond := range n.Status.Conditions {
			ready = ready || (cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue)
		}
		if !ready {
			t.Errorf("node %s is not Ready", n.Name)
		}
		if v, _, ok := framework.KubeVersion(); ok && n.Status.NodeInfo.KubeletVersion != v {
			t.Errorf("node %s runs kubelet %s, want %s", n.Name, n.Status.NodeInfo.KubeletVersion, v)
		}
	}
	pods, err := client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=kube-dns"})
	if err != nil {
		t.Fatalf("listing CoreDNS pods: %v", err)
	}
	if len(pods.Items) == 0 {
		t.Errorf("no CoreDNS pods")
	}
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodRunning {
			t.Errorf("CoreDNS pod %s is %s", p.Name, p.Status.Phase)
		}
	}

	for _, cp := range cps {
		out, err := c.Exec(ctx, cp, nil, "kubeadm", "certs", "check-expiration")
		if err != nil {
			t.Fatalf("kubeadm certs check-expiration on %s: %v", cp, err)
		}
		for _, want := range []string{"apiserver", "etcd-server", "front-proxy-client", "CERTIFICATE AUTHORITY"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("kubeadm certs check-expiration on %s does not mention %q:\n%s", cp, want, out)
			}
		}
	}
	// stdin reaches the node, and stderr is part of the error
	if out, err := c.Exec(ctx, cps[0], strings.NewReader("hello"), "cat"); err != nil || string(out) != "hello" {
		t.Errorf("Exec with stdin: %q, %v", out, err)
	}
	if _, err := c.Exec(ctx, cps[0], nil, "sh", "-c", "echo oops >&2; exit 3"); err == nil || !strings.Contains(err.Error(), "oops") {
		t.Errorf("Exec error %v does not include stderr", err)
	}
}
