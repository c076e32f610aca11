package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// A CA rotation (issue 12) runs in phases, each its own command, each
// resumable: prepare makes the new CAs on one control plane and hands
// them over to the others; trust makes every trust point of every node
// trust old and new, then cluster-info, every namespace's kube-root-ca.crt
// and the workloads that read the CA once. Its state is the ConfigMap
// kube-system/rotate-certs-ca (public certificates and ids only: the keys
// never leave the control planes); every node step is idempotent, so a
// phase run again after an interruption does what is left.

// CARecordName is the ConfigMap in kube-system that records a CA rotation.
const CARecordName = "rotate-certs-ca"

// caRecordKey is the ConfigMap's key holding the record (JSON).
const caRecordKey = "rotation.json"

// CA rotation phases, in order: what the record says is done.
const (
	CAPhasePrepared = "prepared"
	CAPhaseTrusted  = "trusted"
	CAPhaseSwitched = "switched"
	// CAPhaseFinished is only reported: a finished rotation leaves no
	// record.
	CAPhaseFinished = "finished"
	// CAPhaseRolledBack is only reported: a rolled-back rotation leaves
	// no record.
	CAPhaseRolledBack = "rolled-back"
)

// CARotation is the cluster's record of a CA rotation.
type CARotation struct {
	ID           string        `json:"id"`
	Started      time.Time     `json:"started"`
	KeyAlgorithm string        `json:"keyAlgorithm,omitempty"`
	Validity     time.Duration `json:"validity"`
	// Phase is the last phase completed on every node ("" while prepare
	// has not completed).
	Phase string `json:"phase"`
	// Old and New are the CA certificates (PEM) replaced and replacing,
	// by kubeadm CA name.
	Old map[string]string `json:"old"`
	New map[string]string `json:"new"`
	// Restarted are the workloads the trust phase restarted.
	Restarted []string  `json:"restarted,omitempty"`
	Updated   time.Time `json:"updated"`
}

// CAOptions are the options of a CA rotation phase.
type CAOptions struct {
	// KeyAlgorithm and Validity are the new CAs' (prepare).
	KeyAlgorithm string
	Validity     time.Duration
	// Readers says which workloads that read the CA once the trust phase
	// restarts (CAReadersKubeSystem, CAReadersAll, CAReadersNone).
	Readers     string
	Parallelism Parallelism
	// LeafValidity is the validity of the certificates the switch
	// re-issues.
	LeafValidity time.Duration
	// ClientCSR (switch) is a request for the user's client certificate,
	// signed with the new cluster CA before any node switches; the
	// certificate goes to OnClientCertificate (which writes the user's new
	// kubeconfig) at once.
	ClientCSR           []byte
	OnClientCertificate func(certPEM []byte) error
}

// CAReport is the outcome of a CA rotation phase.
type CAReport struct {
	Report
	Rotation *CARotation
	// Phase is the phase this command ran.
	Phase string
}

var permsCARecord = []permission{
	{verb: "get", resource: "configmaps", namespace: Namespace, name: CARecordName},
	{verb: "create", resource: "configmaps", namespace: Namespace},
	{verb: "update", resource: "configmaps", namespace: Namespace, name: CARecordName},
	{verb: "delete", resource: "configmaps", namespace: Namespace, name: CARecordName},
}

// readCARecord returns the cluster's CA rotation record, or nil.
func (r *Runner) readCARecord(ctx context.Context) (*CARotation, *corev1.ConfigMap, error) {
	cm, err := r.Client.CoreV1().ConfigMaps(Namespace).Get(ctx, CARecordName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("reading the CA rotation's record %s/%s: %w", Namespace, CARecordName, err)
	}
	var rec CARotation
	if err := json.Unmarshal([]byte(cm.Data[caRecordKey]), &rec); err != nil || rec.ID == "" {
		return nil, nil, fmt.Errorf("the CA rotation's record %s/%s is not readable (%v): remove it only if no CA rotation is under way", Namespace, CARecordName, err)
	}
	return &rec, cm, nil
}

