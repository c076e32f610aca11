#!/usr/bin/env bash
# e2e-env.sh: prepare this machine for the kind e2e tests and export ROTATE_CERTS_NODE_IMAGE.
#
#   source hack/e2e-env.sh            # in a bash script or shell: exports the variable
#   eval "$(hack/e2e-env.sh)"         # executed: prints `export ROTATE_CERTS_NODE_IMAGE=...`
#
# Runs hack/ensure-docker.sh (engine, privileged-run workaround, host packages), then
# hack/build-node-image.sh for $KUBE_VERSION (default v1.37.2; cached by input hash: seconds
# when the image exists). A ROTATE_CERTS_NODE_IMAGE already set is kept. Progress goes to stderr.
# ROTATE_CERTS_OFFLINE=1 skips the attempt to pull the upstream node image.

_rotate_certs_e2e_env() {
	local root out
	root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || return 1
	"$root/hack/ensure-docker.sh" || return 1
	if [[ -n "${ROTATE_CERTS_NODE_IMAGE:-}" ]]; then
		echo "e2e-env: using ROTATE_CERTS_NODE_IMAGE=$ROTATE_CERTS_NODE_IMAGE from the environment" >&2
	else
		out=$("$root/hack/build-node-image.sh") || return 1
		ROTATE_CERTS_NODE_IMAGE=$(tail -n 1 <<<"$out")
	fi
	export ROTATE_CERTS_NODE_IMAGE
	echo "e2e-env: ROTATE_CERTS_NODE_IMAGE=$ROTATE_CERTS_NODE_IMAGE" >&2
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
	set -euo pipefail
	_rotate_certs_e2e_env
	printf 'export ROTATE_CERTS_NODE_IMAGE=%q\n' "$ROTATE_CERTS_NODE_IMAGE"
else
	_rotate_certs_e2e_env
fi
