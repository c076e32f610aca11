//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/pem"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/yaml"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// The scenarios of issue 8: a run interrupted in the middle of a node's
// transaction, resumed; rollback; kubespray's symlinked layout; and no
// private key material in the API server's audit log.

const (
	auditPolicyDir = "/etc/kubernetes/audit"
	auditLogDir    = "/var/log/kubernetes/audit"
	auditLog       = auditLogDir + "/audit.log"
)

// enableAuditLog turns on kube-apiserver's audit log at RequestResponse for
// everything on a control plane (its static pod manifest gains the flags
// and mounts; the kubelet restarts it), and waits until it serves again.
func (e *env) enableAuditLog(node string) {
	e.t.Helper()
	ctx := context.Background()
	policy := "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: RequestResponse\n"
	if _, err := e.cluster.Exec(ctx, node, strings.NewReader(policy), "sh", "-c", "mkdir -p "+auditPolicyDir+" "+auditLogDir+" && cat > "+auditPolicyDir+"/policy.yaml"); err != nil {
		e.t.Fatal(err)
	}
	const manifest = "/etc/kubernetes/manifests/kube-apiserver.yaml"
	data, err := e.cluster.Exec(ctx, node, nil, "cat", manifest)
	if err != nil {
		e.t.Fatal(err)
	}
	var pod corev1.Pod
	if err := yaml.Unmarshal(data, &pod); err != nil {
		e.t.Fatal(err)
	}
	c := &pod.Spec.Containers[0]
	c.Command = append(c.Command, "--audit-policy-file="+auditPolicyDir+"/policy.yaml", "--audit-log-path="+auditLog, "--audit-log-maxsize=1000", "--audit-log-maxbackup=1")
	dirType := corev1.HostPathDirectoryOrCreate
	for _, v := range []struct {
		name, path string
		ro         bool
	}{{"audit-policy", auditPolicyDir, true}, {"audit-log", auditLogDir, false}} {
		pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: v.name, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: v.path, Type: &dirType}}})
		c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: v.name, MountPath: v.path, ReadOnly: v.ro})
	}
	out, err := yaml.Marshal(&pod)
	if err != nil {
		e.t.Fatal(err)
	}
	// Written beside, then renamed: the kubelet never reads half a manifest.
	if _, err := e.cluster.Exec(ctx, node, bytes.NewReader(out), "sh", "-c", "cat > /etc/kubernetes/audit/apiserver.yaml.new && mv /etc/kubernetes/audit/apiserver.yaml.new "+manifest); err != nil {
		e.t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 2*time.Second, 4*time.Minute, false, func(ctx context.Context) (bool, error) {
		out, err := e.cluster.Exec(ctx, node, nil, "sh", "-c", "test -s "+auditLog+" && echo yes")
		if err != nil || strings.TrimSpace(string(out)) != "yes" {
			return false, nil
		}
		return e.client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).Error() == nil, nil
	})
	if err != nil {
		e.t.Fatalf("node %s: kube-apiserver did not come back with its audit log: %v", node, err)
	}
	e.t.Logf("node %s: audit log at RequestResponse enabled", node)
}

// checkNoKeyMaterialAudited asserts the audit log of every control plane
// holds no private key: no PEM PRIVATE KEY block (nor its base64, in any of
// the three alignments a []byte field would show it), and none of the key
// bytes of any node, before or after (as PEM, or base64 of the PEM file, as
// a []byte field carries it).
func (e *env) checkNoKeyMaterialAudited(snaps ...map[string]*snapshot) {
	e.t.Helper()
	needles := map[string]string{"PRIVATE KEY": "a PEM PRIVATE KEY block"}
	for i := 0; i < 3; i++ {
		b := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("x", i) + "PRIVATE KEY"))
		needles[b[4*((i+2)/3):len(b)-4]] = "a base64 PRIVATE KEY block"
	}
	keys := 0
	for _, s := range snaps {
		for _, snap := range s {
			for path := range snap.sums {
				data, err := os.ReadFile(filepath.Join(snap.root, path))
				if err != nil {
					continue
				}
				for rest := data; ; {
					var block *pem.Block
					block, rest = pem.Decode(rest)
					if block == nil {
						break
					}
					if !strings.Contains(block.Type, "PRIVATE KEY") {
						continue
					}
					keys++
					der := base64.StdEncoding.EncodeToString(block.Bytes)
					needles[der[len(der)/2-24:len(der)/2+24]] = "key bytes of " + snap.node + ":/" + path
					whole := base64.StdEncoding.EncodeToString(pem.EncodeToMemory(block))
					needles[whole[len(whole)/2-24:len(whole)/2+24]] = "the PEM of " + snap.node + ":/" + path
				}
			}
		}
	}
	if keys < 10 {
		e.t.Fatalf("only %d private keys found on the nodes: the check would prove nothing", keys)
	}
	for _, n := range e.cps {
		log, err := e.cluster.Exec(context.Background(), n, nil, "sh", "-c", "cat "+auditLog+"*")
		if err != nil {
			e.t.Fatal(err)
		}
		if !bytes.Contains(log, []byte("certificatesigningrequests")) {
			e.t.Errorf("node %s: the audit log (%d bytes) has no CSR requests: did it record the run?", n, len(log))
		}
		for needle, what := range needles {
			if bytes.Contains(log, []byte(needle)) {
				e.t.Errorf("node %s: the API server's audit log contains %s", n, what)
			}
		}
		e.t.Logf("node %s: audit log of %d bytes checked for %d needles from %d private keys", n, len(log), len(needles), keys)
	}
}

