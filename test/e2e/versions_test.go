//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/remotecommand"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/test/e2e/framework"
)

// Checks that hold after every rotation on every Kubernetes version (1.35 to 1.37), called from
// the rotation scenarios with the snapshots taken before and after:
//
//   - kube-apiserver still reaches every kubelet with apiserver-kubelet-client: pods/log and
//     pods/exec (client-go, as kubectl logs and exec do) on a pod of every node, through every
//     control plane's own kube-apiserver. Recent 1.33-1.37 patch releases issue that certificate
//     as CN=kube-apiserver-kubelet-client without O=system:masters and authorize it through the
//     ClusterRoleBinding kubeadm:apiserver-kubelet-client; a renewal that changed the subject
//     would lose access (or gain system:masters).
//   - every kubelet serves the serving certificate on disk, by IP and without SNI (as
//     kube-apiserver dials it): before 1.36 the kubelet did not reload it for such clients
//     (kubernetes#133654), so the plugin must restart it where it renewed it.
//   - kubelet.conf's server is unchanged on every node: with ControlPlaneKubeletLocalMode (GA in
//     1.35) control planes point at their local kube-apiserver and workers at the control-plane
//     endpoint.
func (e *env) checkAfterRotation(before, after map[string]*snapshot) {
	e.t.Helper()
	e.checkKubeletConfServers(before, after)
	e.checkKubeletServes(after)
	e.checkLogsAndExec()
}

// kubeletConfServer is the server of kubelet.conf's current context in a snapshot.
func kubeletConfServer(t *testing.T, s *snapshot) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(s.root, pki.KubeletKubeconfig))
	if err != nil {
		t.Fatalf("node %s: %v", s.node, err)
	}
	cfg, err := clientcmd.Load(data)
	if err != nil {
		t.Fatalf("node %s: kubelet.conf: %v", s.node, err)
	}
	ctx := cfg.Contexts[cfg.CurrentContext]
	if ctx == nil || cfg.Clusters[ctx.Cluster] == nil {
		t.Fatalf("node %s: kubelet.conf has no current context with a cluster", s.node)
	}
	return cfg.Clusters[ctx.Cluster].Server
}

func (e *env) checkKubeletConfServers(before, after map[string]*snapshot) {
	e.t.Helper()
	for _, n := range e.nodes() {
		b, a := kubeletConfServer(e.t, before[n]), kubeletConfServer(e.t, after[n])
		if a != b {
			e.t.Errorf("node %s: kubelet.conf server changed from %s to %s", n, b, a)
		}
	}
	// The layout the servers were kept in (1.35+: control planes local, workers the endpoint).
	var desc []string
	for _, n := range e.nodes() {
		desc = append(desc, n+"="+kubeletConfServer(e.t, after[n]))
	}
	e.t.Logf("kubelet.conf servers kept: %s", strings.Join(desc, " "))
}

// checkKubeletServes handshakes with every kubelet's :10250 by IP, without SNI, and compares the
// served serial with the serving certificate on disk (kubelet-server-current.pem with
// serverTLSBootstrap, else kubelet.crt).
func (e *env) checkKubeletServes(after map[string]*snapshot) {
	e.t.Helper()
	inv := inventory()
	for _, n := range e.nodes() {
		file := after[n].cert(e.t, pki.KubeletServingCSR)
		if file == nil {
			file = after[n].cert(e.t, inv["kubelet-serving"])
		}
		if file == nil {
			e.t.Errorf("node %s: no kubelet serving certificate on disk", n)
			continue
		}
		addr := net.JoinHostPort(e.nodeIP(n), "10250")
		// The kubelet may still be starting after its restart.
		var got string
		deadline := time.Now().Add(30 * time.Second)
		for {
			got = servedSerialOrEmpty(addr)
			if got == file.SerialNumber.String() || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Second)
		}
		if got != file.SerialNumber.String() {
			e.t.Errorf("node %s: kubelet serves serial %s by IP without SNI, the file has %s", n, got, file.SerialNumber)
		}
	}
}

