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
# medians and ratios against (b). Then upstream calls with two instances: two peers (one
# moka each) vs two of ours sharing one node (L1 on), random keys out of --keys, one wrk per
# instance at the same time, all with one Host header (the instances of one site behind a
# load balancer; the host is part of the key): "cold" (max-age=60, --calls-requests per instance: calls per
# 1,000 requests) and "expiring" (max-age=1 for --calls-duration: calls per second).
#
# Usage: scripts/bench-cache.sh [--duration SECS] [--reps N] [--conns N] [--keys N]
#            [--calls-requests N] [--calls-duration SECS] [--node-threads N] [--out FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

DURATION=8; REPS=3; CONNS=32; KEYS=200; CALLS_REQUESTS=10000; CALLS_DURATION=10; NODE_THREADS=1; OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION="$2"; shift ;;
    --reps) REPS="$2"; shift ;;
    --conns) CONNS="$2"; shift ;;
    --keys) KEYS="$2"; shift ;;
    --calls-requests) CALLS_REQUESTS="$2"; shift ;;
    --calls-duration) CALLS_DURATION="$2"; shift ;;
    --node-threads) NODE_THREADS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

need_tools "wrk curl python3" "wrk curl python3"

echo "==> building (release): cachegrid, cached_api, cache-peer" >&2
cargo build --release --quiet --bin cachegrid -p cachegrid
cargo build --release --quiet -p cachegrid-middleware --example cached_api
(cd benches/cache-peer && cargo build --release --quiet)

trap stop_children EXIT

start_node() { # sets NODE_PORT (not in a subshell: its pid must reach PIDS)
  NODE_PORT=$(free_port)
  target/release/cachegrid node --port "$NODE_PORT" --bind 127.0.0.1 --threads "$NODE_THREADS" --log-level warn >/dev/null 2>&1 & PIDS+=($!)
  wait_port "$NODE_PORT"
}
start_node
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
  for _ in 1 2 3; do curl -s -o /dev/null -H "Host: api.bench" "${BASE[$id]}$URLPATH"; done
  curl -s -D - -o /dev/null -H "Host: api.bench" "${BASE[$id]}$URLPATH" | tr -d '\r' | awk -v id="$id" 'tolower($1) ~ /^x-cache/ {printf "  (%s) %s\n", id, $0}' >&2
done

echo "==> load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
RESULTS=$(mktemp)
for rep in $(seq "$REPS"); do
  for id in a b c d e; do
    echo "==> rep $rep/$REPS case $id: ${NAME[$id]}" >&2
    wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -H "Host: api.bench" "${BASE[$id]}$URLPATH" > /tmp/bench-cache-wrk.txt
    rps=$(awk '/Requests\/sec/{print $2}' /tmp/bench-cache-wrk.txt)
    p99=$(awk '$1=="99%"{print $2}' /tmp/bench-cache-wrk.txt)
    errs=$(awk '/Non-2xx/{print $5}' /tmp/bench-cache-wrk.txt)
    echo "$id $rps $p99 ${errs:-0}" >> "$RESULTS"
  done
done
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)

# Upstream calls with two instances each: two peers; two of ours sharing a fresh node.
# Scenario "cold": max-age=60, a fixed number of requests per instance (every call is a
# first miss of a key on an instance, or a concurrent one). Scenario "expiring": max-age=1
# for a fixed time (calls are refreshes as keys go stale). Random keys, one seed per wrk.
CALLS=$(mktemp)
LUA=()
for seed in 1 2; do
  f=$(mktemp --suffix .lua)
  cat > "$f" <<LUAEOF
math.randomseed($seed)
local done_ = 0
request = function() return wrk.format("GET", "/products/" .. math.random(1, $KEYS)) end
response = function()
  done_ = done_ + 1
  if limit > 0 and done_ >= limit then wrk.thread:stop() end
end
LUAEOF
  LUA+=("$f")