// pluginInterrupted runs the plugin and sends it SIGINT once a line of its
// progress contains trigger and then ready() holds (polled).
func (e *env) pluginInterrupted(trigger string, ready func() bool, args ...string) (stderr string, err error) {
	e.t.Helper()
	args = append(args, "--kubeconfig", e.cluster.KubeconfigPath(), "--image", agentImage, "--timeout", "4m")
	cmd := exec.Command(pluginBin, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	pipe, err := cmd.StderrPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	var errb bytes.Buffer
	var once sync.Once
	sc := bufio.NewScanner(pipe)
	for sc.Scan() {
		line := sc.Text()
		errb.WriteString(line + "\n")
		if strings.Contains(line, trigger) {
			once.Do(func() {
				go func() {
					deadline := time.Now().Add(time.Minute)
					for !ready() && time.Now().Before(deadline) {
						time.Sleep(50 * time.Millisecond)
					}
					e.t.Logf("sending SIGINT (in transaction: %v)", time.Now().Before(deadline))
					_ = cmd.Process.Signal(os.Interrupt)
				}()
			})
		}
	}
	_, _ = io.Copy(io.Discard, pipe)
	err = cmd.Wait()
	e.t.Logf("$ %s %s (interrupted)\n%s%s", filepath.Base(pluginBin), strings.Join(args, " "), out.String(), errb.String())
	return errb.String(), err
}

// inTransaction tells whether a node is in the middle of an action's
// transaction (its journal says in-progress).
func (e *env) inTransaction(node, action string) func() bool {
	return func() bool {
		out, _ := e.cluster.Exec(context.Background(), node, nil, "sh", "-c",
			`grep -l '"state": "in-progress"' /etc/kubernetes/rotate-certs-backup/*-`+action+`/index.json 2>/dev/null || true`)
		return len(bytes.TrimSpace(out)) > 0
	}
}

// checkConsistent asserts every certificate on every node matches its key
// and is signed by its CA: no node is half old, half new.
func (e *env) checkConsistent(snaps map[string]*snapshot) {
	e.t.Helper()
	for n, s := range snaps {
		for _, c := range pki.Inventory {
			cert := s.cert(e.t, c)
			if cert == nil {
				continue
			}
			var keyPEM []byte
			var err error
			if c.Kubeconfig != "" {
				data, _ := os.ReadFile(filepath.Join(s.root, c.Kubeconfig))
				_, user, perr := pki.ParseKubeconfigUser(data)
				if perr != nil {
					e.t.Errorf("node %s: %s: %v", n, c.Name, perr)
					continue
				}
				keyPEM = user.ClientKeyData
			} else {
				keyPEM, err = pki.ReadFile(s.root, c.KeyFile)
				if err != nil {
					e.t.Errorf("node %s: %s: %v", n, c.Name, err)
					continue
				}
			}
			key, err := pki.ParsePrivateKeyPEM(keyPEM)
			if err != nil || !pki.SamePublicKey(key.Public(), cert.PublicKey) {
				e.t.Errorf("node %s: %s does not match its key (%v)", n, c.Name, err)
			}
			if c.CA.CertFile == "" {
				continue
			}
			caPEM, err := pki.ReadFile(s.root, c.CA.CertFile)
			if err != nil {
				continue // a worker has no etcd or front-proxy CA
			}
			ca, err := pki.ParseCertificatePEM(caPEM)
			if err != nil {
				e.t.Fatal(err)
			}
			if err := cert.CheckSignatureFrom(ca); err != nil {
				e.t.Errorf("node %s: %s is not signed by CA %s: %v", n, c.Name, c.CA.Name, err)
			}
		}
		states, _ := e.cluster.Exec(context.Background(), n, nil, "sh", "-c", `cat /etc/kubernetes/rotate-certs-backup/*/index.json 2>/dev/null | grep '"state"' || true`)
		if strings.Contains(string(states), "in-progress") {
			e.t.Errorf("node %s: a transaction has not ended: %s", n, states)
		}
	}
}

// waitNoAgentPods waits until no agent pod is left, terminating or not.
func (e *env) waitNoAgentPods(timeout time.Duration) {
	e.t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), time.Second, timeout, true, func(ctx context.Context) (bool, error) {
		pods, err := e.client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=rotate-certs-agent"})
		return err == nil && len(pods.Items) == 0, nil
	})
	if err != nil {
		e.t.Errorf("agent pods still exist %s after the plugin ended", timeout)
	}
}

