package orchestrator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/transport"
)

// RecoverOptions say how to reach the nodes of a cluster whose API is down.
type RecoverOptions struct {
	// Nodes are every node of the cluster, reached through a transport.
	Nodes []transport.Node
	// Agent returns the agent binary for a node (linux, its machine), by
	// the `uname -m` it answers.
	Agent    func(machine string) ([]byte, error)
	Validity time.Duration
	// Parallelism bounds the workers worked on at once (rollout).
	Parallelism Parallelism
	DryRun      bool
	// Connect makes a client for the recovered API from the renewed
	// admin.conf (the transport knows how this machine reaches it).
	Connect func(adminConf []byte) (kubernetes.Interface, error)
}

// RecoverReport is what recover did, and the user's way back in.
type RecoverReport struct {
	Report
	// AdminKubeconfig is the renewed admin.conf of the first control plane.
	AdminKubeconfig []byte
	// Ready is when every node was Ready, measured from the start.
	Ready time.Duration
}

// hostConn reaches an agent installed on a node through a transport.
type hostConn struct {
	node transport.Node
	in   *transport.Installed
}

func (h hostConn) agent(ctx context.Context, args []string, stdin []byte) ([]byte, error) {
	argv := append([]string{h.in.Path, "agent", "--root", "/", "--results", h.in.Dir + "/results"}, args...)
	var in io.Reader
	if stdin != nil {
		in = bytes.NewReader(stdin)
	}
	return h.node.Run(ctx, argv, in)
}

func (h hostConn) id() string { return h.node.Name() }

// recoverServices are what recover renews on a control plane.
var recoverServices = []string{string(pki.ServiceEtcd), string(pki.ServiceAPIServer), string(pki.ServiceControllerManager),
	string(pki.ServiceScheduler), string(pki.ServiceAdmin), string(pki.ServiceKubelet)}

// Recover brings back a cluster whose certificates expired, without its
// API: it copies the agent to every node (checked by sha256), inspects and
// plans everywhere first (nothing is written while any node has a
// problem), renews every control plane's certificates one at a time (each
// a transaction, the kubelets' client certificates signed there by the
// cluster CA), then restarts each control plane's components and proves
// them, then has a control plane sign every worker's kubelet request (keys
// stay on the workers), and finally checks through the recovered API that
// every node is Ready. Nothing of the agent is left on the nodes but the
// backups.
func (r *Runner) Recover(ctx context.Context, o RecoverOptions) (rep *RecoverReport, err error) {
	start := time.Now()
	rep = &RecoverReport{Report: Report{DryRun: o.DryRun, Run: newRunID()}}
	if len(o.Nodes) == 0 {
		return rep, errors.New("no node to recover")
	}
	agents := make([]agentPod, len(o.Nodes))
	installed := make([]*transport.Installed, len(o.Nodes))
	defer func() {
		for i, in := range installed {
			if in == nil {
				continue
			}
			cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			if rerr := in.Remove(cctx, o.Nodes[i]); rerr != nil {
				err = errors.Join(err, rerr)
			}
			cancel()
		}
	}()
	r.logf("Copying the agent to %d node(s) (run %s)", len(o.Nodes), rep.Run)
	errs := forEach(ctx, len(o.Nodes), fanout, func(i int) error {
		n := o.Nodes[i]
		machine, err := n.Run(ctx, []string{"uname", "-m"}, nil)
		if err != nil {
			return fmt.Errorf("node %s: %w", n.Name(), err)
		}
		bin, err := o.Agent(strings.TrimSpace(string(machine)))
		if err != nil {
			return fmt.Errorf("node %s: %w", n.Name(), err)
		}
		if installed[i], err = transport.Install(ctx, n, bin); err != nil {
			return err
		}
		agents[i] = agentPod{node: n.Name(), run: rep.Run, conn: hostConn{n, installed[i]}}
		return nil
	})
	if err := errors.Join(errs...); err != nil {
		return rep, fmt.Errorf("%w\nno file on any node was changed", err)
	}

	cps, workers, err := r.recoverPlan(ctx, agents, o, rep)
	if err != nil || o.DryRun {
		return rep, err
	}
	for _, step := range []struct {
		action api.Action
		what   string
	}{{api.RecoverRenew, "renewing every certificate"}, {api.RecoverRestart, "restarting the control plane and proving it serves the new certificates"}} {
		for _, ap := range cps {
			r.logf("node %s: %s", ap.node, step.what)
			res, err := r.change(ctx, ap, api.Request{Action: step.action, Services: recoverServices, Validity: o.Validity, Recover: true})
			if err != nil {
				rep.failed(ap, err)
				return rep, err
			}
			r.addChanges(&rep.Report, ap, res.Renew)
		}
	}
	if err := rolloutNodes(ctx, &rep.Report, workers, o.Parallelism.Cap(len(workers)), func(ap agentPod, rep *Report) error {
		err := r.recoverWorker(ctx, ap, cps[0], o, rep)
		rep.failed(ap, err)
		return err
	}); err != nil {
		return rep, err
	}
	res, err := r.call(ctx, cps[0], api.Request{Action: api.ReadAdminKubeconfig})
	if err != nil {
		return rep, err
	}
	rep.AdminKubeconfig = []byte(res.Kubeconfig)
	if o.Connect == nil {
		return rep, nil
	}
	client, err := o.Connect(rep.AdminKubeconfig)
	if err != nil {
		return rep, fmt.Errorf("every node was recovered, but the API cannot be reached from here: %w", err)
	}
	r.Client = client
	rep.User = r.userName(ctx)
	all := append(append([]agentPod{}, cps...), workers...)
	err = r.afterRecovery(ctx, all, rep)
	// The audit trail, now that there is an API to record it in.
	for _, ap := range all {
		var rows []Row
		for _, row := range rep.Rows {
			if row.Node == ap.node {
				rows = append(rows, row)
			}
		}
		r.nodeEvent(&rep.Report, ap, recoverEvent, rows, nil)
	}
	if err != nil {
		return rep, err
	}
	rep.Ready = time.Since(start)
	return rep, nil
}

