package plugin

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/orchestrator"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/report"
)

// newCmdCA builds "kubectl rotate-certs ca", the parent of the commands
// about the cluster's CAs.
func newCmdCA(streams genericiooptions.IOStreams, newFactory NewFactoryFunc) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ca",
		Short: "Inspect and rotate the cluster's certificate authorities",
		Long: `Inspect the cluster's CAs (ca status) and replace them without downtime, in
phases that each run on their own and can be run again after an
interruption: ca prepare makes the new CAs, ca trust makes everything trust the
old and the new, ca switch has the new ones sign everything, and ca finish
(once every client outside the cluster trusts the new CA) removes the old ones.
ca rollback undoes prepare and trust.`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newCmdCAStatus(streams, newFactory))
	for _, phase := range caPhases {
		cmd.AddCommand(newCmdCAPhase(streams, newFactory, phase))
	}
	return cmd
}

// CAStatusOptions are the options of "kubectl rotate-certs ca status".
type CAStatusOptions struct {
	commonFlags
	output string
}

func newCmdCAStatus(streams genericiooptions.IOStreams, newFactory NewFactoryFunc) *cobra.Command {
	o := &CAStatusOptions{commonFlags: newCommonFlags(streams, newFactory)}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show which CAs every trust point of every node trusts and which CA signed each certificate (read-only)",
		Long: `Show, node by node, which CAs each trust point trusts (kubeadm's CA files, the
CA files the static pods are given, the CA data of every kubeconfig, the
kubelet's clientCAFile), which CA kube-controller-manager signs with, and which
CA signed each certificate, proven by its signature. A CA is named by an id:
16 hex digits of the SHA-256 of its subject and public key, the same for a CA
re-issued with the same key. The last line says whether the trust points of
each kubeadm CA agree and everything is signed by a CA they all trust.
Read-only: unprivileged agent pods with read-only mounts.`,
		Example: `  # Which CAs each node trusts, and who signed what
  kubectl rotate-certs ca status

  # The same as a CAStatusReport; "consistent" says whether all agree
  kubectl rotate-certs ca status -o json`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error { return run(o) },
	}
	o.addFlags(cmd)
	addOutputFlag(cmd, &o.output)
	o.configFlags.AddFlags(cmd.Flags())
	o.registerCompletions(cmd)
	return cmd
}

// Complete has nothing to fill in.
func (o *CAStatusOptions) Complete() error { return nil }

// Validate checks the flags.
func (o *CAStatusOptions) Validate() error {
	if err := validateOutput(o.output); err != nil {
		return err
	}
	return o.validate()
}

// Run reads every node's trust and prints the report.
func (o *CAStatusOptions) Run(ctx context.Context) error {
	if err := o.connect(); err != nil {
		return err
	}
	nodes, err := o.runner.CAStatus(ctx, o.nodes, o.selector)
	if err != nil {
		return err
	}
	rep := buildCAStatusReport(nodes)
	if err := printReport(o.Out, o.output, rep, func() { printCAStatusTables(o.Out, rep) }); err != nil {
		return err
	}
	return problemsError(nodeProblems(rep.Errors))
}

// nodeProblems are the nodes a read-only command could not read.
func nodeProblems(errs []report.NodeError) []string {
	var problems []string
	for _, e := range errs {
		problems = append(problems, fmt.Sprintf("node %s: %s", e.Node, e.Error))
	}
	return problems
}

// problemsError fails a read-only command that found problems.
func problemsError(problems []string) error {
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("%d problem(s):\n  %s", len(problems), strings.Join(problems, "\n  "))
}

