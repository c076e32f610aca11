package orchestrator

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"time"
	"unicode"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/version"
)

// agentPod is a running agent on one node: in an agent pod, or run through
// a transport (recover).
type agentPod struct {
	node         string
	run          string // the run ID its CSRs and backups are tagged with
	conn         agentConn
	controlPlane bool
	obj          *corev1.Node
}

// agentConn runs the agent's subcommands ("exec", "result", "ping") on one
// node and returns their stdout.
type agentConn interface {
	agent(ctx context.Context, args []string, stdin []byte) ([]byte, error)
	// id names the connection (the pod) for the keep-alive pings.
	id() string
}

// podConn reaches an agent pod through the pods/exec subresource.
type podConn struct {
	exec Executor
	pod  string
}

func (p podConn) agent(ctx context.Context, args []string, stdin []byte) ([]byte, error) {
	return p.exec.Exec(ctx, Namespace, p.pod, containerName, append([]string{api.Binary, "agent"}, args...), stdin)
}

func (p podConn) id() string { return p.pod }

// AgentError is a request the agent answered with a failure. Outcome says
// what became of the node; callers decide on it, never on the message.
type AgentError struct {
	Node    string
	Action  api.Action
	Outcome api.Outcome
	Message string
}

func (e *AgentError) Error() string {
	return fmt.Sprintf("node %s: %s", e.Node, e.Message)
}

// ErrInterrupted is returned for a change that was not started because
// the run was interrupted.
var ErrInterrupted = errors.New("interrupted")

// call sends one request to a node's agent and returns its result. The
// exec stream passes through kube-apiserver and the kubelet, so it breaks
// when an action restarts either (or a request meets one restarting): the
// agent files every result, and call fetches it once the API answers again,
// or sends the request again if it never reached the agent.
func (r *Runner) call(ctx context.Context, ap agentPod, req api.Request) (*api.Result, error) {
	req.ID = newID()
	req.Version = version.Version
	req.Node = ap.node
	req.Run = ap.run
	req.Timeout = r.Timeout
	req.KeepBackups = r.KeepBackups
	in, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	res, err := r.deliver(ctx, ap, req, in)
	if err != nil {
		r.vlogf(2, "node %s: agent call %s (%s): no answer after %s: %v", ap.node, req.Action, req.ID, time.Since(start).Round(time.Millisecond), err)
		return nil, fmt.Errorf("node %s: %s: %w", ap.node, req.Action, err)
	}
	r.vlogf(2, "node %s: agent call %s (%s): %s in %s", ap.node, req.Action, req.ID, res.Outcome, time.Since(start).Round(time.Millisecond))
	if res.Outcome.Failed() {
		return res, &AgentError{Node: ap.node, Action: req.Action, Outcome: res.Outcome, Message: res.Error}
	}
	if res.AgentVersion != version.Version {
		return res, fmt.Errorf("node %s: agent version %s differs from plugin version %s: use --image with the agent image of this plugin's version", ap.node, res.AgentVersion, version.Version)
	}
	return res, nil
}

// change is a call that changes the node (a transaction). It is not
// started once ctx is done; once started, its outcome is waited for even
// after ctx is done (an interrupt), until the transaction's bound passes
// or the user insists (Drain), because the node finishes it anyway and the
// user must learn how it ended.
func (r *Runner) change(ctx context.Context, ap agentPod, req api.Request) (*api.Result, error) {
	if ctx.Err() != nil {
		return nil, fmt.Errorf("node %s: %s not started: %w", ap.node, req.Action, ErrInterrupted)
	}
	r.setInFlight(ap.node, req.Action)
	defer r.setInFlight(ap.node, "")
	cctx, cancel := r.finishing(ctx)
	defer cancel()
	res, err := r.call(cctx, ap, req)
	if ctx.Err() != nil {
		r.logf("node %s: the %s in progress when interrupted ended: %s", ap.node, req.Action, describeOutcome(res, err))
	}
	var ae *AgentError
	if errors.As(err, &ae) && ae.Outcome == api.Lost {
		// The action's process died: have the node restore its
		// transaction now rather than at its next one.
		if rec, rerr := r.call(r.drain(), ap, api.Request{Action: api.RestoreInterrupted}); rerr != nil && rec != nil {
			r.logf("node %s: %s", ap.node, rec.Error)
		}
	}
	return res, err
}