done
calls_run() { # scenario max_age per_instance_limit(0: none) duration
  local scenario=$1 max_age=$2 limit=$3 dur=$4
  stop_children; PIDS=(); start_node
  P=$(free_port); start_app p1 "$P" $PEER "127.0.0.1:$P" "$max_age"
  P=$(free_port); start_app p2 "$P" $PEER "127.0.0.1:$P" "$max_age"
  P=$(free_port); start_app o1 "$P" $API --listen "127.0.0.1:$P" --grid "redis://127.0.0.1:$NODE_PORT" --max-age "$max_age"
  P=$(free_port); start_app o2 "$P" $API --listen "127.0.0.1:$P" --grid "redis://127.0.0.1:$NODE_PORT" --max-age "$max_age"
  for who in peer ours; do
    local i1=p1 i2=p2; [ "$who" = ours ] && { i1=o1; i2=o2; }
    echo "==> upstream calls ($scenario), two instances: $who" >&2
    for n in 1 2; do sed -i "1s/^.*$/math.randomseed($n); limit = $limit/" "${LUA[$((n - 1))]}"; done
    wrk -t1 -c$((CONNS / 2)) -d"${dur}s" -H "Host: api.bench" -s "${LUA[0]}" "${BASE[$i1]}" > /tmp/bench-cache-w1.txt &
    local w1=$!
    wrk -t1 -c$((CONNS / 2)) -d"${dur}s" -H "Host: api.bench" -s "${LUA[1]}" "${BASE[$i2]}" > /tmp/bench-cache-w2.txt
    wait $w1
    local reqs calls
    reqs=$(awk '/requests in/{s+=$1} END{print s}' /tmp/bench-cache-w1.txt /tmp/bench-cache-w2.txt)
    calls=$(( $(curl -s "${BASE[$i1]}/stats") + $(curl -s "${BASE[$i2]}/stats") ))
    echo "$scenario $who $reqs $calls $dur" >> "$CALLS"
  done
}
calls_run cold 60 "$CALLS_REQUESTS" 5
calls_run expiring 1 0 "$CALLS_DURATION"

python3 - "$RESULTS" "$CALLS" "$CONNS" "$DURATION" "$REPS" "$NODE_THREADS" "$LOAD" "$KEYS" "$CALLS_REQUESTS" \
  "${NAME[a]}" "${NAME[b]}" "${NAME[c]}" "${NAME[d]}" "${NAME[e]}" > /tmp/bench-cache-table.md <<'PY'
import sys, statistics
path, calls_path, conns, dur, reps, threads, load, keys, creqs = sys.argv[1:10]
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
print(f"Upstream calls, two instances, {keys} keys at random, one wrk -t1 -c{int(conns) // 2} per instance:")
print()
print("| scenario | instances | requests | upstream calls | per 1,000 requests | per second |")
print("|---|---|---:|---:|---:|---:|")
per = {}
for line in open(calls_path):
    scenario, who, reqs, calls, secs = line.split()
    reqs, calls = int(reqs), int(calls)
    per[(scenario, who)] = (calls * 1000 / reqs, calls / int(secs))
    label = "two http-cache-tower (one moka each)" if who == "peer" else "two CacheLayer, one node (L1 on)"
    desc = f"cold: max-age=60, {int(creqs):,} req/instance" if scenario == "cold" else f"expiring: max-age=1, {secs}s"
    print(f"| {desc} | {label} | {reqs:,} | {calls:,} | {per[(scenario, who)][0]:.2f} | {per[(scenario, who)][1]:.0f} |")
print()
c = per[("cold", "ours")][0] / per[("cold", "peer")][0]
e = per[("expiring", "ours")][1] / per[("expiring", "peer")][1]
print(f"Ours / peer: cold, calls per 1,000 requests {c:.2f}x; expiring, calls per second {e:.2f}x")
PY
cat /tmp/bench-cache-table.md
[ -n "$OUT" ] && cp /tmp/bench-cache-table.md "$OUT"
rm -f "$RESULTS" "$CALLS" "${LUA[@]}"
