package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Runner holds what every orchestration needs.
type Runner struct {
	Client kubernetes.Interface
	Exec   Executor
	// Image is the agent image.
	Image string
	// Log receives progress lines (the plugin's stderr).
	Log io.Writer
	// Timeout bounds each wait: a pod starting, a component coming back,
	// a CSR being signed, a node becoming Ready.
	Timeout time.Duration
	// Poll is the interval of waits (shortened in tests).
	Poll time.Duration
}

func (r *Runner) logf(format string, args ...any) {
	if r.Log != nil {
		fmt.Fprintf(r.Log, format+"\n", args...)
	}
}

func (r *Runner) poll() time.Duration {
	if r.Poll > 0 {
		return r.Poll
	}
	return time.Second
}

// ControlPlaneLabels mark control-plane nodes (kubeadm sets the first;
// older clusters the second).
var ControlPlaneLabels = []string{"node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master"}

// IsControlPlane reports whether a node carries a control-plane role label.
func IsControlPlane(n *corev1.Node) bool {
	for _, l := range ControlPlaneLabels {
		if _, ok := n.Labels[l]; ok {
			return true
		}
	}
	return false
}

// NodeReady reports the node's Ready condition.
func NodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// SelectNodes lists the nodes matching selector and, if names are given,
// exactly those (a name that does not exist is an error that lists the
// nodes that do). Control-plane nodes come first, each group sorted by name.
func SelectNodes(ctx context.Context, c kubernetes.Interface, names []string, selector string) ([]corev1.Node, error) {
	list, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, fmt.Errorf("listing nodes: %w", err)
	}
	nodes := list.Items
	if len(names) > 0 {
		var unknown []NodeStatus
		if nodes, unknown = pickNodes(nodes, names, selector); len(unknown) > 0 {
			var msgs []string
			for _, u := range unknown {
				msgs = append(msgs, "node "+u.Node+" "+u.Error)
			}
			return nil, errors.New(strings.Join(msgs, "\n"))
		}
	}
	if len(nodes) == 0 {
		return nil, fmt.Errorf("no nodes match%s", selectorNote(selector))
	}
	sort.SliceStable(nodes, func(i, j int) bool {
		ci, cj := IsControlPlane(&nodes[i]), IsControlPlane(&nodes[j])
		if ci != cj {
			return ci
		}
		return nodes[i].Name < nodes[j].Name
	})
	return nodes, nil
}

func selectorNote(selector string) string {
	if selector == "" {
		return ""
	}
	return fmt.Sprintf(" (selector %q)", selector)
}

// startAgents starts one agent pod per node, parallelism at a time, and
// returns them in node order. On error the pods already started are left
// for the caller's cleanup (deleteRunPods).
func (r *Runner) startAgents(ctx context.Context, nodes []corev1.Node, runID string, readOnly bool, parallelism int) ([]agentPod, []error) {
	pods := make([]agentPod, len(nodes))
	errs := forEach(ctx, len(nodes), parallelism, func(i int) error {
		n := &nodes[i]
		p, err := startPod(ctx, r.Client, PodSpecOptions{Node: n.Name, Image: r.Image, RunID: runID, ReadOnly: readOnly}, r.Timeout)
		if err != nil {
			return err
		}
		pods[i] = agentPod{node: n.Name, pod: p.Name, run: runID, controlPlane: IsControlPlane(n)}
		return nil
	})
	return pods, errs
}

// forEach runs fn for 0..n-1 with at most parallelism at once and returns
// the errors indexed like the items (nil where fn succeeded).
func forEach(ctx context.Context, n, parallelism int, fn func(i int) error) []error {
	if parallelism < 1 {
		parallelism = 1
	}
	errs := make([]error, n)
	sem := make(chan struct{}, parallelism)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			errs[i] = ctx.Err()
			continue
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = fn(i)
		}(i)
	}
	wg.Wait()
	return errs
}

// newRunID names one invocation; its pods and CSRs carry it as a label.
func newRunID() string { return "rc-" + newID() }
