#!/usr/bin/env bash
# Scale by simulation (issue 13): an `rnet lab` of HOSTS namespace hosts on one etcd, with
# EPS endpoints attached on each, then:
#   - convergence: SAMPLES more attaches, each on a different host, timed from the attach
#     request to the endpoint's neighbour entry appearing in the kernel of every other host
#     (`ip -ts monitor neigh` in each host's sandbox; p50/p99 over all (sample, host) pairs);
#   - etcd load: watchers and watch streams (etcd's /metrics), and txns, puts, ranges and
#     lease keep-alives per second, at rest and while the endpoints are attached;
#   - CPU at rest: every rnetd's and etcd's utime+stime over REST seconds (/proc/PID/stat).
# Prints markdown on stdout. Run as root from anywhere: scripts/scale-sim.sh [HOSTS] [EPS] [SAMPLES]
# Needs a built rnet (RNET, default target/debug/rnet, with rnetd beside it), etcd, curl,
# python3. The lab and every namespace it made are removed on exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

hosts=${1:-30} eps=${2:-100} samples=${3:-20}
rest=${REST:-30}
rnet=${RNET:-target/debug/rnet}
name=sc$$
dir=/run/rnet/lab/$name
work=$(mktemp -d)
monitors=()

cleanup() {
  for pid in "${monitors[@]}"; do kill "$pid" 2>/dev/null || true; done
  "$rnet" lab down --name "$name" >/dev/null 2>&1 || true
  for ns in $(ip netns list | awk '{print $1}' | grep "^$name-" || true); do
    ip netns del "$ns" || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "scale-sim: $*" >&2; }
