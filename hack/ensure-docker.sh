#!/usr/bin/env bash
# ensure-docker.sh: make a Docker engine usable for kind on this machine. Idempotent and
# self-detecting; prints every change it makes.
#   1. installs docker.io and the host tools the node image build needs (apt) when missing;
#   2. starts dockerd in the background when no daemon answers (log: $DOCKERD_LOG);
#   3. probes `docker run --privileged` with a tiny locally made image; ONLY when that fails with
#      "unable to apply caps" (capability bounding set without CAP_SYS_RESOURCE) it installs the
#      wrapper OCI runtime hack/runc-drop-sys-resource as dockerd's default runtime, restarts
#      dockerd and probes again;
#   4. raises fs.inotify.max_user_instances (kind nodes each run systemd + kubelet) if allowed.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
WRAPPER_NAME=runc-drop-sys-resource
WRAPPER_PATH=/usr/local/bin/$WRAPPER_NAME
DAEMON_JSON=/etc/docker/daemon.json
# Host commands and the Debian packages that provide them: the engine, jq (used by the wrapper
# runtime), and what hack/build-node-image.sh needs (debootstrap; containerd and ctr to preload
# images into the node's store). Checked by command, so an engine installed otherwise (docker-ce,
# containerd.io) is left alone.
HOST_COMMANDS=(dockerd:docker.io containerd:containerd ctr:containerd runc:runc jq:jq
	debootstrap:debootstrap update-ca-certificates:ca-certificates xz:xz-utils flock:util-linux)

log() { echo "ensure-docker: $*" >&2; }
SUDO=""
if [[ $(id -u) != 0 ]]; then SUDO=sudo; fi

# --- 1. packages -----------------------------------------------------------------------------
missing=()
for cp in "${HOST_COMMANDS[@]}"; do
	c=${cp%%:*} p=${cp#*:}
	if ! command -v "$c" >/dev/null 2>&1 && [[ " ${missing[*]} " != *" $p "* ]]; then
		missing+=("$p")
	fi
done
if ((${#missing[@]})); then
	log "installing packages: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get update -qq >/dev/null
	$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
	log "host commands present: ${HOST_COMMANDS[*]%%:*}"
fi

# --- 2. daemon ---------------------------------------------------------------------------------
have_systemd() { [[ -d /run/systemd/system ]]; }
daemon_up() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }
wait_daemon() {
	for _ in $(seq 1 120); do
		daemon_up && return 0
		sleep 0.5
	done
	log "dockerd did not answer within 60s; last lines of $DOCKERD_LOG:"
	tail -n 30 "$DOCKERD_LOG" >&2 || true
	return 1
}
start_daemon() {
	if have_systemd; then
		log "starting docker.service"
		$SUDO systemctl start docker
	else
		log "starting dockerd in the background (log: $DOCKERD_LOG)"
		$SUDO mkdir -p "$(dirname "$DOCKERD_LOG")"
		# setsid: the daemon must not die with this shell's process group.
		$SUDO setsid dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
	fi
	wait_daemon
}
stop_daemon() {
	if have_systemd; then
		$SUDO systemctl stop docker
		return
	fi
	local pid
	pid=$(cat /var/run/docker.pid 2>/dev/null || true)
	if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
		log "stopping dockerd (pid $pid)"
		$SUDO kill "$pid"
		for _ in $(seq 1 60); do
			kill -0 "$pid" 2>/dev/null || return 0
			sleep 0.5
		done
		log "dockerd (pid $pid) did not stop"
		return 1
	fi
}
if daemon_up; then
	log "docker daemon answers (server $(docker version --format '{{.Server.Version}}'))"
else
	start_daemon
fi

# --- 3. privileged probe -------------------------------------------------------------------------
# A tiny image made here, from the host's own /usr/bin/true and the libraries it loads; tagged by
# the hash of its content.
probe_image() {
	local files tarball sum tag
	files=$( (
		echo /usr/bin/true
		ldd /usr/bin/true | grep -o '/[^ ]*'
	) | sort -u)
	tarball=$(mktemp)
	# shellcheck disable=SC2086
	tar --dereference --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$tarball" $files 2>/dev/null
	sum=$(sha256sum "$tarball" | cut -c1-12)
	tag="rotate-certs/cap-probe:$sum"
	if ! docker image inspect "$tag" >/dev/null 2>&1; then
		docker import "$tarball" "$tag" >/dev/null
	fi
	rm -f "$tarball"
	echo "$tag"
}
probe() { docker run --rm --privileged --network none "$PROBE_IMAGE" /usr/bin/true 2>&1; }

PROBE_IMAGE=$(probe_image)
if out=$(probe); then
	log "docker run --privileged works (probe image $PROBE_IMAGE); no runtime wrapper needed"
elif grep -q "unable to apply caps" <<<"$out"; then
	log "docker run --privileged fails: $(grep -o 'unable to apply caps[^"]*' <<<"$out" | head -1)"
	log "installing wrapper OCI runtime $WRAPPER_PATH as dockerd's default runtime"
	real_runc=$(command -v runc)
	sed "s|^REAL_RUNC=.*|REAL_RUNC=\${REAL_RUNC:-$real_runc}|" "$REPO_ROOT/hack/$WRAPPER_NAME" |
		$SUDO tee "$WRAPPER_PATH.new" >/dev/null
	$SUDO chmod 0755 "$WRAPPER_PATH.new"
	$SUDO mv -f "$WRAPPER_PATH.new" "$WRAPPER_PATH"
	log "installed $WRAPPER_PATH (real runc: $real_runc)"
	$SUDO mkdir -p "$(dirname "$DAEMON_JSON")"
	current='{}'
	[[ -s "$DAEMON_JSON" ]] && current=$(cat "$DAEMON_JSON")
	jq --arg n "$WRAPPER_NAME" --arg p "$WRAPPER_PATH" \
		'.runtimes[$n] = {"path": $p} | .["default-runtime"] = $n' <<<"$current" |
		$SUDO tee "$DAEMON_JSON.new" >/dev/null
	$SUDO mv -f "$DAEMON_JSON.new" "$DAEMON_JSON"
	log "wrote $DAEMON_JSON: $(jq -c . "$DAEMON_JSON")"
	stop_daemon
	start_daemon
	if ! out=$(probe); then
		log "docker run --privileged still fails with the wrapper runtime: $out"
		exit 1
	fi
	log "docker run --privileged works with $WRAPPER_NAME"
else
	log "docker run --privileged fails for another reason: $out"
	exit 1
fi

# --- 4. kernel limits ----------------------------------------------------------------------------
# kind's recommendation; a 4-node cluster used 81 inotify instances (the default is 128).
raise_sysctl() { # raise_sysctl KEY MIN
	local file=/proc/sys/${1//.//} cur
	cur=$(cat "$file" 2>/dev/null || echo 0)
	((cur >= $2)) && return 0
	if $SUDO sysctl -q -w "$1=$2" >/dev/null 2>&1; then
		log "raised $1 $cur -> $2"
	else
		log "WARNING: $1 is $cur and cannot be raised to $2 (several kind clusters at once may fail)"
	fi
}
raise_sysctl fs.inotify.max_user_instances 1024
raise_sysctl fs.inotify.max_user_watches 524288
log "done"