// saveCARecord writes the record (creating the ConfigMap the first time).
func (r *Runner) saveCARecord(ctx context.Context, rec *CARotation, cm *corev1.ConfigMap) (*corev1.ConfigMap, error) {
	rec.Updated = time.Now().UTC()
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return nil, err
	}
	cms := r.Client.CoreV1().ConfigMaps(Namespace)
	if cm == nil {
		cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: CARecordName, Namespace: Namespace, Labels: map[string]string{LabelApp: AppName}},
			Data: map[string]string{caRecordKey: string(data)}}
		out, err := cms.Create(ctx, cm, metav1.CreateOptions{})
		if err != nil {
			return nil, fmt.Errorf("recording the CA rotation in %s/%s: %w", Namespace, CARecordName, err)
		}
		return out, nil
	}
	cm = cm.DeepCopy()
	cm.Data = map[string]string{caRecordKey: string(data)}
	out, err := cms.Update(ctx, cm, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("recording the CA rotation in %s/%s: %w", Namespace, CARecordName, err)
	}
	return out, nil
}

// caRun is one CA rotation command under way: the cluster's lock, its
// agents, its record.
type caRun struct {
	r       *Runner
	rep     *CAReport
	rec     *CARotation
	cm      *corev1.ConfigMap
	agents  []agentPod
	cps     []agentPod
	workers []agentPod
}

// startCA takes the cluster's lock for a CA phase, reads the record and
// starts agents on the nodes that phase works on (controlPlanesOnly for
// prepare). The returned finish must be called with the phase's error.
func (r *Runner) startCA(ctx context.Context, phase string, controlPlanesOnly bool, perms permissions) (*caRun, func(*error), error) {
	rep := &CAReport{Phase: phase}
	nodes, err := SelectNodes(ctx, r.Client, nil, "")
	if err != nil {
		return nil, nil, err
	}
	if !anyControlPlane(nodes) {
		return nil, nil, fmt.Errorf("no control-plane node (label %s): the CAs live there", ControlPlaneLabels[0])
	}
	if err := r.Preflight(ctx, perms); err != nil {
		return nil, nil, err
	}
	runID := newRunID()
	rep.Run = runID
	lock, _, err := r.lockCluster(ctx, RunRecord{ID: runID, Kind: "ca-" + phase, Started: time.Now().UTC()})
	rep.User = r.userName(ctx)
	if err != nil {
		return nil, nil, err
	}
	run := &caRun{r: r, rep: rep}
	var targets []corev1.Node
	for _, n := range nodes {
		if !controlPlanesOnly || IsControlPlane(&n) {
			targets = append(targets, n)
		}
	}
	cps := 0
	for i := range targets {
		if IsControlPlane(&targets[i]) {
			cps++
		}
	}
	limit := DefaultParallelism.Cap(len(targets) - cps)
	access := func(n *corev1.Node) Access {
		return Access{ControlPlane: IsControlPlane(n), Kubelet: !controlPlanesOnly}
	}
	agents, errs := r.startAgents(ctx, targets, runID, access, podDeadline(r.Timeout, cps, len(targets)-cps, limit), fanout)
	stopPings := r.keepAlive(agents)
	finish := func(errp *error) {
		stopPings()
		state := RunCompleted
		switch {
		case ctx.Err() != nil:
			state = RunInterrupted
		case *errp != nil:
			state = RunFailed
		}
		if lerr := lock.release(state); lerr != nil {
			r.logf("recording the run's end on lease %s/%s: %v", Namespace, LeaseName, lerr)
		}
		if derr := deleteRunPods(r.Client, runID); derr != nil {
			*errp = errors.Join(*errp, fmt.Errorf("deleting agent pods (label %s=%s): %w", LabelRun, runID, derr))
		}
		if state == RunInterrupted {
			*errp = fmt.Errorf("%w (%w); run the same command again to resume: what is done is kept", ErrInterrupted, *errp)
		}
	}
	if err := errors.Join(errs...); err != nil {
		err = fmt.Errorf("%w\nno file on any node was changed", err)
		finish(&err)
		return nil, nil, err
	}
	run.agents = agents
	for _, ap := range agents {
		if ap.controlPlane {
			run.cps = append(run.cps, ap)
		} else {
			run.workers = append(run.workers, ap)
		}
	}
	if run.rec, run.cm, err = r.readCARecord(ctx); err != nil {
		finish(&err)
		return nil, nil, err
	}
	rep.Rotation = run.rec
	return run, finish, nil
}

