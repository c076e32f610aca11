#!/usr/bin/env bash
# build-node-image.sh: provide a kind (v0.30.0) node image for Kubernetes v1.34.4 and print its
# reference as the LAST line of stdout (everything else goes to stderr).
#
#   1. Unless ROTATE_CERTS_OFFLINE=1, try the upstream node image (kind v0.30.0's default) with a
#      short timeout; if it can be pulled, use it.
#   2. Otherwise use the locally built image rotate-certs/kind-node:v1.34.4-<hash>, where <hash>
#      covers every build input (this script, hack/nodeimage/, versions). It is built only when
#      that tag is missing: Kubernetes, etcd, CoreDNS, crictl and pause from the Go module proxy,
#      a Debian bookworm rootfs from debootstrap, pod images preloaded into the node's containerd.
#   3. Also builds kind's HA load-balancer image (docker.io/kindest/haproxy:<kind's tag>) from
#      Debian's haproxy when it is missing or was built from other inputs.
#
# Environment:
#   ROTATE_CERTS_OFFLINE=1        never try to pull the upstream image
#   ROTATE_CERTS_FORCE_BUILD=1    rebuild even when the tagged image exists
#   ROTATE_CERTS_PULL_TIMEOUT     seconds for the upstream pull attempt (default 20)
#   DEBIAN_MIRROR                 default http://deb.debian.org/debian
#   NODEIMAGE_WORKDIR             default <repo>/_output/nodeimage
#   NODEIMAGE_CACHE               persistent download cache, default /var/cache/rotate-certs
#   NODEIMAGE_KEEP_OLD=1          keep rotate-certs/kind-node images of other inputs (removed
#                                 after a build by default, unless a container uses them)
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
INPUTS=$REPO_ROOT/hack/nodeimage

KUBE_VERSION=v1.34.4
KUBE_MAJOR=1
KUBE_MINOR=34
KIND_VERSION=v0.30.0
# kind v0.30.0's defaults (sigs.k8s.io/kind/pkg/apis/config/defaults and
# pkg/cluster/internal/loadbalancer): the upstream node image and the load-balancer image.
UPSTREAM_NODE_IMAGE="kindest/node:v1.34.0@sha256:7416a61b42b1662ca6ca89f02028ac133a309a2a30ba309614e8ec94d976dc5a"
HAPROXY_IMAGE="docker.io/kindest/haproxy:v20230606-42a2262b"
# Tags kubeadm v1.34.4 expects (`kubeadm config images list --kubernetes-version v1.34.4`).
ETCD_TAG=3.6.5-0
PAUSE_TAG=3.10.1
COREDNS_TAG=v1.12.1
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
NODE_PACKAGES=(
	systemd systemd-sysv dbus
	containerd runc containernetworking-plugins
	iptables nftables conntrack ethtool socat util-linux mount kmod iproute2
	libseccomp2 pigz bash ca-certificates curl jq procps openssl
)
# Package closures staged into images that are not the node (see stage_packages).
KUBE_PROXY_PACKAGES=(iptables conntrack)
HAPROXY_PACKAGES=(haproxy coreutils procps)

WORK=${NODEIMAGE_WORKDIR:-$REPO_ROOT/_output/nodeimage}
CACHE=${NODEIMAGE_CACHE:-/var/cache/rotate-certs}
export DOCKER_BUILDKIT=0

log() { echo "build-node-image: $*" >&2; }
STEP_NAME="" STEP_START=0 TOTAL_START=$SECONDS
step() {
	step_end
	STEP_NAME=$1 STEP_START=$SECONDS
	log "== $1"
}
step_end() {
	if [[ -n "$STEP_NAME" ]]; then
		log "== $STEP_NAME: $((SECONDS - STEP_START))s"
		STEP_NAME=""
	fi
}
image_label() { docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }

# Hash of every input: versions, package lists, this script, hack/nodeimage/ (Go modules with
# go.sum, configs). kind's node files are pinned by KIND_VERSION (module cache is checksummed).
inputs_hash() {
	{
		echo "$KUBE_VERSION $KIND_VERSION $ETCD_TAG $PAUSE_TAG $COREDNS_TAG $DEBIAN_SUITE"
		echo "${NODE_PACKAGES[*]} | ${KUBE_PROXY_PACKAGES[*]} | ${HAPROXY_PACKAGES[*]}"
		cd "$REPO_ROOT"
		find hack/build-node-image.sh hack/nodeimage -type f | LC_ALL=C sort | xargs sha256sum
	} | sha256sum | cut -c1-16
}

