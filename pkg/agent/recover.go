package agent

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// The recovery of a cluster whose certificates expired (kubectl
// rotate-certs recover): the API is down, so the agent runs through a
// transport, renews with the CAs on the control planes, signs the kubelets'
// client certificates itself, and restarts everything without the API.

// caValidity is what a CA recover has to create gets, as kubeadm's CAs do.
const caValidity = 10 * 365 * 24 * time.Hour

// planCreations plans, for recover, the certificates the static pods
// reference that are missing: they are created anew with kubeadm's subject
// and usages, and a front-proxy CA that is missing altogether is created
// too (older tools made clusters without one).
func (a *Agent) planCreations(p *nodePlan, l layout, validity time.Duration, now time.Time) {
	apiserver, err := readStaticPod(a.Root, "kube-apiserver")
	if err != nil {
		p.problems = append(p.problems, err.Error())
		return
	}
	referenced := func(flag, path string) bool { return apiserver.flags[flag] == "/"+path }
	for _, c := range p.missing {
		if c.Name == "front-proxy-client" && !referenced("proxy-client-cert-file", c.CertFile) {
			p.notes = append(p.notes, "front-proxy-client: missing and not named by kube-apiserver's --proxy-client-cert-file: not created")
			continue
		}
		var auth *pki.Authority
		if c.CA == pki.FrontProxyCA && !pki.Exists(a.Root, c.CA.CertFile) && !pki.Exists(a.Root, c.CA.KeyFile) {
			if !referenced("requestheader-client-ca-file", c.CA.CertFile) {
				p.notes = append(p.notes, "front-proxy-ca: missing and not named by kube-apiserver's --requestheader-client-ca-file: not created")
				continue
			}
			auth = a.planNewCA(p, c.CA, "front-proxy-ca", now)
		} else {
			auth = p.authority(a.Root, c.CA, now)
		}
		if auth == nil {
			continue
		}
		r, err := pki.PlanCreation(c, auth, auth.Cert.PublicKey, validity, now)
		if err != nil {
			p.problems = append(p.problems, err.Error())
			continue
		}
		p.renewals = append(p.renewals, r)
		p.changes = append(p.changes, plannedChange(c, nil))
		p.notes = append(p.notes, fmt.Sprintf("%s: /%s is missing: created anew, signed by CA %s", c.Name, c.CertFile, c.CA.Name))
	}
}

// planNewCA plans a CA that is missing altogether, with a key like the
// cluster CA's.
func (a *Agent) planNewCA(p *nodePlan, ca pki.CA, cn string, now time.Time) *pki.Authority {
	if auth := p.authorities[ca.Name]; auth != nil {
		return auth
	}
	cluster := p.authority(a.Root, pki.ClusterCA, now)
	if cluster == nil {
		return nil
	}
	auth, files, err := pki.NewCA(ca, cn, cluster.Cert.PublicKey, caValidity, now)
	if err != nil {
		p.problems = append(p.problems, err.Error())
		return nil
	}
	p.authorities[ca.Name] = auth
	p.newCAs = append(p.newCAs, files...)
	p.changes = append(p.changes, api.PlannedChange{Name: ca.Name, Service: string(pki.ServiceAPIServer), Path: "/" + ca.CertFile})
	p.notes = append(p.notes, fmt.Sprintf("CA %s: missing altogether: a new one is created (10 years)", ca.Name))
	return auth
}

