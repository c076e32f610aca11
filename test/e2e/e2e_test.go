//go:build e2e

// Package e2e rotates the certificates of real kind clusters with the real
// plugin binary and judges the outcome from the nodes' files, TLS handshakes
// and the API, never from the plugin's own report. Run it with hack/e2e.sh
// (make e2e), which builds the node image, the agent image and the plugin.
package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/test/e2e/framework"
)

// env names what hack/e2e.sh prepared.
var (
	pluginBin     = os.Getenv("ROTATE_CERTS_PLUGIN")      // the built plugin
	krewPluginBin = os.Getenv("ROTATE_CERTS_KREW_PLUGIN") // the krew-installed plugin, if any
	agentImage    = os.Getenv("ROTATE_CERTS_IMAGE")       // the agent image, loaded into the cluster
)

type env struct {
	t       *testing.T
	cluster *framework.Cluster
	client  kubernetes.Interface
	config  *rest.Config
	cps     []string
	workers []string
}

func setup(t *testing.T, name string, controlPlanes, workers int) *env {
	t.Helper()
	if testing.Short() {
		t.Skip("e2e: skipped with -short")
	}
	if pluginBin == "" || agentImage == "" {
		t.Fatal("ROTATE_CERTS_PLUGIN and ROTATE_CERTS_IMAGE must be set: run the suite through hack/e2e.sh (make e2e)")
	}
	ctx := context.Background()
	start := time.Now()
	c, err := framework.CreateCluster(ctx, framework.Options{
		Name: name, ControlPlanes: controlPlanes, Workers: workers, KubeadmConfigPatches: clusterOptions.KubeadmConfigPatches,
		NodeImage:      framework.NodeImageFromEnv(),
		KubeconfigPath: filepath.Join(t.TempDir(), "kubeconfig"),
	}, os.Stderr)
	if err != nil {
		t.Fatalf("creating kind cluster: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Delete(); err != nil {
			t.Errorf("deleting cluster %s: %v", name, err)
		}
	})
	t.Logf("cluster %s (%d control planes, %d workers) Ready in %s", name, controlPlanes, workers, time.Since(start).Round(time.Second))
	if err := c.LoadImage(ctx, agentImage); err != nil {
		t.Fatalf("loading agent image: %v", err)
	}
	client, config, err := c.Client()
	if err != nil {
		t.Fatal(err)
	}
	cps, ws, err := c.Nodes()
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, cluster: c, client: client, config: config, cps: cps, workers: ws}
}

func (e *env) nodes() []string { return append(append([]string{}, e.cps...), e.workers...) }

// plugin runs a plugin binary against the cluster and returns its output
// and exit error.
func (e *env) plugin(bin string, args ...string) (stdout, stderr string, err error) {
	e.t.Helper()
	switch {
	case len(args) > 0 && args[0] == "recover" && slices.Contains(args, "--kind-cluster"):
		args = append(args, "--kubeconfig", e.cluster.KubeconfigPath(), "--timeout", "4m")
	case len(args) > 0 && args[0] == "recover": // no API: no kubeconfig, no image
		args = append(args, "--timeout", "4m")
	default:
		args = append(args, "--kubeconfig", e.cluster.KubeconfigPath(), "--image", agentImage, "--timeout", "4m")
	}
	cmd := exec.Command(bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err = cmd.Run()
	e.t.Logf("$ %s %s (%s)\n%s%s", filepath.Base(bin), strings.Join(args, " "), time.Since(start).Round(100*time.Millisecond), out.String(), errb.String())
	return out.String(), errb.String(), err
}

func (e *env) mustPlugin(args ...string) string {
	e.t.Helper()
	out, _, err := e.plugin(pluginBin, args...)
	if err != nil {
		e.t.Fatalf("kubectl rotate-certs %s failed: %v", strings.Join(args, " "), err)
	}
	return out
}

func (e *env) snapshots() map[string]*snapshot {
	out := map[string]*snapshot{}
	for _, n := range e.nodes() {
		out[n] = takeSnapshot(e.t, e.cluster, n)
	}
	return out
}

// containerID is the running container of a static pod component.
func (e *env) containerID(node, name string) string {
	e.t.Helper()
	out, err := e.cluster.Exec(context.Background(), node, nil, "crictl", "ps", "--name", "^"+name+"$", "--state", "running", "-q")
	if err != nil {
		e.t.Fatalf("node %s: crictl ps %s: %v", node, name, err)
	}
	return strings.TrimSpace(string(out))
}

func (e *env) kubeletPID(node string) string {
	e.t.Helper()
	out, err := e.cluster.Exec(context.Background(), node, nil, "systemctl", "show", "-p", "MainPID", "--value", "kubelet")
	if err != nil {
		e.t.Fatalf("node %s: systemctl show kubelet: %v", node, err)
	}
	return strings.TrimSpace(string(out))
}

// processes records which process or container runs each component.
func (e *env) processes() map[string]string {
	out := map[string]string{}
	for _, n := range e.nodes() {
		out[n+"/kubelet"] = e.kubeletPID(n)
	}
	for _, n := range e.cps {
		for _, c := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
			out[n+"/"+c] = e.containerID(n, c)
		}
	}
	return out
}

