// Package framework creates and drives the kind clusters of the project's e2e tests through
// kind's Go API (sigs.k8s.io/kind, the version in go.mod: v0.33.0, whose HA load balancer is
// envoy; hack/build-node-image.sh provides a stand-in image where envoy cannot be pulled).
//
// Host-specific settings are detected, not assumed: on a host whose Docker runs cgroup v1 the
// kubelet is configured with failCgroupV1: false (Kubernetes >= 1.35 refuses cgroup v1 otherwise,
// KEP-5573) and kubeadm's SystemVerification preflight check is ignored; cgroup v2 hosts get
// neither (see hostKubeadmPatches).
//
// Clusters are created with kind's default CNI disabled; the project's own pod network
// (test/e2e/cni) is installed instead, because kindnetd cannot be built offline. The node image
// comes from hack/build-node-image.sh through ROTATE_CERTS_NODE_IMAGE (see NodeImageFromEnv).
package framework

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/kind/pkg/apis/config/defaults"
	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	kindcluster "sigs.k8s.io/kind/pkg/cluster"
	"sigs.k8s.io/kind/pkg/cluster/constants"
	"sigs.k8s.io/kind/pkg/cluster/nodes"
	"sigs.k8s.io/kind/pkg/cluster/nodeutils"
)

// NodeImageEnv names the environment variable holding the node image to use.
const NodeImageEnv = "ROTATE_CERTS_NODE_IMAGE"

// ClusterPrefixEnv names an optional prefix for every cluster name (e.g. "rc-ver-"), so that
// several suites can share one Docker daemon.
const ClusterPrefixEnv = "ROTATE_CERTS_E2E_CLUSTER_PREFIX"

// DefaultReadyTimeout bounds the wait for Ready nodes and running CoreDNS when the context
// passed to CreateCluster has no deadline.
const DefaultReadyTimeout = 5 * time.Minute

// Options describe a cluster to create.
type Options struct {
	// Name is the kind cluster name; node containers are named <Name>-control-plane,
	// <Name>-control-plane2, <Name>-worker, ... Defaults to "rotate-certs-e2e".
	Name string
	// ControlPlanes defaults to 1; with more than one kind adds its load balancer (envoy).
	ControlPlanes, Workers int
	// NodeImage defaults to NodeImageFromEnv().
	NodeImage string
	// KubeconfigPath is where kind writes the external (host-reachable) kubeconfig. Defaults
	// to a file in os.TempDir() that Delete removes.
	KubeconfigPath string
	// KubeadmConfigPatches are kind kubeadmConfigPatches (merge patches matched by kind and,
	// if they name one, apiVersion: kind silently drops a patch whose apiVersion is not the one
	// it writes, kubeadm.k8s.io/v1beta4 from Kubernetes 1.36, v1beta3 before).
	KubeadmConfigPatches []string
}

// Cluster is a running kind cluster.
type Cluster struct {
	name           string
	kubeconfigPath string
	ownKubeconfig  bool
	provider       *kindcluster.Provider
}

// NodeImageFromEnv returns $ROTATE_CERTS_NODE_IMAGE, else kind's default upstream node image
// (which cannot be pulled on machines without a registry).
func NodeImageFromEnv() string {
	if img := strings.TrimSpace(os.Getenv(NodeImageEnv)); img != "" {
		return img
	}
	return defaults.Image
}