// recoverRenew is a control plane's first recovery step, one transaction:
// every certificate and kubeconfig renewed, what is missing created, and the
// kubelet's client certificate signed here by the cluster CA. Nothing is
// restarted (see api.RecoverRenew).
func (a *Agent) recoverRenew(req api.Request) (*api.RenewResult, error) {
	req.Recover = true
	l, t, res, err := a.beginTxn(req)
	if err != nil {
		return nil, err
	}
	if !l.controlPlane {
		t.end()
		return res, errors.New("not a control plane (no /etc/kubernetes/manifests/kube-apiserver.yaml)")
	}
	p, err := a.planTxn(t, req, l, res)
	if err != nil {
		return res, err
	}
	if err := t.start("recover"); err != nil {
		t.end()
		return res, err
	}
	res.Backup = t.b.Name
	err = func() error {
		for _, f := range p.newCAs {
			if err := t.write(f); err != nil {
				return err
			}
		}
		for _, r := range p.renewals {
			for _, f := range r.Files {
				if err := t.write(f); err != nil {
					return err
				}
			}
			res.Changes = append(res.Changes, renewalChange(r))
		}
		if err := a.localKubeletClient(t, req, p, res); err != nil {
			return err
		}
		if !l.servingByCSR {
			if _, err := a.renewSelfSignedServing(t, req, a.Now(), res); err != nil {
				return err
			}
		}
		return a.pointKubeletConfAtRotatingFile(t, res)
	}()
	if err != nil {
		return res, t.abort(err)
	}
	return res, a.commit(t, res)
}

// localKubeletClient gives the node's kubelet a new client certificate
// (key made here) signed by the cluster CA on this node, as the cluster's
// kubelet client signer would, for the node the current one names.
func (a *Agent) localKubeletClient(t *txn, req api.Request, p *nodePlan, res *api.RenewResult) error {
	old, err := pki.ReadCertificate(a.Root, pki.Cert{CertFile: pki.KubeletClientCurrent})
	if err != nil {
		return fmt.Errorf("kubelet-client: %w", err)
	}
	node, ok := strings.CutPrefix(old.Subject.CommonName, "system:node:")
	if !ok || node == "" {
		return fmt.Errorf("kubelet-client: /%s is for %q, not for a node", pki.KubeletClientCurrent, old.Subject.CommonName)
	}
	ca := p.authority(a.Root, pki.ClusterCA, a.Now())
	if ca == nil {
		return errors.New("the cluster CA cannot sign: " + strings.Join(p.problems, "; "))
	}
	_, isRSA := old.PublicKey.(*rsa.PublicKey)
	keepKE := isRSA || old.KeyUsage&x509.KeyUsageKeyEncipherment != 0
	issued, err := ca.Issue(pki.KubeletClientTemplate(node, keepKE), old.PublicKey, req.Validity, a.Now())
	if err != nil {
		return err
	}
	file := pki.KubeletRotatedName(kubeletClient.prefix, a.Now())
	if err := t.write(pki.File{Path: file, Data: pki.KubeletBundle(issued.CertPEM, issued.KeyPEM), Mode: 0o600}); err != nil {
		return err
	}
	if err := t.link(kubeletClient.current, "/"+file); err != nil {
		return err
	}
	res.Changes = append(res.Changes, change(kubeletClient.name, kubeletClient.current, old, issued.Cert))
	return nil
}

func renewalChange(r *pki.Renewal) api.Change {
	c := api.Change{Name: r.Cert.Name, Path: "/" + r.Cert.Path(),
		NewSerial: r.New.Cert.SerialNumber.String(), NewNotAfter: r.New.Cert.NotAfter.UTC(), CappedToCA: r.New.Capped}
	if r.Old != nil {
		c.OldSerial, c.OldNotAfter = r.Old.SerialNumber.String(), r.Old.NotAfter.UTC()
	}
	return c
}

