package plugin

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/orchestrator"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/report"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/version"
)

// CA rotation phases a command runs.
const (
	caPhasePrepare  = "prepare"
	caPhaseTrust    = "trust"
	caPhaseRollback = "rollback"
	caPhaseSwitch   = "switch"
	caPhaseFinish   = "finish"
)

// caPhases are the phase commands, in the order they run.
var caPhases = []string{caPhasePrepare, caPhaseTrust, caPhaseSwitch, caPhaseFinish, caPhaseRollback}

// CAPhaseOptions are the options of "kubectl rotate-certs ca prepare",
// "ca trust" and "ca rollback". A CA rotation is cluster-wide: there is no
// node selection.
type CAPhaseOptions struct {
	commonFlags
	phase           string
	keyAlgorithm    string
	caValidity      time.Duration
	validity        time.Duration
	readers         string
	writeKubeconfig string
	output          string
}

var caPhaseDocs = map[string]struct{ short, long, example string }{
	caPhasePrepare: {
		"CA rotation, phase 1: make the new CAs and give them to every control plane",
		`Make the successors of the cluster CA, the front-proxy CA and the etcd CA (same
subject, new key, --key-algorithm, --ca-validity) on the first control plane and
keep them there, root-only, in /etc/kubernetes/pki/rotate-certs-next. Every
other control plane gets them end-to-end encrypted (HPKE, X-Wing): it makes a
one-time key pair, the first control plane seals the CAs to it, and the plugin
relays ciphertext it cannot read. Nothing trusts or uses the new CAs yet; the
rotation is recorded in the ConfigMap kube-system/rotate-certs-ca.`,
		`  # Start a CA rotation
  kubectl rotate-certs ca prepare`,
	},
	caPhaseTrust: {
		"CA rotation, phase 2: make every node and client trust the old and the new CAs",
		`Make every trust point of every node (kubeadm's CA files, the CA files of
etcd, kube-apiserver and kube-controller-manager, the CA data of every
kubeconfig, the kubelet's clientCAFile) hold the old and the new CA, control
planes one at a time, then the workers in a rollout. kube-controller-manager's
signer first gets files of its own (ca-signer.crt/.key, still the old CA),
because it cannot sign with a bundle. What reads its CAs only at start is
restarted: etcd, kube-apiserver (drained first behind a load balancer),
kube-controller-manager, kube-scheduler, the kubelet. On each control plane the
agent then proves, with throwaway certificates of the new CAs, that
kube-apiserver, etcd and the kubelet accept them. Then cluster-info and every
namespace's kube-root-ca.crt carry both CAs, and the workloads that read the
CA once (--restart-workloads) are restarted like kubectl rollout restart, one
at a time, respecting PodDisruptionBudgets. Nothing is signed by the new CAs
yet. Run it again after an interruption: what is done is kept.`,
		`  # Trust both CAs everywhere, restarting kube-system's CA readers
  kubectl rotate-certs ca trust

  # Restart every workload that mounts the CA, in every namespace
  kubectl rotate-certs ca trust --restart-workloads=all`,
	},
	caPhaseSwitch: {
		"CA rotation, phase 3: the new CAs sign; every certificate is re-issued with them",
		`On each control plane, one at a time, the new CAs become the signers (each
CA file lists the new CA first, with its key; kube-controller-manager's signer
files hold the new cluster CA) and every certificate they sign there is
re-issued with them, keeping its subject, names and key algorithm: etcd's,
kube-apiserver's, the front-proxy client, the kubeconfigs of the control plane.
Everything is restarted (kube-apiserver drained first behind a load balancer)
and the new serving certificates are proven served. Then every kubelet gets
new certificates through the CSR API, signed by the new CA, the key made on
its node. Old and new CAs stay trusted everywhere: clients that still trust
only the old CA must be given the new one now (your own kubeconfig:
--write-kubeconfig), before ca finish. Run it again after an interruption.`,
		`  # Switch issuers and write your kubeconfig in its new version
  kubectl rotate-certs ca switch --write-kubeconfig ./admin-new.conf`,
	},
	caPhaseFinish: {
		"CA rotation, phase 4: trust the new CAs only",
		`Once every client outside the cluster trusts the new CA (and none
authenticates with a certificate of the old one), remove the old CAs from
every trust point of every node, from cluster-info and kube-root-ca.crt;
restart what reads them once (--restart-workloads), and remove the staged
copies of the new CA keys. It refuses to start while any certificate on any
node is still signed by an old CA, or while your own kubeconfig authenticates
with one (use the kubeconfig ca switch --write-kubeconfig wrote).`,
		`  # End the rotation with the kubeconfig the switch wrote
  kubectl rotate-certs ca finish --kubeconfig ./admin-new.conf`,
	},
	caPhaseRollback: {
		"Undo a CA rotation's phases: trust the old CAs only and remove the new ones",
		`Take the new CAs out of every trust point (workers first, then control
planes, restarting what reads them), out of cluster-info and kube-root-ca.crt,
then remove the staged new CAs from the control planes and the rotation's
record. Possible until the switch phase: it refuses once the new CAs sign.`,
		`  # Abandon the CA rotation under way
  kubectl rotate-certs ca rollback`,
	},
}

