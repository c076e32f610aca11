package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
)

// Runner holds what every orchestration needs.
type Runner struct {
	Client kubernetes.Interface
	Exec   Executor
	// Image is the agent image.
	Image string
	// Log receives progress: at V(0) one line per step and node, and what
	// went wrong; at V(1) what each step did (restarts, verified reloads,
	// backups); at V(2) each agent call with its timing, the retries that
	// succeeded and repeated notes. The zero Logger drops everything.
	Log logr.Logger
	// Timeout bounds each wait: a pod starting, a component coming back,
	// a CSR being signed, a node becoming Ready.
	Timeout time.Duration
	// Poll is the interval of waits (shortened in tests).
	Poll time.Duration
	// KeepBackups is how many runs' backups each node keeps.
	KeepBackups int
	// Drain ends when the user insists on stopping at once (a second
	// Ctrl-C): a change in progress on a node is then no longer waited
	// for (the node still finishes or restores it on its own). Until then,
	// an interrupted run waits for it. Nil: background.
	Drain context.Context

	mu       sync.Mutex
	inflight map[string]api.Action // node -> the change in progress there
	lastCall map[string]time.Time  // agent pod -> when the plugin last spoke to it
	user     *string               // the user, once asked (userName)
	denied   map[permission]bool   // optional permissions the preflight found denied
}

// logf logs a line of progress at the default verbosity.
func (r *Runner) logf(format string, args ...any) {
	r.Log.WithCallDepth(1).Info(fmt.Sprintf(format, args...))
}

// vlogf logs a line at verbosity level (shown with -v level and above).
func (r *Runner) vlogf(level int, format string, args ...any) {
	if l := r.Log.WithCallDepth(1).V(level); l.Enabled() {
		l.Info(fmt.Sprintf(format, args...))
	}
}

// InFlight describes the changes in progress on nodes, for an interrupted
// run to tell the user what it waits for.
func (r *Runner) InFlight() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for n, a := range r.inflight {
		out = append(out, fmt.Sprintf("node %s (%s)", n, a))
	}
	sort.Strings(out)
	return out
}

func (r *Runner) setInFlight(node string, a api.Action) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.inflight == nil {
		r.inflight = map[string]api.Action{}
	}
	if a == "" {
		delete(r.inflight, node)
	} else {
		r.inflight[node] = a
	}
}

func (r *Runner) drain() context.Context {
	if r.Drain != nil {
		return r.Drain
	}
	return context.Background()
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

// agentIdle is how long an agent pod waits for a request before it decides
// the plugin is gone and exits; the plugin pings pods it keeps waiting.
const agentIdle = 5 * time.Minute

// startAgents starts one agent pod per node, with the access access(node)
// gives, and returns them in node order: it creates the pods (parallelism
// at a time), then waits for all of them with one List per poll, so a
// thousand nodes cost a thousand creations, not a thousand polls. deadline
// is the pods' activeDeadlineSeconds. On error the pods already created are
// left for the caller's cleanup (deleteRunPods).
func (r *Runner) startAgents(ctx context.Context, nodes []corev1.Node, runID string, access func(*corev1.Node) Access, deadline time.Duration, parallelism int) ([]agentPod, []error) {
	pods := make([]agentPod, len(nodes))
	names := make([]string, len(nodes))
	errs := forEach(ctx, len(nodes), parallelism, func(i int) error {
		n := &nodes[i]
		pods[i] = agentPod{node: n.Name, run: runID, controlPlane: IsControlPlane(n), obj: n}
		o := PodSpecOptions{Node: n.Name, Image: r.Image, RunID: runID, Access: access(n),
			Idle: agentIdle, Deadline: deadline, Grace: api.TransactionTimeout(r.Timeout) + 30*time.Second}
		created, err := r.Client.CoreV1().Pods(Namespace).Create(ctx, AgentPod(o), metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("node %s: creating the agent pod in %s: %w", n.Name, Namespace, err)
		}
		names[i] = created.Name
		return nil
	})
	want := map[string]string{}
	for i, name := range names {
		if errs[i] == nil {
			want[nodes[i].Name] = name
		}
	}
	failed := waitPodsRunning(ctx, r.Client, runID, r.Image, want, r.Timeout)
	for i, n := range nodes {
		if errs[i] != nil {
			continue
		}
		if errs[i] = failed[n.Name]; errs[i] == nil {
			pods[i].conn = podConn{exec: r.Exec, pod: names[i]}
			r.touched(names[i])
		}
	}
	return pods, errs
}

func (r *Runner) touched(pod string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lastCall == nil {
		r.lastCall = map[string]time.Time{}
	}
	r.lastCall[pod] = time.Now()
}

// keepAlive pings, until stop is closed, every agent pod the plugin has
// not spoken to for a while, so pods waiting their turn do not think the
// plugin is gone.
func (r *Runner) keepAlive(pods []agentPod) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(agentIdle / 5)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			for _, ap := range pods {
				r.mu.Lock()
				if ap.conn == nil {
					r.mu.Unlock()
					continue
				}
				last := r.lastCall[ap.conn.id()]
				r.mu.Unlock()
				if time.Since(last) < agentIdle/5 {
					continue
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				if _, err := ap.conn.agent(ctx, []string{"ping"}, nil); err == nil {
					r.touched(ap.conn.id())
				}
				cancel()
			}
		}
	}()
	return func() { close(done); <-finished }
}

// podDeadline is the activeDeadlineSeconds of a run's agent pods: room for
// two transactions per control plane and per batch of workers.
func podDeadline(timeout time.Duration, controlPlanes, workers, parallelism int) time.Duration {
	steps := controlPlanes + (workers+max(parallelism, 1)-1)/max(parallelism, 1) + 1
	return time.Duration(steps)*2*api.TransactionTimeout(timeout) + 10*time.Minute
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

var runIDPattern = regexp.MustCompile(`^rc-[0-9a-f]{16}$`)

// ValidRunID tells whether s looks like a run ID.
func ValidRunID(s string) bool { return runIDPattern.MatchString(s) }