// CreateCluster creates a cluster, installs the pod network, and waits until every node is
// Ready and CoreDNS runs. On failure it deletes what it created. Progress goes to log.
func CreateCluster(ctx context.Context, o Options, log io.Writer) (*Cluster, error) {
	if log == nil {
		log = io.Discard
	}
	if o.Name == "" {
		o.Name = "rotate-certs-e2e"
	}
	o.Name = strings.TrimSpace(os.Getenv(ClusterPrefixEnv)) + o.Name
	if o.ControlPlanes <= 0 {
		o.ControlPlanes = 1
	}
	if o.NodeImage == "" {
		o.NodeImage = NodeImageFromEnv()
	}
	c := &Cluster{
		name:     o.Name,
		provider: kindcluster.NewProvider(kindcluster.ProviderWithDocker(), kindcluster.ProviderWithLogger(newKindLogger(log))),
	}
	if o.KubeconfigPath == "" {
		c.kubeconfigPath = filepath.Join(os.TempDir(), "rotate-certs-e2e-"+o.Name+".kubeconfig")
		c.ownKubeconfig = true
	} else {
		c.kubeconfigPath = o.KubeconfigPath
	}
	logf(log, "creating cluster %q: %d control plane(s), %d worker(s), image %s", o.Name, o.ControlPlanes, o.Workers, o.NodeImage)

	start := time.Now()
	cniImage, err := ensureCNIImage(ctx, log)
	if err != nil {
		return nil, fmt.Errorf("pod network image: %w", err)
	}

	cfg := &v1alpha4.Cluster{}
	for i := 0; i < o.ControlPlanes; i++ {
		cfg.Nodes = append(cfg.Nodes, v1alpha4.Node{Role: v1alpha4.ControlPlaneRole})
	}
	for i := 0; i < o.Workers; i++ {
		cfg.Nodes = append(cfg.Nodes, v1alpha4.Node{Role: v1alpha4.WorkerRole})
	}
	cfg.Networking.DisableDefaultCNI = true
	hostPatches, err := hostKubeadmPatches(ctx, log)
	if err != nil {
		return nil, err
	}
	cfg.KubeadmConfigPatches = append(hostPatches, o.KubeadmConfigPatches...)
	err = c.provider.Create(o.Name,
		kindcluster.CreateWithV1Alpha4Config(cfg),
		kindcluster.CreateWithNodeImage(o.NodeImage),
		kindcluster.CreateWithKubeconfigPath(c.kubeconfigPath),
		kindcluster.CreateWithRetain(false), // kind deletes the nodes itself when create fails
		kindcluster.CreateWithWaitForReady(0),
		kindcluster.CreateWithDisplayUsage(false),
		kindcluster.CreateWithDisplaySalutation(false),
	)
	if err != nil {
		c.removeOwnKubeconfig()
		return nil, fmt.Errorf("kind create cluster %q: %w", o.Name, err)
	}
	logf(log, "kind create returned after %s", time.Since(start).Round(time.Second))

	fail := func(err error) (*Cluster, error) {
		if derr := c.Delete(); derr != nil {
			logf(log, "deleting cluster %q after failure: %v", o.Name, derr)
		}
		return nil, err
	}
	if err := c.LoadImage(ctx, cniImage); err != nil {
		return fail(fmt.Errorf("loading pod network image: %w", err))
	}
	client, _, err := c.Client()
	if err != nil {
		return fail(err)
	}
	if err := installCNI(ctx, client, cniImage); err != nil {
		return fail(fmt.Errorf("installing pod network: %w", err))
	}
	if err := waitReady(ctx, client, o.ControlPlanes+o.Workers, log); err != nil {
		return fail(err)
	}
	logf(log, "cluster %q ready after %s", o.Name, time.Since(start).Round(time.Second))
	return c, nil
}

// Name is the kind cluster name.
func (c *Cluster) Name() string { return c.name }

// KubeconfigPath is the external kubeconfig kind wrote (server https://127.0.0.1:<port>).
func (c *Cluster) KubeconfigPath() string { return c.kubeconfigPath }

