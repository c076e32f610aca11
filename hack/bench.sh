#!/usr/bin/env bash
# bench.sh (make bench; not part of make test): measures certificate rotation
# against kubeadm's manual procedure on real kind clusters, side by side in one
# run (issue 11), and writes docs/benchmarks.md with its timeline picture and
# the raw results docs/benchmarks/*.json.
#
# Prepares what hack/e2e.sh prepares (Docker, the offline kind node image, the
# plugin, the agent image), then runs test/bench (build tag bench): the
# footprint (plugin and image sizes, the 10/100/1000-worker simulation), then
# on a 1-control-plane + 2-worker cluster and on a 3-control-plane + 1-worker
# cluster behind kind's load balancer, under a steady API load: the manual
# procedure, `kubectl rotate-certs --all`, `--all --restart=all`. Finally
# test/bench/cmd/benchreport renders the document from the JSON. About 30-40
# minutes on 2 cores.
#
# Environment: VERSION (default hack/version.sh); KUBE_VERSION (default
# v1.37.2); ROTATE_CERTS_BENCH_CLUSTERS (default "single,ha");
# ROTATE_CERTS_BENCH_BASELINE (default 60s, the quiet period before each
# method); ROTATE_CERTS_BENCH_KEEP=1 keeps the clusters;
# ROTATE_CERTS_BENCH_SKIP_FOOTPRINT=1 skips the footprint; ROTATE_CERTS_BENCH_METHODS
# (default "manual,plugin,plugin-restart-all") selects methods; ROTATE_CERTS_BENCH_OUT
# (default docs/benchmarks) receives the JSON;
# ROTATE_CERTS_E2E_CLUSTER_PREFIX (default rc-bench-) prefixes cluster names.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
step() { echo "== bench: $* (at $((SECONDS - t0))s)" >&2; }

VERSION=${VERSION:-$(hack/version.sh)}
KUBE_VERSION=${KUBE_VERSION:-v1.37.2}
export VERSION KUBE_VERSION ROTATE_CERTS_KUBE_VERSION=$KUBE_VERSION
export ROTATE_CERTS_E2E_CLUSTER_PREFIX=${ROTATE_CERTS_E2E_CLUSTER_PREFIX:-rc-bench-}

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

mkdir -p _output docs/benchmarks
log=_output/bench.log
step "go test -tags bench ./test/bench (log: $log)"
go test -tags bench -count=1 -v -timeout 150m -run '^TestBench$' ./test/bench/ 2>&1 | tee "$log" >&2

step "docs/benchmarks.md"
go run ./test/bench/cmd/benchreport -dir docs/benchmarks -doc docs/benchmarks.md
step "bench done"