// servedSerial handshakes with addr without SNI and returns the serial of
// the served leaf.
func servedSerial(t *testing.T, addr string, client *tls.Certificate) string {
	t.Helper()
	var served *x509.Certificate
	cfg := &tls.Config{InsecureSkipVerify: true, VerifyConnection: func(cs tls.ConnectionState) error {
		served = cs.PeerCertificates[0]
		return nil
	}}
	if client != nil {
		cfg.Certificates = []tls.Certificate{*client}
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if conn != nil {
		conn.Close()
	}
	if served == nil {
		t.Fatalf("TLS handshake with %s: %v", addr, err)
	}
	return served.SerialNumber.String()
}

func (e *env) nodeIP(node string) string {
	e.t.Helper()
	n, err := e.client.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return a.Address
		}
	}
	e.t.Fatalf("node %s has no InternalIP", node)
	return ""
}

// checkServes asserts kube-apiserver (through the kind kubeconfig's
// endpoint) and each control plane's etcd serve the serials on disk.
func (e *env) checkServes(after map[string]*snapshot) {
	e.t.Helper()
	u, err := url.Parse(e.config.Host)
	if err != nil {
		e.t.Fatal(err)
	}
	inv := inventory()
	if len(e.cps) == 1 {
		want := after[e.cps[0]].cert(e.t, inv["apiserver"]).SerialNumber.String()
		if got := servedSerial(e.t, u.Host, nil); got != want {
			e.t.Errorf("kube-apiserver serves serial %s, the file has %s", got, want)
		}
	}
	for _, n := range e.cps {
		s := after[n]
		ip := e.nodeIP(n)
		if got, want := servedSerial(e.t, net.JoinHostPort(ip, "6443"), nil), s.cert(e.t, inv["apiserver"]).SerialNumber.String(); got != want {
			e.t.Errorf("node %s: kube-apiserver serves serial %s, the file has %s", n, got, want)
		}
		// Read as the agent does: the pki folder may be a link (kubespray).
		certPEM, err := pki.ReadFile(s.root, "etc/kubernetes/pki/etcd/healthcheck-client.crt")
		if err != nil {
			e.t.Fatal(err)
		}
		keyPEM, err := pki.ReadFile(s.root, "etc/kubernetes/pki/etcd/healthcheck-client.key")
		if err != nil {
			e.t.Fatal(err)
		}
		client, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			e.t.Fatal(err)
		}
		if got, want := servedSerial(e.t, net.JoinHostPort(ip, "2379"), &client), s.cert(e.t, inv["etcd-server"]).SerialNumber.String(); got != want {
			e.t.Errorf("node %s: etcd serves serial %s, the file has %s", n, got, want)
		}
	}
}

func inventory() map[string]pki.Cert {
	out := map[string]pki.Cert{}
	for _, c := range pki.Inventory {
		out[c.Name] = c
	}
	return out
}

// checkRenewed asserts, for every inventory certificate of the given
// services on every node: new serial and public key, same subject, SANs and
// usages, signed by the unchanged CA. Certificates of other services must be
// byte-identical; CA files always are.
func (e *env) checkRenewed(before, after map[string]*snapshot, services ...pki.Service) {
	e.t.Helper()
	want := map[pki.Service]bool{}
	for _, s := range services {
		want[s] = true
	}
	for _, n := range e.nodes() {
		b, a := before[n], after[n]
		for _, ca := range pki.CAs {
			if b.sums[ca.CertFile] != a.sums[ca.CertFile] || b.sums[ca.KeyFile] != a.sums[ca.KeyFile] {
				e.t.Errorf("node %s: CA %s changed", n, ca.Name)
			}
		}
		for _, c := range pki.Inventory {
			if c.Name == "kubelet-serving" {
				continue // checked below: its issuer is the kubelet's own
			}
			oc, nc := b.cert(e.t, c), a.cert(e.t, c)
			if oc == nil {
				if nc != nil {
					e.t.Errorf("node %s: %s appeared", n, c.Name)
				}
				continue
			}
			if nc == nil {
				e.t.Errorf("node %s: %s disappeared", n, c.Name)
				continue
			}
			renewed := oc.SerialNumber.Cmp(nc.SerialNumber) != 0
			if !want[c.Service] {
				if renewed {
					e.t.Errorf("node %s: %s (service %s) was renewed but not asked for", n, c.Name, c.Service)
				}
				continue
			}
			if !renewed {
				e.t.Errorf("node %s: %s still has serial %s", n, c.Name, oc.SerialNumber)
				continue
			}
			if pki.SamePublicKey(oc.PublicKey, nc.PublicKey) {
				e.t.Errorf("node %s: %s kept its public key", n, c.Name)
			}
			if oc.Subject.String() != nc.Subject.String() || !reflect.DeepEqual(oc.DNSNames, nc.DNSNames) ||
				fmt.Sprint(oc.IPAddresses) != fmt.Sprint(nc.IPAddresses) || oc.KeyUsage != nc.KeyUsage || !reflect.DeepEqual(oc.ExtKeyUsage, nc.ExtKeyUsage) {
				e.t.Errorf("node %s: %s changed identity: subject %q->%q DNS %v->%v IP %v->%v", n, c.Name, oc.Subject, nc.Subject, oc.DNSNames, nc.DNSNames, oc.IPAddresses, nc.IPAddresses)
			}
			caPEM, err := pki.ReadFile(a.root, c.CA.CertFile)
			if err != nil {
				e.t.Fatal(err)
			}
			ca, err := pki.ParseCertificatePEM(caPEM)
			if err != nil {
				e.t.Fatal(err)
			}
			if err := nc.CheckSignatureFrom(ca); err != nil {
				e.t.Errorf("node %s: new %s is not signed by CA %s: %v", n, c.Name, c.CA.Name, err)
			}
			if left := time.Until(nc.NotAfter); left < 360*24*time.Hour {
				e.t.Errorf("node %s: new %s expires in %s, want about a year", n, c.Name, left)
			}
		}
		if want[pki.ServiceKubelet] {
			inv := inventory()
			oc, nc := b.cert(e.t, inv["kubelet-serving"]), a.cert(e.t, inv["kubelet-serving"])
			if oc != nil && (nc == nil || oc.SerialNumber.Cmp(nc.SerialNumber) == 0 || !reflect.DeepEqual(oc.DNSNames, nc.DNSNames)) {
				e.t.Errorf("node %s: kubelet serving certificate was not renewed with the same names", n)
			}
		}
	}
}

