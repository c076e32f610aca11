package orchestrator

import (
	"context"
	"strings"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// SignerLeaseName is kube-controller-manager's leader lease (kube-system):
// only its holder runs the controllers, among them the CSR signer.
const SignerLeaseName = "kube-controller-manager"

// The signer's lease is read before a control plane's renewal and, when the
// renewal stopped the instance that held it, released.
var permsSignerLease = []permission{
	{verb: "get", group: "coordination.k8s.io", resource: "leases", namespace: Namespace, name: SignerLeaseName, optional: true},
	{verb: "update", group: "coordination.k8s.io", resource: "leases", namespace: Namespace, name: SignerLeaseName, optional: true},
}

// signerLeaseHolder is the identity holding kube-controller-manager's lease
// ("<host>_<uuid>", new for every process), or "" when it cannot be read.
func (r *Runner) signerLeaseHolder(ctx context.Context) string {
	if r.optionalDenied(permsSignerLease[0]) || r.optionalDenied(permsSignerLease[1]) {
		return ""
	}
	l, err := r.Client.CoordinationV1().Leases(Namespace).Get(ctx, SignerLeaseName, metav1.GetOptions{})
	if err != nil {
		r.vlogf(2, "kube-controller-manager's lease: %v", err)
		return ""
	}
	return ptr.Deref(l.Spec.HolderIdentity, "")
}

// releaseStoppedSigner releases kube-controller-manager's lease when its
// holder is the instance the node's renewal just replaced, as that instance
// would have with --leader-elect-release-on-cancel (which
// kube-controller-manager does not set): a new instance then takes the
// lease at once and signs the next kubelet CSR, instead of after the
// lease's duration (15 s by default). heldBefore is the holder read before
// the renewal. The lease is left alone unless it still names heldBefore,
// heldBefore is an instance on this node, and the agent proved that node's
// kube-controller-manager is a new process; the update is conditional on
// the lease not having changed since it was read.
func (r *Runner) releaseStoppedSigner(ctx context.Context, ap agentPod, heldBefore string, res *api.RenewResult) {
	if heldBefore == "" || res == nil || !strings.HasPrefix(heldBefore, ap.node+"_") || !restarted(res, pki.ServiceControllerManager) {
		return
	}
	leases := r.Client.CoordinationV1().Leases(Namespace)
	l, err := leases.Get(ctx, SignerLeaseName, metav1.GetOptions{})
	if err != nil || ptr.Deref(l.Spec.HolderIdentity, "") != heldBefore {
		return
	}
	now := metav1.NowMicro()
	l.Spec = coordinationv1.LeaseSpec{HolderIdentity: ptr.To(""), LeaseDurationSeconds: ptr.To(int32(1)),
		AcquireTime: &now, RenewTime: &now, LeaseTransitions: l.Spec.LeaseTransitions}
	if _, err := leases.Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		r.vlogf(2, "node %s: releasing kube-controller-manager's lease of the stopped %s: %v", ap.node, heldBefore, err)
		return
	}
	r.vlogf(1, "node %s: released kube-controller-manager's lease of the stopped %s", ap.node, heldBefore)
}

// restarted tells whether a renewal replaced a component's process.
func restarted(res *api.RenewResult, s pki.Service) bool {
	for _, c := range res.Restarted {
		if c.Component == string(s) {
			return true
		}
	}
	return false
}