// interruptAndResume interrupts `--all` while node is inside a transaction
// of action, checks that every node ends consistent, the plugin reported
// the node and its outcome, and no agent pod stays; then resumes.
func (e *env) interruptAndResume(node, action, trigger string) {
	e.t.Helper()
	t := e.t
	before := e.snapshots()
	stderr, err := e.pluginInterrupted(trigger, e.inTransaction(node, action), "--all")
	if err == nil {
		t.Fatal("the interrupted run exited 0")
	}
	if !regexp.MustCompile(`node ` + regexp.QuoteMeta(node) + `: the [a-z-]+ in progress when interrupted ended: (completed|failed and restored)`).MatchString(stderr) {
		t.Errorf("the plugin did not report node %s's transaction and its outcome", node)
	}
	if !strings.Contains(stderr, "run the same command again to resume") {
		t.Error("the plugin did not say how to resume")
	}
	e.waitNoAgentPods(3 * time.Minute)
	e.checkConsistent(e.snapshots())
	e.waitNodesReady(3 * time.Minute)

	_, stderr, err = e.plugin(pluginBin, "--all")
	if err != nil {
		t.Fatalf("resuming: %v", err)
	}
	if !strings.Contains(stderr, "resuming run") {
		t.Error("the second run did not resume the interrupted one")
	}
	after := e.snapshots()
	e.checkRenewed(before, after, allServices...)
	e.checkConsistent(after)
	e.checkServes(after)
	e.checkNodesReady()
	e.checkNoAgentPods()
}

// waitNodesReady waits until every node is Ready.
func (e *env) waitNodesReady(timeout time.Duration) {
	e.t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 2*time.Second, timeout, true, func(ctx context.Context) (bool, error) {
		nodes, err := e.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for _, n := range nodes.Items {
			ready := false
			for _, c := range n.Status.Conditions {
				ready = ready || (c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue)
			}
			if !ready {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		e.t.Errorf("nodes not Ready within %s", timeout)
	}
}

var runRe = regexp.MustCompile(`run (rc-[0-9a-f]{16}): the nodes keep backups`)

// rollbackLastRun rotates, then rolls that run back: every file as before
// it, served again, every node Ready.
func (e *env) rollbackLastRun() {
	e.t.Helper()
	before := e.snapshots()
	_, stderr, err := e.plugin(pluginBin, "--all")
	if err != nil {
		e.t.Fatal(err)
	}
	m := runRe.FindStringSubmatch(stderr)
	if m == nil {
		e.t.Fatal("the run did not name itself")
	}
	out, _, err := e.plugin(pluginBin, "rollback", "--run", m[1], "--dry-run")
	if err != nil || !strings.Contains(out, e.cps[0]) || !strings.Contains(out, "/etc/kubernetes/pki/apiserver.crt") {
		e.t.Errorf("rollback --dry-run: %v\n%s", err, out)
	}
	e.mustPlugin("rollback", "--run", m[1])
	after := e.snapshots()
	for n := range before {
		if c := changedFiles(before[n], after[n]); len(c) > 0 {
			e.t.Errorf("node %s: after rolling back run %s these differ from before it: %v", n, m[1], c)
		}
	}
	e.checkServes(after)
	e.checkConsistent(after)
	e.checkNodesReady()
	e.checkNoAgentPods()
}

// kubesprayLayout moves a control plane's certificates to
// /etc/kubernetes/ssl and links /etc/kubernetes/pki to it, as kubespray
// does; running components keep their mounts (the same directory inode).
func (e *env) kubesprayLayout(node string) {
	e.t.Helper()
	if _, err := e.cluster.Exec(context.Background(), node, nil, "sh", "-c",
		"mv /etc/kubernetes/pki /etc/kubernetes/ssl && ln -s /etc/kubernetes/ssl /etc/kubernetes/pki"); err != nil {
		e.t.Fatal(err)
	}
}
