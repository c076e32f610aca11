package orchestrator

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
)

// NodeStatus is one node's certificates, or why they could not be read.
type NodeStatus struct {
	Node         string
	ControlPlane bool
	Certs        []api.CertInfo
	CAs          []api.CertInfo
	// TrustPoints, Signers and Authorities are set by CAStatus; so is
	// each certificate's Issuer.
	TrustPoints []api.TrustPoint
	Signers     []api.TrustPoint
	Authorities []api.Authority
	Error       string
}

// Status reads every certificate on the selected nodes through read-only
// agent pods (no privileges, read-only mounts). A node that cannot be read,
// or a named node that does not exist, is reported with its error; the
// others are still reported.
func (r *Runner) Status(ctx context.Context, names []string, selector string) ([]NodeStatus, error) {
	return r.status(ctx, names, selector, false)
}

// CAStatus is Status that also reads, on every node, what each trust point
// trusts, which CA kube-controller-manager signs with, and which CA signed
// each certificate. Its pods also mount the kubelet's config.yaml,
// read-only, for the kubelet's clientCAFile.
func (r *Runner) CAStatus(ctx context.Context, names []string, selector string) ([]NodeStatus, error) {
	return r.status(ctx, names, selector, true)
}

func (r *Runner) status(ctx context.Context, names []string, selector string, trust bool) (out []NodeStatus, err error) {
	nodes, err := SelectNodes(ctx, r.Client, nil, selector)
	if err != nil {
		return nil, err
	}
	var unknown []NodeStatus
	if len(names) > 0 {
		nodes, unknown = pickNodes(nodes, names, selector)
	}
	if err := r.Preflight(ctx, permsAgents); err != nil {
		return nil, err
	}
	runID := newRunID()
	defer func() {
		if derr := deleteRunPods(r.Client, runID); derr != nil && err == nil {
			err = fmt.Errorf("deleting agent pods (label %s=%s): %w", LabelRun, runID, derr)
		}
	}()
	if len(nodes) == 0 {
		return unknown, nil
	}
	readOnly := func(*corev1.Node) Access { return Access{ReadOnly: true, KubeletConfig: trust} }
	agents, startErrs := r.startAgents(ctx, nodes, runID, readOnly, 2*r.Timeout+5*time.Minute, fanout)
	defer r.keepAlive(agents)()
	out = make([]NodeStatus, len(nodes))
	errs := forEach(ctx, len(nodes), fanout, func(i int) error {
		out[i] = NodeStatus{Node: nodes[i].Name, ControlPlane: IsControlPlane(&nodes[i])}
		if startErrs[i] != nil {
			return startErrs[i]
		}
		res, err := r.call(ctx, agents[i], api.Request{Action: api.Inspect, ReadOnly: true, Trust: trust})
		if err != nil {
			return err
		}
		in := res.Inspect
		if in == nil {
			return fmt.Errorf("node %s: the agent answered without an inspection", nodes[i].Name)
		}
		out[i].ControlPlane = in.ControlPlane
		out[i].Certs, out[i].CAs = in.Certs, in.CAs
		out[i].TrustPoints, out[i].Signers, out[i].Authorities = in.TrustPoints, in.Signers, in.Authorities
		return nil
	})
	for i, e := range errs {
		if e != nil {
			out[i].Error = e.Error()
		}
	}
	return append(out, unknown...), nil
}

// pickNodes keeps the named nodes and turns names that match no node into
// error entries.
func pickNodes(nodes []corev1.Node, names []string, selector string) ([]corev1.Node, []NodeStatus) {
	byName := map[string]corev1.Node{}
	var all []string
	for _, n := range nodes {
		byName[n.Name] = n
		all = append(all, n.Name)
	}
	var picked []corev1.Node
	var unknown []NodeStatus
	for _, name := range names {
		if n, ok := byName[name]; ok {
			picked = append(picked, n)
			continue
		}
		unknown = append(unknown, NodeStatus{Node: name, Error: fmt.Sprintf("not found%s; nodes are: %s", selectorNote(selector), strings.Join(all, ", "))})
	}
	return picked, unknown
}
