# Sourced by hack/test-krew.sh, hack/krew-install.sh and hack/lint.sh.
# Installs pinned tools with `go install` into a project-local bin dir, so
# nothing outside the checkout (and the Go caches) is touched.
#
# Pinned versions. sigs.k8s.io/krew: `go list -m -versions` on the proxy only
# lists v0.4.3, but v0.5.0 (2026-02-26) is served when asked for by name and
# is what we use.
KREW_VERSION=${KREW_VERSION:-v0.5.0}
GOLANGCI_LINT_VERSION=${GOLANGCI_LINT_VERSION:-v2.15.0}

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TOOLS_BIN=${TOOLS_BIN:-$REPO_ROOT/_output/tools/bin}

# go_tool NAME PACKAGE VERSION: installs PACKAGE@VERSION as $TOOLS_BIN/NAME
# unless the binary there already is that module version.
go_tool() {
  local name=$1 pkg=$2 version=$3 have
  if [ -x "$TOOLS_BIN/$name" ]; then
    have=$(go version -m "$TOOLS_BIN/$name" 2>/dev/null | awk '$1 == "mod" { print $3; exit }')
    if [ "$have" = "$version" ]; then
      return 0
    fi
  fi
  echo "tools: go install $pkg@$version" >&2
  mkdir -p "$TOOLS_BIN"
  GOBIN="$TOOLS_BIN" GOFLAGS= go install "$pkg@$version"
}

# ensure_krew: krew (also as kubectl-krew, so `kubectl krew` and
# validate-krew-manifest, which shells out to it, find it) and
# validate-krew-manifest.
ensure_krew() {
  go_tool krew sigs.k8s.io/krew/cmd/krew "$KREW_VERSION"
  go_tool validate-krew-manifest sigs.k8s.io/krew/cmd/validate-krew-manifest "$KREW_VERSION"
  ln -sfn krew "$TOOLS_BIN/kubectl-krew"
}

# ensure_krewdist: this repo's packaging helper (hack/tools/krewdist).
ensure_krewdist() {
  mkdir -p "$TOOLS_BIN"
  (cd "$REPO_ROOT" && GOFLAGS= go build -o "$TOOLS_BIN/krewdist" ./hack/tools/krewdist)
}

# ensure_kubectl: kubectl must be on PATH for plugin lookup. A machine without
# it gets Debian's kubernetes-client package (kubectl 1.20, which already has
# the plugin mechanism, "-" in the command mapping to "_" in the file name).
ensure_kubectl() {
  if command -v kubectl >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "tools: kubectl missing, installing Debian package kubernetes-client" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kubernetes-client >&2
    command -v kubectl >/dev/null 2>&1 && return 0
  fi
  echo "tools: kubectl not found; install it (e.g. apt-get install kubernetes-client)" >&2
  return 1
}
