#!/usr/bin/env bash
# What the Vagrant lab's docker provider needs before `vagrant up` creates a container; the
# Vagrantfile runs it (a trigger before `up`), and it can be run by hand:
#
#   vagrant/docker-setup.sh NETWORK SUBNET      # e.g. rnet-vagrant 198.18.56.0/24
#
# 1. The image: a minimal Debian 12 (bookworm) root file system with what a node runs besides
#    rnet (etcd, iproute2, ping, ps), made with mmdebstrap from the Debian archive and loaded
#    with `docker import`. No container registry is involved. The tarball is cached under
#    $RNET_VAGRANT_CACHE (default /var/cache/rnet/vagrant), named after a hash of the package
#    list, so a changed list builds a new one.
# 2. The lab network: a Docker bridge network NETWORK on SUBNET, the nodes' underlay. The
#    containers join it when created (`docker run --network`): Vagrant's own private_network
#    connects them only after they start, which an engine without a default bridge
#    (dockerd --bridge=none) does not wire up.
#
# Everything goes into whichever engine the docker CLI talks to ($DOCKER_HOST) and what exists
# already is left alone. Several machines come up in parallel, so the whole script holds a lock.
set -euo pipefail

readonly IMAGE=${RNET_VAGRANT_IMAGE:-rnet-vagrant:bookworm}
readonly CACHE=${RNET_VAGRANT_CACHE:-/var/cache/rnet/vagrant}
readonly SUITE=bookworm
readonly PACKAGES=iproute2,iputils-ping,procps,etcd-server,libnftnl11
# The Debian 12 docker CLI: a newer client earlier on PATH may not speak to Debian's engine.
DOCKER=$(command -v /usr/bin/docker || command -v docker)
readonly DOCKER

die() {
    echo "docker-setup.sh: $*" >&2
    exit 1
}

[[ -n $DOCKER ]] || die "the docker CLI is missing (apt-get install docker.io)"

[[ $# -eq 2 ]] || die "usage: docker-setup.sh NETWORK SUBNET (e.g. rnet-vagrant 198.18.56.0/24)"
readonly NETWORK=$1 SUBNET=$2
[[ $SUBNET =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+/[0-9]+$ ]] || die "'$SUBNET' is not an IPv4 subnet (A.B.C.D/N)"

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9

ensure_network() {
    if "$DOCKER" network inspect "$NETWORK" >/dev/null 2>&1; then
        local have
        have=$("$DOCKER" network inspect -f '{{range .IPAM.Config}}{{.Subnet}}{{end}}' "$NETWORK")
        [[ $have == "$SUBNET" ]] || die "network $NETWORK exists with subnet $have, not $SUBNET"
        return
    fi
    "$DOCKER" network create --driver bridge --subnet "$SUBNET" "$NETWORK" >/dev/null
    echo "docker-setup.sh: created network $NETWORK ($SUBNET)"
}

if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
    ensure_network
    exit 0
fi

key=$(printf '%s %s v1' "$SUITE" "$PACKAGES" | sha256sum | cut -c1-16)
tarball="$CACHE/$SUITE-$key.tar"
if [[ ! -s $tarball ]]; then
    command -v mmdebstrap >/dev/null || die "mmdebstrap is missing (apt-get install mmdebstrap)"
    [[ $(id -u) -eq 0 ]] || die "building $tarball needs root (mmdebstrap --mode=root)"
    echo "docker-setup.sh: building $tarball (once; takes a minute or two)"
    # Written under a temporary name and renamed, so an interrupted build is never reused.
    partial="$tarball.partial.$$"
    trap 'rm -f "$partial"' EXIT
    # Docs, man pages and locales are of no use in a lab node and make up a good part of it.
    mmdebstrap --quiet --mode=root --variant=minbase --include="$PACKAGES" \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --format=tar "$SUITE" "$partial"
    mv "$partial" "$tarball"
    trap - EXIT
fi
"$DOCKER" import --change 'CMD ["/bin/bash"]' "$tarball" "$IMAGE" >/dev/null
echo "docker-setup.sh: imported $IMAGE from $tarball"
