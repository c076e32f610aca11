package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// The audit trail: every node a run changed gets a Kubernetes Event on its
// Node object, so `kubectl get events --field-selector involvedObject.kind=Node`
// and `kubectl describe node` show who rotated what, when, and how it ended.
const (
	// EventNamespace is where events about nodes live (nodes have no
	// namespace; the kubelet and the node controller file theirs there too).
	EventNamespace = metav1.NamespaceDefault
	// EventComponent is the events' source.
	EventComponent = "kubectl-rotate-certs"

	ReasonRotated        = "CertificatesRotated"
	ReasonRotationFailed = "CertificateRotationFailed"
	ReasonRolledBack     = "CertificatesRolledBack"
	ReasonRollbackFailed = "CertificateRollbackFailed"
	ReasonCATrustChanged = "CATrustChanged"
	ReasonCATrustFailed  = "CATrustChangeFailed"

	// maxEventMessage keeps a message readable (and within what
	// events.k8s.io allows a note).
	maxEventMessage = 1024
)

// eventKind says which reasons and words a command's events use.
type eventKind struct {
	command      string // how the message names the command
	done, failed string // reasons
	action, verb string // the event's action; what was done to the certificates
}

var (
	rotationEvent = eventKind{command: "kubectl rotate-certs", done: ReasonRotated, failed: ReasonRotationFailed, action: "Rotate", verb: "rotated"}
	// recover renews certificates too: its events are CertificatesRotated.
	recoverEvent  = eventKind{command: "kubectl rotate-certs recover", done: ReasonRotated, failed: ReasonRotationFailed, action: "Recover", verb: "renewed"}
	rollbackEvent = eventKind{command: "kubectl rotate-certs rollback", done: ReasonRolledBack, failed: ReasonRollbackFailed, action: "Rollback", verb: "restored"}
	// A CA rotation's trust changes carry no certificate rows: only a
	// failure is recorded.
	caTrustEvent = eventKind{command: "kubectl rotate-certs ca", done: ReasonCATrustChanged, failed: ReasonCATrustFailed, action: "TrustCA", verb: "changed"}
)

// nodeEvent records, as an Event on the node's Node object, how the run's
// work on the node ended: rows are the certificates it changed there, err
// its failure. A node the run did not touch gets none. An event that cannot
// be created fails nothing: the report says so in a note.
func (r *Runner) nodeEvent(rep *Report, ap agentPod, kind eventKind, rows []Row, err error) {
	if errors.Is(err, ErrInterrupted) {
		err = nil // a step not started: the event is about what was done
	}
	if (err == nil && len(rows) == 0) || r.Client == nil {
		return
	}
	if r.optionalDenied(permCreateEvents) {
		rep.noteOnce(fmt.Sprintf("no audit events were recorded: your user may not create events in namespace %s; the certificates are not affected", EventNamespace))
		return
	}
	reason, typ := kind.done, corev1.EventTypeNormal
	if err != nil {
		reason, typ = kind.failed, corev1.EventTypeWarning
	}
	msg := eventMessage(rep, ap, kind, rows, err)
	ctx, cancel := context.WithTimeout(r.drain(), 15*time.Second)
	defer cancel()
	now := metav1.Now()
	ev := &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s.%x", ap.node, now.UnixNano()), Namespace: EventNamespace,
			Labels: map[string]string{LabelApp: AppName, LabelRun: rep.Run}},
		InvolvedObject:      corev1.ObjectReference{APIVersion: "v1", Kind: "Node", Name: ap.node, UID: r.nodeUID(ctx, ap)},
		Reason:              reason,
		Message:             msg,
		Type:                typ,
		Source:              corev1.EventSource{Component: EventComponent},
		FirstTimestamp:      now,
		LastTimestamp:       now,
		Count:               1,
		Action:              kind.action,
		ReportingController: EventComponent,
	}
	if _, cerr := r.Client.CoreV1().Events(EventNamespace).Create(ctx, ev, metav1.CreateOptions{}); cerr != nil {
		rep.nodeNote(ap, fmt.Sprintf("its %s event could not be recorded on the Node object (%v); the certificates are not affected", reason, cerr))
		r.vlogf(1, "node %s: event %s: %v", ap.node, reason, cerr)
		return
	}
	rep.node(ap).Event = reason
	r.vlogf(1, "node %s: event %s recorded: %s", ap.node, reason, msg)
}

// nodeUID is the UID of the node's Node object, which `kubectl describe
// node` finds its events by; the node's name if it cannot be read (as the
// kubelet names its own events).
func (r *Runner) nodeUID(ctx context.Context, ap agentPod) types.UID {
	if ap.obj != nil && ap.obj.UID != "" {
		return ap.obj.UID
	}
	if n, err := r.Client.CoreV1().Nodes().Get(ctx, ap.node, metav1.GetOptions{}); err == nil && n.UID != "" {
		return n.UID
	}
	return types.UID(ap.node)
}

// eventMessage names the run, the user, the certificates and their
// earliest new expiry, the backups, and for a failure what failed and what
// became of the node.
func eventMessage(rep *Report, ap agentPod, kind eventKind, rows []Row, err error) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s run %s", kind.command, rep.Run)
	if rep.User != "" {
		fmt.Fprintf(&b, " by %s", rep.User)
	}
	if rep.RolledBack != "" {
		fmt.Fprintf(&b, " (undoing run %s)", rep.RolledBack)
	}
	if err != nil {
		f := failureOf(err)
		step := string(f.Step)
		if step == "" {
			step = "a step"
		}
		fmt.Fprintf(&b, " failed at %s, node files %s: %s", step, f.Outcome, firstLine(f.Message))
		if len(rows) > 0 {
			fmt.Fprintf(&b, "; %s before that", kind.verb)
		}
	}
	if len(rows) > 0 {
		var names []string
		var earliest time.Time
		for _, row := range rows {
			if !slices.Contains(names, row.Certificate) {
				names = append(names, row.Certificate)
			}
			if !row.NewNotAfter.IsZero() && (earliest.IsZero() || row.NewNotAfter.Before(earliest)) {
				earliest = row.NewNotAfter
			}
		}
		if err == nil {
			fmt.Fprintf(&b, " %s", kind.verb)
		}
		fmt.Fprintf(&b, " %d certificate(s): %s", len(names), strings.Join(names, ", "))
		if !earliest.IsZero() {
			fmt.Fprintf(&b, "; new expiry %s", earliest.UTC().Format(time.RFC3339))
			if len(rows) > 1 {
				b.WriteString(" (the earliest)")
			}
		}
	}
	if n := rep.node(ap); len(n.Backups) > 0 {
		fmt.Fprintf(&b, "; previous files backed up in %s: %s", BackupDir, strings.Join(n.Backups, ", "))
	}
	msg := b.String()
	if len(msg) > maxEventMessage {
		msg = msg[:maxEventMessage-len("…")] + "…"
	}
	return msg
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// noteOnce adds a note about the run unless it already has it.
func (rep *Report) noteOnce(note string) {
	if !slices.Contains(rep.Notes, note) {
		rep.Notes = append(rep.Notes, note)
	}
}
