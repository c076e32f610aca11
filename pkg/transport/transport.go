// Package transport reaches a node's agent without the Kubernetes API: for
// clusters whose API is down (kubectl rotate-certs recover), through kind's
// node containers, SSH, or on the node itself. The agent is the same binary
// and speaks the same JSON request/result (pkg/api); a transport only runs
// it. The host's root is "/" there, not the agent pod's "/host".
package transport

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
)

// Node is one node a transport reaches.
type Node interface {
	// Name is how reports call the node: the host as the user named it
	// for SSH, the container name for kind, the hostname for local.
	Name() string
	// Run runs argv as root on the node, with stdin (nil: none), and
	// returns its stdout. A non-zero exit is an error that carries the
	// end of its stderr.
	Run(ctx context.Context, argv []string, stdin io.Reader) ([]byte, error)
	// Close releases what the node holds (an SSH connection).
	Close() error
}

// Installed is the agent binary copied to a node.
type Installed struct {
	// Dir is the private directory that holds it; Path the binary.
	Dir, Path string
}

// InstallDir is where Install makes its private directories: on the root
// filesystem, since /tmp is often mounted noexec (kind's nodes, hardened
// hosts). Tests that run "nodes" on this machine point it at a temp dir.
var InstallDir = "/var/lib"

// Install copies the agent binary to a fresh private directory on the node
// (mktemp -d, 0700), makes it executable, and checks its sha256 there
// before anything runs it: a node never runs a binary that is not
// byte-identical to this one. It proves the binary can run there.
func Install(ctx context.Context, n Node, binary []byte) (*Installed, error) {
	out, err := n.Run(ctx, []string{"mktemp", "-d", InstallDir + "/rotate-certs.XXXXXXXXXX"}, nil)
	if err != nil {
		return nil, fmt.Errorf("node %s: making a private directory: %w", n.Name(), err)
	}
	dir := strings.TrimSpace(string(out))
	if !strings.HasPrefix(dir, InstallDir+"/rotate-certs.") || strings.ContainsAny(dir, " \n'\"\\") {
		return nil, fmt.Errorf("node %s: mktemp answered %q", n.Name(), dir)
	}
	in := &Installed{Dir: dir, Path: dir + "/kubectl-rotate_certs"}
	fail := func(err error) (*Installed, error) {
		_ = in.Remove(ctx, n)
		return nil, fmt.Errorf("node %s: installing the agent: %w", n.Name(), err)
	}
	if _, err := n.Run(ctx, []string{"chmod", "0700", dir}, nil); err != nil {
		return fail(err)
	}
	if _, err := n.Run(ctx, []string{"sh", "-c", `cat > "$1" && chmod 0700 "$1"`, "sh", in.Path}, bytes.NewReader(binary)); err != nil {
		return fail(err)
	}
	sum, err := n.Run(ctx, []string{"sha256sum", in.Path}, nil)
	if err != nil {
		return fail(err)
	}
	want := sha256.Sum256(binary)
	if got, _, _ := strings.Cut(strings.TrimSpace(string(sum)), " "); got != hex.EncodeToString(want[:]) {
		return fail(fmt.Errorf("the copied binary's sha256 is %q, not %x", got, want))
	}
	if _, err := n.Run(ctx, []string{in.Path, "version"}, nil); err != nil {
		return fail(fmt.Errorf("the agent cannot run from %s (is the filesystem mounted noexec?): %w", dir, err))
	}
	return in, nil
}

// Remove deletes the directory Install made (and what the agent kept in it).
func (in *Installed) Remove(ctx context.Context, n Node) error {
	if _, err := n.Run(ctx, []string{"rm", "-rf", "--", in.Dir}, nil); err != nil {
		return fmt.Errorf("node %s: removing %s: %w", n.Name(), in.Dir, err)
	}
	return nil
}
