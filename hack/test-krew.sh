#!/usr/bin/env bash
# Packaging tests for the krew distribution of kubectl rotate-certs
# (`make test-krew`). Needs Go; installs krew + validate-krew-manifest into
# _output/tools/bin and, if kubectl is missing, Debian's kubernetes-client.
#
# Checks:
#   template-sync      .krew.yaml (krew-release-bot) == krew/rotate-certs.yaml
#   release-manifest   dist/rotate-certs.yaml passes krew's validation, and its
#                      sha256s are the archives' (checksums.txt)
#   validate-install   validate-krew-manifest, including its install of every
#                      platform, passes on the manifest pointed at a loopback
#                      HTTP server serving dist/
#   validate-bad-sha   validate-krew-manifest FAILS (checksum mismatch) on a
#                      copy with a wrong sha256
#   offline-install    `kubectl krew install --manifest --archive` into a
#                      throwaway KREW_ROOT, inside a network namespace with no
#                      usable interface (unshare -n: any connection to outside
#                      must fail) and under strace, whose log must show no
#                      connect() to anything but loopback/unix sockets
#   plugin-help        `kubectl rotate-certs --help` via kubectl plugin lookup
#   plugin-version     `kubectl rotate-certs version` prints $VERSION
#   plugin-completion  the archive's completion script, copied as the caveats
#                      say, completes --service, also through kubectl >= 1.26
#   uninstall          `kubectl krew uninstall rotate-certs` removes it
#   reproducible       a second build from a copy of the sources at another
#                      path gives byte-identical archives and manifest for all
#                      platforms. By default it shares the Go build cache:
#                      compile results are reused, link and packaging rerun
#                      (dropping -trimpath would still show: the source
#                      directory then enters cache keys and binaries).
#                      REPRO_FRESH_GOCACHE=1 gives it an empty cache, so
#                      everything is recompiled (doubles the build time)
#
# Last line: "krew: N passed, M failed"; exit status non-zero if M > 0.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=hack/tools/lib.sh
. hack/tools/lib.sh

VERSION=${VERSION:-$(hack/version.sh)}
export VERSION
WORK=$ROOT/_output/test-krew
DIST=$ROOT/dist
PLUGIN_BIN=kubectl-rotate_certs

passed=0
failed=0
failures=()
server_pid=""
t0=$(date +%s)

log() { echo "test-krew: $*" >&2; }
check() { # check NAME COMMAND...
  local name=$1 start=$(date +%s)
  shift
  log "--- $name"
  if "$@"; then
    passed=$((passed + 1))
    log "PASS $name ($(( $(date +%s) - start ))s)"
  else
    failed=$((failed + 1))
    failures+=("$name")
    log "FAIL $name ($(( $(date +%s) - start ))s)"
  fi
}
finish() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null
    wait "$server_pid" 2>/dev/null
  fi
  log "total $(( $(date +%s) - t0 ))s${failures[*]:+; failed: ${failures[*]}}"
  echo "krew: $passed passed, $failed failed"
  # (A bare `exit` in an EXIT trap would reuse the script's status.)
  if [ "$failed" -eq 0 ]; then exit 0; else exit 1; fi
}
trap finish EXIT
fatal() { failed=$((failed + 1)); failures+=("$1"); log "FATAL: $2"; exit 1; }

rm -rf "$WORK"
mkdir -p "$WORK/home"

# ---------------------------------------------------------------- setup
ensure_kubectl || fatal setup "kubectl unavailable"
ensure_krew || fatal setup "could not install krew $KREW_VERSION"
ensure_krewdist || fatal setup "could not build hack/tools/krewdist"
KUBECTL_DIR=$(dirname "$(command -v kubectl)")
# A clean, predictable environment for every krew/kubectl invocation.
BASE_PATH="$TOOLS_BIN:$KUBECTL_DIR:/usr/local/bin:/usr/bin:/bin"
run_env() { env -i HOME="$WORK/home" PATH="$BASE_PATH" KREW_NO_UPGRADE_CHECK=1 "$@"; }
log "krew $KREW_VERSION, kubectl $(command -v kubectl), $(go version)"

HOST_OS=$(go env GOOS)
HOST_ARCH=$(go env GOARCH)
case "$HOST_OS/$HOST_ARCH" in
  linux/amd64 | linux/arm64) ;;
  *) fatal setup "host $HOST_OS/$HOST_ARCH: this test runs on linux/amd64 or linux/arm64" ;;
