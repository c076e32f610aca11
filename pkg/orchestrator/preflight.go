package orchestrator

import (
	"context"
	"fmt"
	"strings"

	authorizationv1 "k8s.io/api/authorization/v1"
	certificatesv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// permission is one thing the plugin must be allowed to do.
type permission struct {
	verb, group, resource, subresource, namespace, name string
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

// Preflight asks the API server (SelfSubjectAccessReview) whether the
// current user may do everything the run needs, so missing RBAC is found
// before any pod is started or file changed.
func (r *Runner) Preflight(ctx context.Context, kubelet, kubeProxy bool) error {
	perms := []permission{
		{verb: "list", resource: "nodes"},
		{verb: "create", resource: "pods", namespace: Namespace},
		{verb: "get", resource: "pods", namespace: Namespace},
		{verb: "list", resource: "pods", namespace: Namespace},
		{verb: "delete", resource: "pods", namespace: Namespace},
		{verb: "create", resource: "pods", subresource: "exec", namespace: Namespace},
	}
	if kubelet {
		perms = append(perms,
			permission{verb: "create", group: "certificates.k8s.io", resource: "certificatesigningrequests"},
			permission{verb: "get", group: "certificates.k8s.io", resource: "certificatesigningrequests"},
			permission{verb: "update", group: "certificates.k8s.io", resource: "certificatesigningrequests", subresource: "approval"},
			permission{verb: "approve", group: "certificates.k8s.io", resource: "signers", name: certificatesv1.KubeAPIServerClientKubeletSignerName},
			permission{verb: "get", group: "coordination.k8s.io", resource: "leases", namespace: "kube-node-lease"},
		)
	}
	if kubeProxy {
		perms = append(perms, permission{verb: "patch", group: "apps", resource: "daemonsets", namespace: Namespace, name: "kube-proxy"})
	}
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
		if !got.Status.Allowed {
			denied = append(denied, p.String())
		}
	}
	if len(denied) > 0 {
		return fmt.Errorf("your kubeconfig's user is not allowed to: %s\nask a cluster administrator for these permissions (see README: required RBAC); nothing was changed", strings.Join(denied, "; "))
	}
	return nil
}
