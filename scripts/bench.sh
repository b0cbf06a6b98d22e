#!/usr/bin/env bash
# Runs rnet's benchmarks and writes their figures into docs/benchmarks.md.
# Every figure is measured next to its baseline in the same run; see each section.
set -euo pipefail
cd "$(dirname "$0")/.."

out=docs/benchmarks.md
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT

{
  echo "# Benchmarks"
  echo
  echo "Produced by \`make bench\` (scripts/bench.sh) on $(date -u +%Y-%m-%d) —"
  echo "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)."
  echo "Each rnet figure sits next to a baseline measured in the same run."
  echo
  echo "## One host"
  echo
  cargo bench --features root-tests --bench attach 2>/dev/null
  echo
  cargo bench --features root-tests --bench cni 2>/dev/null
  echo
  cargo bench --features root-tests --bench docker 2>/dev/null
  echo
  echo "## Two lab hosts over etcd"
  echo
  ./scripts/bench-throughput.sh 2>/dev/null
  echo; ./scripts/bench-wireguard.sh 2>/dev/null
  echo
  cargo bench --features root-tests --bench peers 2>/dev/null
} > "$tmp"
mkdir -p docs
mv "$tmp" "$out"
trap - EXIT
cat "$out"
