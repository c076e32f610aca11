#!/usr/bin/env bash
# build-node-image.sh: provide a kind node image for Kubernetes $KUBE_VERSION (default v1.37.2)
# and print its reference as the LAST line of stdout (everything else goes to stderr).
#
#   KUBE_VERSION=v1.35.4 hack/build-node-image.sh
#
#   1. Unless ROTATE_CERTS_OFFLINE=1, try the upstream node image kindest/node:$KUBE_VERSION (with
#      the digest kind pins when it is kind's default) with a short timeout; if it can be pulled,
#      use it.
#   2. Otherwise use the locally built image rotate-certs/kind-node:$KUBE_VERSION-<hash>, where
#      <hash> covers every build input of that version (this script, the version's Go modules under
#      hack/nodeimage/, configs, package lists). It is built only when that tag is missing:
#      Kubernetes, etcd, CoreDNS, crictl and pause from the Go module proxy, a Debian bookworm
#      rootfs from debootstrap, pod images preloaded into the node's containerd. Images of several
#      Kubernetes versions coexist; only superseded images of the SAME version are removed.
#   3. Makes sure kind's HA load-balancer image exists (kind >= v0.32: docker.io/envoyproxy/envoy,
#      a constant in kind): it is pulled if possible; otherwise the offline stand-in
#      hack/kind-lb-standin is built under that tag (FROM scratch, labelled as a stand-in, cached
#      by the hash of its binary and package closure).
#
# Everything of a version is derived from its kubeadm: hack/nodeimage/kubernetes/$KUBE_VERSION/
# images.txt is `kubeadm config images list` (written by hack/gen-nodeimage-modules.sh, which also
# generates the etcd, CoreDNS and crictl modules it names) and the build checks that the kubeadm it
# built still lists exactly those images. A new Kubernetes version is
# `hack/gen-nodeimage-modules.sh vX.Y.Z` plus a commit.
#
# Environment:
#   KUBE_VERSION                  Kubernetes release (default v1.37.2)
#   ROTATE_CERTS_OFFLINE=1        never try to pull upstream images
#   ROTATE_CERTS_FORCE_BUILD=1    rebuild even when the tagged images exist
#   ROTATE_CERTS_PULL_TIMEOUT     seconds for each upstream pull attempt (default 20)
#   DEBIAN_MIRROR                 default http://deb.debian.org/debian
#   NODEIMAGE_WORKDIR             default <repo>/_output/nodeimage-$KUBE_VERSION
#   NODEIMAGE_CACHE               persistent download cache, default /var/cache/rotate-certs
#   NODEIMAGE_KEEP_OLD=1          keep rotate-certs/kind-node:$KUBE_VERSION-* images of other inputs
#                                 (removed after a build by default, unless a container uses them)
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
INPUTS=$REPO_ROOT/hack/nodeimage

KUBE_VERSION=${KUBE_VERSION:-v1.37.2}
if [[ ! "$KUBE_VERSION" =~ ^v1\.([0-9]+)\.[0-9]+$ ]]; then
	echo "build-node-image: KUBE_VERSION=$KUBE_VERSION is not a Kubernetes release vX.Y.Z" >&2
	exit 2
fi
KUBE_MAJOR=1
KUBE_MINOR=${BASH_REMATCH[1]}
KDIR=$INPUTS/kubernetes/$KUBE_VERSION
if [[ ! -f "$KDIR/images.txt" ]]; then
	echo "build-node-image: no modules for $KUBE_VERSION in $KDIR; generate them with hack/gen-nodeimage-modules.sh $KUBE_VERSION" >&2
	exit 2
