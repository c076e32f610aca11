//go:build tools

// Package tools pins the commands this module builds for the node image.
package tools

import (
	_ "github.com/coredns/coredns"
)
