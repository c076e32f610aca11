//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/pem"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// TestRecoverExpired kills a real cluster the way a year does: every leaf
// certificate and the kubelets' client certificates are re-issued by the
// cluster's own CAs to expire within seconds (and the front-proxy CA and
// client are removed, as clusters made by older tools lack them), the
// node containers are stopped until they expired and started again, and
// the cluster is proven dead. Then `kubectl rotate-certs recover
// --kind-cluster` must bring it back, judged from outside.
func TestRecoverExpired(t *testing.T) {
	e := setup(t, "rotate-certs-e2e-recover", 1, 1)
	ctx := context.Background()
	cp := e.cps[0]
	e.workload()
	var took time.Duration
	if access := e.enableSSH(); access != nil {
		// Round one, over SSH: bad input first, then the real thing.
		e.checkRecoverRefusals(access)
		round1 := e.snapshots()
		e.switchOffUntil(e.shortenCertificates(round1, 30*time.Second).Add(5 * time.Second))
		e.checkDead()
		written, took := e.recoverOverSSH(access)
		t.Logf("recover --ssh: every node Ready %s after it started", took.Round(time.Second))
		e.checkKubeconfigWorks(written)
		e.waitNodesReady(2 * time.Minute)
		e.checkConsistent(e.snapshots())
		e.checkNoAgentLeftovers()
	}

	// Round two, through kind, on an old cluster without a front-proxy CA.
	cmBefore, err := e.client.CoreV1().ConfigMaps("default").Get(ctx, "keep-me", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.cluster.Exec(ctx, cp, nil, "sh", "-c", "rm /etc/kubernetes/pki/front-proxy-ca.* /etc/kubernetes/pki/front-proxy-client.*"); err != nil {
		t.Fatal(err)
	}
	before := e.snapshots()
	expiry := e.shortenCertificates(before, 30*time.Second)
	e.switchOffUntil(expiry.Add(5 * time.Second))
	e.checkDead()

	start := time.Now()
	_, stderr, err := e.plugin(pluginBin, "recover", "--kind-cluster", e.cluster.Name())
	took = time.Since(start)
	if err != nil {
		t.Fatalf("recover failed after %s: %v", took.Round(time.Second), err)
	}
	if !strings.Contains(stderr, "refreshed context kind-"+e.cluster.Name()) {
		t.Error("recover did not say which kubeconfig context it refreshed")
	}
	t.Logf("recover --kind-cluster: every node Ready %s after it started", took.Round(time.Second))

	// The kind context in the test's kubeconfig now works.
	client := e.refreshedClient()
	e.client = client
	e.waitNodesReady(2 * time.Minute)
	after := e.snapshots()
	for n, s := range after {
		for _, ca := range []pki.CA{pki.ClusterCA, pki.EtcdCA} {
			if before[n].sums[ca.CertFile] != s.sums[ca.CertFile] || before[n].sums[ca.KeyFile] != s.sums[ca.KeyFile] {
				t.Errorf("node %s: CA %s changed", n, ca.Name)
			}
		}
		for _, c := range pki.Inventory {
			cert := s.cert(t, c)
			if cert == nil {
				if !c.Optional && (!c.ControlPlaneOnly || n == cp) {
					t.Errorf("node %s: %s missing after recover", n, c.Name)
				}
				continue
			}
			if left := time.Until(cert.NotAfter); left < 360*24*time.Hour {
				t.Errorf("node %s: %s expires in %s, want about a year", n, c.Name, left.Round(time.Minute))
			}
		}
	}
	e.checkConsistent(after)
	e.checkFrontProxyCA(after[cp])
	e.checkWorkloadKept(cmBefore)
	e.checkNoAgentLeftovers()
}

// workload is what must survive: a Deployment and a ConfigMap.
func (e *env) workload() {
	e.t.Helper()
	ctx := context.Background()
	labels := map[string]string{"app": "keep-me"}
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "keep-me", Namespace: "default"}, Spec: appsv1.DeploymentSpec{
		Replicas: ptr.To[int32](2), Selector: &metav1.LabelSelector{MatchLabels: labels},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers:  []corev1.Container{{Name: "pause", Image: e.pauseImage(), ImagePullPolicy: corev1.PullNever}},
		}},
	}}
	if _, err := e.client.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "keep-me", Namespace: "default"}, Data: map[string]string{"answer": "42"}}
	if _, err := e.client.CoreV1().ConfigMaps("default").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.waitDeployment(3 * time.Minute)
}

