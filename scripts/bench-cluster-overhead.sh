#!/usr/bin/env bash
# What cluster mode costs on the hot path: redis-benchmark against two nodes of the same
# build, one standalone and one with cluster-enabled (a grid of one, so every command goes
# through the slot-map routing check), alternating and repeating in one run; prints medians
# and cluster/standalone ratios.
#
# Usage: scripts/bench-cluster-overhead.sh [--reps N] [--requests N]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

REPS=3; REQUESTS=500000
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS="$2"; shift ;;
    --requests) REQUESTS="$2"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

echo "==> building cachegrid (release)" >&2
cargo build --release --quiet
BIN=target/release/cachegrid

TMP=$(mktemp -d)
cleanup() { stop_children; rm -rf "$TMP"; }
trap cleanup EXIT

P_STANDALONE=$(free_port)
P_CLUSTER=$(free_port)
"$BIN" node --port "$P_STANDALONE" --log-level warn --dir "$TMP/standalone" & PIDS+=($!)
"$BIN" node --port "$P_CLUSTER" --log-level warn --cluster-enabled true --dir "$TMP/cluster" & PIDS+=($!)
for p in "$P_STANDALONE" "$P_CLUSTER"; do
  until redis-cli -p "$p" ping >/dev/null 2>&1; do sleep 0.1; done
done

bench() { # port pipeline test -> requests per second
  redis-benchmark -p "$1" -P "$2" -t "$3" -n "$REQUESTS" -r 100000 -q 2>/dev/null \
    | awk -F'[: ]+' '/requests per second/ {for (i=1;i<=NF;i++) if ($i ~ /^[0-9.]+$/) {print $i; exit}}'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf "| test | pipeline | standalone req/s | cluster-enabled req/s | ratio |\n|---|---|---|---|---|\n"
for P in 1 16; do
  for T in set get; do
    s=(); c=()
    for _ in $(seq "$REPS"); do
      s+=("$(bench "$P_STANDALONE" "$P" "$T")")
      c+=("$(bench "$P_CLUSTER" "$P" "$T")")
    done
    ms=$(printf '%s\n' "${s[@]}" | median); mc=$(printf '%s\n' "${c[@]}" | median)
    printf "| %s | %s | %s | %s | %.2f |\n" "$T" "$P" "$ms" "$mc" "$(echo "$mc / $ms" | bc -l)"
  done
done