// CAPrepare runs the prepare phase: new CAs on the first control plane
// (or the ones it has staged for this rotation already), handed over
// encrypted to every other control plane, recorded in the cluster.
func (r *Runner) CAPrepare(ctx context.Context, o CAOptions) (rep *CAReport, err error) {
	run, finish, err := r.startCA(ctx, "prepare", true, permissions(permsAgents).with(permsLock, permsCARecord))
	if err != nil {
		return &CAReport{Phase: "prepare"}, err
	}
	defer finish(&err)
	rep = run.rep
	if run.rec != nil && run.rec.Phase != "" {
		rep.note("CA rotation %s is prepared already (phase %s); nothing to do", run.rec.ID, run.rec.Phase)
		return rep, nil
	}
	if run.rec == nil {
		run.rec = &CARotation{ID: "rot-" + newID()[:12], Started: time.Now().UTC(), KeyAlgorithm: o.KeyAlgorithm, Validity: o.Validity}
		rep.Rotation = run.rec
	}
	rec := run.rec
	sender := -1
	if len(rec.New) == 0 {
		first := run.cps[0]
		r.logf("node %s: making the new CAs (rotation %s)", first.node, rec.ID)
		res, err := r.change(ctx, first, api.Request{Action: api.CAPrepare, CA: &api.CARequest{Rotation: rec.ID, KeyAlgorithm: rec.KeyAlgorithm, Validity: rec.Validity}})
		if err != nil {
			return rep, err
		}
		ca, err := caAnswer(first, res)
		if err != nil {
			return rep, err
		}
		if err := checkCAs(ca.Current, ca.Staged); err != nil {
			return rep, fmt.Errorf("node %s: %w", first.node, err)
		}
		rec.Old, rec.New = ca.Current, ca.Staged
		if run.cm, err = r.saveCARecord(ctx, rec, run.cm); err != nil {
			return rep, err
		}
		sender = 0
	}
	// Every other control plane: staged already, or receives them.
	var receivers []int
	keys := map[int][]byte{} // receiver -> its hand-over public key
	for i, cp := range run.cps {
		if i == sender {
			continue
		}
		res, err := r.change(ctx, cp, api.Request{Action: api.CAHandoverKey, CA: &api.CARequest{Rotation: rec.ID}})
		if err != nil {
			return rep, err
		}
		ca, err := caAnswer(cp, res)
		if err != nil {
			return rep, err
		}
		if len(ca.Staged) > 0 {
			if !maps.Equal(ca.Staged, rec.New) {
				return rep, fmt.Errorf("node %s has other new CAs staged for rotation %s than the record says: roll the rotation back (kubectl rotate-certs ca rollback)", cp.node, rec.ID)
			}
			if sender < 0 {
				sender = i
			}
			continue
		}
		if len(ca.PublicKey) == 0 {
			return rep, fmt.Errorf("node %s answered without a hand-over key", cp.node)
		}
		receivers = append(receivers, i)
		keys[i] = ca.PublicKey
	}
	if len(receivers) > 0 && sender < 0 {
		return rep, fmt.Errorf("no control plane holds the new CAs of rotation %s any more: roll it back (kubectl rotate-certs ca rollback) and prepare again", rec.ID)
	}
	for _, i := range receivers {
		to := run.cps[i]
		from := run.cps[sender]
		r.logf("node %s: receiving the new CA keys from %s, end-to-end encrypted", to.node, from.node)
		res, err := r.change(ctx, from, api.Request{Action: api.CAHandoverSeal, CA: &api.CARequest{Rotation: rec.ID, Peer: to.node, PublicKey: keys[i]}})
		if err != nil {
			return rep, err
		}
		sealed, err := caAnswer(from, res)
		if err != nil {
			return rep, err
		}
		if res, err = r.change(ctx, to, api.Request{Action: api.CAHandoverOpen, CA: &api.CARequest{Rotation: rec.ID, Peer: from.node, Sealed: sealed.Sealed, New: rec.New}}); err != nil {
			return rep, err
		}
		opened, err := caAnswer(to, res)
		if err != nil {
			return rep, err
		}
		if !maps.Equal(opened.Staged, rec.New) {
			return rep, fmt.Errorf("node %s staged other CAs than the rotation's", to.node)
		}
		rep.nodeNote(to, "received the new CA keys from "+from.node)
	}
	rec.Phase = CAPhasePrepared
	if run.cm, err = r.saveCARecord(ctx, rec, run.cm); err != nil {
		return rep, err
	}
	for _, name := range sortedKeys(rec.New) {
		rep.note("new CA %s: %s (replaces %s)", name, CertID(rec.New[name]), CertID(rec.Old[name]))
	}
	return rep, nil
}

