#!/usr/bin/env bash
# Cost of the ACL check: one node, redis-benchmark as the unrestricted `default` user (the
# one-flag fast path) and as a restricted user (command rules + key patterns checked on every
# command), alternating, in one run. Prints requests/s medians and restricted/default ratios.
#
# Usage: scripts/bench-acl.sh [--quick] [--reps N]
set -euo pipefail
cd "$(dirname "$0")/.."

N=500000; REPS=3
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) N=100000 ;;
    --reps) REPS="$2"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

echo "==> building cachegrid (release)" >&2
cargo build --release --quiet --bin cachegrid
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/release/cachegrid node --port "$PORT" --log-format text >/dev/null 2>&1 &
NODE=$!
trap 'kill $NODE 2>/dev/null || true' EXIT
for _ in $(seq 50); do redis-cli -p "$PORT" PING >/dev/null 2>&1 && break; sleep 0.1; done
# A realistic restricted user: everything but admin commands, on redis-benchmark's key space.
redis-cli -p "$PORT" ACL SETUSER bench on '>benchpw' '~key:*' '~counter:*' '+@all' '-@admin' >/dev/null
# The restricted user really runs the benchmark's commands (no NOPERM fast failures).
[ "$(redis-cli -p "$PORT" --user bench -a benchpw --no-auth-warning SET key:sanity 1)" = OK ] || { echo "bench user refused" >&2; exit 1; }
[ "$(redis-cli -p "$PORT" --user bench -a benchpw --no-auth-warning SET other 1)" != OK ] || { echo "bench user unrestricted" >&2; exit 1; }

run() { # $1 = extra redis-benchmark flags; prints "SET GET" requests/s
  redis-benchmark -p "$PORT" $1 -t set,get -n "$N" -r 100000 -P 16 -c 50 -q --csv 2>/dev/null \
    | awk -F'","' '/^"SET"/{s=$2} /^"GET"/{g=$2} END{print s, g}' | tr -d '"'
}
median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }

: > /tmp/bench-acl.$$
for r in $(seq "$REPS"); do
  echo "default $(run "")" >> /tmp/bench-acl.$$
  echo "restricted $(run "--user bench -a benchpw")" >> /tmp/bench-acl.$$
done
for who in default restricted; do
  set_m=$(awk -v w=$who '$1==w{print $2}' /tmp/bench-acl.$$ | median)
  get_m=$(awk -v w=$who '$1==w{print $3}' /tmp/bench-acl.$$ | median)
  echo "$who $set_m $get_m"
done | awk '{u[NR]=$1; s[NR]=$2; g[NR]=$3} END{
  printf "| user | SET req/s | GET req/s |\n|---|---|---|\n";
  for (i=1;i<=NR;i++) printf "| %s | %s | %s |\n", u[i], s[i], g[i];
  printf "| restricted/default | %.3f | %.3f |\n", s[2]/s[1], g[2]/g[1] }'
rm -f /tmp/bench-acl.$$