fi
# The tags this kubeadm expects, and the crictl release (images.txt).
image_tag() { awk -F: -v r="$1" '$1 == r { print $2 }' "$KDIR/images.txt"; }
ETCD_TAG=$(image_tag registry.k8s.io/etcd)
PAUSE_TAG=$(image_tag registry.k8s.io/pause)
COREDNS_TAG=$(image_tag registry.k8s.io/coredns/coredns)
CRICTL_VERSION=$(awk '$1 == "crictl" { print $2 }' "$KDIR/images.txt")
EDIR=$INPUTS/etcd/v${ETCD_TAG%-*}
CDIR=$INPUTS/coredns/$COREDNS_TAG
XDIR=$INPUTS/crictl/$CRICTL_VERSION
for d in "$EDIR" "$CDIR" "$XDIR"; do
	[[ -f "$d/go.sum" ]] || {
		echo "build-node-image: missing $d; run hack/gen-nodeimage-modules.sh $KUBE_VERSION" >&2
		exit 2
	}
done
# The node's kind files come from the kind module the e2e harness uses (go.mod).
KIND_VERSION=$(awk '$1 == "sigs.k8s.io/kind" { print $2 }' "$REPO_ROOT/go.mod")
# kind's load-balancer image (sigs.k8s.io/kind pkg/cluster/internal/loadbalancer, a constant) and
# its default node image (pkg/apis/config/defaults), read from the module itself.
KIND_DIR=$(cd /tmp && go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | jq -r .Dir)
LB_IMAGE=$(sed -n 's/^const Image = "\(.*\)"$/\1/p' "$KIND_DIR/pkg/cluster/internal/loadbalancer/const.go")
KIND_DEFAULT_NODE=$(sed -n 's/^const Image = "\(.*\)"$/\1/p' "$KIND_DIR/pkg/apis/config/defaults/image.go")
[[ "$LB_IMAGE" == *envoy* && -n "$KIND_DEFAULT_NODE" ]] || {
	echo "build-node-image: kind $KIND_VERSION: load balancer image '$LB_IMAGE' is not envoy (this script builds envoy's stand-in)" >&2
	exit 1
}
UPSTREAM_NODE_IMAGE=kindest/node:$KUBE_VERSION
[[ "${KIND_DEFAULT_NODE%@*}" == "$UPSTREAM_NODE_IMAGE" ]] && UPSTREAM_NODE_IMAGE=$KIND_DEFAULT_NODE

DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
NODE_PACKAGES=(
	systemd systemd-sysv dbus
	containerd runc containernetworking-plugins
	iptables nftables conntrack ethtool socat util-linux mount kmod iproute2
	libseccomp2 pigz bash ca-certificates curl jq procps openssl
	# recover --ssh is tested against the nodes' own sshd: installed, masked and
	# without host keys; the e2e test gives each node its own and starts it.
	openssh-server
)
# Package closures staged into images that are not the node (see stage_packages).
KUBE_PROXY_PACKAGES=(iptables conntrack)
# What kind runs inside the load-balancer container besides envoy: bash -c with mkdir, echo and
# sleep (its bootstrap command), sh -c with chmod and mv, cp /dev/stdin (nodeutils.WriteFile).
LB_PACKAGES=(bash dash coreutils)

WORK=${NODEIMAGE_WORKDIR:-$REPO_ROOT/_output/nodeimage-$KUBE_VERSION}
CACHE=${NODEIMAGE_CACHE:-/var/cache/rotate-certs}
export DOCKER_BUILDKIT=0

log() { echo "build-node-image[$KUBE_VERSION]: $*" >&2; }
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
image_label() { # image_label IMAGE KEY: the label's value, empty if the image or label is missing
	docker image inspect "$1" 2>/dev/null | jq -r --arg k "$2" '.[0].Config.Labels // {} | .[$k] // empty' || true
}
LABEL=org.rotate-certs.inputs
STANDIN_LABEL=org.rotate-certs.stand-in