// pauseImage is the pause image the nodes have preloaded.
func (e *env) pauseImage() string {
	out, err := e.cluster.Exec(context.Background(), e.cps[0], nil, "sh", "-c", "crictl images -o json | grep -o '\"registry.k8s.io/pause:[^\"]*\"' | head -1")
	img := strings.Trim(strings.TrimSpace(string(out)), `"`)
	if err != nil || img == "" {
		e.t.Fatalf("no pause image on the nodes: %v", err)
	}
	return img
}

func (e *env) waitDeployment(timeout time.Duration) {
	e.t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 2*time.Second, timeout, true, func(ctx context.Context) (bool, error) {
		d, err := e.client.AppsV1().Deployments("default").Get(ctx, "keep-me", metav1.GetOptions{})
		return err == nil && d.Status.AvailableReplicas == 2 && d.Status.ObservedGeneration >= d.Generation, nil
	})
	if err != nil {
		e.t.Fatalf("deployment keep-me not available within %s", timeout)
	}
}

// shortenCertificates re-issues, with the cluster's own CAs and the same
// keys, every leaf certificate and kubeconfig of every node and the
// kubelets' client certificates, to expire after validity. It returns the
// latest expiry.
func (e *env) shortenCertificates(snaps map[string]*snapshot, validity time.Duration) time.Time {
	e.t.Helper()
	ctx := context.Background()
	cas := map[string]*pki.Authority{}
	for _, ca := range pki.CAs {
		if a, err := pki.LoadAuthority(snaps[e.cps[0]].root, ca); err == nil {
			cas[ca.Name] = a
		}
	}
	now := time.Now()
	var latest time.Time
	for n, s := range snaps {
		for _, c := range pki.Inventory {
			cert := s.cert(e.t, c)
			a := cas[c.CA.Name]
			if cert == nil || a == nil {
				continue
			}
			tmpl, err := pki.Template(cert, validity, now)
			if err != nil {
				e.t.Fatal(err)
			}
			short, _, err := a.Sign(tmpl, cert.PublicKey)
			if err != nil {
				e.t.Fatal(err)
			}
			if short.NotAfter.After(latest) {
				latest = short.NotAfter
			}
			certPEM := pki.EncodeCertPEM(short)
			var data []byte
			switch {
			case c.Kubeconfig != "":
				cfg, err := clientcmd.LoadFromFile(filepath.Join(s.root, c.Kubeconfig))
				if err != nil {
					e.t.Fatal(err)
				}
				cfg.AuthInfos[cfg.Contexts[cfg.CurrentContext].AuthInfo].ClientCertificateData = certPEM
				if data, err = clientcmd.Write(*cfg); err != nil {
					e.t.Fatal(err)
				}
			case c.CertFile == c.KeyFile: // the kubelet's bundle: certificate, then its key
				bundle, err := pki.ReadFile(s.root, c.CertFile)
				if err != nil {
					e.t.Fatal(err)
				}
				data = certPEM
				for rest := bundle; ; {
					var b *pem.Block
					if b, rest = pem.Decode(rest); b == nil {
						break
					}
					if strings.Contains(b.Type, "PRIVATE KEY") {
						data = append(data, pem.EncodeToMemory(b)...)
					}
				}
			default:
				data = certPEM
			}
			// The shell's redirection writes through the links the kubelet keeps.
			if _, err := e.cluster.Exec(ctx, n, bytes.NewReader(data), "sh", "-c", `cat > "$1"`, "sh", "/"+c.Path()); err != nil {
				e.t.Fatal(err)
			}
		}
	}
	e.t.Logf("every leaf and kubelet client certificate now expires by %s", latest.Format(time.RFC3339))
	return latest
}

