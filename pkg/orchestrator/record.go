package orchestrator

import (
	"errors"
	"slices"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
)

// NodeRecord is what a run did on one node, beyond its certificates (the
// Rows): what its agents reported and how its work ended.
type NodeRecord struct {
	Node         string
	ControlPlane bool
	// Backups are the folders (under /etc/kubernetes/rotate-certs-backup)
	// the node's transactions backed up the replaced files in.
	Backups []string
	// Restarted are the components restarted to load the new files.
	Restarted []api.Restarted
	// Verified are reloads proven without a restart.
	Verified []string
	// Restore (rollback --dry-run) are the files a rollback would put back.
	Restore []string
	// Notes are the node's notes, each once.
	Notes []string
	// Failure is set when a step failed on the node.
	Failure *NodeFailure
	// Event is the reason of the audit event recorded on the Node object,
	// if one was.
	Event string
}

// NodeFailure is a node's failed step and what became of the node.
type NodeFailure struct {
	// Step is the action that failed (renew, kubelet-install, ...), empty
	// when the failure was not the agent's.
	Step api.Action
	// Outcome is what became of the node's files (api.Outcome), or
	// "unknown" when the plugin cannot tell (the node ends its transaction
	// on its own).
	Outcome string
	Message string
}

// OutcomeUnknown is a failure whose effect on the node the plugin cannot
// tell.
const OutcomeUnknown = "unknown"

// node returns the record of a node, adding it (in the order nodes are
// first recorded) if it has none yet.
func (rep *Report) node(ap agentPod) *NodeRecord {
	for _, n := range rep.Nodes {
		if n.Node == ap.node {
			return n
		}
	}
	n := &NodeRecord{Node: ap.node, ControlPlane: ap.controlPlane}
	rep.Nodes = append(rep.Nodes, n)
	return n
}

// nodeNote records a note about a node; a note the node already has is
// dropped (an agent repeats its inspection's notes when it renews).
func (rep *Report) nodeNote(ap agentPod, note string) bool {
	n := rep.node(ap)
	if slices.Contains(n.Notes, note) {
		return false
	}
	n.Notes = append(n.Notes, note)
	return true
}

// failed records the failure of a node's step. A step that was not started
// because of an interrupt is no failure of the node.
func (rep *Report) failed(ap agentPod, err error) {
	if err == nil || errors.Is(err, ErrInterrupted) {
		return
	}
	rep.node(ap).Failure = failureOf(err)
}

// failureOf says what a node's failed step did to the node, from the typed
// outcome its agent reported (never from the message).
func failureOf(err error) *NodeFailure {
	f := &NodeFailure{Outcome: OutcomeUnknown, Message: err.Error()}
	var oe *outcomeError
	var ae *AgentError
	switch {
	case errors.As(err, &oe):
		f.Step, f.Outcome = oe.step, string(oe.outcome)
	case errors.As(err, &ae):
		f.Step, f.Outcome = ae.Action, string(ae.Outcome)
		if ae.Outcome == api.Lost {
			f.Outcome = OutcomeUnknown // restored by the node's next transaction
		}
	case errors.Is(err, ErrCSRRefused):
		f.Step, f.Outcome = api.KubeletCSR, string(api.Unchanged)
	}
	return f
}

// outcomeError is a node's failure whose outcome the plugin knows itself
// (it rolled a kubelet back, or nothing was installed).
type outcomeError struct {
	step    api.Action
	outcome api.Outcome
	err     error
}

func (e *outcomeError) Error() string { return e.err.Error() }
func (e *outcomeError) Unwrap() error { return e.err }

// merge adds what another report (one worker's) recorded.
func (rep *Report) merge(o *Report) {
	rep.Rows = append(rep.Rows, o.Rows...)
	for _, note := range o.Notes {
		rep.noteOnce(note)
	}
	for _, on := range o.Nodes {
		n := rep.node(agentPod{node: on.Node, controlPlane: on.ControlPlane})
		n.Backups = append(n.Backups, on.Backups...)
		n.Restarted = append(n.Restarted, on.Restarted...)
		n.Verified = append(n.Verified, on.Verified...)
		n.Restore = append(n.Restore, on.Restore...)
		for _, note := range on.Notes {
			if !slices.Contains(n.Notes, note) {
				n.Notes = append(n.Notes, note)
			}
		}
		if on.Failure != nil {
			n.Failure = on.Failure
		}
		if on.Event != "" {
			n.Event = on.Event
		}
	}
}
