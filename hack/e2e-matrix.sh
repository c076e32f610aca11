#!/usr/bin/env bash
# e2e-matrix.sh (make e2e-matrix): the rotation scenarios on every supported Kubernetes version.
#
# For each version (E2E_MATRIX_VERSIONS, default "v1.35.4 v1.36.3 v1.37.2"), one after the other:
# the node image (hack/build-node-image.sh, cached per version), then hack/e2e.sh with
#   TestRotate: "service etcd", "all keeps the API up" (--all), "service kubelet"
#   TestRotateHA: --all on 3 control planes and a worker behind kind's load balancer
#   TestRotateECDSAP384: --all on an ECDSA-P384 cluster (skipped below 1.36: needs kubeadm v1beta4)
# each followed by the checks of test/e2e/versions_test.go (logs/exec through every
# kube-apiserver, the kubelets' served certificates, kubelet.conf servers).
#
# Prints a table version x scenario x result x time and exits non-zero if anything failed. Logs
# go to _output/e2e-matrix/<version>.log. E2E_MATRIX_RUN overrides the go test -run pattern.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSIONS=${E2E_MATRIX_VERSIONS:-v1.35.4 v1.36.3 v1.37.2}
# Level 1 picks the tests, level 2 the subtests of TestRotate (the others have none).
RUN=${E2E_MATRIX_RUN:-'^(TestRotate|TestRotateHA|TestRotateECDSAP384)$/^(service_etcd|all_keeps_the_API_up|service_kubelet)$'}
OUT=_output/e2e-matrix
mkdir -p "$OUT"
VERSION=${VERSION:-$(hack/version.sh)}
export VERSION

rc=0
results=()
for v in $VERSIONS; do
	log=$OUT/$v.log
	echo "== e2e-matrix: Kubernetes $v (log: $log)" >&2
	start=$SECONDS
	if KUBE_VERSION=$v ROTATE_CERTS_E2E_HA=1 E2E_RUN=$RUN hack/e2e.sh >"$log" 2>&1; then
		status=ok
	else
		status=FAILED
		rc=1
	fi
	echo "== e2e-matrix: Kubernetes $v: $status in $((SECONDS - start))s" >&2
	# go test -v result lines: "--- PASS: TestRotate/service_etcd (61.23s)"
	while read -r res name secs; do
		results+=("$v $name $res ${secs}")
	done < <(sed -n 's/^ *--- \(PASS\|FAIL\|SKIP\): \([^ ]*\) (\([0-9.]*\)s)$/\1 \2 \3/p' "$log")
	if [[ $status != ok ]] && ! grep -q -- '--- FAIL' "$log"; then
		results+=("$v (setup) FAIL $((SECONDS - start))")
		tail -n 20 "$log" >&2
	fi
done

printf '\n%-9s %-40s %-6s %8s\n' VERSION SCENARIO RESULT SECONDS
passed=0 failed=0
for r in "${results[@]}"; do
	read -r v name res secs <<<"$r"
	printf '%-9s %-40s %-6s %8s\n' "$v" "$name" "$res" "$secs"
	case $res in PASS) passed=$((passed + 1)) ;; FAIL) failed=$((failed + 1)) ;; esac
done
echo "e2e-matrix: $passed passed, $failed failed"
exit $rc