// recoverPlan inspects every node as recover would change it and returns
// the control planes and workers; any problem anywhere stops recover
// before anything is written.
func (r *Runner) recoverPlan(ctx context.Context, agents []agentPod, o RecoverOptions, rep *RecoverReport) (cps, workers []agentPod, err error) {
	inspects := make([]*api.InspectResult, len(agents))
	errs := forEach(ctx, len(agents), fanout, func(i int) error {
		res, err := r.call(ctx, agents[i], api.Request{Action: api.Inspect, Services: recoverServices, Validity: o.Validity, Recover: true})
		if err != nil {
			return err
		}
		in := res.Inspect
		if in == nil {
			return fmt.Errorf("node %s: the agent's inspection is empty", agents[i].node)
		}
		if in.NodeName == "" {
			in.Problems = append(in.Problems, "no kubelet client certificate names this node (/var/lib/kubelet/pki/kubelet-client-current.pem): not a kubeadm node?")
		}
		if len(in.Problems) > 0 {
			return fmt.Errorf("node %s: %s", agents[i].node, strings.Join(in.Problems, "; "))
		}
		inspects[i] = in
		return nil
	})
	if err := errors.Join(errs...); err != nil {
		return nil, nil, fmt.Errorf("%w\nno file on any node was changed", err)
	}
	newFrontProxyCA := 0
	for i, in := range inspects {
		ap := &agents[i]
		if in.NodeName != ap.node {
			r.vlogf(1, "node %s is node %s of the cluster", ap.node, in.NodeName)
			ap.node = in.NodeName
		}
		ap.controlPlane = in.ControlPlane
		for _, n := range in.Notes {
			r.noteNode(&rep.Report, *ap, n)
		}
		for _, p := range in.Plan {
			if p.Name == pki.FrontProxyCA.Name {
				newFrontProxyCA++
			}
			if o.DryRun {
				rep.Rows = append(rep.Rows, Row{Node: ap.node, Certificate: p.Name, Path: p.Path, OldSerial: p.Serial, OldNotAfter: p.NotAfter})
			}
		}
		if ap.controlPlane {
			cps = append(cps, *ap)
		} else {
			workers = append(workers, *ap)
		}
	}
	// The report lists control planes first, as they are worked on.
	var nodes []*NodeRecord
	for _, ap := range append(append([]agentPod{}, cps...), workers...) {
		nodes = append(nodes, rep.node(ap))
	}
	rep.Nodes = nodes
	if len(cps) == 0 {
		return nil, nil, errors.New("none of the nodes is a control plane (no /etc/kubernetes/manifests/kube-apiserver.yaml): recover needs every node of the cluster, control planes included\nno file on any node was changed")
	}
	if newFrontProxyCA > 1 {
		return nil, nil, fmt.Errorf("%d control planes lack a front-proxy CA: recover creates one for a single control plane only (they must share one; copy /etc/kubernetes/pki/front-proxy-ca.* from one to the others first)\nno file on any node was changed", newFrontProxyCA)
	}
	return cps, workers, nil
}

