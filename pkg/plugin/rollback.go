package plugin

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/orchestrator"
)

// RollbackOptions are the options of "kubectl rotate-certs rollback".
type RollbackOptions struct {
	commonFlags
	run    string
	dryRun bool
}

// NewCmdRollback builds "kubectl rotate-certs rollback".
func NewCmdRollback(streams genericiooptions.IOStreams) *cobra.Command {
	o := &RollbackOptions{commonFlags: commonFlags{configFlags: genericclioptions.NewConfigFlags(true), IOStreams: streams}}
	cmd := &cobra.Command{
		Use:   "rollback [--run ID]",
		Short: "Put back the files a rotation run replaced, on every node it changed",
		Long: `Put back, on every node a rotation run changed, the certificates, keys and
kubeconfigs as they were before it, from the backups the nodes keep
(/etc/kubernetes/rotate-certs-backup). Control planes go one at a time, then
workers; each node is one transaction that restarts what read the restored
files (kube-controller-manager, kube-scheduler, the kubelet) and proves
etcd and kube-apiserver serve them. A certificate that has expired since is
never put back. The rollback itself is backed up, so it can be rolled back
too.`,
		Example: `  # Undo the latest rotation
  kubectl rotate-certs rollback

  # Undo a named run (its ID is printed at the end of every rotation)
  kubectl rotate-certs rollback --run rc-0123456789abcdef

  # Show what would be restored, change nothing
  kubectl rotate-certs rollback --dry-run`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error { return run(o) },
	}
	o.addFlags(cmd)
	o.addChangeFlags(cmd)
	cmd.Flags().StringVar(&o.run, "run", "", "The run to undo (default: the latest rotation whose backups the nodes keep)")
	cmd.Flags().BoolVar(&o.dryRun, "dry-run", false, "Print the files that would be restored on each node and change nothing")
	o.configFlags.AddFlags(cmd.Flags())
	return cmd
}

// Complete has nothing to fill in.
func (o *RollbackOptions) Complete() error { return nil }

// Validate checks the flags.
func (o *RollbackOptions) Validate() error {
	if o.run != "" && !orchestrator.ValidRunID(o.run) {
		return fmt.Errorf("--run %q is not a run ID (they look like rc-0123456789abcdef)", o.run)
	}
	return o.validateChange()
}

// Run rolls back and prints what was restored.
func (o *RollbackOptions) Run(ctx context.Context) error {
	if err := o.connect(); err != nil {
		return err
	}
	rep, err := o.runner.Rollback(ctx, orchestrator.RollbackOptions{
		Run: o.run, NodeNames: o.nodes, Selector: o.selector, Parallelism: o.par, DryRun: o.dryRun,
	})
	if rep != nil {
		for _, n := range rep.Notes {
			fmt.Fprintln(o.ErrOut, "note: "+n)
		}
		if len(rep.Rows) > 0 {
			w := tabwriter.NewWriter(o.Out, 0, 4, 2, ' ', 0)
			if rep.DryRun {
				fmt.Fprintln(w, "NODE\tRUN\tFILE TO RESTORE")
				for _, r := range rep.Rows {
					fmt.Fprintf(w, "%s\t%s\t%s\n", r.Node, r.Certificate, r.Path)
				}
			} else {
				fmt.Fprintln(w, "NODE\tCERTIFICATE\tRESTORED SERIAL\tEXPIRES")
				for _, r := range rep.Rows {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.Node, r.Certificate, shortSerial(r.NewSerial), r.NewNotAfter.Format("2006-01-02T15:04:05Z07:00"))
				}
			}
			w.Flush()
		}
	}
	return err
}