esac
HOST_ARCHIVE=${PLUGIN_BIN}_${VERSION}_${HOST_OS}_${HOST_ARCH}.tar.gz

# Snapshot of the sources for the reproducibility check's second build: the
# tracked and untracked-but-not-ignored files, i.e. exactly what the build
# below compiles, copied to another path (taken now, so that edits made while
# this test runs cannot make the two builds differ).
REPRO_SRC=$WORK/repro/src
mkdir -p "$REPRO_SRC"
git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
  tar --null -T - -cf - | tar -xf - -C "$REPRO_SRC" || fatal setup "could not copy the sources"

log "--- dist (all platforms) for $VERSION"
s=$(date +%s)
DIST_DIR=$DIST hack/dist.sh || fatal dist "hack/dist.sh failed"
log "dist took $(( $(date +%s) - s ))s"
[ "$(wc -l < "$DIST/checksums.txt")" -eq 6 ] || fatal dist "expected 6 archives in $DIST/checksums.txt"

# ---------------------------------------------------------------- checks
template_sync() {
  cmp krew/rotate-certs.yaml .krew.yaml
}
check template-sync template_sync

release_manifest() {
  mkdir -p "$WORK/release" && cp "$DIST/rotate-certs.yaml" "$WORK/release/" || return 1
  run_env validate-krew-manifest -skip-install -manifest "$WORK/release/rotate-certs.yaml" || return 1
  # Every sha256 in the manifest is the one of its archive, lowercase.
  local uris shas
  uris=$(awk '$1 == "uri:" { n = split($2, a, "/"); print a[n] }' "$DIST/rotate-certs.yaml")
  shas=$(awk '$1 == "sha256:" { print $2 }' "$DIST/rotate-certs.yaml")
  paste -d' ' <(echo "$shas") <(echo "$uris") | sed 's/ /  /' | sort -k2 > "$WORK/release/from-manifest.txt"
  diff "$DIST/checksums.txt" "$WORK/release/from-manifest.txt" || return 1
  (cd "$DIST" && sha256sum --quiet -c checksums.txt) || return 1
  grep -q "releases/download/$VERSION/${PLUGIN_BIN}_${VERSION}_linux_amd64.tar.gz" "$DIST/rotate-certs.yaml"
}
check release-manifest release_manifest

start_server() {
  "$TOOLS_BIN/krewdist" serve -dir "$DIST" -addr 127.0.0.1:0 -port-file "$WORK/port" 2> "$WORK/server.log" &
  server_pid=$!
  for _ in $(seq 100); do
    [ -s "$WORK/port" ] && return 0
    sleep 0.1
  done
  return 1
}
start_server || fatal setup "loopback file server did not start"
PORT=$(cat "$WORK/port")
log "serving $DIST on http://127.0.0.1:$PORT"

validate_install() {
  mkdir -p "$WORK/loopback"
  "$TOOLS_BIN/krewdist" manifest -dist "$DIST" -version "$VERSION" -template krew/rotate-certs.yaml \
    -uri-base "http://127.0.0.1:$PORT" -out "$WORK/loopback/rotate-certs.yaml" || return 1
  run_env validate-krew-manifest -manifest "$WORK/loopback/rotate-certs.yaml" > "$WORK/validate.log" 2>&1
  local rc=$?
  tail -n 3 "$WORK/validate.log" >&2
  [ $rc -eq 0 ] || { cat "$WORK/validate.log" >&2; return 1; }
  grep -q "all 6 spec.platforms installed fine" "$WORK/validate.log" || return 1
  # Each archive was really fetched from the loopback server.
  local n
  n=$(grep -c "GET /${PLUGIN_BIN}_${VERSION}_" "$WORK/server.log")
  log "loopback server answered $n archive downloads"
  [ "$n" -ge 6 ]
}
check validate-install validate_install

validate_bad_sha() {
  mkdir -p "$WORK/badsha"
  local good bad
  good=$(awk '$1 == "sha256:" { print $2; exit }' "$WORK/loopback/rotate-certs.yaml")
  bad=$(sha256sum LICENSE | cut -d' ' -f1) # well-formed, wrong
  [ -n "$good" ] && [ "$good" != "$bad" ] || return 1
  sed "s/$good/$bad/" "$WORK/loopback/rotate-certs.yaml" > "$WORK/badsha/rotate-certs.yaml"
  if run_env validate-krew-manifest -manifest "$WORK/badsha/rotate-certs.yaml" > "$WORK/badsha.log" 2>&1; then
    log "validate-krew-manifest accepted a wrong sha256"
    return 1
  fi
  grep -o "checksum does not match[^:]*" "$WORK/badsha.log" | head -n 1 >&2
  grep -q "checksum does not match" "$WORK/badsha.log"
}
check validate-bad-sha validate_bad_sha