// caAnswer is a CA action's answer, which a node that says it succeeded
// must carry.
func caAnswer(ap agentPod, res *api.Result) (*api.CAResult, error) {
	if res == nil || res.CA == nil {
		return nil, fmt.Errorf("node %s: the agent answered %s without its result", ap.node, res.Outcome)
	}
	return res.CA, nil
}

// checkCAs checks what a node said the current and new CAs are: the same
// kubeadm CAs, each a CA certificate, each new one another key.
func checkCAs(current, next map[string]string) error {
	if len(next) == 0 || len(next) != len(current) {
		return fmt.Errorf("the agent answered %d new CAs for %d current ones", len(next), len(current))
	}
	for name, p := range next {
		if _, ok := pki.CAByName(name); !ok {
			return fmt.Errorf("the agent answered an unknown CA %q", name)
		}
		n, err := pki.ParseCertificatePEM([]byte(p))
		if err != nil || !n.IsCA {
			return fmt.Errorf("new CA %s is not a CA certificate (%v)", name, err)
		}
		c, err := pki.ParseCertificatePEM([]byte(current[name]))
		if err != nil || !c.IsCA {
			return fmt.Errorf("current CA %s is not a CA certificate (%v)", name, err)
		}
		if pki.SameCA(c, n) {
			return fmt.Errorf("new CA %s is the current one", name)
		}
	}
	return nil
}

// CertID is the CA id of a PEM CA certificate, or "?".
func CertID(p string) string {
	if ids, err := pki.BundleIDs([]byte(p)); err == nil && len(ids) == 1 {
		return ids[0]
	}
	return "?"
}

// CATrust runs the trust phase: every trust point of every node (control
// planes one at a time, then the workers in a rollout) holds the old and
// the new CAs, then cluster-info, every namespace's kube-root-ca.crt and
// the workloads that read the CA once follow.
func (r *Runner) CATrust(ctx context.Context, o CAOptions) (rep *CAReport, err error) {
	perms := permissions(permsAgents).with(permsLock, permsCARecord, permsKubeletRestart, permsSignerLease, permsEvents, permsCAClusterInfo, permsCARootCA, caReadersPermissions(o.Readers))
	run, finish, err := r.startCA(ctx, "trust", false, perms)
	if err != nil {
		return &CAReport{Phase: "trust"}, err
	}
	defer finish(&err)
	rep = run.rep
	rec := run.rec
	if rec == nil || rec.Phase == "" {
		return rep, errors.New("no prepared CA rotation: run `kubectl rotate-certs ca prepare` first")
	}
	if rec.Phase == CAPhaseSwitched {
		rep.note("CA rotation %s has switched issuers already: every trust point trusts both CAs; next: kubectl rotate-certs ca finish", rec.ID)
		return rep, nil
	}
	// Every node's trust points must be readable before any changes.
	if _, err := run.inspectTrust(ctx); err != nil {
		return rep, fmt.Errorf("%w\nno file on any node was changed", err)
	}
	graceful, err := r.behindLoadBalancer(ctx)
	if err != nil {
		return rep, err
	}
	trust := func(ctx context.Context, ap agentPod, rep *Report) error {
		return run.trustNode(ctx, ap, rep, pki.TrustBoth, graceful)
	}
	for _, cp := range run.cps {
		if err := trust(ctx, cp, &rep.Report); err != nil {
			return rep, err
		}
	}
	if err := rolloutNodes(ctx, &rep.Report, run.workers, o.Parallelism.Cap(len(run.workers)), func(ap agentPod, rep *Report) error {
		return trust(ctx, ap, rep)
	}); err != nil {
		return rep, err
	}
	if ctx.Err() != nil {
		return rep, ctx.Err()
	}
	if err := run.trustCluster(ctx, pki.TrustBoth, o.Readers); err != nil {
		return rep, err
	}
	rec.Phase = CAPhaseTrusted
	_, err = r.saveCARecord(ctx, rec, run.cm)
	return rep, err
}

