package orchestrator

import (
	"bytes"
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

// call sends one request to a node's agent and returns its result. The
// exec stream passes through kube-apiserver and the kubelet, so it breaks
// when an action restarts either (or a request meets one restarting): the
// agent files every result, and call fetches it once the API answers again,
// or sends the request again if it never reached the agent.
func (r *Runner) call(ctx context.Context, ap agentPod, req api.Request) (*api.Result, error) {
	req.ID = newID()
	req.Version = version.Version
	req.Node = ap.node
	in, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	out, err := r.deliver(ctx, ap, req, in)
	if err != nil {
		return nil, fmt.Errorf("node %s: %s: %w", ap.node, req.Action, err)
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

// deliver execs the request and returns the agent's answer, fetching the
// filed result when the stream broke.
func (r *Runner) deliver(ctx context.Context, ap agentPod, req api.Request, in []byte) ([]byte, error) {
	deadline := time.Now().Add(r.Timeout)
	send := true
	var last error
	for {
		if send {
			out, err := r.Exec.Exec(ctx, Namespace, ap.pod, containerName, []string{api.Binary, "agent", "exec"}, in)
			if err == nil && len(bytes.TrimSpace(out)) > 0 {
				return out, nil
			}
			if err == nil {
				err = errors.New("the stream ended without an answer")
			}
			if apierrors.IsForbidden(err) || ctx.Err() != nil {
				return nil, err
			}
			r.logf("node %s: %s: %v; fetching the result the agent filed", ap.node, req.Action, err)
			last, send = err, false
		} else {
			out, err := r.Exec.Exec(ctx, Namespace, ap.pod, containerName, []string{api.Binary, "agent", "result", "--id", req.ID}, nil)
			switch {
			case err == nil && len(bytes.TrimSpace(out)) > 0:
				return out, nil
			case err != nil && strings.Contains(err.Error(), "never reached the agent"):
				send = true // safe: the agent never saw it
				continue
			case err != nil:
				last = err
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no answer within %s: %w", r.Timeout, last)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(r.poll()):
		}
	}
}

func newID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
