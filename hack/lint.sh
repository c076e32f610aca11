#!/usr/bin/env bash
# `make lint`: golangci-lint, pinned in hack/tools/lib.sh and installed with
# `go install` into _output/tools/bin, with the repository's .golangci.yml.
# Not part of `make test`. Extra arguments go to `golangci-lint run`.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=hack/tools/lib.sh
. hack/tools/lib.sh

go_tool golangci-lint github.com/golangci/golangci-lint/v2/cmd/golangci-lint "$GOLANGCI_LINT_VERSION"
"$TOOLS_BIN/golangci-lint" version >&2
exec "$TOOLS_BIN/golangci-lint" run "$@" ./...
