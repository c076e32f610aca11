//go:build tools

// Package tools pins the commands this module builds for the node image.
package tools

import (
	_ "sigs.k8s.io/cri-tools/cmd/crictl"
)