HASH=$(inputs_hash)
NODE_IMAGE="rotate-certs/kind-node:$KUBE_VERSION-$HASH"
LABEL=org.rotate-certs.inputs

# --- upstream ------------------------------------------------------------------------------------
if [[ "${ROTATE_CERTS_OFFLINE:-0}" != 1 ]]; then
	if docker image inspect "$UPSTREAM_NODE_IMAGE" >/dev/null 2>&1; then
		log "using upstream node image present locally: $UPSTREAM_NODE_IMAGE"
		echo "$UPSTREAM_NODE_IMAGE"
		exit 0
	fi
	log "trying to pull $UPSTREAM_NODE_IMAGE (timeout ${ROTATE_CERTS_PULL_TIMEOUT:-20}s; set ROTATE_CERTS_OFFLINE=1 to skip)"
	if timeout "${ROTATE_CERTS_PULL_TIMEOUT:-20}" docker pull -q "$UPSTREAM_NODE_IMAGE" >/dev/null 2>&1; then
		log "pulled upstream node image"
		echo "$UPSTREAM_NODE_IMAGE"
		exit 0
	fi
	log "upstream node image cannot be pulled; using the offline build"
fi

for c in docker go debootstrap jq containerd ctr chroot dpkg-deb ldconfig flock; do
	command -v "$c" >/dev/null || {
		log "missing command $c (hack/ensure-docker.sh installs the host packages)"
		exit 1
	}
done
# One build at a time on this machine (the intermediate pod images use docker-global
# registry.k8s.io/* tags); a run that waited finds the image cached afterwards.
exec 9>"${NODEIMAGE_LOCK:-/var/lock/rotate-certs-build-node-image.lock}"
flock 9

need_node=1 need_haproxy=1
if [[ "${ROTATE_CERTS_FORCE_BUILD:-0}" != 1 ]]; then
	[[ "$(image_label "$NODE_IMAGE" $LABEL)" == "$HASH" ]] && need_node=0
	[[ "$(image_label "$HAPROXY_IMAGE" $LABEL)" == "$HASH" ]] && need_haproxy=0
fi
if ((!need_node && !need_haproxy)); then
	log "cached: $NODE_IMAGE and $HAPROXY_IMAGE (inputs $HASH), nothing to build"
	echo "$NODE_IMAGE"
	exit 0
fi
log "building for inputs $HASH: node image $((need_node)), load-balancer image $((need_haproxy))"

BIN=$WORK/bin
ROOTFS=$WORK/rootfs
STAGE=$WORK/stage
mkdir -p "$WORK" "$BIN" "$CACHE/debootstrap"