KR=$WORK/krew-root
# no_net CMD...: runs CMD in a new network namespace (only a down loopback
# device exists, so no connection can leave), unprivileged if need be.
no_net() {
  if unshare -n true 2>/dev/null; then
    unshare -n -- "$@"
  elif unshare -rn true 2>/dev/null; then
    unshare -rn -- "$@"
  else
    log "cannot create a network namespace (unshare -n / -rn)"
    return 1
  fi
}
offline_install() {
  command -v strace >/dev/null 2>&1 || {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends strace >&2 || true
    fi
  }
  command -v strace >/dev/null 2>&1 || { log "strace missing"; return 1; }
  rm -rf "$KR"
  no_net strace -f -qq -e trace=connect -o "$WORK/connect.log" \
    env -i HOME="$WORK/home" PATH="$BASE_PATH" KREW_ROOT="$KR" KREW_NO_UPGRADE_CHECK=1 \
    kubectl krew install --manifest="$DIST/rotate-certs.yaml" --archive="$DIST/$HOST_ARCHIVE" \
    > "$WORK/install.log" 2>&1
  local rc=$?
  [ $rc -eq 0 ] || { cat "$WORK/install.log" >&2; return 1; }
  grep "Installed plugin" "$WORK/install.log" >&2
  # connect() calls by any process of the install, by destination.
  local total outside
  total=$(grep -c 'connect(' "$WORK/connect.log")
  outside=$(grep 'connect(' "$WORK/connect.log" | grep -v 'AF_UNIX' |
    grep -v -e 'inet_addr("127\.' -e 'inet_pton(AF_INET6, "::1"' -c)
  log "connect() calls during install: $total total, $outside to non-loopback addresses (strace log: $WORK/connect.log)"
  [ "$outside" -eq 0 ] && [ -x "$KR/bin/$PLUGIN_BIN" ] || return 1

  # Controls, showing that both measurements can see a download:
  # (a) the same sandbox makes an install that has to download fail;
  if no_net env -i HOME="$WORK/home" PATH="$BASE_PATH" KREW_ROOT="$WORK/control-a" KREW_NO_UPGRADE_CHECK=1 \
    kubectl krew install --manifest="$WORK/loopback/rotate-certs.yaml" > "$WORK/control-a.log" 2>&1; then
    log "control (a): an install that downloads worked without network: the sandbox is not isolating"
    return 1
  fi
  log "control (a): a downloading install in the sandbox fails: $(grep -o 'connect: [a-z ]*' "$WORK/control-a.log" | head -n 1)"
  # (b) outside it, strace records that download's connect() to the loopback server.
  strace -f -qq -e trace=connect -o "$WORK/control-b.log" \
    env -i HOME="$WORK/home" PATH="$BASE_PATH" KREW_ROOT="$WORK/control-b" KREW_NO_UPGRADE_CHECK=1 \
    kubectl krew install --manifest="$WORK/loopback/rotate-certs.yaml" > /dev/null 2>&1 || return 1
  local seen
  seen=$(grep -c "inet_addr(\"127.0.0.1\")" "$WORK/control-b.log")
  log "control (b): strace saw $seen connect() to 127.0.0.1 for a downloading install"
  [ "$seen" -ge 1 ]
}
check offline-install offline_install

# Plugin lookup exactly as a user has it after installing krew: $KREW_ROOT/bin
# on PATH, nothing else providing kubectl-rotate_certs.
plugin_env() { env -i HOME="$WORK/home" PATH="$KR/bin:$BASE_PATH" KREW_ROOT="$KR" KREW_NO_UPGRADE_CHECK=1 "$@"; }
plugin_help() {
  local out
  out=$(plugin_env kubectl rotate-certs --help 2>&1) || { echo "$out" >&2; return 1; }
  head -n 4 <<< "$out" >&2
  grep -q "^Usage:" <<< "$out" && grep -qE "^  version +" <<< "$out" || return 1
  # How kubectl plugins should present themselves; not (yet) enforced.
  grep -q "kubectl rotate-certs" <<< "$out" ||
    log "WARNING: --help does not say \"kubectl rotate-certs\" (cobra Use/display name)"
}
check plugin-help plugin_help

