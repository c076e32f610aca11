// Command kubectl-rotate_certs is the kubectl plugin "kubectl rotate-certs".
// The same binary runs as the agent inside the node pods (hidden "agent"
// subcommand), so plugin and agent can never drift apart.
package main

import (
	"os"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/plugin"
)

func main() {
	streams := genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr}
	cmd := plugin.NewCmdRotateCerts(streams)
	if err := cmd.Execute(); err != nil {
		os.Exit(1)
	}
}