// inspectTrust reads every node's trust points and refuses unreadable ones.
func (run *caRun) inspectTrust(ctx context.Context) ([]*api.InspectResult, error) {
	out := make([]*api.InspectResult, len(run.agents))
	errs := forEach(ctx, len(run.agents), fanout, func(i int) error {
		res, err := run.r.call(ctx, run.agents[i], api.Request{Action: api.Inspect, Trust: true})
		if err != nil {
			return err
		}
		if res.Inspect == nil {
			return fmt.Errorf("node %s: the agent's inspection is empty", run.agents[i].node)
		}
		var bad []string
		for _, tp := range res.Inspect.TrustPoints {
			if tp.Error != "" {
				bad = append(bad, fmt.Sprintf("%s (%s %s): %s", tp.Path, tp.Reader, tp.Setting, tp.Error))
			}
		}
		if len(bad) > 0 {
			return fmt.Errorf("node %s: trust points that cannot be read: %s", run.agents[i].node, strings.Join(bad, "; "))
		}
		out[i] = res.Inspect
		return nil
	})
	return out, errors.Join(errs...)
}

// trustNode changes one node's trust points for mode, waits for it to be
// Ready, and records it.
func (run *caRun) trustNode(ctx context.Context, ap agentPod, rep *Report, mode string, graceful bool) error {
	r := run.r
	r.logf("node %s: trust points to %s CAs", ap.node, mode)
	signer := ""
	if ap.controlPlane {
		signer = r.signerLeaseHolder(ctx)
	}
	res, err := r.change(ctx, ap, api.Request{Action: api.CATrust, Graceful: graceful,
		CA: &api.CARequest{Rotation: run.rec.ID, New: nodeCAs(run.rec.New, ap), Trust: mode}})
	before := len(rep.Rows)
	if err == nil {
		r.addChanges(rep, ap, res.Renew)
		if res.CA != nil {
			for _, c := range res.CA.Changed {
				r.vlogf(1, "node %s: trust point %s", ap.node, c)
			}
			if len(res.CA.Changed) == 0 {
				rep.nodeNote(ap, "its trust points held the CAs already: nothing changed")
			}
		}
		r.releaseStoppedSigner(ctx, ap, signer, res.Renew)
		err = run.waitReady(ctx, ap, "its trust points changed")
	}
	rep.failed(ap, err)
	r.nodeEvent(rep, ap, caTrustEvent, rep.Rows[before:], err)
	return err
}

// nodeCAs are the new CAs a node has: etcd's only on control planes.
func nodeCAs(all map[string]string, ap agentPod) map[string]string {
	out := map[string]string{}
	for name, p := range all {
		if ap.controlPlane || name == pki.ClusterCA.Name {
			out[name] = p
		}
	}
	return out
}

// trustCluster makes the cluster's own copies of the CA follow the nodes:
// cluster-info (kubeadm join's discovery), every namespace's
// kube-root-ca.crt (kube-controller-manager publishes its --root-ca-file),
// then the workloads that read the CA once.
func (run *caRun) trustCluster(ctx context.Context, mode, readers string) error {
	r, rec, rep := run.r, run.rec, run.rep
	old, next := rec.Old[pki.ClusterCA.Name], rec.New[pki.ClusterCA.Name]
	nextCert, err := pki.ParseCertificatePEM([]byte(next))
	if err != nil {
		return fmt.Errorf("the record's new CA: %w", err)
	}
	both, err := pki.MergeCABundles([]byte(old), []byte(next))
	if err != nil {
		return err
	}
	bundle, _, err := pki.RetrustBundle(both, nextCert, mode)
	if err != nil {
		return err
	}
	want, err := pki.BundleIDs(bundle)
	if err != nil {
		return err
	}
	changed, err := r.setClusterInfoCA(ctx, bundle)
	if err != nil {
		return err
	}
	if changed {
		rep.note("kube-public/cluster-info: its kubeconfig trusts %s", strings.Join(want, " and "))
	}
	r.logf("Waiting for every namespace's kube-root-ca.crt to hold %s", strings.Join(want, " and "))
	if err := r.waitRootCAPublished(ctx, want); err != nil {
		return err
	}
	rep.note("kube-root-ca.crt in every namespace holds %s", strings.Join(want, " and "))
	if mode == pki.TrustOld {
		return nil // what read both still trusts the old CA: nothing to do
	}
	restarted, err := r.restartCAReaders(ctx, readers, &rep.Report)
	rec.Restarted = append(rec.Restarted, restarted...)
	sort.Strings(rec.Restarted)
	return err
}