func buildCAStatusReport(nodes []orchestrator.NodeStatus) *report.CAStatusReport {
	rep := report.NewCAStatusReport()
	seen := map[string]int{}
	points := func(node string, tps []api.TrustPoint) []report.TrustPoint {
		var out []report.TrustPoint
		for _, tp := range tps {
			out = append(out, report.TrustPoint{Node: node, Path: tp.Path, Reader: tp.Reader, Setting: tp.Setting, CA: tp.CA,
				CAs: append([]string{}, tp.CAs...), Error: tp.Error})
		}
		return out
	}
	for _, n := range nodes {
		if n.Error != "" {
			rep.Errors = append(rep.Errors, report.NodeError{Node: n.Node, Error: n.Error})
		}
		for _, a := range n.Authorities {
			if i, ok := seen[a.ID]; ok {
				if a.NotAfter.Before(rep.CertificateAuthorities[i].NotAfter) {
					rep.CertificateAuthorities[i].NotAfter = a.NotAfter
				}
				continue
			}
			seen[a.ID] = len(rep.CertificateAuthorities)
			rep.CertificateAuthorities = append(rep.CertificateAuthorities, report.Authority{ID: a.ID, CommonName: a.CommonName, NotAfter: a.NotAfter})
		}
		rep.TrustPoints = append(rep.TrustPoints, points(n.Node, n.TrustPoints)...)
		rep.Signers = append(rep.Signers, points(n.Node, n.Signers)...)
		for _, c := range n.Certs {
			rep.Certificates = append(rep.Certificates, report.CertInfo(c))
		}
	}
	rep.Findings = orchestrator.TrustFindings(nodes)
	rep.Consistent = len(rep.Findings) == 0 && len(rep.Errors) == 0
	return rep
}

func printCAStatusTables(out io.Writer, rep *report.CAStatusReport) {
	names := map[string]string{}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "CERTIFICATE AUTHORITY\tID\tEXPIRES")
	for _, a := range rep.CertificateAuthorities {
		names[a.ID] = a.CommonName
		fmt.Fprintf(w, "%s\t%s\t%s\n", a.CommonName, a.ID, a.NotAfter.Format(expiryFormat))
	}
	w.Flush()
	cas := func(ids []string, err string) string {
		if err != "" {
			return "unreadable: " + err
		}
		var s []string
		for _, id := range ids {
			s = append(s, fmt.Sprintf("%s (%s)", names[id], id))
		}
		return strings.Join(s, ", ")
	}
	fmt.Fprintln(out)
	w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NODE\tREADER\tSETTING\tPATH\tTRUSTS")
	for _, p := range rep.TrustPoints {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", p.Node, p.Reader, p.Setting, p.Path, cas(p.CAs, p.Error))
	}
	for _, p := range rep.Signers {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\tsigns with %s\n", p.Node, p.Reader, p.Setting, p.Path, cas(p.CAs, p.Error))
	}
	w.Flush()
	fmt.Fprintln(out)
	printLeavesBySigner(out, rep.Certificates, rep.CertificateAuthorities)
	for _, e := range rep.Errors {
		fmt.Fprintf(out, "\nnode %s: %s\n", e.Node, e.Error)
	}
	fmt.Fprintln(out)
	if rep.Consistent {
		fmt.Fprintf(out, "summary: consistent: %d CA(s); the trust points of each kubeadm CA agree on every node, and every certificate is signed by a CA they all trust\n", len(rep.CertificateAuthorities))
		return
	}
	fmt.Fprintf(out, "summary: NOT consistent: %d finding(s), %d unreadable node(s)\n", len(rep.Findings), len(rep.Errors))
	for _, f := range rep.Findings {
		fmt.Fprintln(out, "  - "+f)
	}
}

// printLeavesBySigner groups the certificates by the CA that signed them
// (in the order of the CA table, then self-signed and unknown), then by
// node.
func printLeavesBySigner(out io.Writer, certs []report.CertInfo, cas []report.Authority) {
	rank := map[string]int{}
	for i, a := range cas {
		rank[a.ID] = i
	}
	rank[api.IssuerSelfSigned], rank[api.IssuerUnknown] = len(cas), len(cas)+1
	type key struct{ issuer, node string }
	groups := map[key][]string{}
	var keys []key
	for _, c := range certs {
		if c.Missing || c.Error != "" || c.Issuer == "" {
			continue
		}
		k := key{c.Issuer, c.Node}
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], c.Name)
	}
	sort.SliceStable(keys, func(i, j int) bool { return rank[keys[i].issuer] < rank[keys[j].issuer] })
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "SIGNED BY\tNODE\tCERTIFICATES")
	for _, k := range keys {
		by := k.issuer
		if i, ok := rank[by]; ok && i < len(cas) {
			by = fmt.Sprintf("%s (%s)", cas[i].CommonName, by)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\n", by, k.node, strings.Join(groups[k], ", "))
	}
	w.Flush()
}