// servedSerialOrEmpty handshakes with addr by IP, without SNI, and returns the served leaf's
// serial ("" if the handshake fails).
func servedSerialOrEmpty(addr string) string {
	var served *x509.Certificate
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{
		InsecureSkipVerify: true, //nolint:gosec // the served certificate is compared with the file, not verified
		VerifyConnection: func(cs tls.ConnectionState) error {
			served = cs.PeerCertificates[0]
			return nil
		},
	})
	if err == nil {
		conn.Close()
	}
	if served == nil {
		return ""
	}
	return served.SerialNumber.String()
}

// checkLogsAndExec reads pods/log of, and execs `kube-proxy --version` in, the kube-proxy pod of
// every node, through each control plane's own kube-apiserver (https://<node IP>:6443), so every
// kube-apiserver's apiserver-kubelet-client is used against every kubelet.
func (e *env) checkLogsAndExec() {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	pods := map[string]*corev1.Pod{} // node -> a running kube-proxy pod
	var lastErr error
	for ctx.Err() == nil {
		list, err := e.client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=kube-proxy"})
		lastErr = err
		if err == nil {
			pods = map[string]*corev1.Pod{}
			for i, p := range list.Items {
				if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil && podIsReady(&p) {
					pods[p.Spec.NodeName] = &list.Items[i]
				}
			}
			if len(pods) == len(e.nodes()) {
				break
			}
			lastErr = fmt.Errorf("running kube-proxy pods on %d of %d nodes", len(pods), len(e.nodes()))
		}
		time.Sleep(time.Second)
	}
	if len(pods) != len(e.nodes()) {
		e.t.Fatalf("kube-proxy pods: %v", lastErr)
	}
	version, _, _ := framework.KubeVersion()
	for _, cp := range e.cps {
		cfg := rest.CopyConfig(e.config)
		cfg.Host = "https://" + net.JoinHostPort(e.nodeIP(cp), "6443")
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, n := range e.nodes() {
			p := pods[n]
			via := fmt.Sprintf("via %s's kube-apiserver, pod %s on %s", cp, p.Name, n)
			tail := int64(3)
			logs, err := client.CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{TailLines: &tail}).Do(ctx).Raw()
			if err != nil {
				e.t.Errorf("pods/log %s: %v", via, err)
			} else if len(bytes.TrimSpace(logs)) == 0 {
				e.t.Errorf("pods/log %s: empty", via)
			}
			out, err := execIn(ctx, cfg, client, p, "kube-proxy", "--version")
			if err != nil {
				e.t.Errorf("pods/exec %s: %v", via, err)
			} else if !strings.Contains(out, "Kubernetes v1.") || (version != "" && !strings.Contains(out, version)) {
				e.t.Errorf("pods/exec %s: kube-proxy --version printed %q (want %s)", via, out, version)
			}
		}
	}
}

func podIsReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// execIn runs a command in the pod's first container through pods/exec (websocket, falling back
// to SPDY, as kubectl exec does) and returns its stdout.
func execIn(ctx context.Context, cfg *rest.Config, client kubernetes.Interface, p *corev1.Pod, cmd ...string) (string, error) {
	req := client.CoreV1().RESTClient().Post().Resource("pods").Namespace(p.Namespace).Name(p.Name).
		SubResource("exec").VersionedParams(&corev1.PodExecOptions{
		Container: p.Spec.Containers[0].Name, Command: cmd, Stdout: true, Stderr: true,
	}, scheme.ParameterCodec)
	ws, err := remotecommand.NewWebSocketExecutor(cfg, "GET", req.URL().String())
	if err != nil {
		return "", err
	}
	spdy, err := remotecommand.NewSPDYExecutor(cfg, "POST", req.URL())
	if err != nil {
		return "", err
	}
	exec, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool { return true })
	if err != nil {
		return "", err
	}
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := exec.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr}); err != nil {
		return "", fmt.Errorf("%w (stderr %q)", err, stderr.String())
	}
	return stdout.String(), nil
}

