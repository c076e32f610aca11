package plugin

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/orchestrator"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/report"
)

// StatusOptions are the options of "kubectl rotate-certs status".
type StatusOptions struct {
	commonFlags
	output     string
	warnWithin string

	warn time.Duration
}

// NewCmdStatus builds "kubectl rotate-certs status".
func NewCmdStatus(streams genericiooptions.IOStreams) *cobra.Command {
	return newCmdStatus(streams, nil)
}

func newCmdStatus(streams genericiooptions.IOStreams, newFactory NewFactoryFunc) *cobra.Command {
	o := &StatusOptions{commonFlags: newCommonFlags(streams, newFactory)}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show every certificate on every node and when it expires (read-only)",
		Example: `  # Every certificate of every node
  kubectl rotate-certs status

  # Fail (exit 1) when anything expires within 30 days, e.g. in a CronJob
  kubectl rotate-certs status --warn-within 30d -o json`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error { return run(o) },
	}
	o.addFlags(cmd)
	addOutputFlag(cmd, &o.output)
	cmd.Flags().StringVar(&o.warnWithin, "warn-within", "", "Exit non-zero if any certificate expires within this duration (e.g. 30d, 72h)")
	o.configFlags.AddFlags(cmd.Flags())
	o.registerCompletions(cmd)
	return cmd
}

// Complete parses --warn-within.
func (o *StatusOptions) Complete() error {
	if o.warnWithin == "" {
		return nil
	}
	d, err := parseDays(o.warnWithin)
	if err != nil {
		return fmt.Errorf("--warn-within: %w", err)
	}
	o.warn = d
	return nil
}

// parseDays accepts Go durations plus a "d" (days) suffix.
func parseDays(s string) (time.Duration, error) {
	if v, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseFloat(v, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%q is not a number of days", s)
		}
		return time.Duration(n * float64(24*time.Hour)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%q is not a duration like 30d or 72h", s)
	}
	return d, nil
}

// Validate checks the flags.
func (o *StatusOptions) Validate() error {
	if err := validateOutput(o.output); err != nil {
		return err
	}
	return o.validate()
}

// Run reads every node and prints the report.
func (o *StatusOptions) Run(ctx context.Context) error {
	if err := o.connect(); err != nil {
		return err
	}
	nodes, err := o.runner.Status(ctx, o.nodes, o.selector)
	if err != nil {
		return err
	}
	return o.report(nodes)
}

// report prints the nodes' certificates and fails for unreadable nodes and,
// with --warn-within, for certificates that expire within the window.
func (o *StatusOptions) report(nodes []orchestrator.NodeStatus) error {
	rep := buildStatusReport(nodes)
	if err := printReport(o.Out, o.output, rep, func() { printStatusTables(o.Out, rep) }); err != nil {
		return err
	}
	problems := nodeProblems(rep.Errors)
	if o.warnWithin != "" {
		for _, c := range append(append([]report.CertInfo{}, rep.Certificates...), rep.CertificateAuthorities...) {
			if c.NotAfter != nil && time.Duration(c.ResidualSeconds)*time.Second < o.warn {
				problems = append(problems, fmt.Sprintf("node %s: %s expires %s (within %s)", c.Node, c.Name, c.NotAfter.Format(time.RFC3339), o.warnWithin))
			}
		}
	}
	return problemsError(problems)
}

func buildStatusReport(nodes []orchestrator.NodeStatus) *report.StatusReport {
	rep := report.NewStatusReport()
	for _, n := range nodes {
		if n.Error != "" {
			rep.Errors = append(rep.Errors, report.NodeError{Node: n.Node, Error: n.Error})
		}
		// The agent's CertInfo and the report's are one struct: this
		// conversion stops compiling if either changes alone.
		for _, c := range n.Certs {
			rep.Certificates = append(rep.Certificates, report.CertInfo(c))
		}
		for _, c := range n.CAs {
			rep.CertificateAuthorities = append(rep.CertificateAuthorities, report.CertInfo(c))
		}
	}
	return rep
}

func printStatusTables(out io.Writer, rep *report.StatusReport) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NODE\tCERTIFICATE\tEXPIRES\tRESIDUAL TIME\tCERTIFICATE AUTHORITY\tEXTERNALLY MANAGED")
	for _, c := range rep.Certificates {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", c.Node, c.Name, expires(c), residual(c), dash(c.CA), yesNo(c.ExternallyManaged))
	}
	w.Flush()
	fmt.Fprintln(out)
	w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NODE\tCERTIFICATE AUTHORITY\tEXPIRES\tRESIDUAL TIME\tEXTERNALLY MANAGED")
	for _, c := range rep.CertificateAuthorities {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", c.Node, c.Name, expires(c), residual(c), yesNo(c.ExternallyManaged))
	}
	w.Flush()
	for _, e := range rep.Errors {
		fmt.Fprintf(out, "\nnode %s: %s\n", e.Node, e.Error)
	}
}

func expires(c report.CertInfo) string {
	switch {
	case c.Missing:
		return "missing"
	case c.Error != "":
		return "unreadable: " + c.Error
	case c.NotAfter == nil:
		return "-"
	}
	return c.NotAfter.Format(expiryFormat)
}

// expiryFormat is how tables print an expiry.
const expiryFormat = "Jan 02, 2006 15:04 MST"

// residual prints time left as kubeadm does (apimachinery's
// ShortHumanDuration: 364d, 9y, <invalid> once expired).
func residual(c report.CertInfo) string {
	if c.NotAfter == nil {
		return "-"
	}
	return duration.ShortHumanDuration(time.Duration(c.ResidualSeconds) * time.Second)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