// recoverRestart is a control plane's second recovery step, once every
// control plane has new certificates: kube-apiserver, kube-controller-manager
// and kube-scheduler are stopped, the kubelet is restarted (which also
// clears its crash-loop back-off, so the static pods start at once), and
// the node is proven to work: etcd and kube-apiserver serve the new
// certificates, the components are healthy, and the API server accepts the
// kubelet's new client certificate. The files are new and valid whatever
// happens here, so nothing is restored: a failure is reported.
func (a *Agent) recoverRestart(ctx context.Context, req api.Request) (*api.RenewResult, *api.KubeletProcess, error) {
	l, err := a.detectLayout()
	if err != nil {
		return nil, nil, err
	}
	if !l.controlPlane {
		return nil, nil, errors.New("not a control plane")
	}
	ctx, cancel := context.WithTimeout(ctx, api.WorkTimeout(a.Timeout))
	defer cancel()
	res := &api.RenewResult{}
	for _, c := range []struct {
		name string
		sig  syscall.Signal
	}{{"kube-apiserver", syscall.SIGKILL}, {"kube-controller-manager", syscall.SIGTERM}, {"kube-scheduler", syscall.SIGTERM}} {
		if p, err := onlyProcess(a.ProcDir, c.name); err == nil {
			if err := a.Signal(p.pid, c.sig); err != nil {
				return res, nil, fmt.Errorf("stopping %s: %w", c.name, err)
			}
		}
	}
	proc, err := a.restartKubeletAndWait(ctx, 0, res)
	if err != nil {
		return res, nil, err
	}
	serials := map[string]string{}
	for _, name := range []string{"etcd-server", "etcd-peer", "apiserver"} {
		for _, c := range pki.Inventory {
			if c.Name == name {
				cert, err := pki.ReadCertificate(a.Root, c)
				if err != nil {
					return res, proc, err
				}
				serials[name] = cert.SerialNumber.String()
			}
		}
	}
	asked := map[pki.Service]bool{pki.ServiceEtcd: true, pki.ServiceAPIServer: true}
	if err := a.settle(ctx, l, asked, asked, serials, false, false, res); err != nil {
		return res, proc, err
	}
	for _, name := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		if err := a.waitHealthy(ctx, name); err != nil {
			return res, proc, err
		}
		res.Verified = append(res.Verified, name+" is healthy")
	}
	bundle, err := pki.ReadFile(a.Root, pki.KubeletClientCurrent)
	if err != nil {
		return res, proc, err
	}
	v, err := a.verifyKubeletClient(ctx, req.Node, bundle, bundle)
	if err != nil {
		return res, proc, err
	}
	res.Verified = append(res.Verified, v)
	return res, proc, nil
}

// waitHealthy waits until one process of a static pod runs and its health
// endpoint answers.
func (a *Agent) waitHealthy(ctx context.Context, name string) error {
	sp, err := readStaticPod(a.Root, name)
	if err != nil {
		return err
	}
	u, err := sp.healthURL()
	if err != nil {
		return err
	}
	var last error
	for {
		if _, err := onlyProcess(a.ProcDir, name); err != nil {
			last = err
		} else if last = a.healthy(ctx, u); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s is not healthy: %v", name, last)
		case <-time.After(time.Second):
		}
	}
}

// signKubeletClient checks a worker's kubelet client request exactly as
// the plugin checks one it approves, and signs it with the cluster CA here.
func (a *Agent) signKubeletClient(req api.Request) (string, error) {
	if req.CSR == nil || req.SignFor == "" {
		return "", errors.New("no request to sign, or no node to sign it for")
	}
	csr, isRSA, err := pki.CheckKubeletCSR([]byte(req.CSR.Request), req.SignFor, false, pki.NodeNames{})
	if err != nil {
		return "", fmt.Errorf("node %s: %w", req.SignFor, err)
	}
	ca, err := pki.LoadAuthority(a.Root, pki.ClusterCA)
	if err != nil {
		return "", err
	}
	if err := usableCA(ca, a.Now()); err != nil {
		return "", err
	}
	cert, err := ca.SignRequest(csr, pki.KubeletClientTemplate(req.SignFor, isRSA || req.CSR.KeyEncipherment), req.Validity, a.Now())
	return string(cert), err
}

// readAdminKubeconfig returns admin.conf once its certificate is valid.
func (a *Agent) readAdminKubeconfig() (string, error) {
	const rel = "etc/kubernetes/admin.conf"
	data, err := pki.ReadFile(a.Root, rel)
	if err != nil {
		return "", err
	}
	cert, err := pki.CertificateIn(data)
	if err != nil {
		return "", fmt.Errorf("/%s: %w", rel, err)
	}
	if now := a.Now(); now.After(cert.NotAfter) || now.Before(cert.NotBefore) {
		return "", fmt.Errorf("/%s: its certificate is not valid now (until %s)", rel, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return string(data), nil
}
