package agent

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// renew replaces the CA-signed certificates of the requested services on
// this node as one transaction: lock, plan everything, back up, write, then
// restart or prove reload; on any failure restore the backup.
func (a *Agent) renew(ctx context.Context, req api.Request) (*api.RenewResult, error) {
	l, t, res, err := a.beginTxn(req)
	if err != nil {
		return nil, err
	}
	p, err := a.planTxn(t, req, l, res)
	if err != nil {
		return res, err
	}
	if len(p.renewals) == 0 {
		t.end()
		return res, nil
	}
	if err := t.start("renew"); err != nil {
		t.end()
		return res, err
	}
	res.Backup = t.b.Name
	txCtx, cancel := context.WithTimeout(ctx, api.WorkTimeout(a.Timeout))
	defer cancel()
	if err := a.applyRenewals(txCtx, req, l, p, t, res); err != nil {
		return res, t.abort(err)
	}
	return res, a.commit(t, res)
}

// planTxn plans a locked transaction's renewals; a problem ends the
// transaction before anything changed.
func (a *Agent) planTxn(t *txn, req api.Request, l layout, res *api.RenewResult) (*nodePlan, error) {
	p, err := a.plan(req, l)
	if err != nil {
		t.end()
		return nil, err
	}
	res.Notes = append(res.Notes, p.notes...)
	if len(p.problems) > 0 {
		t.end()
		return nil, fmt.Errorf("nothing was changed on this node: %s", strings.Join(p.problems, "; "))
	}
	return p, nil
}

// commit ends a transaction that did all it should and reports the backups
// it pruned.
func (a *Agent) commit(t *txn, res *api.RenewResult) error {
	n := len(t.notes)
	removed, err := t.commit()
	res.Notes = append(res.Notes, t.notes[n:]...)
	if len(removed) > 0 {
		res.Notes = append(res.Notes, fmt.Sprintf("removed %d backup(s) of older runs (--keep-backups %d): %s", len(removed), max(t.req.KeepBackups, 1), strings.Join(removed, ", ")))
	}
	return err
}

func (a *Agent) applyRenewals(ctx context.Context, req api.Request, l layout, p *nodePlan, t *txn, res *api.RenewResult) error {
	changed, serials, err := writeRenewals(t, p, res)
	if err != nil {
		return err
	}
	return a.settle(ctx, l, p.services, changed, serials, req.Restart == api.RestartAll, req.Graceful, res)
}

// writeRenewals writes a plan's renewals in a transaction and says which
// services changed and each new certificate's serial, for settle.
func writeRenewals(t *txn, p *nodePlan, res *api.RenewResult) (changed map[pki.Service]bool, serials map[string]string, err error) {
	changed, serials = map[pki.Service]bool{}, map[string]string{}
	for _, r := range p.renewals {
		for _, f := range r.Files {
			if err := t.write(f); err != nil {
				return nil, nil, err
			}
		}
		changed[r.Cert.Service] = true
		serials[r.Cert.Name] = r.New.Cert.SerialNumber.String()
		res.Changes = append(res.Changes, renewalChange(r))
	}
	return changed, serials, nil
}

// settle makes the components use what was written: etcd and
// kube-apiserver (of the services asked for) are restarted if restartAll,
// and must serve the new serials; kube-controller-manager and
// kube-scheduler, whose embedded credentials are read once at start, are
// restarted when their files changed (SIGTERM: both exit in <0.2 s and the
// scheduler hands its lease over at once; see reload.md).
func (a *Agent) settle(ctx context.Context, l layout, asked, changed map[pki.Service]bool, serials map[string]string, restartAll, graceful bool, res *api.RenewResult) error {
	// The files are written: a process started after this has read them.
	written := map[pki.Service]process{}
	for _, s := range []pki.Service{pki.ServiceControllerManager, pki.ServiceScheduler} {
		if p, err := onlyProcess(a.ProcDir, string(s)); err == nil && changed[s] {
			written[s] = p
		}
	}
	if restartAll && graceful && asked[pki.ServiceAPIServer] && l.controlPlane {
		// Out of the load balancer's rotation before it, or the etcd it
		// talks to, goes down.
		if err := a.drainAPIServer(ctx, res); err != nil {
			return err
		}
	}
	if asked[pki.ServiceEtcd] && !l.externalEtcd && l.controlPlane {
		if err := a.settleEtcd(ctx, restartAll, graceful, serials, changed[pki.ServiceEtcd], res); err != nil {
			return err
		}
	}
	if asked[pki.ServiceAPIServer] && l.controlPlane {
		if err := a.settleAPIServer(ctx, restartAll, serials, changed[pki.ServiceAPIServer], res); err != nil {
			return err
		}
	}
	for _, s := range []pki.Service{pki.ServiceControllerManager, pki.ServiceScheduler} {
		if changed[s] {
			if err := a.restartUnlessRestarted(ctx, string(s), written[s], res); err != nil {
				return err
			}
		}
	}
	return nil
}

// restartUnlessRestarted restarts a component (SIGTERM) that still runs the
// process it ran when its files were written (atWrite; the zero process
// when that was not one process: then it is restarted, and must run as one
// process now). One that restarted since, typically a leader that exited
// when its kube-apiserver went away, has read the new files: signalling it
// again would only put it into the kubelet's crash-loop back-off, so the
// agent waits for it to be healthy instead.
func (a *Agent) restartUnlessRestarted(ctx context.Context, name string, atWrite process, res *api.RenewResult) error {
	if now, err := onlyProcess(a.ProcDir, name); atWrite == (process{}) || (err == nil && now == atWrite) {
		return a.restart(ctx, name, syscall.SIGTERM, res)
	}
	sp, err := readStaticPod(a.Root, name)
	if err != nil {
		return err
	}
	start := time.Now()
	pid, err := a.awaitNewProcess(ctx, sp, atWrite)
	if err != nil {
		return err
	}
	res.Restarted = append(res.Restarted, api.Restarted{Component: name, OldPID: atWrite.pid, NewPID: pid, Seconds: time.Since(start).Seconds()})
	res.Verified = append(res.Verified, fmt.Sprintf("%s started again on its own after its files were written (pid %d), so it was not restarted", name, pid))
	return nil
}