// finishing returns a context for finishing what was started on a node:
// it outlives ctx (an interrupt) by a transaction's bound, and ends at once
// when the user insists (Drain).
func (r *Runner) finishing(ctx context.Context) (context.Context, context.CancelFunc) {
	fctx, cancel := context.WithCancel(r.drain())
	go func() {
		select {
		case <-ctx.Done():
			select {
			case <-time.After(api.TransactionTimeout(r.Timeout) + 30*time.Second):
				cancel()
			case <-fctx.Done():
			}
		case <-fctx.Done():
		}
	}()
	return fctx, cancel
}

// describeOutcome says in words what became of a node.
func describeOutcome(res *api.Result, err error) string {
	var ae *AgentError
	switch {
	case err == nil:
		return "completed (new files, verified)"
	case errors.As(err, &ae):
		switch ae.Outcome {
		case api.Unchanged:
			return "failed before changing anything"
		case api.Restored:
			return "failed and restored every file it had changed"
		case api.RestoreFailed:
			return "failed and could NOT restore its files: " + ae.Message
		case api.Busy:
			return "refused: " + ae.Message
		}
	}
	return fmt.Sprintf("unknown (%v); the node ends its transaction on its own: all new files or all restored", err)
}

// maxAnswer bounds what the plugin reads from an agent.
const maxAnswer = 4 << 20

// deliver execs the request and returns the agent's answer, fetching the
// filed result when the stream broke.
func (r *Runner) deliver(ctx context.Context, ap agentPod, req api.Request, in []byte) (*api.Result, error) {
	deadline := time.Now().Add(api.TransactionTimeout(r.Timeout) + 30*time.Second)
	send := true
	var last error
	// A request the agent never received after a few tries will not get
	// there (the agent cannot even start): say why instead of retrying
	// until the deadline.
	const maxUnreceived = 3
	unreceived := 0
	var refusedSince time.Time
	for {
		var out []byte
		var err error
		if send {
			out, err = ap.conn.agent(ctx, []string{"exec"}, in)
		} else {
			out, err = ap.conn.agent(ctx, []string{"result", "--id", req.ID}, nil)
		}
		r.touched(ap.conn.id())
		res, perr := decodeResult(out, ap.node)
		switch {
		case perr == nil && res.Outcome == api.NotReceived:
			if unreceived++; unreceived >= maxUnreceived {
				return nil, fmt.Errorf("the agent never received the request (%d tries): %w", unreceived, last)
			}
			send = true // safe: the agent never saw it
			continue
		case perr == nil && res.Outcome == api.Running:
			last = errors.New(res.Error)
		case perr == nil:
			return res, nil
		case send && kubeletRefused(err) && (refusedSince.IsZero() || time.Since(refusedSince) < kubeletDenialTTL+15*time.Second):
			// The node's kubelet refused the API server's connection, so the
			// agent never got the request: send it again. Right after a
			// restart of the node's kube-apiserver its RBAC cache has not
			// synced, the kubelet's authorizer (which asks it) is denied,
			// and the kubelet caches that denial.
			if refusedSince.IsZero() {
				refusedSince = time.Now()
			}
			r.vlogf(2, "node %s: %s: the node's kubelet refused the exec (%v); sending it again", ap.node, req.Action, err)
			last = err
		case send && (apierrors.IsForbidden(err) || ctx.Err() != nil):
			return nil, errors.Join(err, perr)
		default:
			if err == nil {
				err = perr
			}
			if send {
				// Expected when the action restarts kube-apiserver or the
				// kubelet, which carry the stream: not worth alarming anyone.
				r.vlogf(2, "node %s: %s: the stream ended without an answer (%v); fetching the result the agent filed", ap.node, req.Action, err)
			}
			last, send = err, false
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no answer within %s: %w", api.TransactionTimeout(r.Timeout), last)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(r.poll()):
		}
	}
}

// kubeletDenialTTL is how long a kubelet caches a denied authorization
// (its authorization.webhook.cacheUnauthorizedTTL, 30 s by default).
const kubeletDenialTTL = 30 * time.Second

// kubeletRefused tells whether an exec failed because the node's kubelet
// refused the API server's connection to it (its own authorization of the
// API server's kubelet client), not because the API server refused the
// user: client-go reports the kubelet's answer to the upgrade only as text.
func kubeletRefused(err error) bool {
	return err != nil && strings.Contains(err.Error(), "unable to upgrade connection: Forbidden (user=")
}

