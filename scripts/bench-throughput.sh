#!/usr/bin/env bash
# Throughput of rnet's overlay between two lab hosts, next to the same datapath built by hand
# (kernel VXLAN, sandbox bridge, veth: the Docker-overlay floor) and the raw underlay, all
# measured in this run with iperf3 (1 and 4 TCP streams), the paths taking turns round by
# round so that load on the machine falls on all of them alike. Prints a markdown section.
#
# Needs root and release binaries in target/release. Everything lives in namespaces this
# script makes (rnet lab + hb-* namespaces); nothing is configured in the root namespace.
set -euo pipefail
cd "$(dirname "$0")/.."

RNET=${RNET:-target/release/rnet}
SECS=${RNET_BENCH_SECS:-5}
ROUNDS=${RNET_BENCH_ROUNDS:-5}
LAB=bt$$
HB=hb$$
export PATH="$PWD/target/release:$PATH"

cleanup() {
    "$RNET" lab down --name "$LAB" >/dev/null 2>&1 || true
    for n in sw h1 h2 s1 s2 w1 w2; do ip netns del "$HB-$n" 2>/dev/null || true; done
}
trap cleanup EXIT

# iperf3 client JSON -> Gbit/s received.
gbps() { jq -r '.end.sum_received.bits_per_second / 1e9 | . * 100 | round / 100'; }

# median WORDS...: the median of numbers; spread WORDS...: "min–max".
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
spread() { printf '%s\n' "$@" | sort -g | awk 'NR==1 {lo=$1} {hi=$1} END {printf "%s–%s", lo, hi}'; }

# inns NS CMD...: run in a namespace under /run/netns.
inns() { local ns=$1; shift; nsenter --net="/run/netns/$ns" -- "$@"; }

# Wait until something listens on TCP 5201 at $2, seen from namespace path $1.
wait_port() {
    for _ in $(seq 100); do
        nsenter --net="$1" -- bash -c "exec 3<>/dev/tcp/$2/5201" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "iperf3 server at $2 did not come up" >&2
    return 1
}

# --- rnet -----------------------------------------------------------------------------------
"$RNET" lab up --hosts 2 --name "$LAB" >/dev/null
"$RNET" lab exec h1 --name "$LAB" -- rnet create tput --subnet 10.60.0.0/24 >/dev/null
"$RNET" lab exec h1 --name "$LAB" -- rnet run tput --name srv --ip 10.60.0.10 -- iperf3 -s >/dev/null 2>&1 &
server=$!
# The client runs as an rnet workload on h2; probe the server from it.
rnet_client() {
    "$RNET" lab exec h2 --name "$LAB" -- rnet run tput -- iperf3 -c 10.60.0.10 -t "$SECS" -J "$@" | gbps
}
for _ in $(seq 100); do
    "$RNET" lab exec h2 --name "$LAB" -- rnet run tput -- bash -c 'exec 3<>/dev/tcp/10.60.0.10/5201' 2>/dev/null && break
    sleep 0.1
done

# --- hand-built: the same datapath with ip commands -----------------------------------------
for n in sw h1 h2 s1 s2 w1 w2; do ip netns add "$HB-$n"; inns "$HB-$n" ip link set lo up; done
inns "$HB-sw" ip link add br0 type bridge
inns "$HB-sw" ip link set br0 up
for i in 1 2; do
    h=$HB-h$i s=$HB-s$i w=$HB-w$i
    inns "$h" ip link add ul0 type veth peer name p$i netns "$HB-sw"
    inns "$HB-sw" ip link set p$i master br0 up
    inns "$h" ip addr add 198.18.1.1$i/24 dev ul0
    inns "$h" ip link set ul0 up
    # VXLAN created in the host namespace (its socket binds there), moved into the sandbox.
    inns "$h" ip link add vx type vxlan id 42 local 198.18.1.1$i dstport 4789 nolearning proxy
    inns "$h" ip link set vx netns "$s"
    inns "$s" ip link add br0 type bridge
    inns "$s" ip link set br0 mtu 1450 up
    inns "$s" ip link set vx mtu 1450 master br0 up
    inns "$s" ip link add ve type veth peer name eth0 netns "$w"
    inns "$s" ip link set ve mtu 1450 master br0 up
    inns "$w" ip link set eth0 mtu 1450 address 02:52:0a:3d:00:1$i up
    inns "$w" ip addr add 10.61.0.1$i/24 dev eth0