// recoverWorker gets a worker's kubelet a new client certificate without
// the API: the key and request are made on the worker, checked here, and
// signed by a control plane's agent with the cluster CA; the worker
// installs it and restarts its kubelet (one transaction, proven against
// the recovered API server).
func (r *Runner) recoverWorker(ctx context.Context, w, cp agentPod, o RecoverOptions, rep *Report) error {
	r.vlogf(1, "node %s: requesting a new kubelet client certificate", w.node)
	res, err := r.call(ctx, w, api.Request{Action: api.KubeletCSR})
	if err != nil {
		return err
	}
	discard := func(err error) error {
		if _, derr := r.call(r.drain(), w, api.Request{Action: api.DiscardPending}); derr != nil {
			err = fmt.Errorf("%w; removing the keys made for it: %v", err, derr)
		}
		return err
	}
	var client *api.CSR
	for i, c := range res.CSRs {
		if c.Name == "kubelet-client" {
			client = &res.CSRs[i]
		}
	}
	if client == nil {
		return discard(fmt.Errorf("node %s: %w: no kubelet-client request", w.node, ErrCSRRefused))
	}
	if _, _, err := pki.CheckKubeletCSR([]byte(client.Request), w.node, false, pki.NodeNames{}); err != nil {
		return discard(fmt.Errorf("node %s: %w", w.node, err))
	}
	issued := map[string]string{}
	for _, c := range res.CSRs {
		if c.Name != "kubelet-client" {
			return discard(fmt.Errorf("node %s: its kubelet's serving certificate comes from the kubelet-serving signer (serverTLSBootstrap): recover renews client certificates only; renew it with `kubectl rotate-certs --service kubelet` once the API is back", w.node))
		}
	}
	signed, err := r.call(ctx, cp, api.Request{Action: api.SignKubeletClient, CSR: client, SignFor: w.node, Validity: o.Validity})
	if err != nil {
		return discard(err)
	}
	issued["kubelet-client"] = signed.Certificate
	r.logf("node %s: installing it and restarting the kubelet", w.node)
	inst, err := r.change(ctx, w, api.Request{Action: api.KubeletInstall, Issued: issued, Validity: o.Validity})
	if err != nil {
		return err
	}
	r.addChanges(rep, w, inst.Renew)
	return nil
}

// afterRecovery checks, through the recovered API, that every node is
// Ready (a node that is not gets one more kubelet restart), that the
// kube-system pods run again, and restarts kube-proxy's pods.
func (r *Runner) afterRecovery(ctx context.Context, agents []agentPod, rep *RecoverReport) error {
	r.logf("Waiting for every node to be Ready through the recovered API")
	var notReady []agentPod
	for _, ap := range agents {
		if err := r.waitNodeReady(ctx, ap.node); err != nil {
			notReady = append(notReady, ap)
		}
	}
	if err := r.ensureNodesReady(ctx, notReady, &rep.Report); err != nil {
		return err
	}
	if err := r.waitSystemPods(ctx); err != nil {
		return err
	}
	return r.restartKubeProxy(ctx, &rep.Report)
}

func (r *Runner) waitNodeReady(ctx context.Context, node string) error {
	return wait.PollUntilContextTimeout(ctx, r.poll(), r.Timeout, true, func(ctx context.Context) (bool, error) {
		n, err := r.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		return err == nil && NodeReady(n), nil
	})
}

// waitSystemPods waits until every kube-system pod runs and is ready (or
// has completed).
func (r *Runner) waitSystemPods(ctx context.Context) error {
	var last string
	err := wait.PollUntilContextTimeout(ctx, r.poll(), r.Timeout, true, func(ctx context.Context) (bool, error) {
		pods, err := r.Client.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		var waiting []string
		for _, p := range pods.Items {
			if p.Labels[LabelApp] == AppName || p.Status.Phase == corev1.PodSucceeded {
				continue
			}
			if p.Status.Phase != corev1.PodRunning || !podReady(&p) {
				waiting = append(waiting, p.Name)
			}
		}
		last = strings.Join(waiting, ", ")
		return len(waiting) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("kube-system pods not running and ready after %s: %s", r.Timeout, last)
	}
	return nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
