package plugin

import (
	"context"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rotate-certs/kubectl-rotate-certs/pkg/api"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/orchestrator"
	"github.com/rotate-certs/kubectl-rotate-certs/pkg/pki"
)

// Shell completion. Cobra answers the hidden `__complete` command with the
// candidates these functions return; kubectl (1.26 and later) asks it
// through the kubectl_complete-rotate_certs script shipped beside the
// plugin (completion/), so `kubectl rotate-certs --service <TAB>` works in
// the user's kubectl completion. Flags given on the line (--kubeconfig,
// --context, -l) are parsed first and used.

// completionTimeout bounds what completion asks the cluster: a shell must
// not hang on an unreachable API server.
const completionTimeout = 5 * time.Second

// registerCompletions registers the completion of the flags a command has.
func (f *commonFlags) registerCompletions(cmd *cobra.Command) {
	fns := map[string]cobra.CompletionFunc{
		"nodes":             f.completeNodes,
		"context":           f.completeKubeconfig(func(c contextsClustersUsers) []string { return c.contexts }),
		"cluster":           f.completeKubeconfig(func(c contextsClustersUsers) []string { return c.clusters }),
		"user":              f.completeKubeconfig(func(c contextsClustersUsers) []string { return c.users }),
		"output":            fixedCompletions(outputFormats...),
		"restart":           fixedCompletions(api.RestartNeeded, api.RestartAll),
		"restart-workloads": fixedCompletions(orchestrator.CAReadersAll, orchestrator.CAReadersKubeSystem, orchestrator.CAReadersNone),
		"key-algorithm":     fixedCompletions(pki.CAKeyAlgorithms...),
		"service": listCompletions(func() []string {
			names := make([]string, len(pki.Services))
			for i, s := range pki.Services {
				names[i] = string(s)
			}
			return names
		}),
	}
	for _, name := range sortedNames(fns) {
		if cmd.Flags().Lookup(name) != nil {
			_ = cmd.RegisterFlagCompletionFunc(name, fns[name])
		}
	}
}

func sortedNames(m map[string]cobra.CompletionFunc) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// fixedCompletions completes one of values.
func fixedCompletions(values ...string) cobra.CompletionFunc {
	return func(_ *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		var out []string
		for _, v := range values {
			if strings.HasPrefix(v, toComplete) {
				out = append(out, v)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// listCompletions completes the last item of a comma-separated list of
// values (--service etcd,kube-<TAB>), leaving out those already given.
func listCompletions(values func() []string) cobra.CompletionFunc {
	return func(_ *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		return commaList(values(), toComplete), cobra.ShellCompDirectiveNoFileComp
	}
}

func commaList(values []string, toComplete string) []string {
	done, partial := "", toComplete
	if i := strings.LastIndex(toComplete, ","); i >= 0 {
		done, partial = toComplete[:i+1], toComplete[i+1:]
	}
	given := map[string]bool{}
	for _, g := range strings.Split(done, ",") {
		given[g] = true
	}
	var out []string
	for _, v := range values {
		if !given[v] && strings.HasPrefix(v, partial) {
			out = append(out, done+v)
		}
	}
	return out
}

// completeNodes completes node names (a comma-separated list) from the
// cluster the line's kubeconfig flags select, narrowed by its -l.
func (f *commonFlags) completeNodes(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	return listCompletions(func() []string {
		client, err := f.factory.KubeClient()
		if err != nil {
			return nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), completionTimeout)
		defer cancel()
		list, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: f.selector})
		if err != nil {
			return nil
		}
		names := make([]string, 0, len(list.Items))
		for _, n := range list.Items {
			names = append(names, n.Name)
		}
		sort.Strings(names)
		return names
	})(cmd, args, toComplete)
}

type contextsClustersUsers struct{ contexts, clusters, users []string }

// completeKubeconfig completes names from the kubeconfig the line's
// --kubeconfig (or $KUBECONFIG, or ~/.kube/config) names.
func (f *commonFlags) completeKubeconfig(pick func(contextsClustersUsers) []string) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		raw, err := f.factory.RawKubeConfig()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var c contextsClustersUsers
		for n := range raw.Contexts {
			c.contexts = append(c.contexts, n)
		}
		for n := range raw.Clusters {
			c.clusters = append(c.clusters, n)
		}
		for n := range raw.AuthInfos {
			c.users = append(c.users, n)
		}
		names := pick(c)
		sort.Strings(names)
		return fixedCompletions(names...)(cmd, args, toComplete)
	}
}