// switchOffUntil switches the cluster off until the given time and on
// again: the node containers are frozen (docker pause: no process runs, no
// clock-driven work happens, and unlike a stopped container a frozen one
// keeps its address on the shared kind network), then thawed and rebooted
// as far as Kubernetes sees it: every container stopped and the kubelet
// started afresh, which reads its (now expired) certificate from disk.
func (e *env) switchOffUntil(until time.Time) {
	e.t.Helper()
	docker := func(args ...string) {
		if out, err := exec.Command("docker", args...).CombinedOutput(); err != nil {
			e.t.Fatalf("docker %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	docker(append([]string{"pause"}, e.nodes()...)...)
	e.t.Logf("nodes frozen; switching them on again after %s", until.Format(time.RFC3339))
	time.Sleep(time.Until(until))
	docker(append([]string{"unpause"}, e.nodes()...)...)
	for _, n := range e.nodes() {
		if out, err := e.cluster.Exec(context.Background(), n, nil, "sh", "-c",
			"systemctl stop kubelet && crictl ps -q | xargs -r crictl stop >/dev/null && systemctl start kubelet"); err != nil {
			e.t.Fatalf("node %s: rebooting Kubernetes: %v %s", n, err, out)
		}
	}
}

// checkDead proves the cluster is down: the API does not answer, and no
// kubelet runs, each having said its certificate expired.
func (e *env) checkDead() {
	e.t.Helper()
	time.Sleep(10 * time.Second) // time for the kubelets to start and give up
	if _, err := e.client.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{}); err == nil {
		e.t.Fatal("the API still answers: the cluster is not dead")
	} else {
		e.t.Logf("dead as expected: the API fails: %v", err)
	}
	restarts := func(n string) (int, string) {
		out, _ := e.cluster.Exec(context.Background(), n, nil, "sh", "-c", "systemctl show kubelet -p NRestarts --value; journalctl -u kubelet --no-pager | grep -c expired || true")
		f := strings.Fields(string(out))
		if len(f) < 2 {
			return -1, ""
		}
		r, _ := strconv.Atoi(f[0])
		return r, f[1]
	}
	before := map[string]int{}
	for _, n := range e.nodes() {
		before[n], _ = restarts(n)
	}
	time.Sleep(10 * time.Second)
	for _, n := range e.nodes() {
		after, expired := restarts(n)
		if after <= before[n] || expired == "0" {
			e.t.Fatalf("node %s: the kubelet is not dying of an expired certificate (systemd restarted it %d -> %d times in 10s; %s journal lines say expired)", n, before[n], after, expired)
		}
		e.t.Logf("node %s: the kubelet keeps dying (systemd restarted it %d times in 10s); %s journal lines say its certificate expired", n, after-before[n], expired)
	}
}

// refreshedClient is a client from the kind context recover refreshed.
func (e *env) refreshedClient() kubernetes.Interface {
	e.t.Helper()
	client, config, err := e.cluster.Client()
	if err != nil {
		e.t.Fatal(err)
	}
	e.config = config
	return client
}

// checkFrontProxyCA: the new front-proxy CA signed the new proxy client,
// and kube-apiserver publishes it as the request-header CA aggregated API
// servers trust.
func (e *env) checkFrontProxyCA(s *snapshot) {
	e.t.Helper()
	caPEM, err := pki.ReadFile(s.root, pki.FrontProxyCA.CertFile)
	if err != nil {
		e.t.Fatalf("front-proxy CA not created: %v", err)
	}
	ca, _ := pki.ParseCertificatePEM(caPEM)
	client := s.cert(e.t, pki.Cert{Name: "front-proxy-client", CertFile: "etc/kubernetes/pki/front-proxy-client.crt"})
	if client == nil || client.CheckSignatureFrom(ca) != nil {
		e.t.Error("front-proxy-client is not signed by the new front-proxy CA")
	}
	err = wait.PollUntilContextTimeout(context.Background(), 2*time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		cm, err := e.client.CoreV1().ConfigMaps("kube-system").Get(ctx, "extension-apiserver-authentication", metav1.GetOptions{})
		return err == nil && strings.Contains(cm.Data["requestheader-client-ca-file"], strings.TrimSpace(string(caPEM))), nil
	})
	if err != nil {
		e.t.Error("extension-apiserver-authentication does not carry the new request-header (front-proxy) CA")
	}
}

// checkWorkloadKept: the Deployment's pods run again, the ConfigMap is as
// it was.
func (e *env) checkWorkloadKept(cmBefore *corev1.ConfigMap) {
	e.t.Helper()
	e.waitDeployment(4 * time.Minute)
	cm, err := e.client.CoreV1().ConfigMaps("default").Get(context.Background(), "keep-me", metav1.GetOptions{})
	if err != nil || cm.ResourceVersion != cmBefore.ResourceVersion || cm.Data["answer"] != "42" {
		e.t.Errorf("ConfigMap keep-me changed or lost: %v %+v", err, cm)
	}
}

// checkNoAgentLeftovers: nothing of the agent is left on a node but the
// backups: no binary or results directory, no pending key, no temp file.
func (e *env) checkNoAgentLeftovers() {
	e.t.Helper()
	for _, n := range e.nodes() {
		out, err := e.cluster.Exec(context.Background(), n, nil, "sh", "-c",
			"ls -d /var/lib/rotate-certs.* /tmp/rotate-certs.* 2>/dev/null; find /etc/kubernetes /var/lib/kubelet/pki -name '.rotate-certs-pending-*' -o -name '.*.rotate-certs-*' | grep -v rotate-certs-backup || true")
		if err != nil {
			e.t.Fatal(err)
		}
		if s := strings.TrimSpace(string(out)); s != "" {
			e.t.Errorf("node %s: left behind: %s", n, s)
		}
	}
}
