#!/usr/bin/env bash
# test.sh (make test, what CI runs): vet, gofmt, golangci-lint, unit tests, fuzzing, krew packaging tests,
# the e2e suite on the newest supported Kubernetes ($KUBE_NEWEST) and --all on the oldest
# ($KUBE_OLDEST).
#
# The two kind node images (hack/build-node-image.sh, cached by content: seconds when present,
# ~10 min each on a fresh 2-core machine) are built in the background while vet, lint, unit and
# krew tests run: those steps and the image builds wait on downloads (Go modules, Debian
# packages) at different times, so overlapping them shortens a cold run. The e2e steps then find
# the images cached. The builds' output goes to _output/node-images.log.
set -euo pipefail
cd "$(dirname "$0")/.."
KUBE_NEWEST=${KUBE_NEWEST:?} KUBE_OLDEST=${KUBE_OLDEST:?}
VERSION=${VERSION:-$(hack/version.sh)}
export VERSION
t0=$SECONDS
step() { echo "== test: $* (at $((SECONDS - t0))s)" >&2; }

step "docker (for the node image builds)"
hack/ensure-docker.sh
mkdir -p _output
images_log=_output/node-images.log
step "node images $KUBE_NEWEST and $KUBE_OLDEST in the background (log: $images_log)"
# shellcheck disable=SC2016 # expanded by the inner bash
setsid bash -c 'for v in "$@"; do
	s=$SECONDS
	KUBE_VERSION=$v hack/build-node-image.sh >/dev/null || exit 1
	echo "node image $v ready after $((SECONDS - s))s" >&2
done' bash "$KUBE_NEWEST" "$KUBE_OLDEST" >"$images_log" 2>&1 &
images_pid=$!
stop_images() {
	if kill -0 "$images_pid" 2>/dev/null; then
		kill -- "-$images_pid" 2>/dev/null || true
	fi
}
trap stop_images EXIT

step "vet, lint, unit tests, fuzzing, krew packaging tests"
make --no-print-directory vet lint test-unit fuzz test-krew VERSION="$VERSION"
step "waiting for the node images"
if ! wait "$images_pid"; then
	tail -n 40 "$images_log" >&2
	echo "test: building the node images failed (log: $images_log)" >&2
	exit 1
fi
grep 'ready after' "$images_log" >&2 || true
step "e2e on $KUBE_NEWEST, then --all on $KUBE_OLDEST"
make --no-print-directory e2e e2e-oldest VERSION="$VERSION" KUBE_NEWEST="$KUBE_NEWEST" KUBE_OLDEST="$KUBE_OLDEST"
step "all passed"
