package orchestrator

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
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
	Services  []pki.Service // already validated; --all adds pki.ServiceAdmin
	NodeNames []string
	Selector  string
	Validity  time.Duration
	Restart   string // api.RestartNeeded or api.RestartAll
	// Parallelism bounds the workers changed at once (rollout).
	Parallelism Parallelism
	DryRun      bool
	// Resume skips, after an interrupted or failed run of the same
	// services, the steps that run already completed on a node (its
	// certificates were issued after that run began).
	Resume bool

	graceful bool // several control planes: drain kube-apiserver before a restart
	// issuer, when set, must have signed the kubelet's new certificates
	// (a CA rotation's switch: the new cluster CA).
	issuer *x509.Certificate
}

// behindLoadBalancer tells whether the cluster has several control planes,
// whose API servers then serve behind a load balancer.
func (r *Runner) behindLoadBalancer(ctx context.Context) (bool, error) {
	n := 0
	for _, label := range ControlPlaneLabels {
		list, err := r.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: label})
		if err != nil {
			return false, fmt.Errorf("listing control planes: %w", err)
		}
		n = max(n, len(list.Items))
	}
	return n > 1, nil
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
	// CappedToCA: the validity was cut at the CA's expiry.
	CappedToCA bool
}

// Report is the outcome of a rotation (or, in a dry run, its plan), a
// rollback or a recover.
type Report struct {
	DryRun bool
	// Run names the run; its backups on the nodes carry it (rollback --run).
	Run string
	// RolledBack (rollback) is the run whose files were put back.
	RolledBack string
	// User is who ran it, as the API server named them, when it answered.
	User string
	Rows []Row
	// Nodes are the nodes worked on, in that order, with what their agents
	// reported; notes about a node are there.
	Nodes []*NodeRecord
	// Notes are about the run as a whole.
	Notes []string
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
// nodes. It holds the cluster's lock for the run. Every node is inspected
// and every renewal planned before any node is changed; control planes go
// one at a time, each proven healthy before the next; workers follow in a
// rollout (one canary, then more as they succeed). When ctx ends (Ctrl-C) no new change starts, the
// change in progress is waited for and reported, and the run is recorded
// as interrupted so the next one resumes it. Agent pods are deleted
// whatever happens.
func (r *Runner) Rotate(ctx context.Context, o RotateOptions) (rep *Report, err error) {
	rep = &Report{DryRun: o.DryRun}
	nodes, err := SelectNodes(ctx, r.Client, o.NodeNames, o.Selector)
	if err != nil {
		return rep, err
	}
	cpWork := len(o.renewServices()) > 0
	var targets []corev1.Node
	controlPlanes := 0
	for _, n := range nodes {
		cp := IsControlPlane(&n)
		if (cp && cpWork) || o.has(pki.ServiceKubelet) {
			targets = append(targets, n)
			if cp {
				controlPlanes++
			}
		} else if len(o.NodeNames) > 0 {
			rep.nodeNote(agentPod{node: n.Name}, "nothing to rotate there for "+servicesString(o.Services))
		}
	}
	if cpWork && !anyControlPlane(targets) {
		return rep, fmt.Errorf("%s live on control-plane nodes, and none is selected (control planes carry the label %s)", servicesString(o.Services), ControlPlaneLabels[0])
	}
	if err := r.Preflight(ctx, o.permissions()); err != nil {
		return rep, err
	}

	runID := newRunID()
	rep.Run = runID
	var lock *clusterLock
	var prev *RunRecord
	if !o.DryRun {
		var serviceNames []string
		for _, s := range o.Services {
			serviceNames = append(serviceNames, string(s))
		}
		lock, prev, err = r.lockCluster(ctx, RunRecord{ID: runID, Kind: "rotate", Services: serviceNames, Validity: o.Validity, Started: time.Now().UTC()})
		rep.User = r.userName(ctx)
		if err != nil {
			return rep, err
		}
		defer func() {
			state := RunCompleted
			switch {
			case ctx.Err() != nil:
				state = RunInterrupted
			case err != nil:
				state = RunFailed
			}
			if lerr := lock.release(state); lerr != nil {
				r.logf("recording the run's end on lease %s/%s: %v", Namespace, LeaseName, lerr)
			}
			if state == RunInterrupted {
				err = fmt.Errorf("%w (%w); completed nodes: %s; run the same command again to resume: what this run completed is skipped", ErrInterrupted, err, listOrNone(lock.record.Done))
			}
		}()
	}
	defer func() {
		if derr := deleteRunPods(r.Client, runID); derr != nil {
			err = errors.Join(err, fmt.Errorf("deleting agent pods (label %s=%s): %w", LabelRun, runID, derr))
		}
	}()
	if len(targets) > 0 {
		r.logf("Starting %d agent pod(s) (image %s, run %s)", len(targets), r.Image, runID)
	}
	kubelet := o.has(pki.ServiceKubelet)
	access := func(n *corev1.Node) Access {
		return Access{ReadOnly: o.DryRun, ControlPlane: IsControlPlane(n) && cpWork, Kubelet: kubelet}
	}
	limit := o.Parallelism.Cap(len(targets) - controlPlanes)
	deadline := podDeadline(r.Timeout, controlPlanes, len(targets)-controlPlanes, limit)
	agents, errs := r.startAgents(ctx, targets, runID, access, deadline, fanout)
	stopPings := r.keepAlive(agents)
	defer stopPings()
	if err := errors.Join(errs...); err != nil {
		return rep, fmt.Errorf("%w\nno file on any node was changed", err)
	}

	// Plan everywhere first: one bad node stops the run before any write.
	inspects, err := r.inspectAll(ctx, agents, o)
	if err != nil {
		return rep, fmt.Errorf("%w\nno file on any node was changed", err)
	}
	servingByCSR := false
	for i, in := range inspects {
		servingByCSR = servingByCSR || in.ServingByCSR
		rep.node(agents[i])
		for _, n := range in.Notes {
			r.noteNode(rep, agents[i], n)
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
	if kubelet && servingByCSR {
		// Known only now: some kubelet's serving certificate comes from the
		// kubelet-serving signer. Still before any change.
		if err := r.Preflight(ctx, permsServingCSR); err != nil {
			return rep, err
		}
	}
	skip := r.resumePlan(prev, o, agents, inspects, rep)
	graceful, err := r.behindLoadBalancer(ctx)
	if err != nil {
		return rep, err
	}
	o.graceful = graceful

	for _, ap := range agents {
		if !ap.controlPlane {
			continue
		}
		if err := r.rotateOne(ctx, ap, o, rep, skip[ap.node], lock); err != nil {
			return rep, err
		}
	}
	var workers []agentPod
	for _, ap := range agents {
		if !ap.controlPlane {
			workers = append(workers, ap)
		}
	}
	if err := rolloutNodes(ctx, rep, workers, limit, func(ap agentPod, rep *Report) error {
		return r.rotateOne(ctx, ap, o, rep, skip[ap.node], lock)
	}); err != nil {
		return rep, err
	}
	if ctx.Err() != nil {
		return rep, ctx.Err()
	}
	if o.has(pki.ServiceKubeProxy) {
		if err := r.restartKubeProxy(ctx, rep); err != nil {
			return rep, err
		}
	}
	return rep, r.ensureNodesReady(ctx, agents, rep)
}

// permissions are what a rotation with these options needs.
func (o RotateOptions) permissions() permissions {
	p := permissions(permsAgents)
	if o.DryRun {
		return p
	}
	p = p.with(permsLock, permsKubeletRestart, permsEvents)
	if o.has(pki.ServiceControllerManager) {
		p = p.with(permsSignerLease)
	}
	if o.has(pki.ServiceKubelet) {
		p = p.with(permsCSR)
	}
	if o.has(pki.ServiceKubeProxy) {
		p = p.with(permsKubeProxy)
	}
	return p
}

// inspectAll has every agent inspect its node and plan the renewal; any
// node's problem is an error (and nothing has been changed).
func (r *Runner) inspectAll(ctx context.Context, agents []agentPod, o RotateOptions) ([]*api.InspectResult, error) {
	inspects := make([]*api.InspectResult, len(agents))
	errs := forEach(ctx, len(agents), fanout, func(i int) error {
		res, err := r.call(ctx, agents[i], api.Request{Action: api.Inspect, Services: servicesFor(o, agents[i]), Validity: o.Validity, ReadOnly: o.DryRun})
		if err != nil {
			return err
		}
		if res.Inspect == nil {
			return fmt.Errorf("node %s: the agent's inspection is empty", agents[i].node)
		}
		inspects[i] = res.Inspect
		if len(res.Inspect.Problems) > 0 {
			return fmt.Errorf("node %s: %s", agents[i].node, strings.Join(res.Inspect.Problems, "; "))
		}
		return nil
	})
	return inspects, errors.Join(errs...)
}

// skipSteps says which steps of a node an interrupted run already did.
type skipSteps struct{ renew, kubelet bool }

// resumePlan finds, after an interrupted or failed run of the same
// services, the steps that run completed on each node: the node keeps a
// committed backup of that run for the step (a transaction commits only
// once its new files are verified; one rolled back or restored does not
// count).
func (r *Runner) resumePlan(prev *RunRecord, o RotateOptions, agents []agentPod, inspects []*api.InspectResult, rep *Report) map[string]skipSteps {
	skip := map[string]skipSteps{}
	if prev == nil || prev.Kind != "rotate" || prev.State == RunCompleted {
		return skip
	}
	var names []string
	for _, s := range o.Services {
		names = append(names, string(s))
	}
	if !slices.Equal(prev.Services, names) {
		return skip
	}
	if !o.Resume {
		rep.note("run %s of the same services was %s; --resume=false: every node is renewed again", prev.ID, prev.State)
		return skip
	}
	var skipped []string
	for i, in := range inspects {
		var st skipSteps
		for _, b := range in.Backups {
			if b.Run != prev.ID || b.State != api.BackupCommitted {
				continue
			}
			switch b.Action {
			case "renew":
				st.renew = true
			case "kubelet":
				st.kubelet = true
			}
		}
		if st.renew || st.kubelet {
			skip[agents[i].node] = st
			skipped = append(skipped, fmt.Sprintf("%s (%s)", agents[i].node, st))
		}
	}
	rep.note("resuming run %s (%s, begun %s): already done by it, and skipped: %s", prev.ID, prev.State, prev.Started.Format(time.RFC3339), listOrNone(skipped))
	return skip
}

func (s skipSteps) String() string {
	var parts []string
	if s.renew {
		parts = append(parts, "control-plane certificates")
	}
	if s.kubelet {
		parts = append(parts, "kubelet")
	}
	return strings.Join(parts, ", ")
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
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

// rotateOne rotates one node, records how that ended (on the node's
// record, and as an event on its Node object), and marks the node done on
// the run's record.
func (r *Runner) rotateOne(ctx context.Context, ap agentPod, o RotateOptions, rep *Report, skip skipSteps, lock *clusterLock) error {
	before := len(rep.Rows)
	err := r.rotateNode(ctx, ap, o, rep, skip)
	rep.failed(ap, err)
	r.nodeEvent(rep, ap, rotationEvent, rep.Rows[before:], err)
	if err == nil {
		lock.nodeDone(ap.node)
	}
	return err
}

// rotateNode renews one node: its control-plane certificates (the agent
// restarts or verifies the components), then its kubelet's; steps an
// interrupted run already did are skipped.
func (r *Runner) rotateNode(ctx context.Context, ap agentPod, o RotateOptions, rep *Report, skip skipSteps) error {
	if services := o.renewServices(); ap.controlPlane && len(services) > 0 && !skip.renew {
		r.logf("node %s: renewing %s", ap.node, strings.Join(services, ", "))
		signer := r.signerLeaseHolder(ctx)
		res, err := r.change(ctx, ap, api.Request{Action: api.Renew, Services: services, Validity: o.Validity, Restart: o.Restart, Graceful: o.graceful})
		if err != nil {
			return err
		}
		r.addChanges(rep, ap, res.Renew)
		r.releaseStoppedSigner(ctx, ap, signer, res.Renew)
	}
	if o.has(pki.ServiceKubelet) && !skip.kubelet {
		if err := r.rotateKubelet(ctx, ap, o, rep); err != nil {
			return err
		}
	}
	return nil
}

// BackupDir is where the nodes keep their backups.
const BackupDir = "/etc/kubernetes/rotate-certs-backup"

// addChanges records what a node's transaction did: its certificates, its
// backup, what it restarted and what it proved reloaded, its notes.
func (r *Runner) addChanges(rep *Report, ap agentPod, res *api.RenewResult) {
	if res == nil {
		return
	}
	n := rep.node(ap)
	for _, c := range res.Changes {
		rep.Rows = append(rep.Rows, Row{Node: ap.node, Certificate: c.Name, Path: c.Path, OldSerial: c.OldSerial, NewSerial: c.NewSerial,
			OldNotAfter: c.OldNotAfter, NewNotAfter: c.NewNotAfter, CappedToCA: c.CappedToCA})
	}
	for _, note := range res.Notes {
		r.noteNode(rep, ap, note)
	}
	if res.Backup != "" {
		n.Backups = append(n.Backups, res.Backup)
		r.vlogf(1, "node %s: previous files backed up in %s/%s", ap.node, BackupDir, res.Backup)
	}
	n.Verified = append(n.Verified, res.Verified...)
	n.Restarted = append(n.Restarted, res.Restarted...)
	for _, v := range res.Verified {
		r.vlogf(1, "node %s: verified: %s", ap.node, v)
	}
	for _, s := range res.Restarted {
		r.vlogf(1, "node %s: restarted %s (pid %d -> %d) in %.1fs", ap.node, s.Component, s.OldPID, s.NewPID, s.Seconds)
	}
}

// noteNode records a note about a node; a repeated one is only logged at
// -v 2.
func (r *Runner) noteNode(rep *Report, ap agentPod, note string) {
	if !rep.nodeNote(ap, note) {
		r.vlogf(2, "node %s: repeated note: %s", ap.node, note)
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
	rep.note("kube-proxy: its DaemonSet's pods were restarted")
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
		rep.nodeNote(ap, "was not Ready after rotation; Ready again after a kubelet restart")
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