plugin_version() {
  local got
  got=$(plugin_env kubectl rotate-certs version) || return 1
  log "kubectl rotate-certs version: $got (want $VERSION)"
  [ "$got" = "$VERSION" ] || return 1
  got=$(plugin_env kubectl rotate-certs --version) || return 1
  [ "$got" = "$VERSION" ]
}
check plugin-version plugin_version

# Shell completion: the archive's kubectl_complete-rotate_certs, installed by
# krew into its store and copied into krew's bin by the caveats' own command;
# it completes --service values, run directly and, with kubectl 1.26 or
# later (which runs kubectl_complete-<plugin> from PATH), through kubectl.
plugin_completion() {
  local cmd out minor
  cmd=$(grep -o 'cp "${KREW_ROOT:-$HOME/.krew}/store/rotate-certs/[^ ]*/kubectl_complete-rotate_certs" "${KREW_ROOT:-$HOME/.krew}/bin/"' "$DIST/rotate-certs.yaml")
  [ -n "$cmd" ] || { log "the caveats do not say how to install the completion script"; return 1; }
  plugin_env sh -c "$cmd" || return 1
  [ -x "$KR/bin/kubectl_complete-rotate_certs" ] || return 1
  out=$(plugin_env kubectl_complete-rotate_certs --service "" 2>/dev/null) || return 1
  grep -qx etcd <<< "$out" && grep -qx kube-proxy <<< "$out" && grep -qx ':4' <<< "$out" || { echo "$out" >&2; return 1; }
  minor=$(plugin_env kubectl version --client -o json 2>/dev/null | sed -n 's/.*"minor": *"\([0-9]*\).*/\1/p' | head -n 1)
  if [ "${minor:-0}" -ge 26 ]; then
    out=$(plugin_env kubectl __complete rotate-certs --service kube-a 2>/dev/null) || return 1
    log "kubectl 1.$minor completes 'kubectl rotate-certs --service kube-a': $(head -n 1 <<< "$out")"
    grep -qx kube-apiserver <<< "$out" || { echo "$out" >&2; return 1; }
  else
    log "kubectl 1.${minor:-?} predates plugin completion (1.26): only the script was checked"
  fi
  rm -f "$KR/bin/kubectl_complete-rotate_certs"
}
check plugin-completion plugin_completion

uninstall() {
  # `krew uninstall` insists on an initialized index, which an offline-only
  # KREW_ROOT never gets (`krew update` clones it from GitHub); krew only
  # checks that index/default is a git work tree, so an empty one does.
  git init -q "$KR/index/default" || return 1
  plugin_env kubectl krew uninstall rotate-certs >&2 || return 1
  [ ! -e "$KR/bin/$PLUGIN_BIN" ] && [ ! -e "$KR/store/rotate-certs" ] || return 1
  if plugin_env sh -c "command -v $PLUGIN_BIN" >/dev/null; then
    log "$PLUGIN_BIN still on PATH"
    return 1
  fi
  ! plugin_env kubectl rotate-certs version >/dev/null 2>&1
}
check uninstall uninstall

reproducible() {
  # Second build: the snapshot of the sources at another path, with a fresh
  # Go build cache. Version and epoch are passed in, as the copy has no .git.
  local src=$REPRO_SRC out=$WORK/repro/dist epoch cache
  epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
  cache=$(go env GOCACHE)
  if [ "${REPRO_FRESH_GOCACHE:-0}" != 0 ]; then
    cache=$WORK/repro/gocache
  fi
  log "second build in $src (GOCACHE=$cache)"
  (cd "$src" && GOCACHE=$cache VERSION=$VERSION SOURCE_DATE_EPOCH=$epoch DIST_DIR=$out hack/dist.sh) || return 1
  [ "$cache" = "$WORK/repro/gocache" ] && rm -rf "$cache"
  log "first build:  $(sha256sum < "$DIST/checksums.txt" | cut -c1-16)… of checksums.txt"
  log "second build: $(sha256sum < "$out/checksums.txt" | cut -c1-16)… of checksums.txt"
  diff "$DIST/checksums.txt" "$out/checksums.txt" >&2 || return 1
  cmp "$DIST/rotate-certs.yaml" "$out/rotate-certs.yaml" || return 1
  local f
  for f in $(awk '{ print $2 }' "$DIST/checksums.txt"); do
    cmp "$DIST/$f" "$out/$f" || return 1
  done
  [ "$(wc -l < "$out/checksums.txt")" -eq 6 ]
}
check reproducible reproducible
