#!/usr/bin/env bash
# Encrypted overlay throughput between two simulated hosts: rnet's WireGuard path next to the
# same VXLAN datapath carried inside a userspace WireGuard tunnel (wireguard-go, boringtun-cli)
# and plain kernel VXLAN, all built in this run and measured with iperf3 (1 and 4 TCP streams),
# round-robin over the paths for several rounds (median and min–max reported). Prints a
# markdown section.
#
# Needs root and release binaries (RNET, default target/release/rnet; rnetd beside it).
# Installs wireguard-go and wireguard-tools (apt) and boringtun-cli (cargo, into
# target/bench-tools) when they are missing; the kernel WireGuard module is not used.
# Everything lives in namespaces this script makes (an rnet lab + bw<pid>-* namespaces);
# nothing is configured in the root namespace. Every process it starts is killed on exit.
#
# Knobs: RNET_BENCH_SECS (seconds per iperf3 run, default 5), RNET_BENCH_ROUNDS (default 3),
# RNET_BENCH_PATHS (the paths to set up and measure, default "rnet c wggo bt"; e.g. "rnet" when
# comparing two rnet builds: the others are then reported n/a and not built).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh

RNET=${RNET:-target/release/rnet}
SECS=${RNET_BENCH_SECS:-5}
ROUNDS=${RNET_BENCH_ROUNDS:-3}
read -ra WANT <<<"${RNET_BENCH_PATHS:-rnet c wggo bt}"
TOOLS=$PWD/target/bench-tools
BORINGTUN=${BORINGTUN:-$TOOLS/bin/boringtun-cli}
ID=$$
LAB=bw$ID
P=bw$ID # namespace prefix: $P-sw, $P-<path>-{h,s,w}{1,2}
RNET_ABS=$(cd "$(dirname "$RNET")" && pwd)/$(basename "$RNET")
PATH="$(dirname "$RNET_ABS"):$PATH"
export PATH

TMP=$(mktemp -d)
pids=()    # every long-running process this script started (servers, WireGuard daemons)
wgifs=()   # userspace WireGuard interfaces (their UAPI sockets live in /var/run/wireguard)
nss=()     # namespaces made here

cleanup() {
    stop_pids "${pids[@]}"
    "$RNET_ABS" lab down --name "$LAB" >/dev/null 2>&1 || true
    for n in "${nss[@]}"; do ip netns del "$n" 2>/dev/null || true; done
    for i in "${wgifs[@]}"; do rm -f "/var/run/wireguard/$i.sock"; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# inns NS CMD...: run in a namespace under /run/netns.
inns() { local ns=$1; shift; nsenter --net="/run/netns/$ns" -- "$@"; }


# tcp_open NSPATH ADDR: can a TCP connection to ADDR:5201 be opened from namespace NSPATH?
tcp_open() { nsenter --net="$1" -- bash -c "exec 3<>/dev/tcp/$2/5201"; }

# iperf3 client JSON -> Gbit/s received.
gbps() { jq -er '.end.sum_received.bits_per_second / 1e9 | . * 100 | round / 100'; }

# A message on one line, made safe for a markdown table cell.
oneline() { tr '\n' ' ' | sed -e 's/^ *//' -e 's/  */ /g' -e 's/ *$//' -e 's/|/\\|/g' | cut -c1-200; }

# --- tools ----------------------------------------------------------------------------------
declare -A na=() # path -> why it is not measured
for p in rnet c wggo bt; do
    [[ " ${WANT[*]} " == *" $p "* ]] || na[$p]="not asked for (RNET_BENCH_PATHS)"
done
apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2 ||
        { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2; }
}
[[ -v na[wggo] && -v na[bt] ]] || command -v wg >/dev/null || apt_install wireguard-tools || true
[[ -v na[wggo] ]] || command -v wireguard-go >/dev/null || apt_install wireguard-go || true
if [[ ! -v na[bt] && ! -x $BORINGTUN ]]; then
    # The boringtun release rnet's own WireGuard path is built on.
    cargo install boringtun-cli --version 0.7.1 --locked --root "$TOOLS" >&2 || true
fi
if [[ ! -v na[wggo] ]]; then
    command -v wg >/dev/null || na[wggo]="wg (wireguard-tools) missing"
    command -v wireguard-go >/dev/null || na[wggo]="wireguard-go missing"
fi
if [[ ! -v na[bt] ]]; then
    command -v wg >/dev/null || na[bt]="wg (wireguard-tools) missing"
    [[ -x $BORINGTUN ]] || na[bt]="boringtun-cli missing (cargo install failed)"
fi

