// Package agent runs inside the short-lived privileged pod on a node. It
// sees the host's /etc/kubernetes and /var/lib/kubelet below Root and the
// host's processes in /proc (hostPID). Each action reads one api.Request and
// answers one api.Result; a failed action leaves every file as it was.
package agent

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/version"
)

// Agent acts on one node.
type Agent struct {
	// Root is where the host's filesystem is mounted ("/host" in the pod).
	Root string
	// ProcDir is the host's /proc (the pod runs with hostPID).
	ProcDir string
	// SystemdSocket is systemd's private D-Bus socket, used to restart
	// the kubelet.
	SystemdSocket string
	// Now is the clock; tests replace it.
	Now func() time.Time
	// Timeout bounds each wait for a component to come back.
	Timeout time.Duration
}

// New returns an agent for a pod that mounts the host below root.
func New(root string) *Agent {
	return &Agent{
		Root:          root,
		ProcDir:       "/proc",
		SystemdSocket: filepath.Join(root, "run/systemd/private"),
		Now:           time.Now,
		Timeout:       3 * time.Minute,
	}
}

// Handle performs one request.
func (a *Agent) Handle(ctx context.Context, req api.Request) api.Result {
	res := api.Result{AgentVersion: version.Version, Node: req.Node}
	if req.Version != version.Version {
		res.Error = fmt.Sprintf("agent version %s cannot serve plugin version %s: use the agent image of the plugin's version (--image)", version.Version, req.Version)
		return res
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
		res.Renew, err = a.kubeletInstall(req)
	case api.RestartKubelet:
		err = a.restartKubelet(ctx)
	case api.KubeletStatus:
		res.Kubelet, err = a.kubeletStatus(ctx)
	case api.Rollback:
		err = a.rollback(req.Backup)
	default:
		err = fmt.Errorf("unknown action %q", req.Action)
	}
	if err != nil {
		res.Error = err.Error()
	}
	return res
}

func (a *Agent) rollback(name string) error {
	b, err := openBackup(a.Root, name)
	if err != nil {
		return err
	}
	return b.restore()
}
