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
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// RotateOptions say what to rotate where.
type RotateOptions struct {
	Services    []pki.Service // already validated; --all adds pki.ServiceAdmin
	NodeNames   []string
	Selector    string
	Validity    time.Duration
	Restart     string // api.RestartNeeded or api.RestartAll
	Parallelism int
	DryRun      bool
}

// Row is one certificate in the report.
type Row struct {
	Node        string
	Certificate string
	Path        string
	OldSerial   string
	NewSerial   string // empty in a dry run
	OldNotAfter time.Time
	NewNotAfter time.Time
}

// Report is the outcome of a rotation (or, in a dry run, its plan).
type Report struct {
	DryRun bool
	Rows   []Row
	Notes  []string
}

func (rep *Report) note(format string, args ...any) {
	rep.Notes = append(rep.Notes, fmt.Sprintf(format, args...))
}

func (o RotateOptions) has(s pki.Service) bool {
	for _, x := range o.Services {
		if x == s {
			return true
		}
	}
	return false
}

// controlPlaneServices are rotated by the agent's Renew action.
var controlPlaneServices = []pki.Service{pki.ServiceEtcd, pki.ServiceAPIServer, pki.ServiceControllerManager, pki.ServiceScheduler, pki.ServiceAdmin}

func (o RotateOptions) renewServices() []string {
	var out []string
	for _, s := range controlPlaneServices {
		if o.has(s) {
			out = append(out, string(s))
		}
	}
	return out
}

// Rotate renews the requested services' certificates on the selected
// nodes. Every node is inspected and every renewal planned before any node
// is changed; control planes go one at a time, each proven healthy before
// the next; workers follow, Parallelism at a time. Agent pods are deleted
// whatever happens.
func (r *Runner) Rotate(ctx context.Context, o RotateOptions) (rep *Report, err error) {
	rep = &Report{DryRun: o.DryRun}
	nodes, err := SelectNodes(ctx, r.Client, o.NodeNames, o.Selector)
	if err != nil {
		return rep, err
	}
	cpWork := len(o.renewServices()) > 0
	var targets []corev1.Node
	for _, n := range nodes {
		cp := IsControlPlane(&n)
		if (cp && cpWork) || o.has(pki.ServiceKubelet) {
			targets = append(targets, n)
		} else if len(o.NodeNames) > 0 {
			rep.note("node %s: nothing to rotate there for %s", n.Name, servicesString(o.Services))
		}
	}
	if cpWork && !anyControlPlane(targets) {
		return rep, fmt.Errorf("%s live on control-plane nodes, and none is selected (control planes carry the label %s)", servicesString(o.Services), ControlPlaneLabels[0])
	}
	if err := r.Preflight(ctx, o.has(pki.ServiceKubelet), o.has(pki.ServiceKubeProxy) && !o.DryRun); err != nil {
		return rep, err
	}

	runID := newRunID()
	defer func() {
		if derr := deleteRunPods(r.Client, runID); derr != nil {
			err = errors.Join(err, fmt.Errorf("deleting agent pods (label %s=%s): %w", LabelRun, runID, derr))
		}
	}()
	if len(targets) > 0 {
		r.logf("Starting %d agent pod(s) (image %s)", len(targets), r.Image)
	}
	agents, errs := r.startAgents(ctx, targets, runID, false, max(o.Parallelism, 4))
	if err := errors.Join(errs...); err != nil {
		return rep, fmt.Errorf("%w\nno file on any node was changed", err)
	}

	// Plan everywhere first: one bad node stops the run before any write.
	inspects := make([]*api.InspectResult, len(agents))
	errs = forEach(ctx, len(agents), max(o.Parallelism, 4), func(i int) error {
		res, err := r.call(ctx, agents[i], api.Request{Action: api.Inspect, Services: servicesFor(o, agents[i]), Validity: o.Validity})
		if err != nil {
			return err
		}
		inspects[i] = res.Inspect
		if len(res.Inspect.Problems) > 0 {
			return fmt.Errorf("node %s: %s", agents[i].node, strings.Join(res.Inspect.Problems, "; "))
		}
		return nil
	})
	if err := errors.Join(errs...); err != nil {
		return rep, fmt.Errorf("%w\nno file on any node was changed", err)
	}
	for i, in := range inspects {
		for _, n := range in.Notes {
			rep.note("node %s: %s", agents[i].node, n)
		}
		if o.DryRun {
			for _, p := range in.Plan {
				rep.Rows = append(rep.Rows, Row{Node: agents[i].node, Certificate: p.Name, Path: p.Path, OldSerial: p.Serial, OldNotAfter: p.NotAfter})
			}
		}
	}
	if o.DryRun {
		if o.has(pki.ServiceKubeProxy) {
			rep.note("kube-proxy: its DaemonSet pods would be restarted")
		}
		return rep, nil
	}

	for _, ap := range agents {
		if !ap.controlPlane {
			continue
		}
		if err := r.rotateNode(ctx, ap, o, rep); err != nil {
			return rep, err
		}
	}
	var workers []agentPod
	for _, ap := range agents {
		if !ap.controlPlane {
			workers = append(workers, ap)
		}
	}
	workerReps := make([]Report, len(workers))
	errs = forEach(ctx, len(workers), o.Parallelism, func(i int) error {
		return r.rotateNode(ctx, workers[i], o, &workerReps[i])
	})
	for _, wr := range workerReps {
		rep.Rows = append(rep.Rows, wr.Rows...)
		rep.Notes = append(rep.Notes, wr.Notes...)
	}
	if err := errors.Join(errs...); err != nil {
		return rep, err
	}
	if o.has(pki.ServiceKubeProxy) {
		if err := r.restartKubeProxy(ctx, rep); err != nil {
			return rep, err
		}
	}
	return rep, r.ensureNodesReady(ctx, agents, rep)
}

