// Package agent runs on a node: in the short-lived agent pod (the host's
// directories below /host, the host's processes in /proc with hostPID), or
// on the host itself. Each action reads one api.Request and answers one
// api.Result whose Outcome says what became of the node: an action that
// changes files is one transaction (pkg/agent/txn.go) that ends with all new
// files, verified, or all old files restored.
package agent

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"syscall"
	"time"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/version"
)

// DefaultTimeout bounds each wait when a request names none.
const DefaultTimeout = 3 * time.Minute

// Agent acts on one node.
type Agent struct {
	// Root is where the host's filesystem is mounted ("/host" in the pod).
	Root string
	// ProcDir is the host's /proc (the pod runs with hostPID).
	ProcDir string
	// Signal sends a signal to a host process (a static pod's, to restart
	// it: the kubelet starts a new container at once).
	Signal func(pid int, sig syscall.Signal) error
	// RestartUnit restarts a systemd unit on the host (the kubelet); by
	// default over systemd's private D-Bus socket below Root.
	RestartUnit func(ctx context.Context, unit string) error
	// Dial opens the agent's connections: health checks, TLS handshakes
	// that prove a reload, the kubelet's API check. Tests replace it so
	// they reach only their own servers.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Now is the clock; tests replace it.
	Now func() time.Time
	// Timeout bounds each wait for a component to come back; a request's
	// own timeout replaces it.
	Timeout time.Duration
}

// New returns an agent for a node whose host filesystem is below root.
func New(root string) *Agent {
	d := &net.Dialer{Timeout: 5 * time.Second}
	return &Agent{
		Root:        root,
		ProcDir:     "/proc",
		Signal:      kill,
		RestartUnit: systemdRestart(filepath.Join(root, "run/systemd/private")),
		Dial:        d.DialContext,
		Now:         time.Now,
		Timeout:     DefaultTimeout,
	}
}

func (a *Agent) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return a.Dial(ctx, network, addr)
}

// Handle performs one request.
func (a *Agent) Handle(ctx context.Context, req api.Request) api.Result {
	res := api.Result{AgentVersion: version.Version, Node: req.Node}
	if req.Version != version.Version {
		res.Outcome = api.Unchanged
		res.Error = fmt.Sprintf("agent version %s cannot serve plugin version %s: use the agent image of the plugin's version (--image)", version.Version, req.Version)
		return res
	}
	if req.Run != "" && !validName.MatchString(req.Run) {
		res.Outcome, res.Error = api.Unchanged, fmt.Sprintf("invalid run %q", req.Run)
		return res
	}
	if req.Timeout > 0 {
		a.Timeout = req.Timeout
	}
	var err error
	switch req.Action {
	case api.Inspect:
		res.Inspect, err = a.inspect(req)
	case api.Renew:
		res.Renew, err = a.renew(ctx, req)
	case api.KubeletCSR:
		res.CSRs, err = a.kubeletCSR(req)
	case api.KubeletInstall:
		res.Renew, res.Kubelet, err = a.kubeletInstall(ctx, req)
	case api.RestartKubelet:
		res.Kubelet, err = a.restartKubeletAndWait(ctx, 0, nil)
	case api.KubeletStatus:
		res.Kubelet, err = a.kubeletStatus(ctx)
	case api.Rollback:
		res.Renew, res.Kubelet, err = a.rollback(ctx, req)
	case api.ListBackups:
		res.Backups, err = a.listBackups()
	case api.DiscardPending:
		err = a.discardPending(req)
	case api.RestoreInterrupted:
		err = a.restoreInterrupted(req)
	case api.RecoverRenew:
		res.Renew, err = a.recoverRenew(req)
	case api.RecoverRestart:
		res.Renew, res.Kubelet, err = a.recoverRestart(ctx, req)
	case api.SignKubeletClient:
		res.Certificate, err = a.signKubeletClient(req)
	case api.ReadAdminKubeconfig:
		res.Kubeconfig, err = a.readAdminKubeconfig()
	case api.CAPrepare:
		res.CA, err = a.caPrepare(req)
	case api.CAHandoverKey:
		res.CA, err = a.caHandoverKey(req)
	case api.CAHandoverSeal:
		res.CA, err = a.caHandoverSeal(req)
	case api.CAHandoverOpen:
		res.CA, err = a.caHandoverOpen(req)
	case api.CATrust:
		res.Renew, res.CA, err = a.caTrust(ctx, req)
	case api.CADiscard:
		err = a.caDiscard(req)
	case api.CASwitch:
		res.Renew, res.CA, err = a.caSwitch(ctx, req)
	case api.CASign:
		res.CA, err = a.caSign(req)
	case api.Ping:
	default:
		err = fmt.Errorf("unknown action %q", req.Action)
	}
	res.Outcome = outcomeOf(err)
	if err != nil {
		res.Error = err.Error()
	}
	return res
}
