#!/usr/bin/env bash
# Response cache benchmark, all cases in one run with the same load generator (wrk). The app
# is middleware/examples/cached_api.rs: a handler that sleeps 5 ms and returns ~50 bytes of
# JSON with Cache-Control: max-age=60.
#   (a) no cache: the handler alone
#   (b) http-cache-tower 1.0.0-alpha.9 + its moka manager (benches/cache-peer), hits
#   (c) our CacheLayer, L1 hits (grid: a cachegrid node over TCP)
#   (d) our CacheLayer, L2 hits: no L1, every hit one GET to the node over TCP
#   (e) our CacheLayer, L2 hits with the node embedded in the app (no L1)
# Hit cases request one URL (all hits after the first). Cases are interleaved and repeated;
# medians and ratios against (b). Then upstream calls per 1,000 requests with two instances:
# two peers (one moka each) vs two of ours sharing one node, max-age=1, random keys out of
# --keys, one wrk per instance at the same time.
#
# Usage: scripts/bench-cache.sh [--duration SECS] [--reps N] [--conns N] [--keys N]
#                               [--calls-duration SECS] [--node-threads N] [--out FILE]
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=8; REPS=3; CONNS=32; KEYS=200; CALLS_DURATION=10; NODE_THREADS=1; OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION="$2"; shift ;;
    --reps) REPS="$2"; shift ;;
    --conns) CONNS="$2"; shift ;;
    --keys) KEYS="$2"; shift ;;
    --calls-duration) CALLS_DURATION="$2"; shift ;;
    --node-threads) NODE_THREADS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

for tool in wrk curl python3; do
  if ! command -v "$tool" >/dev/null; then
    echo "installing $tool" >&2
    apt-get update -qq && apt-get install -y -qq wrk curl python3 >/dev/null
  fi
done

echo "==> building (release): cachegrid, cached_api, cache-peer" >&2
cargo build --release --quiet --bin cachegrid -p cachegrid
cargo build --release --quiet -p cachegrid-middleware --example cached_api
(cd benches/cache-peer && cargo build --release --quiet)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

start_node() { # prints the port
  local port; port=$(free_port)
  target/release/cachegrid node --port "$port" --bind 127.0.0.1 --threads "$NODE_THREADS" --log-level warn >/dev/null 2>&1 & PIDS+=($!)
  wait_port "$port"
  echo "$port"
}
NODE_PORT=$(start_node)
API=target/release/examples/cached_api
PEER=benches/cache-peer/target/release/cache-peer

declare -A BASE NAME
start_app() { # id port cmd...
  local id=$1 port=$2; shift 2
  "$@" >/dev/null 2>&1 & PIDS+=($!)
  wait_port "$port"
  BASE[$id]="http://127.0.0.1:$port"
}
P=$(free_port); start_app a "$P" $API --listen "127.0.0.1:$P" --no-cache;                       NAME[a]="no cache (5 ms handler)"
P=$(free_port); start_app b "$P" $PEER "127.0.0.1:$P" 60;                                       NAME[b]="http-cache-tower + moka, hits"
P=$(free_port); start_app c "$P" $API --listen "127.0.0.1:$P" --grid "redis://127.0.0.1:$NODE_PORT"; NAME[c]="CacheLayer L1 hits (node over TCP behind)"
P=$(free_port); start_app d "$P" $API --listen "127.0.0.1:$P" --grid "redis://127.0.0.1:$NODE_PORT" --no-l1; NAME[d]="CacheLayer L2 hits (node over TCP)"
P=$(free_port); start_app e "$P" $API --listen "127.0.0.1:$P" --no-l1;                          NAME[e]="CacheLayer L2 hits (embedded node)"

URLPATH=/products/1
for id in a b c d e; do
  for _ in 1 2 3; do curl -s -o /dev/null "${BASE[$id]}$URLPATH"; done
  curl -s -D - -o /dev/null "${BASE[$id]}$URLPATH" | tr -d '\r' | awk -v id="$id" 'tolower($1) ~ /^x-cache/ {printf "  (%s) %s\n", id, $0}' >&2
done