# Hash of every input of this version's node image: versions, package lists, this script's recipe, the
# shared files under hack/nodeimage/ and this version's modules (with go.sum). kind's node files
# are pinned by KIND_VERSION (the module cache is checksummed).
inputs_hash() {
	(
		cd "$REPO_ROOT"
		echo "$KUBE_VERSION $KIND_VERSION $ETCD_TAG $PAUSE_TAG $COREDNS_TAG $CRICTL_VERSION $DEBIAN_SUITE"
		echo "${NODE_PACKAGES[*]} | ${KUBE_PROXY_PACKAGES[*]}"
		# the recipe part of this script (from "# --- Go binaries" on), less the load-balancer
		# section (the stand-in has its own hash); what comes before it only derives the values
		# hashed above and decides whether to build
		sed -n '/^# --- Go binaries/,$p' hack/build-node-image.sh |
			sed '/^# --- load-balancer image/,/^# --- end of load-balancer image/d' | sha256sum
		{
			find hack/nodeimage -maxdepth 1 -type f
			find hack/nodeimage/pause hack/nodeimage/manifests "${KDIR#"$REPO_ROOT"/}" "${EDIR#"$REPO_ROOT"/}" \
				"${CDIR#"$REPO_ROOT"/}" "${XDIR#"$REPO_ROOT"/}" -type f
		} | LC_ALL=C sort | xargs sha256sum
	) | sha256sum | cut -c1-16
}

HASH=$(inputs_hash)
NODE_IMAGE="rotate-certs/kind-node:$KUBE_VERSION-$HASH"

# --- upstream images -----------------------------------------------------------------------------
try_pull() { # try_pull IMAGE: present locally or pulled within the timeout
	docker image inspect "$1" >/dev/null 2>&1 && return 0
	[[ "${ROTATE_CERTS_OFFLINE:-0}" == 1 ]] && return 1
	log "trying to pull $1 (timeout ${ROTATE_CERTS_PULL_TIMEOUT:-20}s; set ROTATE_CERTS_OFFLINE=1 to skip)"
	timeout "${ROTATE_CERTS_PULL_TIMEOUT:-20}" docker pull -q "$1" >/dev/null 2>&1
}
# The load balancer: the real image when it is here or can be pulled. A stand-in built before
# carries STANDIN_LABEL and does not count as the real image.
need_lb=1
if [[ -n "$(image_label "$LB_IMAGE" "$STANDIN_LABEL")" ]]; then
	log "$LB_IMAGE here is the project's stand-in; checking whether it is current"
elif try_pull "$LB_IMAGE"; then
	log "using the real load-balancer image $LB_IMAGE"
	need_lb=0
else
	log "$LB_IMAGE cannot be pulled; the offline stand-in (hack/kind-lb-standin) will be used"
fi

node_from_upstream=0
if [[ "${ROTATE_CERTS_OFFLINE:-0}" != 1 ]] && try_pull "$UPSTREAM_NODE_IMAGE"; then
	log "using upstream node image $UPSTREAM_NODE_IMAGE"
	NODE_IMAGE=$UPSTREAM_NODE_IMAGE
	node_from_upstream=1
elif [[ "${ROTATE_CERTS_OFFLINE:-0}" != 1 ]]; then
	log "upstream node image $UPSTREAM_NODE_IMAGE cannot be pulled; using the offline build"
fi

for c in docker go debootstrap jq containerd ctr chroot dpkg-deb ldconfig flock; do
	command -v "$c" >/dev/null || {
		log "missing command $c (hack/ensure-docker.sh installs the host packages)"
		exit 1
	}
done
cached_lb() { [[ "${ROTATE_CERTS_FORCE_BUILD:-0}" != 1 && "$(image_label "$LB_IMAGE" $LABEL)" == "$LB_HASH" ]]; }
# The stand-in is cached by what goes into it: its static binary (built reproducibly) and the
# package list. Building the binary takes seconds when the Go build cache is warm.
BIN=$WORK/bin
mkdir -p "$WORK" "$BIN" "$CACHE/debootstrap"
LB_HASH=""
if ((need_lb)); then
	(cd "$REPO_ROOT" && CGO_ENABLED=0 GOFLAGS='' go build -trimpath -buildvcs=false -ldflags "-s -w -buildid=" \
		-o "$BIN/kind-lb-standin" ./hack/kind-lb-standin)
	LB_HASH=$({
		sha256sum <"$BIN/kind-lb-standin"
		echo "${LB_PACKAGES[*]} $DEBIAN_SUITE"
		sed -n '/^# --- load-balancer image/,/^# --- end of load-balancer image/p' "${BASH_SOURCE[0]}"
	} | sha256sum | cut -c1-16)
	if cached_lb; then
		need_lb=0
		log "cached: load-balancer stand-in $LB_IMAGE (inputs $LB_HASH)"
	fi
