#!/usr/bin/env bash
# test.sh (make test, what CI runs): vet, gofmt, golangci-lint, unit tests, fuzzing, krew packaging tests,
# the e2e suite on the newest supported Kubernetes ($KUBE_NEWEST) and --all on the oldest
# ($KUBE_OLDEST).
#
# The two kind node images (hack/build-node-image.sh, cached by content: seconds when present,
# ~10 min each on a fresh 2-core machine) are built in the background: the newest while vet,
# lint, unit, fuzz and krew tests run (they wait on downloads at different times), the oldest,
# niced, while the e2e suite runs on the newest. The builds' output goes to
# _output/node-images.log.
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
step "node images $KUBE_NEWEST, then $KUBE_OLDEST, in the background (log: $images_log)"
# The newest first, at normal priority: the e2e on it starts as soon as it is
# ready. The oldest then builds at the lowest CPU and I/O priority while that
# e2e runs, so it takes only the cycles the clusters leave (a build at equal
# priority has made the API poller's 3 s requests time out).
# shellcheck disable=SC2016 # expanded by the inner bash
setsid bash -c '
	s=$SECONDS
	KUBE_VERSION=$1 hack/build-node-image.sh >/dev/null || exit 1
	echo "node image $1 ready after $((SECONDS - s))s" >&2
	s=$SECONDS
	KUBE_VERSION=$2 nice -n 19 ionice -c 3 hack/build-node-image.sh >/dev/null || exit 1
	echo "node image $2 ready after $((SECONDS - s))s" >&2
' bash "$KUBE_NEWEST" "$KUBE_OLDEST" >"$images_log" 2>&1 &
images_pid=$!
stop_images() {
	if kill -0 "$images_pid" 2>/dev/null; then
		kill -- "-$images_pid" 2>/dev/null || true
	fi
}
trap stop_images EXIT
images_failed() {
	tail -n 40 "$images_log" >&2
	echo "test: building the node images failed (log: $images_log)" >&2
	exit 1
}

step "vet, lint, unit tests, fuzzing, krew packaging tests"
make --no-print-directory vet lint test-unit fuzz test-krew VERSION="$VERSION"

step "waiting for the $KUBE_NEWEST node image"
until grep -q "node image $KUBE_NEWEST ready" "$images_log" 2>/dev/null; do
	kill -0 "$images_pid" 2>/dev/null || images_failed
	sleep 2
done
step "e2e on $KUBE_NEWEST (the $KUBE_OLDEST image builds meanwhile, niced)"
make --no-print-directory e2e VERSION="$VERSION" KUBE_NEWEST="$KUBE_NEWEST"

step "waiting for the $KUBE_OLDEST node image"
wait "$images_pid" || images_failed
grep 'ready after' "$images_log" >&2 || true
step "--all on $KUBE_OLDEST"
make --no-print-directory e2e-oldest VERSION="$VERSION" KUBE_OLDEST="$KUBE_OLDEST"
step "all passed"