// Client returns a clientset and its config for the cluster's kind-<name> context.
func (c *Cluster) Client() (kubernetes.Interface, *rest.Config, error) {
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: c.kubeconfigPath},
		&clientcmd.ConfigOverrides{CurrentContext: "kind-" + c.name},
	).ClientConfig()
	if err != nil {
		return nil, nil, fmt.Errorf("kubeconfig %s: %w", c.kubeconfigPath, err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	return client, cfg, nil
}

// Nodes returns the node (container) names by role, sorted; the load balancer is not a node.
func (c *Cluster) Nodes() (controlPlanes, workers []string, err error) {
	all, err := c.provider.ListNodes(c.name)
	if err != nil {
		return nil, nil, err
	}
	for _, n := range all {
		role, err := n.Role()
		if err != nil {
			return nil, nil, err
		}
		switch role {
		case constants.ControlPlaneNodeRoleValue:
			controlPlanes = append(controlPlanes, n.String())
		case constants.WorkerNodeRoleValue:
			workers = append(workers, n.String())
		}
	}
	sort.Strings(controlPlanes)
	sort.Strings(workers)
	return controlPlanes, workers, nil
}

// Exec runs args in the node container (as `docker exec --privileged` does) and returns its
// stdout; the error includes stderr.
func (c *Cluster) Exec(ctx context.Context, node string, stdin io.Reader, args ...string) ([]byte, error) {
	if len(args) == 0 {
		return nil, errors.New("exec: no command")
	}
	n, err := c.node(node)
	if err != nil {
		return nil, err
	}
	var stdout, stderr bytes.Buffer
	cmd := n.CommandContext(ctx, args[0], args[1:]...).SetStdout(&stdout).SetStderr(&stderr)
	if stdin != nil {
		cmd.SetStdin(stdin)
	}
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s on %s: %w: %s", strings.Join(args, " "), node, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// LoadImage loads a local docker image into every node's containerd, like
// `kind load docker-image`.
func (c *Cluster) LoadImage(ctx context.Context, image string) error {
	all, err := c.provider.ListInternalNodes(c.name)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "rotate-certs-image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	archive := filepath.Join(dir, "image.tar")
	if out, err := exec.CommandContext(ctx, "docker", "save", "-o", archive, image).CombinedOutput(); err != nil {
		return fmt.Errorf("docker save %s: %w: %s", image, err, strings.TrimSpace(string(out)))
	}
	var wg sync.WaitGroup
	errs := make([]error, len(all))
	for i, n := range all {
		wg.Add(1)
		go func(i int, n nodes.Node) {
			defer wg.Done()
			f, err := os.Open(archive)
			if err != nil {
				errs[i] = err
				return
			}
			defer f.Close()
			if err := nodeutils.LoadImageArchive(n, f); err != nil {
				errs[i] = fmt.Errorf("loading %s into %s: %w", image, n.String(), err)
			}
		}(i, n)
	}
	wg.Wait()
	return errors.Join(errs...)
}

// CollectLogs writes kind's diagnostics (journals, container logs, docker inspect of every
// node) under dir, like `kind export logs`; useful before Delete when a test failed.
func (c *Cluster) CollectLogs(dir string) error {
	return c.provider.CollectLogs(c.name, dir)
}

// Delete deletes the cluster and, when CreateCluster chose it, the kubeconfig file.
func (c *Cluster) Delete() error {
	err := c.provider.Delete(c.name, c.kubeconfigPath)
	c.removeOwnKubeconfig()
	return err
}

func (c *Cluster) removeOwnKubeconfig() {
	if c.ownKubeconfig {
		_ = os.Remove(c.kubeconfigPath)
	}
}

func (c *Cluster) node(name string) (nodes.Node, error) {
	all, err := c.provider.ListNodes(c.name)
	if err != nil {
		return nil, err
	}
	for _, n := range all {
		if n.String() == name {
			return n, nil
		}
	}
	return nil, fmt.Errorf("cluster %q has no node %q", c.name, name)
}

// waitReady waits until want nodes are Ready and every CoreDNS pod is Running and Ready.
func waitReady(ctx context.Context, client kubernetes.Interface, want int, log io.Writer) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultReadyTimeout)
		defer cancel()
	}
	var last string
	err := wait.PollUntilContextCancel(ctx, time.Second, true, func(ctx context.Context) (bool, error) {
		nodeList, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		ready := 0
		for _, n := range nodeList.Items {
			for _, cond := range n.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
					ready++
				}
			}
		}
		if ready < want {
			last = fmt.Sprintf("%d/%d nodes Ready", ready, want)
			return false, nil
		}
		pods, err := client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=kube-dns"})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		running := 0
		for _, p := range pods.Items {
			if p.Status.Phase == corev1.PodRunning && podReady(&p) {
				running++
			}
		}
		if len(pods.Items) == 0 || running < len(pods.Items) {
			last = fmt.Sprintf("nodes Ready, %d/%d CoreDNS pods running", running, len(pods.Items))
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for Ready nodes and CoreDNS (%s): %w", last, err)
	}
	return nil
}

func podReady(p *corev1.Pod) bool {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

func logf(w io.Writer, format string, args ...any) {
	fmt.Fprintf(w, "%s framework: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}
