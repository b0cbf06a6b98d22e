#!/usr/bin/env bash
# rnet's demo: three simulated hosts (an `rnet lab` with a real etcd), one overlay network
# across them, one workload per host launched with `rnet run`, every workload pinging the
# others across hosts, a summary table; then an encrypted network (WireGuard) between two of
# the hosts; and everything removed again.
#
# Run as root via `make demo` (which builds the release binaries first). Nothing is configured
# in the root network namespace; the lab lives in namespaces it creates under /run/rnet/lab.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=$PWD/target/release
RNET=$BIN/rnet
LAB=demo$$
SHARE=$(mktemp -d /tmp/rnet-demo.XXXXXX)
export PATH="$BIN:$PATH"

step() { printf '\n==> %s\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

cleanup() {
    local rc=$?
    step "Cleaning up (rnet lab down)"
    "$RNET" lab down --name "$LAB" || true
    rm -rf "$SHARE"
    exit "$rc"
}
trap cleanup EXIT

[[ $(id -u) -eq 0 ]] || { echo "demo.sh: run as root (it builds network namespaces)" >&2; exit 1; }
[[ -x $RNET ]] || { echo "demo.sh: $RNET missing; run 'make demo' (it builds first)" >&2; exit 1; }

step "Building a lab: a switch namespace running etcd, three hosts h1..h3, an rnetd on each"
show "$RNET" lab up --hosts 3 --name "$LAB"

step "Creating one overlay network (from h1; every host sees it through etcd)"
show "$RNET" lab exec h1 --name "$LAB" -- rnet create demo --subnet 10.200.0.0/24

ips=(10.200.0.11 10.200.0.12 10.200.0.13)
# Each workload: wait until every peer answers, ping it 3 times, record the result, then stay
# up until all workloads are done so nobody pings a workload that already left.
workload_script='
me=$1; shift
for peer in "$@"; do
    for _ in $(seq 50); do ping -c1 -W1 "$peer" >/dev/null 2>&1 && break; done
    if out=$(ping -n -q -c3 -W1 -i0.2 "$peer"); then
        rtt=$(printf "%s\n" "$out" | awk -F/ "/rtt/ {print \$5}")
        echo "$me $peer ok ${rtt}ms" >> "$SHARE/results"
    else
        echo "$me $peer FAILED -" >> "$SHARE/results"
    fi
done
touch "$SHARE/done.$me"
for _ in $(seq 300); do [ "$(ls "$SHARE"/done.* | wc -l)" -ge 3 ] && break; sleep 0.1; done
echo "$me ($(hostname), $(ip -4 -o addr show eth0 | awk "{print \$4}")) finished"
'
step "Launching one workload per host with 'rnet run' (new namespaces, attached, exec'd)"
pids=()
for i in 1 2 3; do
    peers=()
    for j in 1 2 3; do [[ $j == "$i" ]] || peers+=("${ips[j-1]}"); done
    echo "\$ rnet lab exec h$i -- rnet run demo --name w$i --hostname w$i --ip ${ips[i-1]} -- sh -c '<ping ${peers[*]}>'"
    SHARE=$SHARE "$RNET" lab exec "h$i" --name "$LAB" -- \
        rnet run demo --name "w$i" --hostname "w$i" --ip "${ips[i-1]}" -- \
        bash -c "$workload_script" workload "w$i" "${peers[@]}" &
    pids+=($!)
done
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=1; done

step "What the hosts see"
show "$RNET" lab exec h1 --name "$LAB" -- rnet peers
show "$RNET" lab exec h2 --name "$LAB" -- rnet doctor

step "Summary: every workload pinging every other, across hosts"
printf '%-6s %-14s %-8s %s\n' FROM TO RESULT "AVG RTT"
sort "$SHARE/results" | while read -r from to result rtt; do
    printf '%-6s %-14s %-8s %s\n' "$from" "$to" "$result" "$rtt"
done
if grep -q FAILED "$SHARE/results" || [[ $(wc -l < "$SHARE/results") -ne 6 ]] || [[ $failed -ne 0 ]]; then
    echo "demo FAILED: not every workload reached every other" >&2
    exit 1
fi

step "An encrypted network: its frames cross the lab switch only inside WireGuard"
show "$RNET" lab exec h1 --name "$LAB" -- rnet create secret --subnet 10.201.0.0/24 --encrypt wireguard
"$RNET" lab exec h1 --name "$LAB" -- rnet run secret --name s1 --ip 10.201.0.11 -- sleep 30 &
server=$!
echo "\$ rnet lab exec h2 -- rnet run secret --name s2 -- ping -c3 10.201.0.11"
ok=0
for _ in $(seq 50); do
    if "$RNET" lab exec h2 --name "$LAB" -- rnet run secret --name s2 -- ping -n -q -c3 -W1 -i0.2 10.201.0.11; then
        ok=1
        break
    fi
done
kill "$server" 2>/dev/null || true
wait "$server" 2>/dev/null || true
show "$RNET" lab exec h1 --name "$LAB" -- rnet peers
if [[ $ok -ne 1 ]]; then
    echo "demo FAILED: no ping over the encrypted network" >&2
    exit 1
fi
echo
echo "demo passed: 3 hosts, 1 overlay network, 6 of 6 cross-host paths answered; the encrypted network answered too"
