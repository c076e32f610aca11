// Package plugin holds the cobra commands of kubectl rotate-certs. Each
// command follows the Options pattern of k8s.io/sample-cli-plugin:
// Complete fills in defaults, Validate rejects bad input before anything
// touches the cluster, Run does the work. Business logic lives in
// pkg/orchestrator (user side), pkg/agent (node side) and pkg/pki.
package plugin

import (
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/version"
)

// NewCmdRotateCerts builds the root command "kubectl rotate-certs".
func NewCmdRotateCerts(streams genericiooptions.IOStreams) *cobra.Command {
	cmd := &cobra.Command{
		Use:           "kubectl rotate-certs",
		Short:         "Rotate the certificates of a kubeadm-layout cluster on every node",
		Version:       version.Version,
		SilenceUsage:  true,
		SilenceErrors: false,
	}
	cmd.SetOut(streams.Out)
	cmd.SetErr(streams.ErrOut)
	cmd.SetVersionTemplate("{{.Version}}\n")
	cmd.AddCommand(newCmdVersion(streams))
	return cmd
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