// keyDesc names a certificate's key: "ECDSA-P384", "RSA-2048", ...
func keyDesc(c *x509.Certificate) string {
	switch k := c.PublicKey.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA-" + strings.ReplaceAll(k.Curve.Params().Name, "-", "")
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA-%d", k.N.BitLen())
	default:
		return fmt.Sprintf("%T", k)
	}
}

// kubeadmIssued reports whether kubeadm made the certificate (with the cluster's
// encryptionAlgorithm); the kubelet makes its own client and self-signed serving keys.
func kubeadmIssued(c pki.Cert) bool { return c.Service != pki.ServiceKubelet }

// TestRotateECDSAP384 rotates a cluster that kubeadm set up with encryptionAlgorithm ECDSA-P384
// (kubeadm v1beta4, which kind writes from Kubernetes 1.36) and checks that every certificate
// keeps its key algorithm: P-384 for everything kubeadm issued.
func TestRotateECDSAP384(t *testing.T) {
	if _, minor, ok := framework.KubeVersion(); ok && minor < 36 {
		t.Skipf("encryptionAlgorithm needs kubeadm v1beta4, which kind writes from Kubernetes 1.36 (node image is 1.%d)", minor)
	}
	e := setupWith(t, "rotate-certs-e2e-p384", 1, 1, framework.Options{KubeadmConfigPatches: []string{
		// v1beta4 only: a patch naming an apiVersion kind does not write is dropped silently, so
		// the keys are checked below before anything is rotated.
		"apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nencryptionAlgorithm: ECDSA-P384\n",
	}})
	before := e.snapshots()
	checked := 0
	for _, n := range e.cps {
		for _, c := range pki.Inventory {
			if !kubeadmIssued(c) {
				continue
			}
			if cert := before[n].cert(t, c); cert != nil {
				checked++
				if got := keyDesc(cert); got != "ECDSA-P384" {
					t.Errorf("node %s: kubeadm made %s with a %s key; the cluster was not set up with ECDSA-P384", n, c.Name, got)
				}
			}
		}
		if ca := before[n].cert(t, pki.Cert{Name: "ca", CertFile: pki.ClusterCA.CertFile}); ca != nil && keyDesc(ca) != "ECDSA-P384" {
			t.Errorf("node %s: cluster CA has a %s key", n, keyDesc(ca))
		}
	}
	if checked < 10 || t.Failed() {
		t.Fatalf("setup: %d kubeadm certificates checked; ECDSA-P384 was not applied", checked)
	}
	procs := e.processes()
	e.mustPlugin("--all")
	after, procsAfter := e.snapshots(), e.processes()
	e.checkRenewed(before, after, allServices...)
	for _, n := range e.nodes() {
		for _, c := range pki.Inventory {
			oc, nc := before[n].cert(t, c), after[n].cert(t, c)
			if oc == nil || nc == nil {
				continue
			}
			if keyDesc(nc) != keyDesc(oc) {
				t.Errorf("node %s: %s had a %s key, the renewed one has %s", n, c.Name, keyDesc(oc), keyDesc(nc))
			}
			if kubeadmIssued(c) && keyDesc(nc) != "ECDSA-P384" {
				t.Errorf("node %s: renewed %s has a %s key, want ECDSA-P384", n, c.Name, keyDesc(nc))
			}
		}
	}
	if c := changed(procs, procsAfter, keysFor(e.cps, reloadsOnly...)...); len(c) > 0 {
		t.Errorf("--all restarted %v (they reload)", c)
	}
	e.checkServes(after)
	e.checkNodesReady()
	e.checkNoAgentPods()
	e.checkKubeadmAgrees(after)
	e.checkAfterRotation(before, after)
}

// clusterOptions holds extra options (kubeadm config patches) for the next setup call; setup
// (e2e_test.go) passes its KubeadmConfigPatches to framework.CreateCluster.
var clusterOptions framework.Options

// setupWith is setup with extra cluster options.
func setupWith(t *testing.T, name string, controlPlanes, workers int, o framework.Options) *env {
	t.Helper()
	prev := clusterOptions
	clusterOptions = o
	defer func() { clusterOptions = prev }()
	return setup(t, name, controlPlanes, workers)
}