fi
cached_node() { ((node_from_upstream)) || [[ "${ROTATE_CERTS_FORCE_BUILD:-0}" != 1 && "$(image_label "$NODE_IMAGE" $LABEL)" == "$HASH" ]]; }
need_node=1
cached_node && need_node=0
if ((!need_node && !need_lb)); then
	log "cached: $NODE_IMAGE (inputs $HASH), nothing to build"
	echo "$NODE_IMAGE"
	exit 0
fi
# One build at a time on this machine (the intermediate pod images use docker-global
# registry.k8s.io/* tags, and the load-balancer stand-in is shared); a run that waited checks
# the cache again.
exec 9>"${NODEIMAGE_LOCK:-/var/lock/rotate-certs-build-node-image.lock}"
if ! flock -n 9; then
	log "waiting for another build on this machine"
	flock 9
	cached_node && need_node=0
	((need_lb)) && cached_lb && need_lb=0
	if ((!need_node && !need_lb)); then
		log "built meanwhile: $NODE_IMAGE"
		echo "$NODE_IMAGE"
		exit 0
	fi
fi
log "building for inputs $HASH: node image $((need_node)), load-balancer stand-in $((need_lb))"
log "kubeadm $KUBE_VERSION lists etcd $ETCD_TAG, pause $PAUSE_TAG, coredns $COREDNS_TAG; crictl $CRICTL_VERSION; kind $KIND_VERSION"

ROOTFS=$WORK/rootfs
STAGE=$WORK/stage

