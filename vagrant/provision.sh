#!/usr/bin/env bash
# Provision one node of the Vagrant lab: dependencies, rnet built from /rnet, etcd on the
# first node, rnetd as a systemd service on every node (started before Docker, if present).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

apt-get update -qq
apt-get install -y -qq --no-install-recommends build-essential curl ca-certificates \
    protobuf-compiler libprotobuf-dev iproute2 iputils-ping iperf3 etcd-client >/dev/null
if [[ $RNET_ETCD_NODE == yes ]]; then
    apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
    cat > /etc/default/etcd <<CONF
ETCD_NAME=node1
ETCD_DATA_DIR=/var/lib/etcd/rnet
ETCD_LISTEN_CLIENT_URLS=http://$RNET_ETCD:2379,http://127.0.0.1:2379
ETCD_ADVERTISE_CLIENT_URLS=http://$RNET_ETCD:2379
CONF
    systemctl restart etcd
fi

# Rust from rustup (Debian 12's cargo is too old for rnet).
if ! command -v cargo >/dev/null && [[ ! -x /root/.cargo/bin/cargo ]]; then
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi
export PATH=/root/.cargo/bin:$PATH
cd /rnet
cargo build --release --bins
install -m 0755 target/release/rnetd target/release/rnet /usr/local/bin/

install -m 0644 /rnet/vagrant/rnetd.service /etc/systemd/system/rnetd.service
mkdir -p /etc/rnet
cat > /etc/rnet/rnetd.env <<CONF
RNET_HOST_ID=$RNET_NODE
RNET_UNDERLAY=$RNET_UNDERLAY
RNET_STORE=etcd://$RNET_ETCD:2379
CONF
systemctl daemon-reload
systemctl enable --now rnetd
