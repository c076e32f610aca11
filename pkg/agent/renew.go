package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// renew replaces the CA-signed certificates of the requested services on
// this node as one transaction: plan everything, back up, write, then
// restart or prove reload; on any failure restore the backup.
func (a *Agent) renew(ctx context.Context, req api.Request) (*api.RenewResult, error) {
	l, err := a.detectLayout()
	if err != nil {
		return nil, err
	}
	p, err := a.plan(req, l)
	if err != nil {
		return nil, err
	}
	if len(p.problems) > 0 {
		return nil, fmt.Errorf("nothing was changed on this node: %s", strings.Join(p.problems, "; "))
	}
	res := &api.RenewResult{Notes: p.notes}
	if len(p.renewals) == 0 {
		return res, nil
	}
	b, err := newBackup(a.Root, "renew", a.Now())
	if err != nil {
		return nil, err
	}
	res.Backup = b.Name
	if err := a.applyRenewals(ctx, req, l, p, b, res); err != nil {
		if rerr := b.restore(); rerr != nil {
			return res, fmt.Errorf("%w; restoring the backup %s also failed: %v (restore it by hand)", err, b.Dir(), rerr)
		}
		return res, fmt.Errorf("%w; every file was restored from %s", err, b.Dir())
	}
	return res, nil
}

func (a *Agent) applyRenewals(ctx context.Context, req api.Request, l layout, p *nodePlan, b *backup, res *api.RenewResult) error {
	for _, r := range p.renewals {
		for _, f := range r.Files {
			if err := b.add(f.Path); err != nil {
				return err
			}
		}
	}
	changed := map[pki.Service]bool{}
	serials := map[string]string{}
	for _, r := range p.renewals {
		for _, f := range r.Files {
			if err := pki.WriteAtomic(a.Root, f); err != nil {
				return err
			}
		}
		changed[r.Cert.Service] = true
		serials[r.Cert.Name] = r.New.Cert.SerialNumber.String()
		res.Changes = append(res.Changes, api.Change{
			Name: r.Cert.Name, Path: "/" + r.Cert.Path(),
			OldSerial: r.Old.SerialNumber.String(), NewSerial: r.New.Cert.SerialNumber.String(),
			OldNotAfter: r.Old.NotAfter.UTC(), NewNotAfter: r.New.Cert.NotAfter.UTC(),
			CappedToCA: r.New.Capped,
		})
	}
	restartAll := req.Restart == api.RestartAll
	if p.services[pki.ServiceEtcd] && !l.externalEtcd && l.controlPlane {
		if err := a.settleEtcd(ctx, restartAll, serials, changed[pki.ServiceEtcd], res); err != nil {
			return err
		}
	}
	if p.services[pki.ServiceAPIServer] && l.controlPlane {
		if err := a.settleAPIServer(ctx, restartAll, serials, changed[pki.ServiceAPIServer], res); err != nil {
			return err
		}
	}
	// Embedded kubeconfig credentials are read once at start: these two
	// must restart to use them (reload.md). SIGTERM: both exit in <0.2 s
	// and the scheduler hands its lease over at once.
	for _, s := range []pki.Service{pki.ServiceControllerManager, pki.ServiceScheduler} {
		if changed[s] {
			if err := a.restart(ctx, string(s), syscall.SIGTERM, res); err != nil {
				return err
			}
		}
	}
	return nil
}

// restartIfAsked reads a component's manifest and, with restart, stops it
// with SIGKILL and waits until it is healthy again. SIGKILL, like
// `crictl stop`: kube-apiserver's SIGTERM waits up to --request-timeout for
// watches (60 s of outage measured) and etcd's ~7 s, against ~4 s and ~2.6 s;
// etcd's WAL makes a kill safe.
func (a *Agent) restartIfAsked(ctx context.Context, name string, restart bool, res *api.RenewResult) (*staticPod, error) {
	sp, err := readStaticPod(a.Root, name)
	if err != nil || !restart {
		return sp, err
	}
	return sp, a.restartPod(ctx, sp, syscall.SIGKILL, res)
}

// settleEtcd restarts etcd if asked, then proves it serves the new server
// and peer certificates (etcd reads them on every handshake).
func (a *Agent) settleEtcd(ctx context.Context, restart bool, serials map[string]string, changed bool, res *api.RenewResult) error {
	sp, err := a.restartIfAsked(ctx, "etcd", restart, res)
	if err != nil || !changed {
		return err
	}
	// etcd asks for a client certificate: offer one it trusts.
	checks := []struct{ flag, cert, client string }{
		{"listen-client-urls", "etcd-server", "etc/kubernetes/pki/etcd/healthcheck-client"},
		{"listen-peer-urls", "etcd-peer", "etc/kubernetes/pki/etcd/peer"},
	}
	for _, c := range checks {
		addr, err := hostPort(sp.flags[c.flag])
		if err != nil {
			return fmt.Errorf("etcd --%s: %w", c.flag, err)
		}
		client, err := a.keyPair(c.client)
		if err != nil {
			return err
		}
		if err := waitServes(ctx, addr, serials[c.cert], client, a.Timeout); err != nil {
			return fmt.Errorf("etcd: %w", err)
		}
		res.Verified = append(res.Verified, fmt.Sprintf("etcd serves %s serial %s on %s", c.cert, serials[c.cert], addr))
	}
	return nil
}

// settleAPIServer restarts kube-apiserver if asked, then proves it serves
// the new serving certificate (it watches its files and reloads).
func (a *Agent) settleAPIServer(ctx context.Context, restart bool, serials map[string]string, changed bool, res *api.RenewResult) error {
	sp, err := a.restartIfAsked(ctx, "kube-apiserver", restart, res)
	if err != nil || !changed {
		return err
	}
	host := "127.0.0.1"
	if sp.probe != nil && sp.probe.Host != "" {
		host = sp.probe.Host
	}
	port := sp.flags["secure-port"]
	if port == "" {
		port = "6443"
	}
	addr := net.JoinHostPort(host, port)
	if err := waitServes(ctx, addr, serials["apiserver"], nil, a.Timeout); err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	res.Verified = append(res.Verified, fmt.Sprintf("kube-apiserver serves apiserver serial %s on %s", serials["apiserver"], addr))
	return nil
}

func (a *Agent) restart(ctx context.Context, name string, sig syscall.Signal, res *api.RenewResult) error {
	sp, err := readStaticPod(a.Root, name)
	if err != nil {
		return err
	}
	return a.restartPod(ctx, sp, sig, res)
}

func (a *Agent) restartPod(ctx context.Context, sp *staticPod, sig syscall.Signal, res *api.RenewResult) error {
	start := time.Now()
	oldPID, newPID, err := restartStatic(ctx, a.ProcDir, sp, sig, a.Timeout)
	if err != nil {
		return err
	}
	res.Restarted = append(res.Restarted, api.Restarted{Component: sp.name, OldPID: oldPID, NewPID: newPID, Seconds: time.Since(start).Seconds()})
	return nil
}

// keyPair loads base.crt and base.key below the root as a TLS client
// certificate.
func (a *Agent) keyPair(base string) (*tls.Certificate, error) {
	c, err := tls.LoadX509KeyPair(filepath.Join(a.Root, base+".crt"), filepath.Join(a.Root, base+".key"))
	if err != nil {
		return nil, errors.New("loading /" + base + ".crt: " + err.Error())
	}
	return &c, nil
}
