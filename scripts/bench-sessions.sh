#!/usr/bin/env bash
# Session middleware benchmark, all cases in one run with the same load generator (wrk):
#   (a) tower-sessions 0.14 + tower-sessions-redis-store against the local Redis (the peer)
#   (b) our SessionLayer + RemoteStore against the local Redis
#   (c) our SessionLayer + RemoteStore against a cachegrid node
#   (d) our SessionLayer + EmbeddedStore (the node inside the app)
# The handler reads one session value and writes it back incremented (every request loads
# and saves the session). Cases are interleaved and repeated; medians and ratios against (a).
#
# Usage: scripts/bench-sessions.sh [--duration SECS] [--reps N] [--conns N] [--node-threads N] [--out FILE]
#   --node-threads  worker threads of the cachegrid node in (c) (default 1: Redis serves
#                   commands on one thread, and the 2 cores here also run wrk and the apps)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=10; REPS=3; CONNS=32; NODE_THREADS=1; OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION="$2"; shift ;;
    --reps) REPS="$2"; shift ;;
    --conns) CONNS="$2"; shift ;;
    --node-threads) NODE_THREADS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

for tool in wrk curl python3 redis-cli; do
  if ! command -v "$tool" >/dev/null; then
    echo "installing $tool" >&2
    apt-get update -qq && apt-get install -y -qq wrk curl python3 redis-tools >/dev/null
  fi
done
redis-cli -p 6379 ping >/dev/null || { echo "the local Redis on 6379 is needed" >&2; exit 1; }

echo "==> building (release): cachegrid, bench_sessions, sessions-peer" >&2
cargo build --release --quiet --bin cachegrid -p cachegrid
cargo build --release --quiet -p cachegrid-middleware --example bench_sessions
(cd benches/sessions-peer && cargo build --release --quiet)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

NODE_PORT=$(free_port)
target/release/cachegrid node --port "$NODE_PORT" --bind 127.0.0.1 --threads "$NODE_THREADS" --log-level warn >/dev/null 2>&1 & PIDS+=($!)
wait_port "$NODE_PORT"

declare -A URL NAME
start_case() { # id port cmd...
  local id=$1 port=$2; shift 2
  "$@" >/dev/null 2>&1 & PIDS+=($!)
  wait_port "$port"
  URL[$id]="http://127.0.0.1:$port/bench"
}
P=$(free_port); start_case a "$P" benches/sessions-peer/target/release/sessions-peer "127.0.0.1:$P" redis://127.0.0.1:6379
NAME[a]="tower-sessions + redis-store -> Redis"
P=$(free_port); start_case b "$P" target/release/examples/bench_sessions --listen "127.0.0.1:$P" --grid redis://127.0.0.1:6379
NAME[b]="cachegrid SessionLayer -> Redis"
P=$(free_port); start_case c "$P" target/release/examples/bench_sessions --listen "127.0.0.1:$P" --grid "redis://127.0.0.1:$NODE_PORT"
NAME[c]="cachegrid SessionLayer -> cachegrid node"
P=$(free_port); start_case d "$P" target/release/examples/bench_sessions --listen "127.0.0.1:$P"
NAME[d]="cachegrid SessionLayer, embedded node"

declare -A COOKIE
for id in a b c d; do
  COOKIE[$id]=$(curl -s -D - -o /dev/null "${URL[$id]}" | tr -d '\r' | awk -F': ' 'tolower($1)=="set-cookie"{split($2,a,";"); print a[1]}')
  [ -n "${COOKIE[$id]}" ] || { echo "case $id set no cookie" >&2; exit 1; }
done

RESULTS=$(mktemp)
for rep in $(seq "$REPS"); do
  for id in a b c d; do
    echo "==> rep $rep/$REPS case $id: ${NAME[$id]}" >&2
    wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -H "Cookie: ${COOKIE[$id]}" "${URL[$id]}" > /tmp/bench-sessions-wrk.txt
    rps=$(awk '/Requests\/sec/{print $2}' /tmp/bench-sessions-wrk.txt)
    p99=$(awk '$1=="99%"{print $2}' /tmp/bench-sessions-wrk.txt)
    errs=$(awk '/Non-2xx/{print $5}' /tmp/bench-sessions-wrk.txt)
    echo "$id $rps $p99 ${errs:-0}" >> "$RESULTS"
  done
done

python3 - "$RESULTS" "$CONNS" "$DURATION" "$REPS" "$NODE_THREADS" "${NAME[a]}" "${NAME[b]}" "${NAME[c]}" "${NAME[d]}" > /tmp/bench-sessions-table.md <<'PY'
import sys, statistics
path, conns, dur, reps, threads = sys.argv[1:6]
names = dict(zip("abcd", sys.argv[6:10]))
def ms(s):
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if s.endswith(unit) and (unit != "s" or not s.endswith(("us", "ms"))):
            return float(s[: -len(unit)]) * f
    return float(s)
rows = {}
for line in open(path):
    i, rps, p99, errs = line.split()
    rows.setdefault(i, []).append((float(rps), ms(p99), int(errs)))
med = {i: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v), sum(r[2] for r in v)) for i, v in rows.items()}
a_rps, a_p99, _ = med["a"]
print(f"wrk -t2 -c{conns} -d{dur}s, median of {reps} interleaved runs, one session per case, node threads: {threads}")
print()
print("| case | req/s | p99 (ms) | req/s vs (a) | p99 vs (a) | non-2xx |")
print("|---|---:|---:|---:|---:|---:|")
for i in "abcd":
    rps, p99, errs = med[i]
    print(f"| ({i}) {names[i]} | {rps:,.0f} | {p99:.2f} | {rps / a_rps:.2f}x | {p99 / a_p99:.2f}x | {errs} |")
PY
cat /tmp/bench-sessions-table.md
[ -n "$OUT" ] && cp /tmp/bench-sessions-table.md "$OUT"
rm -f "$RESULTS"