// CARollback undoes the phases done: the new CAs leave every trust point
// (workers first, then control planes), cluster-info and kube-root-ca.crt,
// the staged CAs are removed from the control planes, and the record goes.
func (r *Runner) CARollback(ctx context.Context, o CAOptions) (rep *CAReport, err error) {
	perms := permissions(permsAgents).with(permsLock, permsCARecord, permsKubeletRestart, permsSignerLease, permsEvents, permsCAClusterInfo, permsCARootCA)
	run, finish, err := r.startCA(ctx, "rollback", false, perms)
	if err != nil {
		return &CAReport{Phase: "rollback"}, err
	}
	defer finish(&err)
	rep = run.rep
	rec := run.rec
	if rec == nil {
		rep.note("no CA rotation is recorded: nothing to roll back")
		return rep, nil
	}
	if rec.Phase == CAPhaseSwitched {
		return rep, fmt.Errorf("CA rotation %s has switched issuers: every certificate is signed by the new CAs, which ca rollback does not undo; finish it (kubectl rotate-certs ca finish), or restore the nodes' backups of the switch run by run (kubectl rotate-certs rollback --run)", rec.ID)
	}
	if len(rec.New) > 0 {
		graceful, err := r.behindLoadBalancer(ctx)
		if err != nil {
			return rep, err
		}
		if err := rolloutNodes(ctx, &rep.Report, run.workers, o.Parallelism.Cap(len(run.workers)), func(ap agentPod, rep *Report) error {
			return run.trustNode(ctx, ap, rep, pki.TrustOld, graceful)
		}); err != nil {
			return rep, err
		}
		for _, cp := range run.cps {
			if err := run.trustNode(ctx, cp, &rep.Report, pki.TrustOld, graceful); err != nil {
				return rep, err
			}
		}
		if err := run.trustCluster(ctx, pki.TrustOld, CAReadersNone); err != nil {
			return rep, err
		}
	}
	if err := run.forget(ctx); err != nil {
		return rep, err
	}
	rec.Phase = CAPhaseRolledBack
	rep.note("CA rotation %s rolled back: every node trusts the old CAs only, and the new CAs are gone", rec.ID)
	return rep, nil
}

// CARecord is the cluster's CA rotation record, nil if none.
func (r *Runner) CARecord(ctx context.Context) (*CARotation, error) {
	rec, _, err := r.readCARecord(ctx)
	return rec, err
}

// ClusterCABundle is the old and the new cluster CA (PEM) of a rotation:
// what a client must trust while both sign serving certificates.
func (rec *CARotation) ClusterCABundle() ([]byte, error) {
	return pki.MergeCABundles([]byte(rec.Old[pki.ClusterCA.Name]), []byte(rec.New[pki.ClusterCA.Name]))
}

