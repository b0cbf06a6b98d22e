# Shell helpers the lab scripts share (sourced, not run).

# stop_pids PID...: ask each process to stop, give them 5 s together, then kill what is left
# and reap it.
stop_pids() {
    local pid deadline
    for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
    deadline=$((SECONDS + 5))
    for pid in "$@"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.05; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

# poll SECS WHAT CMD...: run CMD until it succeeds, for at most SECS seconds.
poll() {
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then echo "timed out waiting for $what" >&2; return 1; fi
        sleep 0.1
    done
}