// servicesFor narrows the services to what exists on that node.
func servicesFor(o RotateOptions, ap agentPod) []string {
	var out []string
	if ap.controlPlane {
		out = o.renewServices()
	}
	if o.has(pki.ServiceKubelet) {
		out = append(out, string(pki.ServiceKubelet))
	}
	if o.has(pki.ServiceKubeProxy) {
		out = append(out, string(pki.ServiceKubeProxy))
	}
	return out
}

// rotateNode renews one node: its control-plane certificates (the agent
// restarts or verifies the components), then its kubelet's.
func (r *Runner) rotateNode(ctx context.Context, ap agentPod, o RotateOptions, rep *Report) error {
	if services := o.renewServices(); ap.controlPlane && len(services) > 0 {
		r.logf("node %s: renewing %s", ap.node, strings.Join(services, ", "))
		res, err := r.call(ctx, ap, api.Request{Action: api.Renew, Services: services, Validity: o.Validity, Restart: o.Restart})
		if err != nil {
			return err
		}
		r.addChanges(rep, ap.node, res.Renew)
		for _, v := range res.Renew.Verified {
			r.logf("node %s: verified: %s", ap.node, v)
		}
		for _, s := range res.Renew.Restarted {
			r.logf("node %s: restarted %s (pid %d -> %d) in %.1fs", ap.node, s.Component, s.OldPID, s.NewPID, s.Seconds)
		}
	}
	if o.has(pki.ServiceKubelet) {
		if err := r.rotateKubelet(ctx, ap, o, rep); err != nil {
			return err
		}
	}
	return nil
}

func (r *Runner) addChanges(rep *Report, node string, res *api.RenewResult) {
	if res == nil {
		return
	}
	for _, c := range res.Changes {
		rep.Rows = append(rep.Rows, Row{Node: node, Certificate: c.Name, Path: c.Path, OldSerial: c.OldSerial, NewSerial: c.NewSerial, OldNotAfter: c.OldNotAfter, NewNotAfter: c.NewNotAfter})
	}
	for _, n := range res.Notes {
		rep.note("node %s: %s", node, n)
	}
	if res.Backup != "" {
		rep.note("node %s: previous files backed up in /%s/%s", node, "etc/kubernetes/rotate-certs-backup", res.Backup)
	}
}

// restartKubeProxy restarts the kube-proxy DaemonSet's pods like
// `kubectl rollout restart` and waits for the rollout.
func (r *Runner) restartKubeProxy(ctx context.Context, rep *Report) error {
	dss := r.Client.AppsV1().DaemonSets(Namespace)
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":%q}}}}}`, time.Now().Format(time.RFC3339))
	ds, err := dss.Patch(ctx, "kube-proxy", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		rep.note("kube-proxy: no DaemonSet kube-system/kube-proxy (replaced by the CNI?): nothing restarted")
		return nil
	}
	if err != nil {
		return fmt.Errorf("restarting kube-proxy: %w", err)
	}
	r.logf("kube-proxy: rolling its DaemonSet pods")
	gen := ds.Generation
	err = wait.PollUntilContextTimeout(ctx, r.poll(), r.Timeout, true, func(ctx context.Context) (bool, error) {
		d, err := dss.Get(ctx, "kube-proxy", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		s := d.Status
		return s.ObservedGeneration >= gen && s.UpdatedNumberScheduled == s.DesiredNumberScheduled && s.NumberAvailable == s.DesiredNumberScheduled, nil
	})
	if err != nil {
		return fmt.Errorf("kube-proxy: the restarted DaemonSet did not become available within %s", r.Timeout)
	}
	rep.note("kube-proxy: uses a ServiceAccount token (no certificate file); its pods were restarted")
	return nil
}

// ensureNodesReady checks that every node worked on is Ready; a node that
// is not gets one more kubelet restart, and is reported if that fails.
func (r *Runner) ensureNodesReady(ctx context.Context, agents []agentPod, rep *Report) error {
	var errs []error
	for _, ap := range agents {
		n, err := r.Client.CoreV1().Nodes().Get(ctx, ap.node, metav1.GetOptions{})
		if err == nil && NodeReady(n) {
			continue
		}
		r.logf("node %s: not Ready after rotation; restarting its kubelet once more", ap.node)
		if err := r.restartKubelet(ctx, ap); err != nil {
			errs = append(errs, fmt.Errorf("node %s is not Ready after rotation and a kubelet restart did not help: %w", ap.node, err))
			continue
		}
		rep.note("node %s: was not Ready after rotation; Ready again after a kubelet restart", ap.node)
	}
	return errors.Join(errs...)
}

func anyControlPlane(nodes []corev1.Node) bool {
	for i := range nodes {
		if IsControlPlane(&nodes[i]) {
			return true
		}
	}
	return false
}

func servicesString(s []pki.Service) string {
	names := make([]string, 0, len(s))
	for _, x := range s {
		if x != pki.ServiceAdmin {
			names = append(names, string(x))
		}
	}
	return strings.Join(names, ", ")
}
