package plugin

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/orchestrator"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/report"
)

// RollbackOptions are the options of "kubectl rotate-certs rollback".
type RollbackOptions struct {
	commonFlags
	run    string
	dryRun bool
	output string
}

// NewCmdRollback builds "kubectl rotate-certs rollback".
func NewCmdRollback(streams genericiooptions.IOStreams) *cobra.Command {
	return newCmdRollback(streams, nil)
}

func newCmdRollback(streams genericiooptions.IOStreams, newFactory NewFactoryFunc) *cobra.Command {
	o := &RollbackOptions{commonFlags: newCommonFlags(streams, newFactory)}
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
	addOutputFlag(cmd, &o.output)
	o.configFlags.AddFlags(cmd.Flags())
	o.registerCompletions(cmd)
	return cmd
}

// Complete has nothing to fill in.
func (o *RollbackOptions) Complete() error { return nil }

// Validate checks the flags.
func (o *RollbackOptions) Validate() error {
	if o.run != "" && !orchestrator.ValidRunID(o.run) {
		return fmt.Errorf("--run %q is not a run ID (they look like rc-0123456789abcdef)", o.run)
	}
	if err := validateOutput(o.output); err != nil {
		return err
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
	return printRun(o.Out, o.ErrOut, o.output, report.KindRollback, rep, err)
}
