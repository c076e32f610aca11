// Package orchestrator runs on the user's machine. It finds the nodes,
// starts one agent pod per node, drives the agents through their JSON
// contract (pkg/api), gets kubelet certificates signed through the
// CertificateSigningRequest API, orders the work (control planes one at a
// time, workers with bounded parallelism), checks health, and always deletes
// its pods.
package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
)

const (
	// Namespace is where agent pods run: system-node-critical pods are
	// only admitted there by default.
	Namespace = "kube-system"
	// LabelApp marks every agent pod, for cleanup and for users.
	LabelApp = "app.kubernetes.io/name"
	// AppName is LabelApp's value.
	AppName = "rotate-certs-agent"
	// LabelRun ties a pod to one invocation of the plugin.
	LabelRun      = "rotate-certs.io/run"
	containerName = "agent"
)

// Access is what an agent pod may do on its node; the pod gets the
// mounts and privileges for that and nothing more.
type Access struct {
	// ReadOnly pods (status, --dry-run) are unprivileged, share no host
	// namespace and mount /etc/kubernetes and /var/lib/kubelet/pki
	// read-only.
	ReadOnly bool
	// ControlPlane: renews /etc/kubernetes and signals the static pods
	// (host PID and network namespaces, privileged).
	ControlPlane bool
	// Kubelet: installs the kubelet's certificates in /var/lib/kubelet/pki
	// (never all of /var/lib/kubelet, which holds every pod's secrets),
	// reads its config.yaml and restarts it through systemd.
	Kubelet bool
	// KubeletConfig: reads the kubelet's config.yaml (read-only), as
	// ca status does for its clientCAFile. Kubelet implies it.
	KubeletConfig bool
}

// PodSpecOptions shapes an agent pod.
type PodSpecOptions struct {
	Node   string
	Image  string
	RunID  string
	Access Access
	// Idle ends the pod when the plugin sent nothing for this long.
	Idle time.Duration
	// Deadline is the pod's activeDeadlineSeconds: it never outlives it.
	Deadline time.Duration
	// Grace is how long a deleted pod may take to stop: the length of a
	// node transaction, which always runs to its end.
	Grace time.Duration
}

// AgentPod returns the pod that runs the agent on one node: pinned by
// nodeName (no scheduler needed, works on cordoned nodes), tolerating every
// taint, system-node-critical, with a deadline, and with only the mounts and
// privileges its Access needs.
func AgentPod(o PodSpecOptions) *corev1.Pod {
	type hostPath struct {
		name, path string
		kind       corev1.HostPathType
		readOnly   bool
	}
	write := !o.Access.ReadOnly
	kubelet := write && o.Access.Kubelet
	mounts := []hostPath{
		{"etc-kubernetes", "/etc/kubernetes", corev1.HostPathDirectory, !write},
		{"kubelet-pki", "/var/lib/kubelet/pki", corev1.HostPathDirectory, !kubelet},
	}
	if kubelet || o.Access.KubeletConfig {
		mounts = append(mounts, hostPath{"kubelet-config", "/var/lib/kubelet/config.yaml", corev1.HostPathFile, true})
	}
	if kubelet {
		mounts = append(mounts, hostPath{"run-systemd", "/run/systemd", corev1.HostPathDirectory, false})
	}
	command := []string{api.Binary, "agent", "serve", "--idle", o.Idle.String(), "--drain", o.Grace.String()}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "rotate-certs-" + truncate(o.Node, 40) + "-",
			Namespace:    Namespace,
			Labels:       map[string]string{LabelApp: AppName, LabelRun: o.RunID},
		},
		Spec: corev1.PodSpec{
			NodeName:                      o.Node,
			RestartPolicy:                 corev1.RestartPolicyNever,
			Tolerations:                   []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			PriorityClassName:             "system-node-critical",
			AutomountServiceAccountToken:  ptr.To(false),
			EnableServiceLinks:            ptr.To(false),
			TerminationGracePeriodSeconds: ptr.To(int64(max(o.Grace, time.Second) / time.Second)),
			ActiveDeadlineSeconds:         ptr.To(int64(max(o.Deadline, time.Minute) / time.Second)),
			HostPID:                       write,
			HostNetwork:                   write,
			Containers: []corev1.Container{{
				Name:            containerName,
				Image:           o.Image,
				ImagePullPolicy: corev1.PullIfNotPresent,
				Command:         command,
				SecurityContext: &corev1.SecurityContext{Privileged: ptr.To(write), RunAsUser: ptr.To[int64](0)},
				VolumeMounts:    []corev1.VolumeMount{{Name: "results", MountPath: api.ResultsDir}},
			}},
			Volumes: []corev1.Volume{{Name: "results", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
		},
	}
	if !write {
		pod.Spec.Containers[0].SecurityContext.AllowPrivilegeEscalation = ptr.To(false)
		pod.Spec.Containers[0].SecurityContext.Capabilities = &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"DAC_READ_SEARCH"}}
	}
	for _, m := range mounts {
		pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: m.name, VolumeSource: corev1.VolumeSource{
			HostPath: &corev1.HostPathVolumeSource{Path: m.path, Type: ptr.To(m.kind)}}})
		pod.Spec.Containers[0].VolumeMounts = append(pod.Spec.Containers[0].VolumeMounts,
			corev1.VolumeMount{Name: m.name, MountPath: api.HostRoot + m.path, ReadOnly: m.readOnly})
	}
	return pod
}

