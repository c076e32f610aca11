package orchestrator

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// rotateKubelet gets the kubelet new certificates through the CSR API (key
// generated on the node; the plugin checks every request before it creates
// anything), then has the node install them as one transaction that
// restarts the kubelet and proves the new certificates work, and finally
// waits until the new kubelet renews the node's lease and the node is
// Ready. A kubelet that does not get there is rolled back to its previous
// files.
func (r *Runner) rotateKubelet(ctx context.Context, ap agentPod, o RotateOptions, rep *Report) error {
	if ctx.Err() != nil {
		return fmt.Errorf("node %s: kubelet not started: %w", ap.node, ErrInterrupted)
	}
	r.vlogf(1, "node %s: requesting new kubelet certificates", ap.node)
	res, err := r.call(ctx, ap, api.Request{Action: api.KubeletCSR})
	if err != nil {
		return err
	}
	issued, err := r.signKubeletCSRs(ctx, ap, res.CSRs, o.Validity)
	if err == nil && o.issuer != nil {
		err = checkIssuer(issued, o.issuer)
	}
	if err != nil {
		if _, derr := r.call(r.drain(), ap, api.Request{Action: api.DiscardPending}); derr != nil {
			err = fmt.Errorf("%w; removing the keys made for it: %v", err, derr)
		}
		return &outcomeError{step: api.KubeletCSR, outcome: api.Unchanged, err: err}
	}
	r.logf("node %s: installing the kubelet's certificates and restarting it", ap.node)
	inst, err := r.change(ctx, ap, api.Request{Action: api.KubeletInstall, Issued: issued, Validity: o.Validity})
	if err != nil {
		return err
	}
	r.addChanges(rep, ap, inst.Renew)
	// The step ends when the cluster sees the new kubelet: an interrupt
	// now must not leave that unproven (nor roll a good kubelet back).
	fctx, cancel := r.finishing(ctx)
	defer cancel()
	if err := r.waitLeaseRenewed(fctx, ap.node, inst.Kubelet); err != nil {
		r.logf("node %s: %v; rolling the kubelet's files back", ap.node, err)
		if _, rerr := r.change(r.drain(), ap, api.Request{Action: api.Rollback, Backup: inst.Renew.Backup}); rerr != nil {
			return fmt.Errorf("%w; rollback failed too: %v", err, rerr)
		}
		return &outcomeError{step: api.KubeletInstall, outcome: api.Restored, err: fmt.Errorf("%w; the kubelet's previous files were restored", err)}
	}
	return nil
}

// signKubeletCSRs checks every request of the node first (nothing is
// created while any is refused), then has the cluster sign them.
func (r *Runner) signKubeletCSRs(ctx context.Context, ap agentPod, csrs []api.CSR, validity time.Duration) (map[string]string, error) {
	if len(csrs) == 0 || len(csrs) > len(csrKinds) {
		return nil, fmt.Errorf("node %s: %w: %d certificate requests", ap.node, ErrCSRRefused, len(csrs))
	}
	var checked []*checkedCSR
	seen := map[string]bool{}
	for _, c := range csrs {
		cc, err := checkCSR(ap.obj, c)
		if err != nil {
			return nil, err
		}
		if seen[cc.name] {
			return nil, fmt.Errorf("node %s: %w: %s requested twice", ap.node, ErrCSRRefused, cc.name)
		}
		seen[cc.name] = true
		checked = append(checked, cc)
	}
	if !seen["kubelet-client"] {
		return nil, fmt.Errorf("node %s: %w: no kubelet-client request", ap.node, ErrCSRRefused)
	}
	issued := map[string]string{}
	for _, cc := range checked {
		certPEM, err := r.signCSR(ctx, ap.node, ap.run, cc, validity)
		if err != nil {
			return nil, err
		}
		issued[cc.name] = certPEM
	}
	return issued, nil
}

// restartKubelet has the node restart its kubelet (the agent waits for a
// new, healthy process) and waits until it renews the node's lease (proof it
// authenticates to the API server) and the node is Ready.
func (r *Runner) restartKubelet(ctx context.Context, ap agentPod) error {
	r.logf("node %s: restarting kubelet", ap.node)
	res, err := r.change(ctx, ap, api.Request{Action: api.RestartKubelet})
	if err != nil {
		return err
	}
	return r.waitLeaseRenewed(ctx, ap.node, res.Kubelet)
}

// waitLeaseRenewed waits until the node's lease is renewed after the given
// kubelet process started (both times come from the node's clock), so the
// renewal is that process's, and the node is Ready.
func (r *Runner) waitLeaseRenewed(ctx context.Context, node string, p *api.KubeletProcess) error {
	if p == nil {
		return errors.New("the agent did not report the new kubelet process")
	}
	leases := r.Client.CoordinationV1().Leases("kube-node-lease")
	var last string
	err := wait.PollUntilContextTimeout(ctx, r.poll(), r.Timeout, true, func(ctx context.Context) (bool, error) {
		l, err := leases.Get(ctx, node, metav1.GetOptions{})
		if err != nil || l.Spec.RenewTime == nil || !l.Spec.RenewTime.After(p.StartedAt) {
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
		if ctx.Err() != nil && !wait.Interrupted(err) {
			return fmt.Errorf("node %s: stopped waiting (%s): %w", node, last, ctx.Err())
		}
		return fmt.Errorf("node %s: %s after %s", node, last, r.Timeout)
	}
	return nil
}

// checkIssuer makes sure each issued certificate (PEM) carries the
// signature of issuer: during a CA rotation's switch, a certificate the old
// CA signed would stop working when the rotation finishes.
func checkIssuer(issued map[string]string, issuer *x509.Certificate) error {
	for name, p := range issued {
		c, err := pki.ParseCertificatePEM([]byte(p))
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if err := c.CheckSignatureFrom(issuer); err != nil {
			return fmt.Errorf("%s was not issued by the new CA %s (a kube-controller-manager still signs with the old one?): %w", name, pki.CAID(issuer), err)
		}
	}
	return nil
}