// decodeResult parses an agent's answer, which is untrusted input: root on
// a node controls what it says. It must be one bounded JSON Result for this
// node with a known outcome; every string in it is stripped of control
// characters before anything prints it.
func decodeResult(out []byte, node string) (*api.Result, error) {
	out = bytes.TrimSpace(out)
	if len(out) == 0 {
		return nil, errors.New("no answer")
	}
	if len(out) > maxAnswer {
		return nil, fmt.Errorf("answer of %d bytes (at most %d)", len(out), maxAnswer)
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	dec.DisallowUnknownFields()
	var res api.Result
	if err := dec.Decode(&res); err != nil {
		return nil, fmt.Errorf("unreadable agent answer %q: %w", clean(tail(out)), err)
	}
	if dec.More() {
		return nil, errors.New("more than one answer")
	}
	switch res.Outcome {
	case api.Done, api.Unchanged, api.Restored, api.RestoreFailed, api.Busy, api.NotReceived, api.Running, api.Lost:
	default:
		return nil, fmt.Errorf("agent answer with unknown outcome %q", clean(string(res.Outcome)))
	}
	if res.Node != "" && res.Node != node {
		return nil, fmt.Errorf("agent answer for node %q, not %q", clean(res.Node), node)
	}
	res.Node = node
	if res.Outcome == api.Done && res.Error != "" {
		return nil, errors.New("agent answer both done and failed")
	}
	if res.Inspect != nil {
		if err := checkTrust(res.Inspect); err != nil {
			return nil, fmt.Errorf("agent answer: %w", err)
		}
	}
	cleanStrings(reflect.ValueOf(&res).Elem())
	return &res, nil
}

// maxCommonName bounds a CA's common name in an answer (X.509's upper
// bound is 64 characters).
const maxCommonName = 256

// checkTrust holds an inspection's CAs to ids of their form (pki.CAID),
// each described once, and every id a trust point, a signer or a
// certificate's issuer names to a CA the same answer describes: what the
// plugin compares and prints by id is never made up.
func checkTrust(in *api.InspectResult) error {
	known := map[string]bool{}
	for _, a := range in.Authorities {
		switch {
		case !pki.ValidCAID(a.ID):
			return fmt.Errorf("CA id %q is not %d lowercase hex digits", clean(a.ID), pki.CAIDLength)
		case known[a.ID]:
			return fmt.Errorf("CA %s described twice", a.ID)
		case len(a.CommonName) > maxCommonName:
			return fmt.Errorf("CA %s: common name of %d bytes (at most %d)", a.ID, len(a.CommonName), maxCommonName)
		}
		known[a.ID] = true
	}
	for _, tp := range append(append([]api.TrustPoint{}, in.TrustPoints...), in.Signers...) {
		for _, id := range tp.CAs {
			if !known[id] {
				return fmt.Errorf("%s names CA %q, which the answer does not describe", clean(tp.Path), clean(id))
			}
		}
	}
	for _, c := range in.Certs {
		if c.Issuer != "" && c.Issuer != api.IssuerSelfSigned && c.Issuer != api.IssuerUnknown && !known[c.Issuer] {
			return fmt.Errorf("%s: issuer %q, which the answer does not describe", clean(c.Name), clean(c.Issuer))
		}
	}
	return nil
}

// clean replaces control characters (terminal escapes) in node-supplied
// text; newlines and tabs stay.
func clean(s string) string {
	return strings.Map(func(c rune) rune {
		if c == '\n' || c == '\t' || !unicode.IsControl(c) {
			return c
		}
		return '?'
	}, s)
}

func cleanStrings(v reflect.Value) {
	switch v.Kind() {
	case reflect.String:
		if v.CanSet() {
			v.SetString(clean(v.String()))
		}
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			cleanStrings(v.Elem())
		}
	case reflect.Struct:
		for i := range v.NumField() {
			cleanStrings(v.Field(i))
		}
	case reflect.Slice, reflect.Array:
		for i := range v.Len() {
			cleanStrings(v.Index(i))
		}
	case reflect.Map:
		for _, k := range v.MapKeys() {
			e := reflect.New(v.Type().Elem()).Elem()
			e.Set(v.MapIndex(k))
			cleanStrings(e)
			v.SetMapIndex(k, e)
		}
	}
}

func newID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