echo "==> load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
RESULTS=$(mktemp)
for rep in $(seq "$REPS"); do
  for id in a b c d e; do
    echo "==> rep $rep/$REPS case $id: ${NAME[$id]}" >&2
    wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "${BASE[$id]}$URLPATH" > /tmp/bench-cache-wrk.txt
    rps=$(awk '/Requests\/sec/{print $2}' /tmp/bench-cache-wrk.txt)
    p99=$(awk '$1=="99%"{print $2}' /tmp/bench-cache-wrk.txt)
    errs=$(awk '/Non-2xx/{print $5}' /tmp/bench-cache-wrk.txt)
    echo "$id $rps $p99 ${errs:-0}" >> "$RESULTS"
  done
done
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)

# Upstream calls with two instances each: two peers; two of ours sharing a fresh node.
cleanup; PIDS=()
NODE_PORT=$(start_node)
P=$(free_port); start_app p1 "$P" $PEER "127.0.0.1:$P" 1
P=$(free_port); start_app p2 "$P" $PEER "127.0.0.1:$P" 1
P=$(free_port); start_app o1 "$P" $API --listen "127.0.0.1:$P" --grid "redis://127.0.0.1:$NODE_PORT" --max-age 1
P=$(free_port); start_app o2 "$P" $API --listen "127.0.0.1:$P" --grid "redis://127.0.0.1:$NODE_PORT" --max-age 1
LUA=$(mktemp --suffix .lua)
cat > "$LUA" <<LUAEOF
request = function() return wrk.format("GET", "/products/" .. math.random(1, $KEYS)) end
LUAEOF
CALLS=$(mktemp)
for pair in "peer p1 p2" "ours o1 o2"; do
  set -- $pair
  echo "==> upstream calls, two instances: $1" >&2
  wrk -t1 -c$((CONNS / 2)) -d"${CALLS_DURATION}s" -s "$LUA" "${BASE[$2]}" > /tmp/bench-cache-w1.txt &
  w1=$!
  wrk -t1 -c$((CONNS / 2)) -d"${CALLS_DURATION}s" -s "$LUA" "${BASE[$3]}" > /tmp/bench-cache-w2.txt
  wait $w1
  reqs=$(awk '/requests in/{s+=$1} END{print s}' /tmp/bench-cache-w1.txt /tmp/bench-cache-w2.txt)
  calls=$(( $(curl -s "${BASE[$2]}/stats") + $(curl -s "${BASE[$3]}/stats") ))
  echo "$1 $reqs $calls" >> "$CALLS"
done

python3 - "$RESULTS" "$CALLS" "$CONNS" "$DURATION" "$REPS" "$NODE_THREADS" "$LOAD" "$KEYS" "$CALLS_DURATION" \
  "${NAME[a]}" "${NAME[b]}" "${NAME[c]}" "${NAME[d]}" "${NAME[e]}" > /tmp/bench-cache-table.md <<'PY'
import sys, statistics
path, calls_path, conns, dur, reps, threads, load, keys, cdur = sys.argv[1:10]
names = dict(zip("abcde", sys.argv[10:15]))
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
b_rps, b_p99, _ = med["b"]
print(f"wrk -t2 -c{conns} -d{dur}s, one URL, median of {reps} interleaved runs, node threads: {threads}, load average after: {load}")
print()
print("| case | req/s | p99 (ms) | req/s vs (b) | p99 vs (b) | non-2xx |")
print("|---|---:|---:|---:|---:|---:|")
for i in "abcde":
    rps, p99, errs = med[i]
    print(f"| ({i}) {names[i]} | {rps:,.0f} | {p99:.2f} | {rps / b_rps:.2f}x | {p99 / b_p99:.2f}x | {errs} |")
print()
print(f"Upstream calls, two instances, {keys} keys at random, max-age=1, {cdur}s (one wrk per instance):")
print()
print("| instances | requests | upstream calls | per 1,000 requests |")
print("|---|---:|---:|---:|")
per = {}
for line in open(calls_path):
    who, reqs, calls = line.split()
    per[who] = int(calls) * 1000 / int(reqs)
    label = "two http-cache-tower (one moka each)" if who == "peer" else "two CacheLayer sharing one node (L1 on)"
    print(f"| {label} | {int(reqs):,} | {int(calls):,} | {per[who]:.2f} |")
print()
print(f"Ours / peer upstream calls per 1,000 requests: {per['ours'] / per['peer']:.2f}x")
PY
cat /tmp/bench-cache-table.md
[ -n "$OUT" ] && cp /tmp/bench-cache-table.md "$OUT"
rm -f "$RESULTS" "$CALLS" "$LUA"
