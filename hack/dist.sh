#!/usr/bin/env bash
# Cross-compiles kubectl-rotate_certs and packages reproducible release
# archives plus the filled-in krew manifest:
#
#   $DIST_DIR/kubectl-rotate_certs_<version>_<os>_<arch>.tar.gz  (.zip on windows;
#                                 the binary, LICENSE and completion/'s script)
#   $DIST_DIR/checksums.txt       sha256sum -c format
#   $DIST_DIR/rotate-certs.yaml   krew/rotate-certs.yaml rendered
#   $DIST_DIR/bin/<os>_<arch>/    the raw binaries
#
# Same commit => byte-identical archives, on any machine and from any checkout
# path: the Go toolchain pinned by go.mod (GOTOOLCHAIN), static
# (CGO_ENABLED=0) -trimpath builds without VCS stamping or build id, default
# GOAMD64/GOARM64 levels, and archives written by hack/tools/krewdist with
# fixed order, owners, modes and times.
#
# Environment:
#   VERSION            version to stamp (default: hack/version.sh)
#   DIST_DIR           output directory (default: dist)
#   PLATFORMS          space-separated os/arch list (default: all six release
#                      platforms); a subset gives a manifest with only those
#   DIST_URI_BASE      base URL of the archives in the manifest (default:
#                      https://github.com/rotate-certs/kubectl-rotate-certs/releases/download/$VERSION)
#   SOURCE_DATE_EPOCH  time stamped on archive entries (default: commit time
#                      of HEAD)
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=${VERSION:-$(hack/version.sh)}
DIST_DIR=${DIST_DIR:-dist}
PLATFORMS=${PLATFORMS:-linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64 windows/arm64}
DIST_URI_BASE=${DIST_URI_BASE:-}
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 315532800)
fi
PKG=github.com/rotate-certs/kubectl-rotate-certs
# The bytes depend on the Go toolchain, so releases use exactly the one go.mod
# names (its toolchain line, else its go line); a different local Go fetches
# it from the module proxy. Override with GOTOOLCHAIN=local to use whatever Go
# is installed.
if [ -z "${GOTOOLCHAIN:-}" ]; then
  GOTOOLCHAIN=$(awk '$1 == "toolchain" { t = $2 }
    $1 == "go" { g = "go" $2; if (split($2, p, ".") == 2) g = g ".0" }
    END { print (t != "" ? t : g) }' go.mod)
fi
export GOTOOLCHAIN
echo "hack/dist.sh: $(go version)" >&2

case "$DIST_DIR" in
  "" | / | . | ..) echo "hack/dist.sh: refusing DIST_DIR='$DIST_DIR'" >&2; exit 1 ;;
esac
mkdir -p "$DIST_DIR"
rm -rf "$DIST_DIR/bin" "$DIST_DIR"/kubectl-rotate_certs_* "$DIST_DIR/checksums.txt" "$DIST_DIR/rotate-certs.yaml"

start=$(date +%s)
for p in $PLATFORMS; do
  os=${p%/*}
  arch=${p#*/}
  exe=kubectl-rotate_certs
  [ "$os" = windows ] && exe=kubectl-rotate_certs.exe
  echo "hack/dist.sh: building $VERSION $os/$arch" >&2
  # GOFLAGS is reset so that a developer's environment cannot change the
  # output; GOAMD64/GOARM64 are pinned to Go's defaults for the same reason.
  env CGO_ENABLED=0 GOOS="$os" GOARCH="$arch" GOAMD64=v1 GOARM64=v8.0 GOFLAGS= \
    go build -trimpath -buildvcs=false \
      -ldflags "-s -w -buildid= -X $PKG/pkg/version.Version=$VERSION" \
      -o "$DIST_DIR/bin/${os}_${arch}/$exe" ./cmd/kubectl-rotate_certs
done

uri_args=()
if [ -n "$DIST_URI_BASE" ]; then
  uri_args=(-uri-base "$DIST_URI_BASE")
fi
GOFLAGS= go run ./hack/tools/krewdist package \
  -dist "$DIST_DIR" -version "$VERSION" -epoch "$SOURCE_DATE_EPOCH" \
  -license LICENSE -completion completion -template krew/rotate-certs.yaml \
  -platforms "$PLATFORMS" "${uri_args[@]}"

echo "hack/dist.sh: $VERSION for [$PLATFORMS] in $DIST_DIR/ ($(( $(date +%s) - start ))s):" >&2
cat "$DIST_DIR/checksums.txt" >&2
