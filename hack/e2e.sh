#!/usr/bin/env bash
# Runs the end-to-end suite on real kind clusters (make e2e, part of make
# test). On a fresh machine it installs and starts Docker, builds the kind
# node image offline where the upstream one cannot be pulled (cached by the
# hash of its inputs), builds the plugin and the agent image of one version,
# installs the plugin through krew, and runs test/e2e.
#
# Environment: VERSION (default hack/version.sh); KUBE_VERSION, the Kubernetes
# version of the node image (default v1.37.2, see hack/build-node-image.sh);
# ROTATE_CERTS_E2E_HA=0 skips the 3-control-plane scenario; E2E_RUN narrows the
# tests (go test -run); ROTATE_CERTS_E2E_CLUSTER_PREFIX prefixes cluster names.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
step() { echo "== $* (at $((SECONDS - t0))s)" >&2; }

VERSION=${VERSION:-$(hack/version.sh)}
export VERSION
ROTATE_CERTS_E2E_HA=${ROTATE_CERTS_E2E_HA:-1}
[ "$ROTATE_CERTS_E2E_HA" = 0 ] && unset ROTATE_CERTS_E2E_HA || export ROTATE_CERTS_E2E_HA

KUBE_VERSION=${KUBE_VERSION:-v1.37.2}
export KUBE_VERSION ROTATE_CERTS_KUBE_VERSION=$KUBE_VERSION

step "docker and the kind node image (Kubernetes $KUBE_VERSION)"
# shellcheck source=hack/e2e-env.sh
source hack/e2e-env.sh
: "${ROTATE_CERTS_NODE_IMAGE:?hack/e2e-env.sh did not name a node image}"

step "plugin $VERSION"
make --no-print-directory build VERSION="$VERSION" >&2
export ROTATE_CERTS_PLUGIN=$PWD/bin/kubectl-rotate_certs

step "agent image"
ROTATE_CERTS_IMAGE=$(hack/build-image.sh | tail -n 1)
export ROTATE_CERTS_IMAGE

step "krew install of the plugin"
krew_root=$(mktemp -d)
trap 'rm -rf "$krew_root"' EXIT
ROTATE_CERTS_KREW_PLUGIN=$(hack/krew-install.sh "$krew_root" | tail -n 1)
export ROTATE_CERTS_KREW_PLUGIN

step "go test ./test/e2e (Kubernetes $KUBE_VERSION, node image $ROTATE_CERTS_NODE_IMAGE, agent $ROTATE_CERTS_IMAGE)"
# The framework's own smoke tests are covered by the rotation scenarios.
go test -tags e2e -count=1 -v -timeout 75m -skip 'TestFrameworkSmoke' ${E2E_RUN:+-run "$E2E_RUN"} ./test/e2e/...
step "e2e done"