// restartIfAsked reads a component's manifest and, with restart, stops it
// with sig and waits until it is healthy again. SIGKILL, like `crictl stop`,
// is the fast way: kube-apiserver's SIGTERM waits up to --request-timeout
// for watches (60 s of outage measured) and etcd's ~7 s, against ~4 s and
// ~2.6 s; etcd's WAL makes a kill safe.
func (a *Agent) restartIfAsked(ctx context.Context, name string, restart bool, sig syscall.Signal, res *api.RenewResult) (*staticPod, error) {
	sp, err := readStaticPod(a.Root, name)
	if err != nil || !restart {
		return sp, err
	}
	return sp, a.restartPod(ctx, sp, sig, res)
}

// settleEtcd restarts etcd if asked, then proves it serves the new server
// and peer certificates (etcd reads them on every handshake). With other
// members (graceful), etcd is stopped with SIGTERM: a leader hands its
// leadership to a caught-up follower before it exits, where a killed one
// leaves the cluster without a leader until an election, and writes time
// out meanwhile ("request timed out, possibly due to previous leader
// failure", measured in docs/benchmarks.md).
func (a *Agent) settleEtcd(ctx context.Context, restart, graceful bool, serials map[string]string, changed bool, res *api.RenewResult) error {
	sig := syscall.SIGKILL
	if graceful {
		sig = syscall.SIGTERM
	}
	sp, err := a.restartIfAsked(ctx, "etcd", restart, sig, res)
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
		if err := waitServes(ctx, a.dial, addr, serials[c.cert], client, a.Timeout); err != nil {
			return fmt.Errorf("etcd: %w", err)
		}
		res.Verified = append(res.Verified, fmt.Sprintf("etcd serves %s serial %s on %s", c.cert, serials[c.cert], addr))
	}
	return nil
}

// drainGrace is how long a draining kube-apiserver may finish the requests
// it was serving after it stopped accepting connections.
const drainGrace = 3 * time.Second

// drainAPIServer has kube-apiserver stop accepting connections (SIGTERM; it
// closes its listener at once and finishes what it serves) and waits until
// it refuses them, plus drainGrace. The load balancer then sends every new
// connection elsewhere; the kill that follows cuts nothing but long
// watches, which clients re-establish.
func (a *Agent) drainAPIServer(ctx context.Context, res *api.RenewResult) error {
	sp, err := readStaticPod(a.Root, "kube-apiserver")
	if err != nil {
		return err
	}
	p, err := onlyProcess(a.ProcDir, sp.name)
	if err != nil {
		return err
	}
	addr := a.apiserverAddr(sp)
	start := time.Now()
	if err := a.Signal(p.pid, syscall.SIGTERM); err != nil {
		return fmt.Errorf("draining kube-apiserver (pid %d): %w", p.pid, err)
	}
	ctx, cancel := context.WithTimeout(ctx, a.Timeout)
	defer cancel()
	for {
		conn, err := a.dial(ctx, "tcp", addr)
		if err != nil {
			break // refused: out of rotation
		}
		conn.Close()
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver still accepts connections on %s %s after SIGTERM", addr, a.Timeout)
		case <-time.After(100 * time.Millisecond):
		}
	}
	closed := time.Since(start)
	select {
	case <-ctx.Done():
	case <-time.After(drainGrace):
	}
	res.Verified = append(res.Verified, fmt.Sprintf("kube-apiserver stopped accepting connections on %s %.1fs after SIGTERM, then had %s to finish its requests", addr, closed.Seconds(), drainGrace))
	return nil
}

// apiserverAddr is where kube-apiserver serves, from its manifest.
func (a *Agent) apiserverAddr(sp *staticPod) string {
	host := "127.0.0.1"
	if sp.probe != nil && sp.probe.Host != "" {
		host = sp.probe.Host
	}
	port := sp.flags["secure-port"]
	if port == "" {
		port = "6443"
	}
	return net.JoinHostPort(host, port)
}

// settleAPIServer restarts kube-apiserver if asked, then proves it serves
// the new serving certificate (it watches its files and reloads).
func (a *Agent) settleAPIServer(ctx context.Context, restart bool, serials map[string]string, changed bool, res *api.RenewResult) error {
	sp, err := a.restartIfAsked(ctx, "kube-apiserver", restart, syscall.SIGKILL, res)
	if err != nil || !changed {
		return err
	}
	addr := a.apiserverAddr(sp)
	if err := waitServes(ctx, a.dial, addr, serials["apiserver"], nil, a.Timeout); err != nil {
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
	oldPID, newPID, err := a.restartStatic(ctx, sp, sig)
	if err != nil {
		return err
	}
	res.Restarted = append(res.Restarted, api.Restarted{Component: sp.name, OldPID: oldPID, NewPID: newPID, Seconds: time.Since(start).Seconds()})
	return nil
}

// keyPair loads base.crt and base.key below the root as a TLS client
// certificate.
func (a *Agent) keyPair(base string) (*tls.Certificate, error) {
	certPEM, err := pki.ReadFile(a.Root, base+".crt")
	if err != nil {
		return nil, err
	}
	keyPEM, err := pki.ReadFile(a.Root, base+".key")
	if err != nil {
		return nil, err
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("loading /%s.crt: %w", base, err)
	}
	return &c, nil
}