// CASwitch runs the switch phase: the user's new client certificate (if
// asked) first; then on each control plane, one at a time, the new CAs
// become the signers and every certificate they sign there is re-issued
// (etcd, kube-apiserver, front-proxy, the kubeconfigs), everything
// restarted and proven; then, with every kube-controller-manager signing
// with the new CA, each kubelet's certificates are re-issued through the
// CSR API, control planes first, then the workers in a rollout.
func (r *Runner) CASwitch(ctx context.Context, o CAOptions) (rep *CAReport, err error) {
	perms := permissions(permsAgents).with(permsLock, permsCARecord, permsKubeletRestart, permsSignerLease, permsEvents, permsCSR, permsServingCSR)
	run, finish, err := r.startCA(ctx, "switch", false, perms)
	if err != nil {
		return &CAReport{Phase: "switch"}, err
	}
	defer finish(&err)
	rep = run.rep
	rec := run.rec
	if rec == nil || (rec.Phase != CAPhaseTrusted && rec.Phase != CAPhaseSwitched) {
		return rep, errors.New("no CA rotation whose trust phase is done: run `kubectl rotate-certs ca trust` first (ca status shows what trusts what)")
	}
	next, err := pki.ParseCertificatePEM([]byte(rec.New[pki.ClusterCA.Name]))
	if err != nil {
		return rep, fmt.Errorf("the record's new CA: %w", err)
	}
	if len(o.ClientCSR) > 0 {
		res, err := r.call(ctx, run.cps[0], api.Request{Action: api.CASign, Validity: o.LeafValidity, CA: &api.CARequest{Rotation: rec.ID, CSR: string(o.ClientCSR)}})
		if err != nil {
			return rep, err
		}
		signed, err := caAnswer(run.cps[0], res)
		if err != nil {
			return rep, err
		}
		if err := o.OnClientCertificate([]byte(signed.Certificate)); err != nil {
			return rep, err
		}
	}
	inspects, err := run.inspectTrust(ctx)
	if err != nil {
		return rep, fmt.Errorf("%w\nno file on any node was changed", err)
	}
	graceful, err := r.behindLoadBalancer(ctx)
	if err != nil {
		return rep, err
	}
	for _, cp := range run.cps {
		if err := run.switchNode(ctx, cp, graceful, o.LeafValidity); err != nil {
			return rep, err
		}
	}
	// Every kube-controller-manager signs with the new CA now.
	kopts := RotateOptions{Services: []pki.Service{pki.ServiceKubelet}, Validity: o.LeafValidity, issuer: next}
	kubelet := func(ctx context.Context, ap agentPod, in *api.InspectResult, rep *Report) error {
		if kubeletIssuedBy(in, pki.CAID(next)) {
			rep.nodeNote(ap, "its kubelet's certificates were issued by the new CA already")
			return nil
		}
		r.logf("node %s: the kubelet's certificates from the new CA", ap.node)
		before := len(rep.Rows)
		err := r.rotateKubelet(ctx, ap, kopts, rep)
		rep.failed(ap, err)
		r.nodeEvent(rep, ap, rotationEvent, rep.Rows[before:], err)
		return err
	}
	byNode := map[string]*api.InspectResult{}
	for i, ap := range run.agents {
		byNode[ap.node] = inspects[i]
	}
	for _, cp := range run.cps {
		if err := kubelet(ctx, cp, byNode[cp.node], &rep.Report); err != nil {
			return rep, err
		}
	}
	if err := rolloutNodes(ctx, &rep.Report, run.workers, o.Parallelism.Cap(len(run.workers)), func(ap agentPod, rep *Report) error {
		return kubelet(ctx, ap, byNode[ap.node], rep)
	}); err != nil {
		return rep, err
	}
	if ctx.Err() != nil {
		return rep, ctx.Err()
	}
	rec.Phase = CAPhaseSwitched
	_, err = r.saveCARecord(ctx, rec, run.cm)
	return rep, err
}

// kubeletIssuedBy tells whether a node's kubelet client certificate (and
// a serving one from the CSR API) was issued by the CA with that id.
func kubeletIssuedBy(in *api.InspectResult, id string) bool {
	if in == nil {
		return false
	}
	found := false
	for _, c := range in.Certs {
		if c.Service != string(pki.ServiceKubelet) || c.Missing || c.Issuer == api.IssuerSelfSigned {
			continue
		}
		if c.Issuer != id {
			return false
		}
		found = true
	}
	return found
}

// switchNode switches one control plane's issuers and records it.
func (run *caRun) switchNode(ctx context.Context, ap agentPod, graceful bool, validity time.Duration) error {
	r, rep := run.r, &run.rep.Report
	r.logf("node %s: the new CAs sign; re-issuing its certificates", ap.node)
	signer := r.signerLeaseHolder(ctx)
	before := len(rep.Rows)
	res, err := r.change(ctx, ap, api.Request{Action: api.CASwitch, Graceful: graceful, Validity: validity,
		CA: &api.CARequest{Rotation: run.rec.ID, New: run.rec.New}})
	if err == nil {
		r.addChanges(rep, ap, res.Renew)
		if res.Renew != nil && len(res.Renew.Changes) == 0 {
			rep.nodeNote(ap, "its certificates were issued by the new CAs already: nothing changed")
		}
		r.releaseStoppedSigner(ctx, ap, signer, res.Renew)
		err = run.waitReady(ctx, ap, "its issuers switched")
	}
	rep.failed(ap, err)
	r.nodeEvent(rep, ap, rotationEvent, rep.Rows[before:], err)
	return err
}

