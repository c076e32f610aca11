#!/usr/bin/env bash
# Runs every fuzz target of the parsers of node-supplied data (PEM,
# kubeconfig, static pod manifests, the agent's JSON answer, certificate
# requests, the CA key hand-over) for FUZZTIME each (default 5s), starting
# from the seed corpus committed in each package's testdata/fuzz. `make
# fuzz`; part of make test. A failure leaves the failing input in that
# testdata/fuzz folder: commit it with the fix.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-5s}
targets=$(grep -rhoE --include='*_test.go' '^func (Fuzz[A-Za-z0-9]+)' pkg | sort -u | wc -l)
echo "fuzz: $targets targets, $FUZZTIME each" >&2
for pkg in $(grep -rlE --include='*_test.go' '^func Fuzz' pkg | xargs -n1 dirname | sort -u); do
	for fn in $(grep -hoE '^func (Fuzz[A-Za-z0-9]+)' "$pkg"/*_test.go | awk '{print $2}'); do
		echo "fuzz: $pkg $fn" >&2
		go test -run='^$' -fuzz="^${fn}\$" -fuzztime="$FUZZTIME" "./$pkg"
	done
done