# --- Go binaries ---------------------------------------------------------------------------------
build_go() {
	local dir=$1 ldflags=$2
	shift 2
	(cd "$INPUTS/$dir" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ldflags" -o "$BIN/" "$@")
}
if ((need_node)); then
	step "go build kubernetes $KUBE_VERSION (kubeadm kubelet kubectl kube-*)"
	vpkg=k8s.io/component-base/version
	build_go kubernetes "-X $vpkg.gitVersion=$KUBE_VERSION -X $vpkg.gitMajor=$KUBE_MAJOR -X $vpkg.gitMinor=$KUBE_MINOR -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z" \
		k8s.io/kubernetes/cmd/kubeadm k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubectl \
		k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy
	step "go build etcd, coredns, crictl, pause"
	build_go etcd "" .
	build_go coredns "" github.com/coredns/coredns
	build_go crictl "-X sigs.k8s.io/cri-tools/pkg/version.Version=v1.34.0" sigs.k8s.io/cri-tools/cmd/crictl
	build_go pause "" .
	"$BIN/kubeadm" version -o short >&2
fi

# --- rootfs --------------------------------------------------------------------------------------
in_root() { chroot "$ROOTFS" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }
step "debootstrap $DEBIAN_SUITE rootfs"
rm -rf "$ROOTFS" "$STAGE"
includes=$(
	IFS=,
	echo "${NODE_PACKAGES[*]}"
)
debootstrap --variant=minbase --include="$includes" --cache-dir="$CACHE/debootstrap" \
	"$DEBIAN_SUITE" "$ROOTFS" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
	{
		tail -n 30 "$WORK/debootstrap.log" >&2
		exit 1
	}

# Package closures for the kube-proxy and load-balancer images: resolved by the rootfs's apt,
# downloaded and unpacked with dpkg -x (no maintainer scripts, so alternatives are linked by hand).
# Packages that only serve maintainer scripts are left out.
stage_packages() {
	local dest=$1
	shift
	local debs=$WORK/debs pkgs
	mkdir -p "$dest" "$debs"
	pkgs=$(in_root apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
		--no-breaks --no-replaces --no-enhances "$@" | grep -E '^[a-z0-9]' |
		grep -vxE 'adduser|debconf|cdebconf|init-system-helpers|perl-base|lsb-base|dpkg|passwd|libpam.*|usr-is-merged|usrmerge|sysvinit-utils|systemd|install-info|tar|libdebconfclient0' |
		sort -u)
	rm -f "$ROOTFS"/tmp/*.deb
	# shellcheck disable=SC2086
	(cd "$ROOTFS/tmp" && in_root sh -c "cd /tmp && apt-get -q -o APT::Sandbox::User=root download $(echo $pkgs)" >/dev/null)
	for d in "$ROOTFS"/tmp/*.deb; do dpkg-deb -x "$d" "$dest"; done
	rm -f "$ROOTFS"/tmp/*.deb
	mkdir -p "$dest/etc/ld.so.conf.d" "$dest/tmp"
	chmod 1777 "$dest/tmp"
	printf '/usr/local/lib\n/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n' >"$dest/etc/ld.so.conf"
	ldconfig -r "$dest"
	rm -rf "$dest/usr/share/doc" "$dest/usr/share/man" "$dest/usr/share/info" "$dest/usr/share/locale"
}
step "stage package closures for the kube-proxy and load-balancer images"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
echo "deb $DEBIAN_MIRROR $DEBIAN_SUITE main" >"$ROOTFS/etc/apt/sources.list"
in_root apt-get -q update >/dev/null
if ((need_node)); then
	stage_packages "$STAGE/kube-proxy" "${KUBE_PROXY_PACKAGES[@]}"
	# What update-alternatives would do: iptables-nft (the mode kind's entrypoint detects here;
	# iptables-nft, iptables-nft-save ... are the package's own links to xtables-nft-multi).
	for t in iptables iptables-save iptables-restore; do
		ln -sf "${t/iptables/iptables-nft}" "$STAGE/kube-proxy/usr/sbin/$t"
		ln -sf "${t/iptables/ip6tables-nft}" "$STAGE/kube-proxy/usr/sbin/${t/iptables/ip6tables}"
	done
fi
if ((need_haproxy)); then
	stage_packages "$STAGE/haproxy" "${HAPROXY_PACKAGES[@]}"
fi
in_root apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/*

# --- load-balancer image -------------------------------------------------------------------------
build_dir() { # build_dir TAG DIR DOCKERFILE-TEXT
	printf '%s\n' "$3" >"$2/Dockerfile"
	local out
	if ! out=$(docker build -q -t "$1" "$2" 2>&1); then
		echo "$out" >&2
		return 1
	fi
	rm -f "$2/Dockerfile"
}
if ((need_haproxy)); then
	step "load-balancer image $HAPROXY_IMAGE"
	d=$STAGE/haproxy
	install -D -m 0644 "$INPUTS/haproxy-default.cfg" "$d/usr/local/etc/haproxy/haproxy.cfg"
	install -D -m 0644 "$INPUTS/haproxy-limits.cfg" "$d/etc/haproxy/00-rotate-certs-limits.cfg"
	rm -f "$d/etc/haproxy/haproxy.cfg"
	build_dir "$HAPROXY_IMAGE" "$d" "FROM scratch
COPY . /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL $LABEL=$HASH
STOPSIGNAL SIGUSR1
ENTRYPOINT [\"haproxy\", \"-W\", \"-db\", \"-f\", \"/etc/haproxy/00-rotate-certs-limits.cfg\", \"-f\", \"/usr/local/etc/haproxy/haproxy.cfg\"]"
fi

if ((need_node)); then
	# --- pod images ------------------------------------------------------------------------------
	step "pod images (registry.k8s.io/*) and preload into the node's containerd"
	PATHENV='ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
	simple_image() { # simple_image TAG BINARY DEST-PATH [ENTRYPOINT-JSON]
		local d=$STAGE/img-${2}
		mkdir -p "$d/tmp" "$d/$(dirname "$3")"
		chmod 1777 "$d/tmp"
		cp "$BIN/$2" "$d/$3"
		local ep=""
		[[ -n "${4:-}" ]] && ep="ENTRYPOINT $4"
		build_dir "$1" "$d" "FROM scratch
COPY . /
$PATHENV
$ep"
	}
	for c in kube-apiserver kube-controller-manager kube-scheduler; do
		simple_image "registry.k8s.io/$c:$KUBE_VERSION" "$c" "/usr/local/bin/$c" "[\"/usr/local/bin/$c\"]"
	done
	simple_image "registry.k8s.io/etcd:$ETCD_TAG" etcd /usr/local/bin/etcd
	simple_image "registry.k8s.io/pause:$PAUSE_TAG" pause /pause '["/pause"]'
	simple_image "registry.k8s.io/coredns/coredns:$COREDNS_TAG" coredns /coredns '["/coredns"]'
	cp "$BIN/kube-proxy" "$STAGE/kube-proxy/usr/local/bin/kube-proxy" 2>/dev/null ||
		install -D -m 0755 "$BIN/kube-proxy" "$STAGE/kube-proxy/usr/local/bin/kube-proxy"
	build_dir "registry.k8s.io/kube-proxy:$KUBE_VERSION" "$STAGE/kube-proxy" "FROM scratch
COPY . /
$PATHENV
ENTRYPOINT [\"/usr/local/bin/kube-proxy\"]"
	POD_IMAGES=(
		"registry.k8s.io/kube-apiserver:$KUBE_VERSION" "registry.k8s.io/kube-controller-manager:$KUBE_VERSION"
		"registry.k8s.io/kube-scheduler:$KUBE_VERSION" "registry.k8s.io/kube-proxy:$KUBE_VERSION"
		"registry.k8s.io/etcd:$ETCD_TAG" "registry.k8s.io/pause:$PAUSE_TAG" "registry.k8s.io/coredns/coredns:$COREDNS_TAG"
	)
	docker save -o "$WORK/pod-images.tar" "${POD_IMAGES[@]}"

	# A temporary containerd (the host's, same 1.6 release as the node's) on the rootfs's store.
	cstate=$(mktemp -d /run/rotate-certs-preload.XXXXXX)
	cat >"$cstate/config.toml" <<EOF
version = 2
root = "$ROOTFS/var/lib/containerd"
state = "$cstate/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$cstate/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$cstate/opt"
EOF
	containerd --config "$cstate/config.toml" >"$cstate/containerd.log" 2>&1 &
	cpid=$!
	for _ in $(seq 1 100); do
		[[ -S "$cstate/containerd.sock" ]] && break
		sleep 0.1
	done
	ctr -a "$cstate/containerd.sock" -n k8s.io images import --snapshotter overlayfs "$WORK/pod-images.tar" >/dev/null
	ctr -a "$cstate/containerd.sock" -n k8s.io images ls -q | grep -v '^sha256:' >&2
	kill "$cpid"
	wait "$cpid" || true
	rm -rf "$cstate" "$WORK/pod-images.tar"

	# --- node rootfs -----------------------------------------------------------------------------
	step "configure node rootfs"
	KIND_DIR=$(cd /tmp && go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | jq -r .Dir)
	F=$KIND_DIR/images/base/files
	install -m 0755 "$F"/usr/local/bin/* "$ROOTFS/usr/local/bin/"
	mkdir -p "$ROOTFS/kind/bin" "$ROOTFS/kind/manifests" "$ROOTFS/LICENSES" "$ROOTFS/etc/containerd" \
		"$ROOTFS/etc/systemd/system/kubelet.service.d" "$ROOTFS/etc/kubernetes/manifests" "$ROOTFS/opt/cni/bin"
	install -m 0644 "$F"/kind/README.txt "$ROOTFS/kind/"
	install -m 0755 "$F"/kind/bin/* "$ROOTFS/kind/bin/"
	install -m 0644 "$F"/LICENSES/* "$ROOTFS/LICENSES/"
	install -m 0644 "$F"/etc/crictl.yaml "$ROOTFS/etc/"
	install -m 0644 "$F"/etc/default/* "$ROOTFS/etc/default/"
	install -m 0644 "$F"/etc/sysctl.d/* "$ROOTFS/etc/sysctl.d/"
	install -m 0644 "$F"/etc/systemd/system/*.service "$F"/etc/systemd/system/*.slice "$ROOTFS/etc/systemd/system/"
	install -m 0644 "$F"/etc/systemd/system/kubelet.service.d/* "$ROOTFS/etc/systemd/system/kubelet.service.d/"
	install -m 0644 "$INPUTS/containerd-config.toml" "$ROOTFS/etc/containerd/config.toml"
	install -m 0644 "$INPUTS/manifests/default-storage.yaml" "$ROOTFS/kind/manifests/"
	# kind's base image generates the runtime spec with the node's own containerd.
	ctr oci spec | jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' |
		jq 'del(.process.rlimits)' >"$ROOTFS/etc/containerd/cri-base.json"
	# kind's units expect /usr/local/bin/containerd; Debian installs /usr/bin/containerd.
	ln -sf /usr/bin/containerd "$ROOTFS/usr/local/bin/containerd"
	for p in "$ROOTFS"/usr/lib/cni/*; do ln -sf "/usr/lib/cni/$(basename "$p")" "$ROOTFS/opt/cni/bin/"; done
	install -m 0755 "$BIN/kubeadm" "$BIN/kubelet" "$BIN/kubectl" "$ROOTFS/usr/bin/"
	install -m 0755 "$BIN/crictl" "$ROOTFS/usr/local/bin/"
	echo "$KUBE_VERSION" >"$ROOTFS/kind/version"
	printf '%s\n' "${POD_IMAGES[@]}" >"$ROOTFS/kind/images"
	# systemd in a container, as kind's base image sets it up
	find "$ROOTFS/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
	rm -f "$ROOTFS"/lib/systemd/system/multi-user.target.wants/* "$ROOTFS"/etc/systemd/system/*.wants/* \
		"$ROOTFS"/lib/systemd/system/local-fs.target.wants/* "$ROOTFS"/lib/systemd/system/sockets.target.wants/*udev* \
		"$ROOTFS"/lib/systemd/system/sockets.target.wants/*initctl* "$ROOTFS"/lib/systemd/system/basic.target.wants/*
	echo "ReadKMsg=no" >>"$ROOTFS/etc/systemd/journald.conf"
	in_root systemctl enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1
	in_root systemctl mask systemd-binfmt.service >/dev/null 2>&1
	rm -f "$ROOTFS/etc/machine-id" "$ROOTFS/etc/resolv.conf" "$ROOTFS/etc/hostname"
	touch "$ROOTFS/etc/machine-id"
	rm -rf "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
		"$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/log/*.log "$ROOTFS"/tmp/*

	# --- commit ----------------------------------------------------------------------------------
	step "commit node image $NODE_IMAGE"
	rootfs_tag="rotate-certs/kind-node-rootfs:$KUBE_VERSION-$HASH"
	tar -C "$ROOTFS" --numeric-owner --xattrs -cf - . | docker import - "$rootfs_tag" >/dev/null
	mkdir -p "$WORK/commit"
	build_dir "$NODE_IMAGE" "$WORK/commit" "FROM $rootfs_tag
ENV container=docker
LABEL $LABEL=$HASH
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT [\"/usr/local/bin/entrypoint\", \"/sbin/init\"]"
	docker rmi "$rootfs_tag" >/dev/null
	docker rmi "${POD_IMAGES[@]}" >/dev/null 2>&1 || true
fi

step "clean up work files and superseded images"
rm -rf "$ROOTFS" "$STAGE" "$WORK/debs" "$WORK/commit"
# Node images of other inputs and load-balancer images this build replaced. docker rmi
# without -f refuses images a container still uses, so running clusters keep theirs.
if [[ "${NODEIMAGE_KEEP_OLD:-0}" != 1 ]]; then
	for old in $(docker images --format '{{.Repository}}:{{.Tag}}' rotate-certs/kind-node); do
		[[ "$old" == "$NODE_IMAGE" ]] && continue
		if docker rmi "$old" >/dev/null 2>&1; then log "removed superseded $old"; fi
	done
	# load-balancer images this script built before, untagged when a build took over the tag
	for old in $(docker images -q --filter dangling=true --filter "label=$LABEL"); do
		if docker rmi "$old" >/dev/null 2>&1; then log "removed superseded image $old"; fi
	done
fi
step_end
log "done in $((SECONDS - TOTAL_START))s: $NODE_IMAGE ($(docker image inspect --format '{{.Size}}' "$NODE_IMAGE" 2>/dev/null | awk '{printf "%d MB", $1/1e6}'))"
echo "$NODE_IMAGE"
