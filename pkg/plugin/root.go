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
	return newCmdRotateCerts(streams, nil)
}

// newCmdRotateCerts builds the command tree with the clients newFactory
// makes (nil: real ones).
func newCmdRotateCerts(streams genericiooptions.IOStreams, newFactory NewFactoryFunc) *cobra.Command {
	o := NewRotateOptions(streams, newFactory)
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
	addKlogFlags(cmd.PersistentFlags())
	cmd.SetOut(streams.Out)
	cmd.SetErr(streams.ErrOut)
	cmd.SetVersionTemplate("{{.Version}}\n")
	cmd.AddCommand(newCmdVersion(streams), newCmdStatus(streams, newFactory), newCmdRollback(streams, newFactory), newCmdCA(streams, newFactory), NewCmdRecover(streams), newCmdAgent(streams))
	return cmd
}

// options is the Complete/Validate/Run contract of every command.
type options interface {
	Complete() error
	Validate() error
	Run(ctx context.Context) error
	common() *commonFlags
}

// run drives a command's options. The first Ctrl-C (or SIGTERM, or SIGHUP
// from a closed terminal) ends ctx: no new change starts, and the change in
// progress on a node is waited for and reported (the node ends it on its
// own either way: all new files, or all restored). A second one stops the
// waiting.
func run(o options) error {
	if err := o.Complete(); err != nil {
		return err
	}
	if err := o.Validate(); err != nil {
		return err
	}
	f := o.common()
	ctx, interrupt := context.WithCancel(context.Background())
	defer interrupt()
	drain, insist := context.WithCancel(context.Background())
	defer insist()
	f.drain = drain
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case s := <-sigs:
			f.interrupted(s)
			interrupt()
		case <-done:
			return
		}
		select {
		case <-sigs:
			fmt.Fprintln(f.ErrOut, "interrupted again: no longer waiting; every node still ends its transaction on its own (all new files, or all restored)")
			insist()
		case <-done:
		}
	}()
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
