#!/usr/bin/env bash
# usage: hack/krew-install.sh KREW_ROOT
#
# Builds kubectl-rotate_certs for this host (linux/amd64 or linux/arm64) the
# way a release is built, and installs it with krew, offline (--manifest +
# --archive), into KREW_ROOT. A previous install there is replaced. krew's
# output goes to stderr; the last stdout line is the path of the installed
# plugin binary ($KREW_ROOT/bin/kubectl-rotate_certs, the file kubectl's
# plugin lookup finds when $KREW_ROOT/bin is on PATH).
#
# Environment: VERSION (default hack/version.sh).
set -euo pipefail
if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: $0 KREW_ROOT" >&2
  exit 2
fi
KR=$(realpath -m "$1")
cd "$(dirname "$0")/.."
# shellcheck source=hack/tools/lib.sh
. hack/tools/lib.sh

VERSION=${VERSION:-$(hack/version.sh)}
export VERSION
HOST=$(go env GOOS)/$(go env GOARCH)
DIST=$REPO_ROOT/_output/krew-install/dist
ARCHIVE=kubectl-rotate_certs_${VERSION}_${HOST%/*}_${HOST#*/}.tar.gz

ensure_krew >&2
PLATFORMS=$HOST DIST_DIR=$DIST hack/dist.sh >&2

krew() {
  env KREW_ROOT="$KR" KREW_NO_UPGRADE_CHECK=1 "$TOOLS_BIN/krew" "$@"
}
if [ -e "$KR/receipts/rotate-certs.yaml" ]; then
  # krew refuses to uninstall without an index; an offline KREW_ROOT has none
  # (krew only checks that index/default is a git work tree).
  [ -d "$KR/index/default" ] || git init -q "$KR/index/default"
  krew uninstall rotate-certs >&2
fi
krew install --manifest="$DIST/rotate-certs.yaml" --archive="$DIST/$ARCHIVE" >&2

bin=$KR/bin/kubectl-rotate_certs
got=$("$bin" version)
if [ "$got" != "$VERSION" ]; then
  echo "hack/krew-install.sh: installed binary reports $got, want $VERSION" >&2
  exit 1
fi
echo "hack/krew-install.sh: installed $VERSION into $KR" >&2
echo "$bin"
