package transport

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"
	"strings"

	kindcluster "sigs.k8s.io/kind/pkg/cluster"
	"sigs.k8s.io/kind/pkg/cluster/nodes"
)

// Kind is a kind cluster, reached through kind's own packages: its nodes are
// containers of the local container runtime (kind detects which), and a
// command runs in one as kind's own `docker exec --privileged` does.
type Kind struct {
	Name     string
	provider *kindcluster.Provider
}

// NewKind finds the kind cluster name; an unknown name is an error that
// lists the clusters there are.
func NewKind(name string) (*Kind, error) {
	p := kindcluster.NewProvider()
	clusters, err := p.List()
	if err != nil {
		return nil, fmt.Errorf("listing kind clusters: %w", err)
	}
	for _, c := range clusters {
		if c == name {
			return &Kind{Name: name, provider: p}, nil
		}
	}
	return nil, fmt.Errorf("no kind cluster %q (kind clusters here: %s)", name, strings.Join(clusters, ", "))
}

// Nodes returns the cluster's nodes (not its load balancer), by name.
func (k *Kind) Nodes() ([]Node, error) {
	all, err := k.provider.ListInternalNodes(k.Name)
	if err != nil {
		return nil, fmt.Errorf("kind cluster %s: %w", k.Name, err)
	}
	if len(all) == 0 {
		return nil, fmt.Errorf("kind cluster %s has no node containers: are they running?", k.Name)
	}
	out := make([]Node, len(all))
	for i, n := range all {
		out[i] = kindNode{n}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out, nil
}

// ExportKubeConfig writes the cluster's admin credentials, as the control
// plane now has them, to the kubeconfig at path (the default kubeconfig
// when empty), as `kind export kubeconfig` does: context kind-<name>.
func (k *Kind) ExportKubeConfig(path string) error {
	return k.provider.ExportKubeConfig(k.Name, path, false)
}

// KubeConfig returns the cluster's admin kubeconfig for this machine.
func (k *Kind) KubeConfig() (string, error) {
	return k.provider.KubeConfig(k.Name, false)
}

type kindNode struct{ n nodes.Node }

func (k kindNode) Name() string { return k.n.String() }

func (k kindNode) Run(ctx context.Context, argv []string, stdin io.Reader) ([]byte, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("node %s: no command", k.Name())
	}
	var stdout, stderr bytes.Buffer
	cmd := k.n.CommandContext(ctx, argv[0], argv[1:]...).SetStdout(&stdout).SetStderr(&stderr)
	if stdin != nil {
		cmd.SetStdin(stdin)
	}
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s on %s: %w: %s", argv[0], k.Name(), err, tailString(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

func (k kindNode) Close() error { return nil }

func tailString(b []byte) string {
	const n = 2000
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}
