#!/usr/bin/env bash
# Where the CPU time of rnet's encrypted path goes: one iperf3 flow between two lab hosts over
# an `--encrypt wireguard` network (the setup of bench-wireguard.sh), and during a steady window
# of it a `perf record -g` of each host's rnetd (sender and receiver apart), their CPU time
# (utime + stime from /proc, per thread too) and the packets their TUN devices moved.
# scripts/perf-wireguard-split.py turns the result into CPU-µs per packet by category.
#
# Needs root, perf, iperf3 and release binaries (RNET, default target/release/rnet; rnetd
# beside it). Everything lives in an rnet lab this script makes; nothing is configured in the
# root namespace; every process it starts is killed on exit and the lab is taken down.
#
# Knobs: RNET_PERF_OUT (directory for the results, default target/perf-wireguard/<pid>),
# RNET_PERF_SECS (the recorded window, default 8), RNET_PERF_WARMUP (seconds of flow before the
# window, default 3), RNET_PERF_STREAMS (iperf3 streams, default 1), RNET_PERF_FREQ (perf's
# sampling frequency, default 999).
#
# The iperf3 server runs on h1 and the client on h2: h2's rnetd is the sender (TUN read,
# encrypt, UDP send of the data; decrypt of the ACKs), h1's the receiver.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh

RNET=${RNET:-target/release/rnet}
SECS=${RNET_PERF_SECS:-8}
WARMUP=${RNET_PERF_WARMUP:-3}
STREAMS=${RNET_PERF_STREAMS:-1}
FREQ=${RNET_PERF_FREQ:-999}
OUT=${RNET_PERF_OUT:-target/perf-wireguard/$$}
LAB=pw$$
RNET_ABS=$(cd "$(dirname "$RNET")" && pwd)/$(basename "$RNET")
PATH="$(dirname "$RNET_ABS"):$PATH"
export PATH
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

pids=() # every process this script started
cleanup() {
    stop_pids "${pids[@]}"
    "$RNET_ABS" lab down --name "$LAB" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


"$RNET_ABS" lab up --hosts 2 --name "$LAB" >/dev/null
"$RNET_ABS" lab exec h1 --name "$LAB" -- rnet create tputwg --subnet 10.62.0.0/24 --encrypt wireguard >/dev/null
"$RNET_ABS" lab exec h1 --name "$LAB" -- \
    rnet run tputwg --name srv --ip 10.62.0.10 -- iperf3 -s >/dev/null 2>&1 &
pids+=($!)
rnet_probe() {
    "$RNET_ABS" lab exec h2 --name "$LAB" -- rnet run tputwg -- \
        timeout 3 bash -c 'exec 3<>/dev/tcp/10.62.0.10/5201'
}
poll 60 "the iperf3 server over rnet's encrypted network" rnet_probe

LABDIR=/run/rnet/lab/$LAB
declare -A role=([h1]=receiver [h2]=sender) rnetd=()
for h in h1 h2; do
    rnetd[$h]=$(cat "$LABDIR/$h/rnetd.pid")
    [[ $(readlink "/proc/${rnetd[$h]}/exe") == */rnetd ]] ||
        { echo "pid ${rnetd[$h]} from $LABDIR/$h/rnetd.pid is not an rnetd" >&2; exit 1; }
    [[ -e $LABDIR/$h/run/netns/wg ]] || { echo "no tunnel namespace for $h" >&2; exit 1; }
done

# snapshot FILE: CPU time of both rnetds (whole process and per thread, in clock ticks), their
# TUN devices' counters, the host namespaces' UDP counters, the machine's CPU and load.
snapshot() {
    local h pid t
    {
        echo "time $(date +%s.%N)"
        echo "hz $(getconf CLK_TCK)"
        echo "loadavg $(cat /proc/loadavg)"
        echo "machine $(head -1 /proc/stat)"
        for h in h1 h2; do
            pid=${rnetd[$h]}
            # Fields 14 and 15 of /proc/PID/stat: utime, stime (after the comm in parentheses).
            echo "$h proc $(sed 's/.*) //' "/proc/$pid/stat" | awk '{ print $12, $13 }')"
            for t in /proc/"$pid"/task/*; do
                echo "$h task ${t##*/} $(tr ' ' _ <"$t/comm") $(sed 's/.*) //' "$t/stat" | awk '{ print $12, $13 }')"
            done
            # rnet-wg0 in the tunnel namespace: rx = written by rnetd, tx = read by rnetd.
            echo "$h tun $(nsenter --net="$LABDIR/$h/run/netns/wg" -- cat /proc/net/dev |
                awk '$1 == "rnet-wg0:" { print $2, $3, $10, $11 }')"
            echo "$h udp $(nsenter --net="$LABDIR/netns/$h" -- cat /proc/net/snmp |
                awk '$1 == "Udp:" && $2 ~ /^[0-9]/ { print $2, $5, $6 }')"
        done
    } >"$1"
}

# The flow: longer than warm-up + window, so the window sees a steady flow only.
timeout $((WARMUP + SECS + 40)) "$RNET_ABS" lab exec h2 --name "$LAB" -- rnet run tputwg -- \
    iperf3 -c 10.62.0.10 -t $((WARMUP + SECS + 6)) -P "$STREAMS" -i 1 -J --connect-timeout 5000 \
    >"$OUT/iperf3.json" &
client=$!
pids+=($client)
# Warm-up starts once data flows: the sender's TUN has handed rnetd 1000 packets.
tun_tx() { nsenter --net="$LABDIR/h2/run/netns/wg" -- cat /proc/net/dev | awk '$1 == "rnet-wg0:" { print $11 }'; }
base=$(tun_tx)
flowing() { (($(tun_tx) > base + 1000)); }
poll 30 "the iperf3 flow" flowing
sleep "$WARMUP"

# perf records a second longer on each side than the /proc window, so that window lies
# inside the recording; no build-ids are collected at its end (that would copy the 100+ MB
# binary into ~/.debug while the other side still records).
declare -A rec=()
for h in h2 h1; do
    perf record -q -B -N -g -F "$FREQ" -p "${rnetd[$h]}" -o "$OUT/${role[$h]}.data" -- \
        sleep $((SECS + 2)) 2>"$OUT/${role[$h]}.perf.log" &
    rec[$h]=$!
    pids+=(${rec[$h]})
done
sleep 1
snapshot "$OUT/before.txt"
sleep "$SECS"
snapshot "$OUT/after.txt"
wait "${rec[h2]}" "${rec[h1]}"
wait "$client"
{
    echo "rnet $RNET_ABS"
    echo "rnetd $(dirname "$RNET_ABS")/rnetd"
    echo "window $SECS"
    echo "warmup $WARMUP"
    echo "streams $STREAMS"
    echo "freq $FREQ"
    echo "sender h2 ${rnetd[h2]}"
    echo "receiver h1 ${rnetd[h1]}"
} >"$OUT/run.txt"
echo "$OUT"
