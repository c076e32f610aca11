#!/usr/bin/env bash
# Builds the agent image ghcr.io/rotate-certs/kubectl-rotate-certs:<tag> for
# the Docker engine's architecture (linux), with the classic builder
# (DOCKER_BUILDKIT=0; FROM scratch needs no pull, so this works offline).
# <tag> is $VERSION with "+" turned into "-", as pkg/version.ImageTag does.
# The binary is built exactly as hack/dist.sh builds release binaries.
# Everything but the image reference goes to stderr; the last stdout line is
# the reference.
#
# Environment: VERSION (default hack/version.sh), IMAGE_REPO (default
# ghcr.io/rotate-certs/kubectl-rotate-certs).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=${VERSION:-$(hack/version.sh)}
export VERSION
IMAGE_REPO=${IMAGE_REPO:-ghcr.io/rotate-certs/kubectl-rotate-certs}
IMAGE=$IMAGE_REPO:${VERSION//+/-}
OUT=_output/image

if [ -f hack/ensure-docker.sh ]; then
  bash hack/ensure-docker.sh >&2
fi

arch=$(docker version --format '{{.Server.Arch}}' 2>/dev/null || go env GOARCH)
case "$arch" in
  amd64 | arm64) ;;
  *) echo "hack/build-image.sh: unsupported docker architecture '$arch'" >&2; exit 1 ;;
esac

PLATFORMS=linux/$arch DIST_DIR=$OUT/dist hack/dist.sh >&2
rm -rf "$OUT/context"
mkdir -p "$OUT/context"
cp "$OUT/dist/bin/linux_$arch/kubectl-rotate_certs" LICENSE "$OUT/context/"

DOCKER_BUILDKIT=0 docker build --build-arg VERSION="$VERSION" -f Dockerfile -t "$IMAGE" "$OUT/context" >&2
echo "hack/build-image.sh: built $IMAGE (linux/$arch)" >&2
echo "$IMAGE"
