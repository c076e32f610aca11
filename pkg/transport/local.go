package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
)

// Local is the machine the plugin runs on, as a node: for a console
// session on a node, or configuration-management tools. It must run as
// root.
func Local() (Node, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("--local runs on the node itself and needs root (run it with sudo)")
	}
	host, err := os.Hostname()
	if err != nil {
		return nil, err
	}
	return localNode{host}, nil
}

type localNode struct{ host string }

func (l localNode) Name() string { return l.host }

func (l localNode) Run(ctx context.Context, argv []string, stdin io.Reader) ([]byte, error) {
	if len(argv) == 0 {
		return nil, errors.New("no command")
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s: %w: %s", argv[0], err, tailString(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

func (l localNode) Close() error { return nil }
