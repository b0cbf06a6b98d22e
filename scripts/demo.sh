#!/usr/bin/env bash
# Single-host rnet demo: one simulated host, one overlay network, three workloads.
#
# Everything happens inside network namespaces this script creates; nothing is configured in the
# root network namespace, and the only "underlay" is a veth pair inside the host namespace with an
# address from the benchmarking range 198.18.0.0/15, so no packet can leave the machine. Everything is removed on
# exit, whether the demo passed or failed.
#
# Run as root after `make build` (or just `make demo`). Exits non-zero if any ping fails.
set -euo pipefail
# Command substitutions ($(attach ...)) must abort on a failing command too.
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
RNETD=$BIN/rnetd
RNET_BIN=$BIN/rnet

SUBNET=10.200.0.0/24
UNDERLAY=198.18.0.1
HOST_NS=rnet-demo-$$
W1_NS=rnet-demo-$$-w1
W2_NS=rnet-demo-$$-w2
DIR=""
DAEMON_PID=""
FAILURES=0

if [[ -t 1 ]]; then BOLD=$'\e[1m' RED=$'\e[31m' GREEN=$'\e[32m' RESET=$'\e[0m'; else BOLD="" RED="" GREEN="" RESET=""; fi

step() { printf '\n%s==> %s%s\n' "$BOLD" "$*" "$RESET"; }
die() {
    printf '%sdemo: %s%s\n' "$RED" "$*" "$RESET" >&2
    exit 1
}
# Echo a command before running it, so the demo shows what a user would type.
show() {
    printf '$ %s\n' "$*"
    "$@"
}
rnet() { "$RNET_BIN" --socket "$DIR/rnetd.sock" "$@"; }

# True while the process exists and is not a zombie. `kill -0` alone is not enough: it succeeds
# on a zombie that the shell has not reaped yet.
pid_alive() {
    local state
    [[ -r /proc/$1/stat ]] || return 1
    state=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [[ -n $state && $state != Z ]]
}

