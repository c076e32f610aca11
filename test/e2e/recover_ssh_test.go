//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// sshAccess is what the test needs to reach the nodes over SSH: Debian's
// openssh-server in the node image, started with host keys generated here
// and pinned in a known_hosts file of the test's own.
type sshAccess struct {
	key, knownHosts, wrongKnownHosts string
	targets                          []string // root@<node IP>
}

// enableSSH gives every node a fresh host key and root a fresh authorized
// key, and starts sshd (it stays enabled across node restarts). Without
// sshd in the node image (an upstream kindest/node image) it returns nil.
func (e *env) enableSSH() *sshAccess {
	e.t.Helper()
	ctx := context.Background()
	dir := e.t.TempDir()
	_, clientKey, _ := ed25519.GenerateKey(rand.Reader)
	block, err := ssh.MarshalPrivateKey(clientKey, "rotate-certs e2e")
	if err != nil {
		e.t.Fatal(err)
	}
	a := &sshAccess{key: filepath.Join(dir, "id_ed25519"), knownHosts: filepath.Join(dir, "known_hosts"), wrongKnownHosts: filepath.Join(dir, "known_hosts.wrong")}
	if err := os.WriteFile(a.key, pem.EncodeToMemory(block), 0o600); err != nil {
		e.t.Fatal(err)
	}
	clientPub, _ := ssh.NewPublicKey(clientKey.Public())
	var known, wrong bytes.Buffer
	for _, n := range e.nodes() {
		if _, err := e.cluster.Exec(ctx, n, nil, "test", "-x", "/usr/sbin/sshd"); err != nil {
			e.t.Logf("node %s has no /usr/sbin/sshd (an upstream kindest/node image; the offline one built by hack/build-node-image.sh has it): recover over SSH is NOT tested", n)
			return nil
		}
		_, hostKey, _ := ed25519.GenerateKey(rand.Reader)
		hb, _ := ssh.MarshalPrivateKey(hostKey, "")
		hostPub, _ := ssh.NewPublicKey(hostKey.Public())
		_, other, _ := ed25519.GenerateKey(rand.Reader)
		otherPub, _ := ssh.NewPublicKey(other.Public())
		ip := e.nodeIP(n)
		fmt.Fprintf(&known, "%s %s", ip, ssh.MarshalAuthorizedKey(hostPub))
		fmt.Fprintf(&wrong, "%s %s", ip, ssh.MarshalAuthorizedKey(otherPub))
		a.targets = append(a.targets, "root@"+ip)
		script := `set -e
rm -f /etc/ssh/ssh_host_*
cat > /etc/ssh/ssh_host_ed25519_key
chmod 0600 /etc/ssh/ssh_host_ed25519_key
mkdir -p -m 0700 /root/.ssh
printf '%s\n' "$1" > /root/.ssh/authorized_keys
chmod 0600 /root/.ssh/authorized_keys
systemctl unmask ssh.service >/dev/null 2>&1 || true
systemctl enable --now ssh.service`
		if out, err := e.cluster.Exec(ctx, n, bytes.NewReader(pem.EncodeToMemory(hb)), "bash", "-c", script, "bash", strings.TrimSpace(string(ssh.MarshalAuthorizedKey(clientPub)))); err != nil {
			e.t.Fatalf("node %s: starting sshd: %v %s", n, err, out)
		}
	}
	for p, b := range map[string][]byte{a.knownHosts: known.Bytes(), a.wrongKnownHosts: wrong.Bytes()} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			e.t.Fatal(err)
		}
	}
	return a
}

func (a *sshAccess) args(knownHosts string, targets ...string) []string {
	if len(targets) == 0 {
		targets = a.targets
	}
	return []string{"recover", "--ssh", strings.Join(targets, ","), "--ssh-key", a.key, "--ssh-known-hosts", knownHosts}
}

// checkRecoverRefusals: bad input to recover is one clear error each, and
// no node changes.
func (e *env) checkRecoverRefusals(a *sshAccess) {
	e.t.Helper()
	before := e.snapshots()
	for _, tc := range []struct {
		what string
		args []string
		want string
	}{
		{"a wrong host key", a.args(a.wrongKnownHosts), "man-in-the-middle"},
		{"an unknown host key", a.args(filepath.Join(e.t.TempDir(), "empty")), "ssh-keyscan"},
		{"an unreachable host", a.args(a.knownHosts, append(append([]string{}, a.targets...), "root@127.0.0.1:1")...), "127.0.0.1"},
		{"a node that is not kubeadm's", []string{"recover", "--local"}, "not a kubeadm-layout node"},
	} {
		_, stderr, err := e.plugin(pluginBin, tc.args...)
		if err == nil || !strings.Contains(stderr, tc.want) {
			e.t.Errorf("%s: exit %v, error does not say %q", tc.what, err, tc.want)
		}
	}
	e.checkUnchanged(before, "a refused recover")
}

// recoverOverSSH runs recover through SSH against the (dead) cluster and
// returns the kubeconfig it wrote, with the server the test reaches.
func (e *env) recoverOverSSH(a *sshAccess) (string, time.Duration) {
	e.t.Helper()
	out := filepath.Join(e.t.TempDir(), "admin.conf")
	u, err := url.Parse(e.config.Host)
	if err != nil {
		e.t.Fatal(err)
	}
	start := time.Now()
	_, stderr, err := e.plugin(pluginBin, append(a.args(a.knownHosts), "--write-kubeconfig", out, "--server", "https://"+u.Host)...)
	took := time.Since(start)
	if err != nil {
		e.t.Fatalf("recover --ssh failed after %s: %v", took.Round(time.Second), err)
	}
	if !strings.Contains(stderr, "wrote the renewed admin.conf to "+out) {
		e.t.Error("recover --ssh did not say where it wrote admin.conf")
	}
	if st, err := os.Stat(out); err != nil || st.Mode().Perm() != 0o600 {
		e.t.Errorf("written admin.conf: %v %v", st, err)
	}
	return out, took
}

// checkKubeconfigWorks: a written admin.conf authenticates (pointed at the
// server the test reaches: its own server is a node name only other nodes
// resolve).
func (e *env) checkKubeconfigWorks(path string) {
	e.t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		e.t.Fatal(err)
	}
	cfg.Host = e.config.Host
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := client.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{}); err != nil {
		e.t.Errorf("the written admin.conf does not work: %v", err)
	}
}