done
for i in 1 2; do
    j=$((3 - i))
    inns "$HB-s$i" bridge fdb append 00:00:00:00:00:00 dev vx dst 198.18.1.1$j self permanent
    inns "$HB-s$i" bridge fdb replace 02:52:0a:3d:00:1$j dev vx dst 198.18.1.1$j self permanent
    inns "$HB-s$i" ip neigh replace 10.61.0.1$j lladdr 02:52:0a:3d:00:1$j dev vx nud permanent
done
hand() { # $1 server ns, $2 client ns, $3 server address, rest: iperf3 flags
    local sns=$1 cns=$2 addr=$3; shift 3
    # nsenter execs iperf3 in place, so $! is the server itself (a backgrounded shell
    # function would be a subshell, and killing it would leave the server running).
    nsenter --net="/run/netns/$sns" -- iperf3 -s >/dev/null 2>&1 &
    local srv=$!
    wait_port "/run/netns/$cns" "$addr"
    inns "$cns" iperf3 -c "$addr" -t "$SECS" -J "$@" | gbps
    kill "$srv" 2>/dev/null || true
    wait "$srv" 2>/dev/null || true
}
declare -A got
for _ in $(seq "$ROUNDS"); do
    got[rnet1]+="$(rnet_client) "
    got[hand1]+="$(hand "$HB-w1" "$HB-w2" 10.61.0.11) "
    got[raw1]+="$(hand "$HB-h1" "$HB-h2" 198.18.1.11) "
    got[rnet4]+="$(rnet_client -P 4) "
    got[hand4]+="$(hand "$HB-w1" "$HB-w2" 10.61.0.11 -P 4) "
    got[raw4]+="$(hand "$HB-h1" "$HB-h2" 198.18.1.11 -P 4) "
done
kill "$server" 2>/dev/null || true
wait "$server" 2>/dev/null || true
# shellcheck disable=SC2086 # splitting the collected figures into words is the point
{
    rnet1=$(median ${got[rnet1]}) rnet1_spread=$(spread ${got[rnet1]})
    hand1=$(median ${got[hand1]}) hand1_spread=$(spread ${got[hand1]})
    raw1=$(median ${got[raw1]}) raw1_spread=$(spread ${got[raw1]})
    rnet4=$(median ${got[rnet4]}) rnet4_spread=$(spread ${got[rnet4]})
    hand4=$(median ${got[hand4]}) hand4_spread=$(spread ${got[hand4]})
    raw4=$(median ${got[raw4]}) raw4_spread=$(spread ${got[raw4]})
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
cat <<EOF
### Throughput across two lab hosts (iperf3, median of ${ROUNDS} rounds of ${SECS} s, paths taking turns)

| path | 1 stream Gbit/s | 4 streams Gbit/s | spread min–max (1 / 4 streams) |
|---|---|---|---|
| rnet overlay (workload to workload, \`rnet run\` on two lab hosts) | $rnet1 | $rnet4 | $rnet1_spread / $rnet4_spread |
| hand-built kernel VXLAN, same datapath (veth, sandbox bridge, VXLAN, MTU 1450) | $hand1 | $hand4 | $hand1_spread / $hand4_spread |
| raw underlay (veth through the lab switch, MTU 1500) | $raw1 | $raw4 | $raw1_spread / $raw4_spread |

rnet over the hand-built path: $(ratio "$rnet1" "$hand1")x (1 stream), $(ratio "$rnet4" "$hand4")x (4 streams). Target ≥ 0.95.
Hand-built VXLAN over the raw underlay: $(ratio "$hand1" "$raw1")x (1 stream).
EOF