# wait_for WHAT TIMEOUT_SECONDS CMD...: poll CMD until it succeeds, fail after the deadline.
wait_for() {
    local what=$1 timeout=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@"; do
        ((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for $what"
        sleep 0.05
    done
}

daemon_ready() {
    # The EXIT trap prints the daemon log's tail.
    pid_alive "$DAEMON_PID" || die "rnetd exited during startup"
    [[ -S $DIR/rnetd.sock ]] && rnet status >/dev/null 2>&1
}
daemon_gone() { ! pid_alive "$DAEMON_PID"; }

# Mount points at or below $1, deepest last in mount order; printed in reverse so children are
# unmounted before their parents. Paths in mountinfo are octal-escaped; mktemp paths need none.
mounts_under() {
    awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | tac
}

cleanup() {
    local rc=$?
    set +e
    if [[ -n $DAEMON_PID ]] && pid_alive "$DAEMON_PID"; then
        kill -KILL "$DAEMON_PID" 2>/dev/null
        wait "$DAEMON_PID" 2>/dev/null
    fi
    ((rc == 0)) || echo "${RED}demo failed (exit status $rc); cleaning up${RESET}" >&2
    if [[ -n $DIR && -d $DIR ]]; then
        if ((rc != 0)) && [[ -s $DIR/rnetd.log ]]; then
            echo "--- last lines of the rnetd log ---" >&2
            tail -n 40 "$DIR/rnetd.log" >&2
        fi
        # rnetd bind-mounts the namespaces it creates under its run dir (they must outlive the
        # daemon process), so they are still mounted here; rm -rf would fail on them.
        local m
        while read -r m; do umount -l "$m" 2>/dev/null; done < <(mounts_under "$DIR")
        rm -rf "$DIR"
    fi
    local ns
    for ns in "$W1_NS" "$W2_NS" "$HOST_NS"; do
        ip netns del "$ns" 2>/dev/null
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
[[ $(id -u) -eq 0 ]] || die "run me as root: the demo creates network namespaces"
for tool in ip nsenter jq ping awk; do
    command -v "$tool" >/dev/null || die "$tool not found; run scripts/deps.sh"
done
[[ -x $RNETD && -x $RNET_BIN ]] || die "no release binaries in $BIN; run: make build"

DIR=$(mktemp -d -t rnet-demo.XXXXXX)
# mountinfo shows canonical paths, so compare against the canonical form.
DIR=$(realpath "$DIR")

step "Creating simulated host netns $HOST_NS (underlay $UNDERLAY on ul0)"
show ip netns add "$HOST_NS"
show ip -n "$HOST_NS" link set lo up
# The underlay NIC is one end of a veth pair whose peer (ul0p) stays in the host namespace, up,
# so ul0 has carrier. Not a dummy device: kernels built without CONFIG_DUMMY are common in VMs.
show ip -n "$HOST_NS" link add ul0 mtu 1500 type veth peer name ul0p mtu 1500
show ip -n "$HOST_NS" link set ul0p up
show ip -n "$HOST_NS" addr add "$UNDERLAY/24" dev ul0
show ip -n "$HOST_NS" link set ul0 up
show ip -n "$HOST_NS" route add default dev ul0

step "Starting rnetd inside the host netns (state in $DIR)"
# nsenter --net enters only the network namespace. `ip netns exec` would also give rnetd a
# private mount namespace, and the namespace bind mounts rnetd makes would vanish with it.
printf '$ nsenter --net=/run/netns/%s -- rnetd --socket %s ... &\n' "$HOST_NS" "$DIR/rnetd.sock"
RUST_LOG=${RUST_LOG:-info} nsenter --net="/run/netns/$HOST_NS" -- "$RNETD" \
    --socket "$DIR/rnetd.sock" \
    --state-dir "$DIR/state" \
    --run-dir "$DIR/run" \
    --host-id demo \
    --underlay "$UNDERLAY" \
    --docker-plugin-dir none \
    >"$DIR/rnetd.log" 2>&1 &
DAEMON_PID=$!
wait_for "rnetd to answer on its socket" 15 daemon_ready
show rnet status

step "Creating overlay network 'demo' ($SUBNET)"
show rnet create demo --subnet "$SUBNET"

step "Attaching two workload namespaces"
# The IP is in the attach result; accept the field names an endpoint record is likely to use.
endpoint_ip() {
    jq -r '(.ip // .address // .ipv4 // .ips[0].address // .endpoint.ip // empty) | sub("/.*$"; "")'
}
attach() { # attach NETNS ID -> prints the workload's overlay IP
    local ns=$1 id=$2 json ip
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    printf '$ rnet -o json attach demo --netns /run/netns/%s --id %s\n' "$ns" "$id" >&2
    json=$(rnet -o json attach demo --netns "/run/netns/$ns" --id "$id")
    printf '%s\n' "$json" >&2
    ip=$(endpoint_ip <<<"$json")
    [[ $ip =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "no IPv4 address in the attach result of $id"
    printf '%s\n' "$ip"
}
W1_IP=$(attach "$W1_NS" w1)
W2_IP=$(attach "$W2_NS" w2)
echo "w1 = $W1_IP, w2 = $W2_IP"

# ping_check LABEL CMD...: run a ping and count a failure instead of aborting, so the demo still
# shows (and cleans up) everything; the exit code reports it at the end.
ping_check() {
    local label=$1
    shift
    if show "$@"; then
        printf '%sOK%s   %s\n' "$GREEN" "$RESET" "$label"
    else
        printf '%sFAIL%s %s\n' "$RED" "$RESET" "$label"
        FAILURES=$((FAILURES + 1))
    fi
}

step "Pinging w1 -> w2 and w2 -> w1"
ping_check "w1 -> w2" nsenter --net="/run/netns/$W1_NS" ping -c 3 -W 1 -i 0.2 "$W2_IP"
ping_check "w2 -> w1" nsenter --net="/run/netns/$W2_NS" ping -c 3 -W 1 -i 0.2 "$W1_IP"

step "Launching a workload with 'rnet run' (new namespaces, attached, exit code passed through)"
ping_check "run w3 -> w1" rnet run demo --name w3 -- ping -c 2 -W 1 "$W1_IP"

step "Networks and endpoints"
show rnet ls
show rnet endpoints

step "Detaching workloads and removing the network"
show rnet detach demo --id w1
show rnet detach demo --id w2
show rnet rm demo

step "Stopping rnetd (SIGTERM)"
kill -TERM "$DAEMON_PID"
wait_for "rnetd to exit after SIGTERM" 15 daemon_gone
daemon_rc=0
wait "$DAEMON_PID" || daemon_rc=$?
DAEMON_PID=""
echo "rnetd exited with status $daemon_rc"
((daemon_rc == 0)) || die "rnetd did not exit cleanly on SIGTERM"

if ((FAILURES > 0)); then
    die "$FAILURES connectivity check(s) failed"
fi
step "${GREEN}Demo passed${RESET}: every ping got through; cleaning up"