// pollAPI reads /readyz through the kind endpoint every 200 ms and counts
// failed requests until stop is called (or the test ends).
func (e *env) pollAPI() (failures *atomic.Int64, stop func()) {
	return e.pollPath(e.client, "/readyz")
}

// pollPath is pollAPI for any client and path.
func (e *env) pollPath(client kubernetes.Interface, path string) (failures *atomic.Int64, stop func()) {
	t := e.t
	failures = &atomic.Int64{}
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-quit:
				return
			case <-time.After(200 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			err := client.Discovery().RESTClient().Get().AbsPath(path).Do(ctx).Error()
			cancel()
			if err != nil && failures.Add(1) <= 5 {
				t.Logf("API poll failed: %v", err)
			}
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { close(quit); <-done }) }
	t.Cleanup(stop)
	return failures, stop
}

func (e *env) checkNodesReady() {
	e.t.Helper()
	nodes, err := e.client.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		e.t.Fatalf("kind kubeconfig no longer works: %v", err)
	}
	for _, n := range nodes.Items {
		ready := false
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				ready = true
			}
		}
		if !ready {
			e.t.Errorf("node %s is not Ready", n.Name)
		}
	}
}

func (e *env) checkNoAgentPods() {
	e.t.Helper()
	pods, err := e.client.CoreV1().Pods("kube-system").List(context.Background(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=rotate-certs-agent"})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			e.t.Errorf("agent pod %s left behind", p.Name)
		}
	}
}

// checkKubeadmAgrees runs kubeadm inside each control plane as an
// independent oracle: for every certificate both know, kubeadm's expiry
// equals, to the second, the one of the file the test read.
func (e *env) checkKubeadmAgrees(after map[string]*snapshot) {
	e.t.Helper()
	inv := inventory()
	for _, n := range e.cps {
		out, err := e.cluster.Exec(context.Background(), n, nil, "kubeadm", "certs", "check-expiration", "-o", "json")
		if err != nil {
			e.t.Fatalf("node %s: kubeadm certs check-expiration: %v", n, err)
		}
		var info struct {
			Certificates []struct {
				Name           string    `json:"name"`
				ExpirationDate time.Time `json:"expirationDate"`
				Missing        bool      `json:"missing"`
			} `json:"certificates"`
		}
		if err := json.Unmarshal(out, &info); err != nil {
			e.t.Fatalf("node %s: kubeadm output: %v\n%s", n, err, out)
		}
		compared := 0
		for _, c := range info.Certificates {
			entry, ok := inv[c.Name]
			if !ok || c.Missing {
				continue
			}
			cert := after[n].cert(e.t, entry)
			if cert == nil {
				e.t.Errorf("node %s: kubeadm knows %s, the node has no such file", n, c.Name)
				continue
			}
			compared++
			if !c.ExpirationDate.Equal(cert.NotAfter.Truncate(time.Second)) {
				e.t.Errorf("node %s: kubeadm says %s expires %s, the file says %s", n, c.Name, c.ExpirationDate, cert.NotAfter)
			}
		}
		if compared < 10 {
			e.t.Errorf("node %s: compared only %d certificates with kubeadm", n, compared)
		}
	}
}

func changed(before, after map[string]string, keys ...string) []string {
	var out []string
	for _, k := range keys {
		if before[k] != after[k] {
			out = append(out, k)
		}
	}
	return out
}

func keysFor(nodes []string, components ...string) []string {
	var out []string
	for _, n := range nodes {
		for _, c := range components {
			out = append(out, n+"/"+c)
		}
	}
	return out
}