# --- rnet: lab with an encrypted network ----------------------------------------------------
[[ -v na[rnet] ]] || "$RNET_ABS" lab up --hosts 2 --name "$LAB" >/dev/null
if [[ -v na[rnet] ]]; then
    :
elif ! msg=$("$RNET_ABS" lab exec h1 --name "$LAB" -- \
    rnet create tputwg --subnet 10.62.0.0/24 --encrypt wireguard 2>&1 >/dev/null); then
    na[rnet]="rnet create --encrypt wireguard failed: $(printf '%s\n' "$msg" | grep -m1 . | oneline)"
else
    "$RNET_ABS" lab exec h1 --name "$LAB" -- \
        rnet run tputwg --name srv --ip 10.62.0.10 -- iperf3 -s >/dev/null 2>&1 &
    pids+=($!)
    # The first packets start the tunnel handshake: poll from an h2 workload until the
    # server answers through the encrypted path.
    rnet_probe() {
        "$RNET_ABS" lab exec h2 --name "$LAB" -- rnet run tputwg -- \
            timeout 3 bash -c 'exec 3<>/dev/tcp/10.62.0.10/5201'
    }
    poll 60 "the iperf3 server over rnet's encrypted network" rnet_probe ||
        na[rnet]="the encrypted network carried no traffic within 60 s"
fi

# --- the hand-built paths: one switch, two hosts per path -------------------------------------
# Path c = plain kernel VXLAN, a = VXLAN inside wireguard-go, b = VXLAN inside boringtun-cli.
# Host i of path n: underlay 198.18.2.<n><i>/24, tunnel 10.99.<n>.1<i>/24; workloads on
# 10.61.0.0/24 (c), 10.63.0.0/24 (a), 10.64.0.0/24 (b); rnet's network is 10.62.0.0/24.
mkns() { ip netns add "$1"; nss+=("$1"); inns "$1" ip link set lo up; }
mkns "$P-sw"
inns "$P-sw" ip link add br0 type bridge
inns "$P-sw" ip link set br0 up

# hosts X N: host namespaces of path X with underlay 198.18.2.N1 and .N2.
hosts() {
    local x=$1 n=$2 i h
    for i in 1 2; do
        h=$P-$x-h$i
        mkns "$h"
        inns "$h" ip link add ul0 type veth peer name "p$x$i" netns "$P-sw"
        inns "$P-sw" ip link set "p$x$i" master br0 up
        inns "$h" ip addr add "198.18.2.$n$i/24" dev ul0
        inns "$h" ip link set ul0 up
    done
}

# wireguard X N IMPL: a userspace WireGuard interface in each host of path X, peered with the
# other host over the underlay, tunnel addresses 10.99.N.1{1,2}, MTU 1440 (1500 - 60).
wireguard() {
    local x=$1 n=$2 impl=$3 i j h ifc
    for i in 1 2; do
        h=$P-$x-h$i ifc=wg$ID$x$i
        (umask 077 && wg genkey >"$TMP/$x$i.key" && wg pubkey <"$TMP/$x$i.key" >"$TMP/$x$i.pub")
        wgifs+=("$ifc")
        # nsenter execs the daemon in place, so $! is the daemon itself.
        case $impl in
        wireguard-go)
            WG_PROCESS_FOREGROUND=1 nsenter --net="/run/netns/$h" -- \
                wireguard-go -f "$ifc" >"$TMP/$ifc.log" 2>&1 &
            ;;
        boringtun)
            nsenter --net="/run/netns/$h" -- \
                "$BORINGTUN" "$ifc" --foreground --disable-drop-privileges >"$TMP/$ifc.log" 2>&1 &
            ;;
        esac
        pids+=($!)
    done
    for i in 1 2; do
        ifc=wg$ID$x$i
        poll 10 "the UAPI socket of $impl ($ifc)" test -S "/var/run/wireguard/$ifc.sock" ||
            { cat "$TMP/$ifc.log" >&2; return 1; }
    done
    for i in 1 2; do
        j=$((3 - i)) h=$P-$x-h$i ifc=wg$ID$x$i
        inns "$h" wg set "$ifc" listen-port 51820 private-key "$TMP/$x$i.key" \
            peer "$(cat "$TMP/$x$j.pub")" endpoint "198.18.2.$n$j:51820" allowed-ips "10.99.$n.1$j/32"
        inns "$h" ip addr add "10.99.$n.1$i/24" dev "$ifc"
        inns "$h" ip link set "$ifc" mtu 1440 up
    done
}

