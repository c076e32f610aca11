// Package orchestrator runs on the user's machine. It finds the nodes,
// starts one agent pod per node, drives the agents through their JSON
// contract (pkg/api), gets kubelet certificates signed through the
// CertificateSigningRequest API, orders the work (control planes one at a
// time, workers with bounded parallelism), checks health, and always deletes
// its pods.
package orchestrator

import (
	"context"
	"fmt"
	"strings"

	authorizationv1 "k8s.io/api/authorization/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// permission is one thing the plugin must be allowed to do. An optional
// one is only nice to have: without it the plugin does without (and says
// so) instead of refusing to start.
type permission struct {
	verb, group, resource, subresource, namespace, name string
	optional                                            bool
}

func (p permission) String() string {
	s := p.verb + " " + p.resource
	if p.subresource != "" {
		s += "/" + p.subresource
	}
	if p.group != "" {
		s += "." + p.group
	}
	if p.name != "" {
		s += " " + p.name
	}
	if p.namespace != "" {
		s += " in namespace " + p.namespace
	}
	return s
}

// The requests the plugin makes, by what it does. This is the one list:
// the preflight checks it, and a test runs every command against a fake
// cluster and fails if the code makes a request that is not on it.
var (
	permsAgents = []permission{
		{verb: "list", resource: "nodes"},
		{verb: "get", resource: "nodes"},
		{verb: "create", resource: "pods", namespace: Namespace},
		{verb: "get", resource: "pods", namespace: Namespace},
		{verb: "list", resource: "pods", namespace: Namespace},
		{verb: "delete", resource: "pods", namespace: Namespace},
		{verb: "create", resource: "pods", subresource: "exec", namespace: Namespace},
	}
	permsLock = []permission{
		{verb: "get", group: "coordination.k8s.io", resource: "leases", namespace: Namespace, name: LeaseName},
		{verb: "create", group: "coordination.k8s.io", resource: "leases", namespace: Namespace},
		{verb: "update", group: "coordination.k8s.io", resource: "leases", namespace: Namespace, name: LeaseName},
	}
	// A restarted kubelet proves itself by renewing its node's lease.
	permsKubeletRestart = []permission{
		{verb: "get", group: "coordination.k8s.io", resource: "leases", namespace: "kube-node-lease"},
	}
	permsCSR = []permission{
		{verb: "create", group: "certificates.k8s.io", resource: "certificatesigningrequests"},
		{verb: "get", group: "certificates.k8s.io", resource: "certificatesigningrequests"},
		{verb: "delete", group: "certificates.k8s.io", resource: "certificatesigningrequests"},
		{verb: "update", group: "certificates.k8s.io", resource: "certificatesigningrequests", subresource: "approval"},
		{verb: "approve", group: "certificates.k8s.io", resource: "signers", name: certificatesv1.KubeAPIServerClientKubeletSignerName},
	}
	permsServingCSR = []permission{
		{verb: "approve", group: "certificates.k8s.io", resource: "signers", name: certificatesv1.KubeletServingSignerName},
	}
	permsKubeProxy = []permission{
		{verb: "get", group: "apps", resource: "daemonsets", namespace: Namespace, name: "kube-proxy"},
		{verb: "patch", group: "apps", resource: "daemonsets", namespace: Namespace, name: "kube-proxy"},
	}
	// The audit trail: an Event on each changed node's Node object. Core
	// v1 events in namespace default, where events about nodes (which
	// have no namespace) live: what `kubectl get events`, `kubectl events`
	// and `kubectl describe node` show, selectable by involvedObject.kind.
	permCreateEvents = permission{verb: "create", resource: "events", namespace: EventNamespace, optional: true}
	permsEvents      = []permission{permCreateEvents}

	// A CA rotation (trust both) sets the CA bundle in kubeadm's
	// cluster-info, which `kubeadm join` discovers the cluster from.
	permsCAClusterInfo = []permission{
		{verb: "get", resource: "configmaps", namespace: "kube-public", name: clusterInfoName},
		{verb: "update", resource: "configmaps", namespace: "kube-public", name: clusterInfoName},
	}
	// It waits for every namespace's kube-root-ca.crt to hold the bundle
	// (one List of them all per poll).
	permsCARootCA = []permission{
		{verb: "list", resource: "namespaces"},
		{verb: "list", resource: "configmaps"},
	}
	// It finds the workloads that read the CA once, at start (scope none
	// stops there)...
	permsCAReadersFind = []permission{
		{verb: "list", group: "apps", resource: "deployments"},
		{verb: "list", group: "apps", resource: "daemonsets"},
		{verb: "list", group: "apps", resource: "statefulsets"},
		{verb: "list", resource: "pods"},
		{verb: "get", resource: "serviceaccounts"},
	}
	// ... and restarts them one at a time, minding their disruption
	// budgets.
	permsCAReadersRestart = []permission{
		{verb: "get", group: "apps", resource: "deployments"},
		{verb: "get", group: "apps", resource: "daemonsets"},
		{verb: "get", group: "apps", resource: "statefulsets"},
		{verb: "patch", group: "apps", resource: "deployments"},
		{verb: "patch", group: "apps", resource: "daemonsets"},
		{verb: "patch", group: "apps", resource: "statefulsets"},
		{verb: "list", group: "policy", resource: "poddisruptionbudgets"},
	}
)

// caReadersPermissions are what restartCAReaders needs with scope: kube-system's
// workloads only, or every namespace's.
func caReadersPermissions(scope string) permissions {
	p := permissions(permsCAReadersFind)
	if scope != CAReadersNone {
		p = p.with(permsCAReadersRestart)
	}
	if scope != CAReadersKubeSystem {
		return p
	}
	out := make(permissions, len(p))
	for i, x := range p {
		x.namespace = Namespace
		out[i] = x
	}
	return out
}

// permissions is what a command needs, from the list above.
type permissions []permission

func (p permissions) with(more ...[]permission) permissions {
	out := append(permissions{}, p...)
	for _, m := range more {
		out = append(out, m...)
	}
	return out
}

// Preflight asks the API server (SelfSubjectAccessReview) whether the
// current user may do everything a command will do, so missing RBAC is
// found before any pod is started or file changed.
func (r *Runner) Preflight(ctx context.Context, perms permissions) error {
	var denied []string
	for _, p := range perms {
		review := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: p.verb, Group: p.group, Resource: p.resource, Subresource: p.subresource, Namespace: p.namespace, Name: p.name,
			}}}
		got, err := r.Client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("checking permissions: %w", err)
		}
		switch {
		case got.Status.Allowed:
		case p.optional:
			r.setOptionalDenied(p)
		default:
			denied = append(denied, p.String())
		}
	}
	if len(denied) > 0 {
		return fmt.Errorf("your kubeconfig's user is not allowed to: %s\nask a cluster administrator for these permissions (see README: required RBAC); nothing was changed", strings.Join(denied, "; "))
	}
	return nil
}

func (r *Runner) setOptionalDenied(p permission) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.denied == nil {
		r.denied = map[permission]bool{}
	}
	r.denied[p] = true
}

// optionalDenied tells whether the preflight found an optional permission
// denied.
func (r *Runner) optionalDenied(p permission) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.denied[p]
}
