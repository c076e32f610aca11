// Package plugin holds the cobra commands of kubectl rotate-certs. Each
// command follows the Options pattern of k8s.io/sample-cli-plugin:
// Complete fills in defaults, Validate rejects bad input before anything
// touches the cluster, Run does the work. Business logic lives in
// pkg/orchestrator (user side), pkg/agent (node side) and pkg/pki.
package plugin

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/version"
)

// NewCmdRotateCerts builds the root command "kubectl rotate-certs".
func NewCmdRotateCerts(streams genericiooptions.IOStreams) *cobra.Command {
	o := NewRotateOptions(streams)
	cmd := &cobra.Command{
		Use: "rotate-certs (--all | --service NAME[,NAME]) [flags]",
		// kubectl shows plugins by their kubectl name.
		Annotations: map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl rotate-certs"},
		Short:       "Rotate the certificates of a kubeadm-layout cluster on every node",
		Long: `Rotate the certificates of a kubeadm-layout cluster (kubeadm, kind, Cluster API,
kubespray) on every node, keeping the CAs. Short-lived privileged agent pods
renew the certificates on the nodes, restart what cannot reload the new ones
(kube-controller-manager, kube-scheduler, kubelet) and prove the rest reloaded.
Private keys never leave the node they live on.`,
		Example:       rotateExample,
		Version:       version.Version,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: false,
		RunE:          func(*cobra.Command, []string) error { return run(o) },
	}
	o.addFlags(cmd)
	cmd.SetOut(streams.Out)
	cmd.SetErr(streams.ErrOut)
	cmd.SetVersionTemplate("{{.Version}}\n")
	cmd.AddCommand(newCmdVersion(streams), NewCmdStatus(streams), newCmdAgent(streams))
	return cmd
}

// options is the Complete/Validate/Run contract of every command.
type options interface {
	Complete() error
	Validate() error
	Run(ctx context.Context) error
}

// run drives a command's options; Ctrl-C cancels Run, which then cleans up.
func run(o options) error {
	if err := o.Complete(); err != nil {
		return err
	}
	if err := o.Validate(); err != nil {
		return err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	return o.Run(ctx)
}

func newCmdVersion(streams genericiooptions.IOStreams) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of the plugin (the agent image carries the same tag)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			_, err := fmt.Fprintln(streams.Out, version.Version)
			return err
		},
	}
}