func newCmdCAPhase(streams genericiooptions.IOStreams, newFactory NewFactoryFunc, phase string) *cobra.Command {
	o := &CAPhaseOptions{commonFlags: newCommonFlags(streams, newFactory), phase: phase}
	doc := caPhaseDocs[phase]
	cmd := &cobra.Command{
		Use:     phase,
		Short:   doc.short,
		Long:    doc.long,
		Example: doc.example,
		Args:    cobra.NoArgs,
		RunE:    func(*cobra.Command, []string) error { return run(o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.image, "image", version.DefaultImage(), "Agent image run on the nodes (point it at your mirror in air-gapped clusters)")
	f.DurationVar(&o.timeout, "timeout", 5*time.Minute, "Longest wait for any single step (pod start, component restart, node Ready, a workload's rollout)")
	f.StringVar(&o.parallelism, "parallelism", orchestrator.DefaultParallelism.String(), "Worker nodes changed at the same time, a count or a percentage (at least 2); one canary first; control planes always go one at a time")
	o.addChangeFlags(cmd)
	switch phase {
	case caPhasePrepare:
		f.StringVar(&o.keyAlgorithm, "key-algorithm", "", "Key algorithm of the new CAs: "+strings.Join(pki.CAKeyAlgorithms, ", ")+" (default: each current CA's)")
		f.DurationVar(&o.caValidity, "ca-validity", 10*365*24*time.Hour, "Validity of the new CAs")
	case caPhaseTrust, caPhaseFinish:
		f.StringVar(&o.readers, "restart-workloads", orchestrator.CAReadersKubeSystem, "Workloads that read the CA once to restart: kube-system, all (every namespace) or none (list them only)")
	case caPhaseSwitch:
		f.DurationVar(&o.validity, "validity", 8760*time.Hour, "Validity of the re-issued certificates (capped at the new CA's expiry)")
		f.StringVar(&o.writeKubeconfig, "write-kubeconfig", "", "Write your kubeconfig in its new version here (0600): a client certificate of the new CA for the same user (key made here), trusting old and new CA; written before any node switches")
	}
	addOutputFlag(cmd, &o.output)
	o.configFlags.AddFlags(f)
	o.registerCompletions(cmd)
	return cmd
}

// Complete has nothing to fill in.
func (o *CAPhaseOptions) Complete() error { return nil }

// Validate checks the flags before anything touches the cluster.
func (o *CAPhaseOptions) Validate() error {
	if o.keyAlgorithm != "" {
		if _, err := pki.NewKey(o.keyAlgorithm); err != nil {
			return fmt.Errorf("--key-algorithm: %w", err)
		}
	}
	if o.phase == caPhasePrepare && (o.caValidity < 24*time.Hour || o.caValidity > 100*365*24*time.Hour) {
		return fmt.Errorf("--ca-validity must be between 24h and 100 years, got %s", o.caValidity)
	}
	if o.phase == caPhaseSwitch && (o.validity < time.Hour || o.validity > orchestrator.MaxValidity) {
		return fmt.Errorf("--validity must be between 1h and %s, got %s", orchestrator.MaxValidity, o.validity)
	}
	switch o.readers {
	case "", orchestrator.CAReadersKubeSystem, orchestrator.CAReadersAll, orchestrator.CAReadersNone:
	default:
		return fmt.Errorf("--restart-workloads must be kube-system, all or none, got %q", o.readers)
	}
	if err := validateOutput(o.output); err != nil {
		return err
	}
	return o.validateChange()
}

// Run runs the phase and prints its report.
func (o *CAPhaseOptions) Run(ctx context.Context) error {
	if err := o.connect(); err != nil {
		return err
	}
	opts := orchestrator.CAOptions{KeyAlgorithm: o.keyAlgorithm, Validity: o.caValidity, Readers: o.readers, Parallelism: o.par, LeafValidity: o.validity}
	if o.phase == caPhaseSwitch || o.phase == caPhaseFinish {
		if err := o.trustNewCA(ctx, &opts); err != nil {
			return err
		}
	}
	var rep *orchestrator.CAReport
	var err error
	switch o.phase {
	case caPhasePrepare:
		rep, err = o.runner.CAPrepare(ctx, opts)
	case caPhaseTrust:
		rep, err = o.runner.CATrust(ctx, opts)
	case caPhaseSwitch:
		rep, err = o.runner.CASwitch(ctx, opts)
	case caPhaseFinish:
		rep, err = o.runner.CAFinish(ctx, opts)
	case caPhaseRollback:
		rep, err = o.runner.CARollback(ctx, opts)
	}
	if rep == nil {
		return err
	}
	for _, n := range notes(&rep.Report) {
		fmt.Fprintln(o.ErrOut, "note: "+n)
	}
	out := toCAReport(rep, err)
	if o.output != "" {
		if perr := printObject(o.Out, o.output, out); perr != nil {
			return perr
		}
		return err
	}
	printCAPhaseTable(o.Out, out)
	if err == nil {
		fmt.Fprintln(o.ErrOut, caNextStep(o.phase))
	}
	return err
}

// caNextStep tells the user what comes after a phase.
func caNextStep(phase string) string {
	switch phase {
	case caPhasePrepare:
		return "next: kubectl rotate-certs ca trust (makes every node and client trust old and new CAs); undo: kubectl rotate-certs ca rollback"
	case caPhaseTrust:
		return "every node trusts the old and the new CAs; check with: kubectl rotate-certs ca status; next: kubectl rotate-certs ca switch --write-kubeconfig FILE; undo: kubectl rotate-certs ca rollback"
	case caPhaseSwitch:
		return "the new CAs sign everything; give every client outside the cluster the new CA (and new credentials where they use the old CA's), then: kubectl rotate-certs ca finish"
	case caPhaseFinish:
		return "the rotation is finished: the old CAs are trusted nowhere; check with: kubectl rotate-certs ca status"
	}
	return "every node trusts the old CAs only; check with: kubectl rotate-certs ca status"
}

// toCAReport is the CARotationReport of a phase.
func toCAReport(rep *orchestrator.CAReport, runErr error) *report.RotationReport {
	out := toReport(report.KindCARotation, &rep.Report, runErr)
	if rec := rep.Rotation; rec != nil {
		rot := &report.CARotation{ID: rec.ID, PhaseRun: rep.Phase, Phase: rec.Phase, RestartedWorkloads: rec.Restarted}
		names := make([]string, 0, len(rec.New))
		for name := range rec.New {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			rot.CAs = append(rot.CAs, report.CAPair{Name: name, Old: orchestrator.CertID(rec.Old[name]), New: orchestrator.CertID(rec.New[name])})
		}
		out.CARotation = rot
	}
	return out
}

func printCAPhaseTable(out io.Writer, rep *report.RotationReport) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	if rot := rep.CARotation; rot != nil {
		fmt.Fprintf(w, "CA ROTATION\t%s\tphase done: %s\n", rot.ID, orNone(rot.Phase))
		for _, p := range rot.CAs {
			fmt.Fprintf(w, "  %s\t%s -> %s\t\n", p.Name, p.Old, p.New)
		}
	}
	if len(rep.Nodes) > 0 {
		fmt.Fprintln(w, "NODE\tRESTARTED\tVERIFIED")
		for _, n := range rep.Nodes {
			var restarted []string
			for _, r := range n.Restarted {
				restarted = append(restarted, r.Component)
			}
			status := fmt.Sprintf("%d check(s)", len(n.Verified))
			if n.Failure != nil {
				status = "FAILED: " + n.Failure.Outcome
			}
			fmt.Fprintf(w, "%s\t%s\t%s\n", n.Name, orNone(strings.Join(restarted, ",")), status)
		}
	}
	w.Flush()
}

func orNone(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
