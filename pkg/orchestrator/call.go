package orchestrator

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/version"
)

// agentPod is a running agent on one node.
type agentPod struct {
	node         string
	run          string // the run ID its CSRs are labelled with
	pod          string
	controlPlane bool
}

// call sends one request to a node's agent and returns its result. When
// the exec stream breaks (the action restarted kube-apiserver or the
// kubelet, which carry the stream), the result the agent filed is fetched
// once the API answers again.
func (r *Runner) call(ctx context.Context, ap agentPod, req api.Request) (*api.Result, error) {
	req.ID = newID()
	req.Version = version.Version
	req.Node = ap.node
	in, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	out, err := r.Exec.Exec(ctx, Namespace, ap.pod, containerName, []string{api.Binary, "agent", "exec"}, in)
	if err != nil {
		if apierrors.IsForbidden(err) || ctx.Err() != nil {
			return nil, fmt.Errorf("node %s: %w", ap.node, err)
		}
		r.logf("node %s: %s: exec stream ended early (%v); fetching the filed result", ap.node, req.Action, err)
		if out, err = r.fetchResult(ctx, ap, req.ID); err != nil {
			return nil, fmt.Errorf("node %s: %s: %w", ap.node, req.Action, err)
		}
	}
	var res api.Result
	if err := json.Unmarshal(out, &res); err != nil {
		return nil, fmt.Errorf("node %s: %s: unreadable agent answer %q: %w", ap.node, req.Action, tail(out), err)
	}
	if res.Error != "" {
		return &res, fmt.Errorf("node %s: %s", ap.node, res.Error)
	}
	if res.AgentVersion != version.Version {
		return &res, fmt.Errorf("node %s: agent version %s differs from plugin version %s: use --image with the agent image of this plugin's version", ap.node, res.AgentVersion, version.Version)
	}
	return &res, nil
}

func (r *Runner) fetchResult(ctx context.Context, ap agentPod, id string) ([]byte, error) {
	deadline := time.Now().Add(r.Timeout)
	var last error
	for time.Now().Before(deadline) {
		out, err := r.Exec.Exec(ctx, Namespace, ap.pod, containerName, []string{api.Binary, "agent", "result", "--id", id}, nil)
		if err == nil {
			return out, nil
		}
		if strings.Contains(err.Error(), "never reached the agent") {
			return nil, err
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
	return nil, errors.Join(fmt.Errorf("no result after %s", r.Timeout), last)
}

func newID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
