// Package version holds the build's version, stamped at link time, and the
// agent image that belongs to it: plugin and agent are the same binary, so the
// image tag is always this exact version.
package version

import (
	"runtime/debug"
	"strings"
)

// Version is set at build time with
// -ldflags "-X github.com/rotate-certs/kubectl-rotate-certs/pkg/version.Version=v1.2.3".
// A `go install ...@v1.2.3` build has no ldflags; it takes the module
// version from the build info, so its default agent image exists too.
var Version = "v0.0.0-dev"

func init() {
	if Version != "v0.0.0-dev" {
		return
	}
	if bi, ok := debug.ReadBuildInfo(); ok && strings.HasPrefix(bi.Main.Version, "v") {
		Version = bi.Main.Version
	}
}

// ImageRepository is where released agent images are published.
const ImageRepository = "ghcr.io/rotate-certs/kubectl-rotate-certs"

// DefaultImage is the agent image of this exact build.
func DefaultImage() string {
	return ImageRepository + ":" + ImageTag(Version)
}

// ImageTag turns a version into a valid image tag (a '+' of semver build
// metadata is not allowed in tags).
func ImageTag(v string) string {
	return strings.ReplaceAll(v, "+", "-")
}
