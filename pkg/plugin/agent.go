package plugin

import (
	"context"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/agent"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
)

// newCmdAgent is the node side of the binary, run in the agent pods. It is
// hidden: users never call it.
func newCmdAgent(streams genericiooptions.IOStreams) *cobra.Command {
	cmd := &cobra.Command{Use: "agent", Hidden: true, Short: "Node agent (runs inside the agent pods, or on the host through a transport)"}
	var root, results string
	cmd.PersistentFlags().StringVar(&root, "root", api.HostRoot, "where the host's filesystem is (/ when run on the host)")
	cmd.PersistentFlags().StringVar(&results, "results", api.ResultsDir, "directory that keeps each request and its result")
	serve := agent.ServeOptions{Log: streams.ErrOut}
	serveCmd := &cobra.Command{
		Use: "serve", Short: "Wait until stopped, or until no request came for --idle; actions are exec'd beside it", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			serve.ResultsDir = results
			return agent.Serve(c.Context(), serve)
		},
	}
	serveCmd.Flags().DurationVar(&serve.Idle, "idle", 0, "exit when no request came for this long (0: never)")
	serveCmd.Flags().DurationVar(&serve.Drain, "drain", time.Minute, "when stopped, wait this long for running actions")
	cmd.AddCommand(serveCmd)
	cmd.AddCommand(&cobra.Command{
		Use: "exec", Short: "Perform the JSON request read from stdin in a detached process; print its result", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return agent.Exec(context.Background(), streams.In, streams.Out, results, agent.DetachedLauncher(root, results))
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use: "ping", Short: "Tell the pod the plugin is still there", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return agent.Ping(results) },
	})
	var id string
	run := &cobra.Command{
		Use: "run", Short: "Perform a filed request (started by exec)", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return agent.New(root).RunFiled(context.Background(), results, id)
		},
	}
	run.Flags().StringVar(&id, "id", "", "request id")
	cmd.AddCommand(run)
	var wait time.Duration
	result := &cobra.Command{
		Use: "result", Short: "Print the filed result of an earlier request", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return agent.FetchResult(c.Context(), id, results, wait, streams.Out)
		},
	}
	result.Flags().StringVar(&id, "id", "", "request id")
	result.Flags().DurationVar(&wait, "wait", 30*time.Second, "how long to wait for a running request")
	cmd.AddCommand(result)
	return cmd
}