func truncate(s string, n int) string {
	s = strings.TrimSuffix(s[:min(len(s), n)], ".")
	return strings.TrimSuffix(s, "-")
}

// podProgress says how far an agent pod got: running, still starting (and
// why), or failed for good (an image that cannot be pulled, a pod that ended).
func podProgress(p *corev1.Pod, image string) (running bool, reason string, fatal error) {
	switch p.Status.Phase {
	case corev1.PodRunning:
		return true, "", nil
	case corev1.PodFailed, corev1.PodSucceeded:
		return false, "", fmt.Errorf("agent pod %s ended (%s): %s", p.Name, p.Status.Phase, p.Status.Message)
	}
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil && w.Reason != "" && w.Reason != "ContainerCreating" {
			reason = w.Reason + ": " + w.Message
			if w.Reason == "ErrImagePull" || w.Reason == "ImagePullBackOff" || w.Reason == "InvalidImageName" {
				return false, reason, fmt.Errorf("the agent image %s cannot be pulled on node %s (%s); point --image at a registry the node can reach", image, p.Spec.NodeName, reason)
			}
		}
	}
	if reason == "" {
		reason = "pod is " + string(p.Status.Phase)
	}
	return false, reason, nil
}

// waitPodsRunning waits until every pod of the run named in want (node ->
// pod name) runs, with one List per poll however many there are. It
// returns an error per node that did not get there.
func waitPodsRunning(ctx context.Context, c kubernetes.Interface, runID, image string, want map[string]string, timeout time.Duration) map[string]error {
	pending := map[string]string{}
	for node, pod := range want {
		pending[node] = pod
	}
	reasons := map[string]string{}
	failed := map[string]error{}
	_ = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		list, err := c.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: LabelRun + "=" + runID})
		if err != nil {
			for node := range pending {
				reasons[node] = err.Error()
			}
			return false, nil
		}
		byName := map[string]*corev1.Pod{}
		for i := range list.Items {
			byName[list.Items[i].Name] = &list.Items[i]
		}
		for node, name := range pending {
			p, ok := byName[name]
			if !ok {
				reasons[node] = "pod not found"
				continue
			}
			running, reason, fatal := podProgress(p, image)
			switch {
			case fatal != nil:
				failed[node] = fatal
				delete(pending, node)
			case running:
				delete(pending, node)
			default:
				reasons[node] = reason
			}
		}
		return len(pending) == 0, nil
	})
	for node := range pending {
		failed[node] = fmt.Errorf("the agent pod did not start within %s (%s); is the node reachable and Ready?", timeout, reasons[node])
	}
	for node, err := range failed {
		failed[node] = fmt.Errorf("node %s: %w", node, err)
	}
	return failed
}

// deleteRunPods deletes every pod of this run, each with its grace period
// (it does not wait for them to be gone). It uses its own context so
// cleanup also happens after Ctrl-C cancelled the run's context.
func deleteRunPods(c kubernetes.Interface, runID string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pods := c.CoreV1().Pods(Namespace)
	list, err := pods.List(ctx, metav1.ListOptions{LabelSelector: LabelRun + "=" + runID})
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range list.Items {
		// The pod's own grace period: its main process waits for a running
		// transaction to end before it exits.
		err := pods.Delete(ctx, p.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
