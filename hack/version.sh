#!/usr/bin/env bash
# Prints the version of this build, always valid semver with a leading "v"
# (krew requires that for spec.version) and never containing "+" (so the
# version is also usable as-is for archive names; image tags map "+" anyway):
#
#   vX.Y.Z                          HEAD carries that tag and the tree is clean
#   <base>-dev.<n>.g<sha12>         any other commit
#   <base>-dev.<n>.g<sha12>.dirty   uncommitted (or untracked, unignored) changes
#   <base>-dev                      no git metadata at all (source tarball)
#
# <base> is the content of the VERSION file: the NEXT release, so every dev
# build sorts before it. <n> is the number of commits in HEAD's history, which
# makes successive dev builds of one branch sort in order (krew compares
# versions with semver precedence); the "g" keeps the sha identifier from ever
# being purely numeric (semver forbids leading zeros in numeric identifiers).
set -euo pipefail
cd "$(dirname "$0")/.."

semver_re='^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$'

base=$(tr -d ' \t\r\n' < VERSION)
if ! [[ $base =~ $semver_re ]]; then
  echo "hack/version.sh: VERSION file holds '$base', want vX.Y.Z" >&2
  exit 1
fi

version="$base-dev"
if git rev-parse --verify -q HEAD >/dev/null 2>&1; then
  dirty=""
  if [ -n "$(git status --porcelain 2>/dev/null)" ]; then
    dirty=".dirty"
  fi
  tag=""
  if [ -z "$dirty" ]; then
    # Newest-first by version, so a commit tagged both v1.0.0-rc.1 and v1.0.0
    # reports v1.0.0.
    for t in $(git tag --points-at HEAD --list 'v*' --sort=-v:refname); do
      if [[ $t =~ $semver_re ]]; then
        tag=$t
        break
      fi
    done
  fi
  if [ -n "$tag" ]; then
    version=$tag
  else
    n=$(git rev-list --count HEAD)
    sha=$(git rev-parse --short=12 HEAD)
    version="$base-dev.$n.g$sha$dirty"
  fi
fi

if ! [[ $version =~ $semver_re ]]; then
  echo "hack/version.sh: computed '$version', which is not valid semver" >&2
  exit 1
fi
echo "$version"