// CAFinish runs the last phase, once the user confirmed that every client
// outside the cluster trusts the new CA: it checks that nothing on any node
// is still signed by an old CA, then the old CAs leave every trust point
// (control planes one at a time, then the workers), cluster-info and
// kube-root-ca.crt, the workloads that read the CA once are restarted so
// none keeps trusting the old one, and the staged copies and the record go.
func (r *Runner) CAFinish(ctx context.Context, o CAOptions) (rep *CAReport, err error) {
	perms := permissions(permsAgents).with(permsLock, permsCARecord, permsKubeletRestart, permsSignerLease, permsEvents, permsCAClusterInfo, permsCARootCA, caReadersPermissions(o.Readers))
	run, finish, err := r.startCA(ctx, "finish", false, perms)
	if err != nil {
		return &CAReport{Phase: "finish"}, err
	}
	defer finish(&err)
	rep = run.rep
	rec := run.rec
	if rec == nil || rec.Phase != CAPhaseSwitched {
		return rep, errors.New("no CA rotation whose switch phase is done: run `kubectl rotate-certs ca switch` first")
	}
	inspects, err := run.inspectTrust(ctx)
	if err != nil {
		return rep, fmt.Errorf("%w\nno file on any node was changed", err)
	}
	old := map[string]string{}
	for name, p := range rec.Old {
		old[CertID(p)] = name
	}
	var left []string
	for i, in := range inspects {
		for _, c := range in.Certs {
			if name, ok := old[c.Issuer]; ok && !c.Missing {
				left = append(left, fmt.Sprintf("%s:%s (signed by the old %s)", run.agents[i].node, c.Name, name))
			}
		}
	}
	if len(left) > 0 {
		return rep, fmt.Errorf("certificates still signed by an old CA: %s; run `kubectl rotate-certs ca switch` again\nno file on any node was changed", strings.Join(left, ", "))
	}
	graceful, err := r.behindLoadBalancer(ctx)
	if err != nil {
		return rep, err
	}
	for _, cp := range run.cps {
		if err := run.trustNode(ctx, cp, &rep.Report, pki.TrustNew, graceful); err != nil {
			return rep, err
		}
	}
	if err := rolloutNodes(ctx, &rep.Report, run.workers, o.Parallelism.Cap(len(run.workers)), func(ap agentPod, rep *Report) error {
		return run.trustNode(ctx, ap, rep, pki.TrustNew, graceful)
	}); err != nil {
		return rep, err
	}
	if ctx.Err() != nil {
		return rep, ctx.Err()
	}
	if err := run.trustCluster(ctx, pki.TrustNew, o.Readers); err != nil {
		return rep, err
	}
	if err := run.forget(ctx); err != nil {
		return rep, err
	}
	rec.Phase = CAPhaseFinished
	rep.note("CA rotation %s finished: every node trusts and uses the new CAs only", rec.ID)
	return rep, nil
}

// waitReady waits until a node changed is Ready again. The change is not
// done before: an interrupt (ctx) does not cut the wait short.
func (run *caRun) waitReady(ctx context.Context, ap agentPod, after string) error {
	fctx, cancel := run.r.finishing(ctx)
	defer cancel()
	if err := run.r.waitNodeReady(fctx, ap.node); err != nil {
		return fmt.Errorf("node %s is not Ready within %s after %s: %w", ap.node, run.r.Timeout, after, err)
	}
	return nil
}

// forget ends a rotation: the control planes remove their staged copies of
// the new CAs, then the record goes.
func (run *caRun) forget(ctx context.Context) error {
	for _, cp := range run.cps {
		if _, err := run.r.change(ctx, cp, api.Request{Action: api.CADiscard, CA: &api.CARequest{Rotation: run.rec.ID}}); err != nil {
			return err
		}
	}
	if err := run.r.Client.CoreV1().ConfigMaps(Namespace).Delete(ctx, CARecordName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("removing the CA rotation's record: %w", err)
	}
	return nil
}