# vxlan X NET MTU LOCAL1 LOCAL2: the hand-built datapath of bench-throughput.sh on path X's
# hosts: VXLAN created in the host namespace (its socket binds there) with local address
# LOCALi, moved into a sandbox with a bridge, a workload veth with address NET.1i.
vxlan() {
    local x=$1 net=$2 mtu=$3 i j h s w mac
    local -a loc=("" "$4" "$5")
    local oct=${net#*.}
    oct=${oct%%.*}
    for i in 1 2; do
        h=$P-$x-h$i s=$P-$x-s$i w=$P-$x-w$i
        mkns "$s"
        mkns "$w"
        inns "$h" ip link add vx type vxlan id 42 local "${loc[i]}" dstport 4789 nolearning proxy
        inns "$h" ip link set vx netns "$s"
        inns "$s" ip link add br0 type bridge
        inns "$s" ip link set br0 mtu "$mtu" up
        inns "$s" ip link set vx mtu "$mtu" master br0 up
        inns "$s" ip link add ve type veth peer name eth0 netns "$w"
        inns "$s" ip link set ve mtu "$mtu" master br0 up
        mac=$(printf '02:52:0a:%02x:00:1%d' "$oct" "$i")
        inns "$w" ip link set eth0 mtu "$mtu" address "$mac" up
        inns "$w" ip addr add "$net.1$i/24" dev eth0
    done
    for i in 1 2; do
        j=$((3 - i)) s=$P-$x-s$i
        mac=$(printf '02:52:0a:%02x:00:1%d' "$oct" "$j")
        inns "$s" bridge fdb append 00:00:00:00:00:00 dev vx dst "${loc[j]}" self permanent
        inns "$s" bridge fdb replace "$mac" dev vx dst "${loc[j]}" self permanent
        inns "$s" ip neigh replace "$net.1$j" lladdr "$mac" dev vx nud permanent
    done
}

# encrypted X N IMPL NET: path X = VXLAN (workloads on NET) inside IMPL's WireGuard tunnel;
# workload MTU 1390 (1440 - 50).
encrypted() {
    local x=$1 n=$2 impl=$3 net=$4
    hosts "$x" "$n"
    wireguard "$x" "$n" "$impl" || return 1
    vxlan "$x" "$net" 1390 "10.99.$n.11" "10.99.$n.12"
    # The first packet starts the handshake; wait until the tunnel carries traffic.
    poll 20 "the $impl tunnel" inns "$P-$x-h1" ping -c1 -W1 "10.99.$n.12"
}

if [[ ! -v na[c] ]]; then
    hosts c 1
    vxlan c 10.61.0 1450 198.18.2.11 198.18.2.12
fi
[[ -v na[wggo] ]] || encrypted a 2 wireguard-go 10.63.0 || na[wggo]="wireguard-go tunnel did not come up"
[[ -v na[bt] ]] || encrypted b 3 boringtun 10.64.0 || na[bt]="boringtun-cli tunnel did not come up"

# One iperf3 server per hand-built path, in workload 1 (kept for the whole run).
declare -A X=([c]=c [wggo]=a [bt]=b) addr=([c]=10.61.0.11 [wggo]=10.63.0.11 [bt]=10.64.0.11)
for p in c wggo bt; do
    [[ -v na[$p] ]] && continue
    nsenter --net="/run/netns/$P-${X[$p]}-w1" -- iperf3 -s >/dev/null 2>&1 &
    pids+=($!)
    poll 20 "the iperf3 server of path $p" tcp_open "/run/netns/$P-${X[$p]}-w2" "${addr[$p]}" ||
        na[$p]="no TCP connection through the path"
done

# UDP datagrams received and dropped for a full receive buffer in the WireGuard paths' host
# namespaces (summed over both hosts): prints "received dropped".
udp_counts() {
    local x=$1 i
    for i in 1 2; do inns "$P-$x-h$i" nstat -asz UdpInDatagrams UdpRcvbufErrors; done |
        awk '$1 == "UdpInDatagrams" { r += $2 } $1 == "UdpRcvbufErrors" { d += $2 } END { print r + 0, d + 0 }'
}
declare -A drops0=()
for p in wggo bt; do [[ -v na[$p] ]] || drops0[$p]=$(udp_counts "${X[$p]}"); done

# --- measurements: round-robin over the paths ------------------------------------------------
# measure PATH STREAMS: one iperf3 run, prints Gbit/s (fails on an iperf3 error).
measure() {
    local p=$1 streams=$2
    if [[ $p == rnet ]]; then
        timeout $((SECS + 30)) "$RNET_ABS" lab exec h2 --name "$LAB" -- rnet run tputwg -- \
            iperf3 -c 10.62.0.10 -t "$SECS" -P "$streams" -J --connect-timeout 5000 | gbps
    else
        timeout $((SECS + 30)) nsenter --net="/run/netns/$P-${X[$p]}-w2" -- \
            iperf3 -c "${addr[$p]}" -t "$SECS" -P "$streams" -J --connect-timeout 5000 | gbps
    fi
}
paths=(rnet c wggo bt)
declare -A res=() fails=()
for ((r = 0; r < ROUNDS; r++)); do
    for ((k = 0; k < ${#paths[@]}; k++)); do
        p=${paths[(k + r) % ${#paths[@]}]} # rotate the start so no path always goes first
        [[ -v na[$p] ]] && continue
        for streams in 1 4; do
            if v=$(measure "$p" "$streams"); then
                res[$p.$streams]+="$v "
            else
                fails[$p.$streams]=$((${fails[$p.$streams]:-0} + 1))
                echo "iperf3 failed: path $p, $streams streams, round $((r + 1))" >&2
            fi
        done
    done
done

declare -A drops=()
for p in wggo bt; do
    [[ -v na[$p] ]] && continue
    read -r r0 d0 <<<"${drops0[$p]}"
    read -r r1 d1 <<<"$(udp_counts "${X[$p]}")"
    drops[$p]=$(awk -v r=$((r1 - r0)) -v d=$((d1 - d0)) \
        'BEGIN { printf "%d of %d datagrams (%.1f%%)", d, r + d, (r + d) ? 100 * d / (r + d) : 0 }')
done

# --- report ---------------------------------------------------------------------------------
# figure PATH STREAMS median|min|max
figure() {
    # shellcheck disable=SC2086
    printf '%s\n' ${res[$1.$2]:-} | sort -g | awk -v want="$3" '
        { v[NR] = $1 }
        END {
            if (NR == 0) { print "n/a"; exit }
            if (want == "min") x = v[1]
            else if (want == "max") x = v[NR]
            else x = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            printf "%.2f\n", x
        }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2fx", a / b; else print "n/a" }'; }
better() { awk -v a="$1" -v b="$2" 'BEGIN { an = (a ~ /^[0-9.]+$/); bn = (b ~ /^[0-9.]+$/)
    if (an && (!bn || a + 0 >= b + 0)) print a; else if (bn) print b; else print "n/a" }'; }
row() { # PATH LABEL
    local p=$1 label=$2 s n
    if [[ -v na[$p] ]]; then
        echo "| $label | n/a (${na[$p]}) | n/a | |"
        return
    fi
    s="$(figure "$p" 1 min)–$(figure "$p" 1 max) / $(figure "$p" 4 min)–$(figure "$p" 4 max)"
    n=$((${fails[$p.1]:-0} + ${fails[$p.4]:-0}))
    ((n == 0)) || s+=" ($n failed runs)"
    echo "| $label | $(figure "$p" 1 median) | $(figure "$p" 4 median) | $s |"
}
med() { if [[ -v na[$1] ]]; then echo n/a; else figure "$1" "$2" median; fi; }
drop_note() { if [[ -v na[$1] ]]; then echo "n/a"; else echo "${drops[$1]}"; fi; }

best1=$(better "$(med wggo 1)" "$(med bt 1)")
best4=$(better "$(med wggo 4)" "$(med bt 4)")
cat <<EOF
### Encrypted overlay throughput across two hosts (iperf3, median of ${ROUNDS} rounds of ${SECS} s, paths interleaved)

| path | 1 stream Gbit/s | 4 streams Gbit/s | spread min–max (1 / 4 streams) |
|---|---|---|---|
$(row rnet "rnet encrypted overlay (\`--encrypt wireguard\`, \`rnet run\` on two lab hosts)")
$(row wggo "VXLAN inside wireguard-go (workload MTU 1390, tunnel MTU 1440)")
$(row bt "VXLAN inside boringtun-cli (workload MTU 1390, tunnel MTU 1440)")
$(row c "plain kernel VXLAN, hand-built (veth, sandbox bridge, VXLAN, MTU 1450)")

rnet encrypted over the better of wireguard-go and boringtun-cli: $(ratio "$(med rnet 1)" "$best1") (1 stream), $(ratio "$(med rnet 4)" "$best4") (4 streams). Target ≥ 2.0.
Over plain kernel VXLAN (1 / 4 streams): rnet encrypted $(ratio "$(med rnet 1)" "$(med c 1)") / $(ratio "$(med rnet 4)" "$(med c 4)"), wireguard-go $(ratio "$(med wggo 1)" "$(med c 1)") / $(ratio "$(med wggo 4)" "$(med c 4)"), boringtun-cli $(ratio "$(med bt 1)" "$(med c 1)") / $(ratio "$(med bt 4)" "$(med c 4)").
UDP receive-buffer drops during the measurements (UdpRcvbufErrors, both host namespaces): wireguard-go $(drop_note wggo), boringtun-cli $(drop_note bt).
EOF
