package orchestrator

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
)

// rotateKubelet gets the kubelet new certificates through the CSR API
// (key generated on the node), installs them, restarts the kubelet and
// waits until the node is Ready on its new credentials. A kubelet that does
// not come back is rolled back to its previous files.
func (r *Runner) rotateKubelet(ctx context.Context, ap agentPod, o RotateOptions, rep *Report) error {
	r.logf("node %s: requesting new kubelet certificates", ap.node)
	res, err := r.call(ctx, ap, api.Request{Action: api.KubeletCSR})
	if err != nil {
		return err
	}
	issued := map[string]string{}
	for _, c := range res.CSRs {
		certPEM, err := r.signCSR(ctx, ap.node, ap.run, c, o.Validity)
		if err != nil {
			return err
		}
		issued[c.Name] = certPEM
	}
	inst, err := r.call(ctx, ap, api.Request{Action: api.KubeletInstall, Issued: issued, Validity: o.Validity})
	if err != nil {
		return err
	}
	if err := r.restartKubelet(ctx, ap); err != nil {
		r.logf("node %s: %v; rolling the kubelet's files back", ap.node, err)
		if _, rerr := r.call(ctx, ap, api.Request{Action: api.Rollback, Backup: inst.Renew.Backup}); rerr != nil {
			return fmt.Errorf("%w; rollback failed too: %v", err, rerr)
		}
		if rerr := r.restartKubelet(ctx, ap); rerr != nil {
			return fmt.Errorf("%w; the kubelet's previous files were restored but it did not come back: %v", err, rerr)
		}
		return fmt.Errorf("%w; the kubelet's previous files were restored", err)
	}
	r.addChanges(rep, ap.node, inst.Renew)
	return nil
}

// restartKubelet restarts the kubelet through systemd on the node and waits
// for a new, healthy kubelet process that renews its node lease (proof it
// authenticates to the API server with its new certificate) and a Ready node.
func (r *Runner) restartKubelet(ctx context.Context, ap agentPod) error {
	before, err := r.call(ctx, ap, api.Request{Action: api.KubeletStatus})
	if err != nil {
		return err
	}
	r.logf("node %s: restarting kubelet", ap.node)
	if _, err := r.call(ctx, ap, api.Request{Action: api.RestartKubelet}); err != nil {
		return err
	}
	var last string
	err = wait.PollUntilContextTimeout(ctx, r.poll(), r.Timeout, true, func(ctx context.Context) (bool, error) {
		st, err := r.call(ctx, ap, api.Request{Action: api.KubeletStatus})
		switch {
		case err != nil:
			last = err.Error()
		case st.Kubelet.PID == before.Kubelet.PID:
			last = "kubelet still runs as the old process"
		case !st.Kubelet.Healthy:
			last = "new kubelet is not healthy yet"
		default:
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("node %s: kubelet did not restart within %s: %s", ap.node, r.Timeout, last)
	}
	return r.waitLeaseRenewed(ctx, ap.node)
}

// waitLeaseRenewed waits until the node's lease is renewed after now (only
// the new kubelet runs, so it authenticated) and the node is Ready.
func (r *Runner) waitLeaseRenewed(ctx context.Context, node string) error {
	leases := r.Client.CoordinationV1().Leases("kube-node-lease")
	lease, err := leases.Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("node %s: reading its lease: %w", node, err)
	}
	var first time.Time
	if lease.Spec.RenewTime != nil {
		first = lease.Spec.RenewTime.Time
	}
	var last string
	err = wait.PollUntilContextTimeout(ctx, r.poll(), r.Timeout, true, func(ctx context.Context) (bool, error) {
		l, err := leases.Get(ctx, node, metav1.GetOptions{})
		if err != nil || l.Spec.RenewTime == nil || !l.Spec.RenewTime.After(first) {
			last = "node lease not renewed by the new kubelet yet"
			return false, nil
		}
		n, err := r.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil || !NodeReady(n) {
			last = "node not Ready yet"
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("node %s: %s after %s", node, last, r.Timeout)
	}
	return nil
}
