#!/usr/bin/env bash
# Provision and start one node of the Vagrant lab: etcd on the first node, rnetd on every node.
# One script, two ways to run (see README.md):
#
#   provision.sh               VMs (VirtualBox, libvirt), run once as root by Vagrant's shell
#                              provisioner: installs the packages, builds rnet from /rnet, writes
#                              the config and starts etcd and rnetd as systemd services.
#   provision.sh --foreground  docker provider, the container's command: the image holds the
#                              packages and the built binaries are mounted at $RNET_BIN_DIR;
#                              writes the same config, then runs etcd and rnetd as the
#                              container's processes (their output is `vagrant docker-logs`).
#
# Both take the node's settings from the environment, which the Vagrantfile sets:
# RNET_NODE (host id), RNET_UNDERLAY (this node's address on the lab network), RNET_ETCD
# (node1's address), RNET_ETCD_NODE (yes on the node that runs etcd).
set -euo pipefail

die() {
    echo "provision.sh: $*" >&2
    exit 1
}

: "${RNET_NODE:?RNET_NODE is not set}" "${RNET_UNDERLAY:?RNET_UNDERLAY is not set}"
: "${RNET_ETCD:?RNET_ETCD is not set}" "${RNET_ETCD_NODE:?RNET_ETCD_NODE is not set}"
case ${1:-} in
    "") foreground=no ;;
    --foreground) foreground=yes ;;
    *) die "unknown argument '$1' (expected nothing or --foreground)" ;;
esac

# How long the foreground mode waits for the node's address and for etcd.
readonly WAIT_SECS=120

# VMs: Debian packages, and rnet built from the synced source tree.
install_from_source() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends build-essential curl ca-certificates \
        protobuf-compiler libprotobuf-dev iproute2 iputils-ping iperf3 etcd-client >/dev/null
    if [[ $RNET_ETCD_NODE == yes ]]; then
        apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
    fi
    # Rust from rustup (Debian 12's cargo is too old for rnet).
    if ! command -v cargo >/dev/null && [[ ! -x /root/.cargo/bin/cargo ]]; then
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    fi
    export PATH=/root/.cargo/bin:$PATH
    (cd /rnet && cargo build --release --bins)
    install -m 0755 /rnet/target/release/rnetd /rnet/target/release/rnet /usr/local/bin/
}

# Containers: the binaries the host built, mounted read-only; the image has the packages.
install_mounted() {
    local dir=${RNET_BIN_DIR:?RNET_BIN_DIR is not set (the mounted rnet binaries)} b
    for b in rnetd rnet; do
        [[ -x $dir/$b ]] || die "$dir/$b is missing: build rnet on the host first (cargo build --bins)"
        ln -sf "$dir/$b" "/usr/local/bin/$b"
    done
    if [[ $RNET_ETCD_NODE == yes ]]; then
        command -v etcd >/dev/null || die "etcd is not in the image (rebuild it: vagrant/docker-setup.sh)"
    fi
}

configure() {
    if [[ $RNET_ETCD_NODE == yes ]]; then
        cat >/etc/default/etcd <<CONF
ETCD_NAME=$RNET_NODE
ETCD_DATA_DIR=/var/lib/etcd/rnet
ETCD_LISTEN_CLIENT_URLS=http://$RNET_ETCD:2379,http://127.0.0.1:2379
ETCD_ADVERTISE_CLIENT_URLS=http://$RNET_ETCD:2379
CONF
    fi
    mkdir -p /etc/rnet /var/lib/rnet /run/rnet
    cat >/etc/rnet/rnetd.env <<CONF
RNET_HOST_ID=$RNET_NODE
RNET_UNDERLAY=$RNET_UNDERLAY
RNET_STORE=etcd://$RNET_ETCD:2379
CONF
}

start_systemd() {
    if [[ $RNET_ETCD_NODE == yes ]]; then
        systemctl restart etcd
    fi
    install -m 0644 /rnet/vagrant/rnetd.service /etc/systemd/system/rnetd.service
    systemctl daemon-reload
    systemctl enable --now rnetd
}

# Polls `check` every 100 ms until it succeeds; dies naming `what` after WAIT_SECS.
wait_for() {
    local what=$1 end=$((SECONDS + WAIT_SECS))
    shift
    until "$@" 2>/dev/null; do
        ((SECONDS < end)) || die "timed out after ${WAIT_SECS}s waiting for $what"
        sleep 0.1
    done
}

has_underlay() {
    [[ -n $(ip -o -4 addr show to "$RNET_UNDERLAY/32") ]]
}

etcd_answers() {
    # bash's /dev/tcp: a TCP connect, without needing etcdctl on every node.
    exec 3<>"/dev/tcp/$RNET_ETCD/2379" && exec 3>&-
}

# As PID 1 of a container: etcd (node1) and rnetd as children; the container stops when either
# exits, so a failure shows as a stopped machine and its log, not as a half-working node.
run_foreground() {
    local pids=()
    trap 'kill "${pids[@]}" 2>/dev/null; wait; exit 0' TERM INT
    wait_for "address $RNET_UNDERLAY on an interface" has_underlay
    if [[ $RNET_ETCD_NODE == yes ]]; then
        (set -a && . /etc/default/etcd && exec etcd) &
        pids+=($!)
    fi
    wait_for "etcd at $RNET_ETCD:2379" etcd_answers
    (set -a && . /etc/rnet/rnetd.env && exec rnetd) &
    pids+=($!)
    echo "provision.sh: $RNET_NODE up (underlay $RNET_UNDERLAY, etcd $RNET_ETCD)"
    local status=0
    wait -n "${pids[@]}" || status=$?
    echo "provision.sh: a daemon exited (status $status); stopping the node" >&2
    kill "${pids[@]}" 2>/dev/null || true
    wait || true
    exit "$status"
}

if [[ $foreground == yes ]]; then
    install_mounted
    configure
    run_foreground
else
    install_from_source
    configure
    start_systemd
fi