# --- Go binaries ---------------------------------------------------------------------------------
build_go() {
	local dir=$1 ldflags=$2
	shift 2
	(cd "$dir" && CGO_ENABLED=0 GOFLAGS='' go build -trimpath -ldflags "-s -w $ldflags" -o "$BIN/" "$@")
}
if ((need_node)); then
	step "go build kubernetes $KUBE_VERSION (kubeadm kubelet kubectl kube-*)"
	vpkg=k8s.io/component-base/version
	build_go "$KDIR" "-X $vpkg.gitVersion=$KUBE_VERSION -X $vpkg.gitMajor=$KUBE_MAJOR -X $vpkg.gitMinor=$KUBE_MINOR -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z" \
		k8s.io/kubernetes/cmd/kubeadm k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubectl \
		k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy
	"$BIN/kubeadm" version -o short >&2
	# The image list this build was generated for must still be the one this kubeadm gives.
	if ! diff <(grep -v -e '^#' -e '^crictl ' "$KDIR/images.txt") \
		<("$BIN/kubeadm" config images list --kubernetes-version "$KUBE_VERSION" 2>/dev/null) >&2; then
		log "kubeadm's image list differs from $KDIR/images.txt; rerun hack/gen-nodeimage-modules.sh $KUBE_VERSION"
		exit 1
	fi
	step "go build etcd ${ETCD_TAG%-*}, coredns $COREDNS_TAG, crictl $CRICTL_VERSION, pause"
	build_go "$EDIR" "" .
	build_go "$CDIR" "" github.com/coredns/coredns
	build_go "$XDIR" "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" sigs.k8s.io/cri-tools/cmd/crictl
	build_go "$INPUTS/pause" "" .
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
	local pkgs
	mkdir -p "$dest"
	pkgs=$(in_root apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
		--no-breaks --no-replaces --no-enhances "$@" | grep -E '^[a-z0-9]' |
		grep -vxE 'adduser|debconf|cdebconf|init-system-helpers|perl-base|lsb-base|dpkg|passwd|libpam.*|usr-is-merged|usrmerge|sysvinit-utils|systemd|install-info|tar|libdebconfclient0' |
		sort -u)
	rm -f "$ROOTFS"/tmp/*.deb
	(cd "$ROOTFS/tmp" && in_root sh -c "cd /tmp && apt-get -q -o APT::Sandbox::User=root download ${pkgs//$'\n'/ }" >/dev/null)
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
if ((need_lb)); then
	stage_packages "$STAGE/lb" "${LB_PACKAGES[@]}"
fi
in_root apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/*

build_dir() { # build_dir TAG DIR DOCKERFILE-TEXT
	printf '%s\n' "$3" >"$2/Dockerfile"
	local out
	if ! out=$(docker build -q -t "$1" "$2" 2>&1); then
		echo "$out" >&2
		return 1
	fi
	rm -f "$2/Dockerfile"
}

# --- load-balancer image -------------------------------------------------------------------------
# The stand-in under the tag kind runs (only reached when the real image cannot be pulled). kind
# starts it as `bash -c '... while true; do envoy -c /home/envoy/envoy.yaml && break; sleep 1; done'`
# (so no ENTRYPOINT), and envoy's default stop signal is SIGTERM.
if ((need_lb)); then
	step "load-balancer stand-in $LB_IMAGE"
	d=$STAGE/lb
	install -D -m 0755 "$BIN/kind-lb-standin" "$d/usr/local/bin/kind-lb-standin"
	ln -sf kind-lb-standin "$d/usr/local/bin/envoy"
	ln -sf dash "$d/bin/sh" 2>/dev/null || ln -sf dash "$d/usr/bin/sh"
	mkdir -p "$d/home/envoy"
	build_dir "$LB_IMAGE" "$d" "FROM scratch
COPY . /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL $LABEL=$LB_HASH
LABEL $STANDIN_LABEL=\"hack/kind-lb-standin: offline stand-in for $LB_IMAGE, implementing only what kind drives\"
STOPSIGNAL SIGTERM
CMD [\"envoy\", \"-c\", \"/etc/envoy/envoy.yaml\"]"
fi
# --- end of load-balancer image ------------------------------------------------------------------

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
	install -D -m 0755 "$BIN/kube-proxy" "$STAGE/kube-proxy/usr/local/bin/kube-proxy"
	build_dir "registry.k8s.io/kube-proxy:$KUBE_VERSION" "$STAGE/kube-proxy" "FROM scratch
COPY . /
$PATHENV
ENTRYPOINT [\"/usr/local/bin/kube-proxy\"]"
	mapfile -t POD_IMAGES < <(grep -v -e '^#' -e '^crictl ' "$KDIR/images.txt")
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
	sed "s|@PAUSE_IMAGE@|registry.k8s.io/pause:$PAUSE_TAG|" "$INPUTS/containerd-config.toml" >"$ROOTFS/etc/containerd/config.toml"
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
	in_root systemctl mask ssh.service ssh.socket >/dev/null 2>&1
	rm -f "$ROOTFS"/etc/ssh/ssh_host_*
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
rm -rf "$ROOTFS" "$STAGE" "$WORK/commit"
# Node images of this Kubernetes version built from other inputs, and stand-ins this build
# replaced. docker rmi without -f refuses images a container still uses, so running clusters keep
# theirs. Images of other Kubernetes versions are never touched.
if [[ "${NODEIMAGE_KEEP_OLD:-0}" != 1 ]]; then
	for old in $(docker images --format '{{.Repository}}:{{.Tag}}' rotate-certs/kind-node); do
		[[ "$old" == "rotate-certs/kind-node:$KUBE_VERSION-"* && "$old" != "$NODE_IMAGE" ]] || continue
		if docker rmi "$old" >/dev/null 2>&1; then log "removed superseded $old"; fi
	done
	# stand-ins this script built before, untagged when a build took over the tag
	for old in $(docker images -q --filter dangling=true --filter "label=$STANDIN_LABEL"); do
		if docker rmi "$old" >/dev/null 2>&1; then log "removed superseded image $old"; fi
	done
fi
step_end
log "done in $((SECONDS - TOTAL_START))s: $NODE_IMAGE ($(docker image inspect --format '{{.Size}}' "$NODE_IMAGE" 2>/dev/null | awk '{printf "%d MB", $1/1e6}'))"
echo "$NODE_IMAGE"