sock() { echo "$dir/h$1/rnetd.sock"; }
sandbox() { ls -d "$dir/h$1/run/netns/sb-scale-"* 2>/dev/null | head -1; }
neigh_count() {
  nsenter --net="$(sandbox "$1")" ip -4 neigh show dev vx-scale nud permanent 2>/dev/null | wc -l
}
metrics() { nsenter --net="$dir/netns/switch" curl -sf http://198.18.0.1:2379/metrics; }
# Sum of a metric's samples whose line matches the regex (label filters included).
metric() { awk -v re="^$1" '$0 ~ re { s += $NF } END { printf "%.0f", s }' "$2"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
now() { date +%s.%N; }

load_start=$(cut -d' ' -f1 /proc/loadavg)
log "lab up: $hosts hosts"
"$rnet" lab up --hosts "$hosts" --name "$name" >/dev/null
"$rnet" network create scale --subnet 10.90.0.0/16 --socket "$(sock 1)" >/dev/null

# --- populate: EPS endpoints per host, each in a workload namespace of its own
metrics >"$work/m0"
t_pop=$(now)
attach_host() {
  local h=$1
  for ((j = 0; j < eps; j++)); do
    ip netns add "$name-h$h-$j"
    "$rnet" attach scale --socket "$(sock "$h")" --netns "/run/netns/$name-h$h-$j" \
      --id "h$h-e$j" >/dev/null
  done
}
log "attaching $eps endpoints on each of $hosts hosts"
batch=()
for ((h = 1; h <= hosts; h++)); do
  attach_host "$h" &
  batch+=($!)
  # Four hosts at a time: the machine has few cores.
  if ((h % 4 == 0 || h == hosts)); then
    for pid in "${batch[@]}"; do wait "$pid" || { log "attaching failed"; exit 1; }; done
    batch=()
  fi
done
t_attached=$(now)
expected=$(((hosts - 1) * eps))
log "waiting for $expected remote entries on every host"
deadline=$(($(date +%s) + 300))
for ((h = 1; h <= hosts; h++)); do
  while (($(neigh_count "$h") < expected)); do
    (($(date +%s) < deadline)) || { log "h$h has $(neigh_count "$h") of $expected"; exit 1; }
    sleep 0.2
  done
done
t_converged=$(now)
metrics >"$work/m1"

# --- at rest: etcd counters and CPU over REST seconds
log "at rest for $rest s"
pids=()
for ((h = 1; h <= hosts; h++)); do pids+=("$(cat "$dir/h$h/rnetd.pid")"); done
etcd_pid=$(cat "$dir/etcd.pid" 2>/dev/null || cat "$dir/etcd/etcd.pid")
declare -A t0
for p in "${pids[@]}" "$etcd_pid"; do t0[$p]=$(cpu_ticks "$p"); done
metrics >"$work/m2"
sleep "$rest"
metrics >"$work/m3"
load_rest=$(cut -d' ' -f1 /proc/loadavg)
: >"$work/cpu"
for p in "${pids[@]}"; do echo "rnetd $(($(cpu_ticks "$p") - t0[$p]))" >>"$work/cpu"; done
echo "etcd $(($(cpu_ticks "$etcd_pid") - t0[$etcd_pid]))" >>"$work/cpu"
rss_kib=$(for p in "${pids[@]}"; do awk '/VmRSS/ { print $2 }' "/proc/$p/status"; done |
  awk '{ s += $1 } END { printf "%.0f", s / NR }')

# --- convergence: attach on one host, watch every other host's kernel
log "convergence: $samples attaches"
for ((h = 1; h <= hosts; h++)); do
  nsenter --net="$(sandbox "$h")" ip -ts monitor neigh >"$work/mon-h$h" 2>/dev/null &
  monitors+=($!)
done
# The monitors are up once each has its netlink socket; give them a moment to subscribe.
for pid in "${monitors[@]}"; do
  until ls -l "/proc/$pid/fd" 2>/dev/null | grep -q socket; do sleep 0.05; done
done
: >"$work/samples"
for ((k = 0; k < samples; k++)); do
  h=$((k % hosts + 1))
  ip netns add "$name-s$k"
  t=$(now)
  # The address is the allocator's: any fixed one may already be taken by the population.
  "$rnet" attach scale --socket "$(sock "$h")" --netns "/run/netns/$name-s$k" \
    --id "s$k" -o json >"$work/attach-s$k"
  acked=$(now)
  ip=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["ip"].split("/")[0])' <"$work/attach-s$k")
  echo "$k $h $ip $t $acked" >>"$work/samples"
  deadline=$(($(date +%s) + 30))
  for ((o = 1; o <= hosts; o++)); do
    ((o == h)) && continue
    until grep -q "\] $ip " "$work/mon-h$o"; do
      (($(date +%s) < deadline)) || { log "sample $k: $ip never reached h$o"; exit 1; }
      sleep 0.01
    done
  done
done

python3 - "$work" "$hosts" "$eps" "$samples" "$rest" "$t_pop" "$t_attached" "$t_converged" \
  "$rss_kib" "$(getconf CLK_TCK)" "$load_start" "$load_rest" "$(nproc)" "$rnet" <<'EOF'
import sys, re, datetime, statistics
work, hosts, eps, samples, rest = sys.argv[1], *map(int, sys.argv[2:6])
t_pop, t_attached, t_converged = map(float, sys.argv[6:9])
rss_kib, tck = int(sys.argv[9]), int(sys.argv[10])
load_start, load_rest, cores, rnet = sys.argv[11:15]

def metrics(name):
    out = {}
    for line in open(f"{work}/{name}"):
        if line.startswith("#") or not line.strip():
            continue
        key, value = line.rsplit(" ", 1)
        out[key] = float(value)
    return out

def total(m, prefix, needle=""):
    return sum(v for k, v in m.items() if k.startswith(prefix) and needle in k)

m0, m1, m2, m3 = (metrics(f"m{i}") for i in range(4))
grpc = "grpc_server_handled_total"
def rates(a, b, secs):
    return {
        "txn": (total(b, "etcd_mvcc_txn_total") - total(a, "etcd_mvcc_txn_total")) / secs,
        "put": (total(b, "etcd_mvcc_put_total") - total(a, "etcd_mvcc_put_total")) / secs,
        "range": (total(b, "etcd_mvcc_range_total") - total(a, "etcd_mvcc_range_total")) / secs,
        "keepalive": (total(b, "grpc_server_msg_received_total", 'grpc_method="LeaseKeepAlive"')
                      - total(a, "grpc_server_msg_received_total", 'grpc_method="LeaseKeepAlive"')) / secs,
    }
busy = rates(m0, m1, t_converged - t_pop)
idle = rates(m2, m3, rest)
watchers = total(m3, "etcd_debugging_mvcc_watcher_total")
streams = total(m3, "etcd_debugging_mvcc_watch_stream_total")

# Convergence: the first monitor line naming each sample's address, per other host.
ts = re.compile(r"^\[(\S+)\] (\S+) ")
sampled = {line.split()[2] for line in open(f"{work}/samples")}
seen = {}
for h in range(1, hosts + 1):
    for line in open(f"{work}/mon-h{h}"):
        m = ts.match(line)
        if m and m.group(2) in sampled and (h, m.group(2)) not in seen:
            when = datetime.datetime.fromisoformat(m.group(1)).astimezone().timestamp()
            seen[(h, m.group(2))] = when
delays, per_sample, calls = [], [], []
for line in open(f"{work}/samples"):
    k, h, ip, t, acked = line.split()
    h, t = int(h), float(t)
    calls.append(float(acked) - t)
    d = [seen[(o, ip)] - t for o in range(1, hosts + 1) if o != h]
    delays += d
    per_sample.append(max(d))
delays.sort()
pct = lambda xs, p: sorted(xs)[round((len(xs) - 1) * p)] * 1000

cpu = [l.split() for l in open(f"{work}/cpu")]
rnetd = [int(t) / tck / rest * 100 for n, t in cpu if n == "rnetd"]
etcd = [int(t) / tck / rest * 100 for n, t in cpu if n == "etcd"][0]

print(f"### Scale simulation: {hosts} hosts x {eps} endpoints on one etcd\n")
print(f"{hosts * eps} endpoints attached ({eps} per host, four hosts at a time) in "
      f"{t_attached - t_pop:.1f} s; every host held all {(hosts - 1) * eps} remote neighbour "
      f"entries {t_converged - t_attached:.1f} s after the last attach.\n")
print("| convergence: attach on one host → neighbour entry in the kernel of another | p50 ms | p99 ms | max ms |")
print("|---|---|---|---|")
print(f"| each other host ({len(delays)} = {samples} attaches x {hosts - 1} hosts) | "
      f"{pct(delays, .5):.0f} | {pct(delays, .99):.0f} | {pct(delays, 1):.0f} |")
print(f"| the last of the {hosts - 1} other hosts ({samples} attaches) | "
      f"{pct(per_sample, .5):.0f} | {pct(per_sample, .99):.0f} | {pct(per_sample, 1):.0f} |")
print(f"| the `rnet attach` CLI call itself | "
      f"{pct(calls, .5):.0f} | {pct(calls, .99):.0f} | {pct(calls, 1):.0f} |\n")
print("| etcd | while attaching | at rest |")
print("|---|---|---|")
print(f"| watchers / watch streams | | {watchers:.0f} / {streams:.0f} |")
for k, label in [("txn", "txns/s"), ("put", "puts/s"), ("range", "ranges/s"),
                 ("keepalive", "lease keep-alives/s")]:
    print(f"| {label} | {busy[k]:.1f} | {idle[k]:.2f} |")
print()
print(f"CPU at rest over {rest} s (utime+stime): rnetd mean {statistics.mean(rnetd):.2f}% "
      f"of one core, max {max(rnetd):.2f}%, all {hosts} together {sum(rnetd):.1f}%; "
      f"etcd {etcd:.2f}%. rnetd RSS mean {rss_kib / 1024:.1f} MiB. "
      f"Machine load average (1 min): {load_start} at the start, {load_rest} at rest, on {cores} cores; "
      f"binaries: {rnet}.\n")
EOF
