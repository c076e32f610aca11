#!/usr/bin/env bash
# make demo: on a fresh machine, set up Docker and the kind node image (built
# offline where none can be pulled), create a local kind cluster, show its
# certificates' expiry, rotate them all, and show them again.
# The cluster stays for you to explore; delete it with
#   go run ./test/e2e/cmd/democluster -delete
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${VERSION:-$(hack/version.sh)}
export VERSION
say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

say "Docker and the kind node image"
# shellcheck source=hack/e2e-env.sh
source hack/e2e-env.sh

# shellcheck source=hack/tools/lib.sh
. hack/tools/lib.sh
ensure_kubectl

say "Building kubectl-rotate_certs $VERSION and its agent image"
make --no-print-directory build VERSION="$VERSION" >&2
image=$(hack/build-image.sh | tail -n 1)
export PATH=$PWD/bin:$PATH

kubeconfig=${DEMO_KUBECONFIG:-$PWD/_output/demo.kubeconfig}
mkdir -p "$(dirname "$kubeconfig")"
say "Creating the kind cluster rotate-certs-demo (1 control plane, 1 worker)"
go run ./test/e2e/cmd/democluster -delete >/dev/null 2>&1 || true
go run ./test/e2e/cmd/democluster -kubeconfig "$kubeconfig" -load-image "$image"
export KUBECONFIG=$kubeconfig
kubectl get nodes -o wide

say "Certificates before: kubectl rotate-certs status"
kubectl rotate-certs status --image "$image"

say "Rotating everything: kubectl rotate-certs --all"
kubectl rotate-certs --all --image "$image"

say "Certificates after: kubectl rotate-certs status"
kubectl rotate-certs status --image "$image"
kubectl get nodes

say "Done. KUBECONFIG=$kubeconfig; delete the cluster with: go run ./test/e2e/cmd/democluster -delete"
