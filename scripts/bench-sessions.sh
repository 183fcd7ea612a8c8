#!/usr/bin/env bash
# Session middleware benchmark, all cases in one run with the same load generator (wrk):
#   (a) tower-sessions 0.14 + tower-sessions-redis-store against the local Redis (the peer)
#   (b) our SessionLayer + RemoteStore against the local Redis
#   (c) our SessionLayer + RemoteStore against a cachegrid node
#   (d) our SessionLayer + EmbeddedStore (the node inside the app)
# The handler reads one session value and writes it back incremented (every request loads
# and saves the session). Cases are interleaved and repeated; medians and ratios against (a).
#
# Layout (the same for every case): nothing is pinned; wrk (2 threads), the app under test
# (tokio's default runtime: one worker per core) and its store (the local Redis, one command
# thread; or the node, --node-threads) share the machine's cores with whatever else runs. The
# apps not under test are idle. Besides req/s and p99 the script reports the CPU time per
# request of the app, the store and wrk (from /proc and getrusage), which moves much less
# than req/s on a shared machine, and the throughput ratio that CPU time implies when the
# machine is the bottleneck. The store's figure for (a)/(b) is the whole local Redis, so
# other users of that Redis count against those cases.
#
# Usage: scripts/bench-sessions.sh [--duration SECS] [--reps N] [--conns N] [--node-threads N] [--out FILE]
#   --node-threads  worker threads of the cachegrid node in (c) (default 1: Redis serves
#                   commands on one thread, and the cores here also run wrk and the apps)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

DURATION=8; REPS=5; CONNS=32; NODE_THREADS=1; OUT=""
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

need_tools "wrk curl python3 redis-cli /usr/bin/time" "wrk curl python3 redis-tools time"
redis-cli -p 6379 ping >/dev/null || { echo "the local Redis on 6379 is needed" >&2; exit 1; }

echo "==> building (release): cachegrid, bench_sessions, sessions-peer" >&2
cargo build --release --quiet --bin cachegrid -p cachegrid
cargo build --release --quiet -p cachegrid-middleware --example bench_sessions
(cd benches/sessions-peer && cargo build --release --quiet)

trap stop_children EXIT

NODE_PORT=$(free_port)
target/release/cachegrid node --port "$NODE_PORT" --bind 127.0.0.1 --threads "$NODE_THREADS" --log-level warn >/dev/null 2>&1 & PIDS+=($!)
NODE_PID=$!
wait_port "$NODE_PORT"
REDIS_PID=$(redis-cli -p 6379 info server | tr -d '\r' | awk -F: '$1=="process_id"{print $2}')

declare -A URL NAME APP STORE
start_case() { # id port cmd...
  local id=$1 port=$2; shift 2
  "$@" >/dev/null 2>&1 & PIDS+=($!)
  APP[$id]=$!
  wait_port "$port"
  URL[$id]="http://127.0.0.1:$port/bench"
}
# CPU time (clock ticks, user + system) of a process so far; 0 when unknown.
ticks() { [ -n "$1" ] && [ -r "/proc/$1/stat" ] && awk '{print $14+$15}' "/proc/$1/stat" || echo 0; }
TICK_HZ=$(getconf CLK_TCK)
P=$(free_port); start_case a "$P" benches/sessions-peer/target/release/sessions-peer "127.0.0.1:$P" redis://127.0.0.1:6379
NAME[a]="tower-sessions + redis-store -> Redis"
P=$(free_port); start_case b "$P" target/release/examples/bench_sessions --listen "127.0.0.1:$P" --grid redis://127.0.0.1:6379
NAME[b]="cachegrid SessionLayer -> Redis"
P=$(free_port); start_case c "$P" target/release/examples/bench_sessions --listen "127.0.0.1:$P" --grid "redis://127.0.0.1:$NODE_PORT"
NAME[c]="cachegrid SessionLayer -> cachegrid node"
P=$(free_port); start_case d "$P" target/release/examples/bench_sessions --listen "127.0.0.1:$P"
NAME[d]="cachegrid SessionLayer, embedded node"
STORE[a]=$REDIS_PID; STORE[b]=$REDIS_PID; STORE[c]=$NODE_PID; STORE[d]=""

declare -A COOKIE
for id in a b c d; do
  COOKIE[$id]=$(curl -s -D - -o /dev/null "${URL[$id]}" | tr -d '\r' | awk -F': ' 'tolower($1)=="set-cookie"{split($2,a,";"); print a[1]}')
  [ -n "${COOKIE[$id]}" ] || { echo "case $id set no cookie" >&2; exit 1; }
done

RESULTS=$(mktemp)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for rep in $(seq "$REPS"); do
  for id in a b c d; do
    echo "==> rep $rep/$REPS case $id: ${NAME[$id]}" >&2
    app0=$(ticks "${APP[$id]}"); store0=$(ticks "${STORE[$id]}")
    /usr/bin/time -f "%U %S" -o /tmp/bench-sessions-time.txt \
      wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -H "Cookie: ${COOKIE[$id]}" "${URL[$id]}" > /tmp/bench-sessions-wrk.txt
    app=$(( $(ticks "${APP[$id]}") - app0 )); store=$(( $(ticks "${STORE[$id]}") - store0 ))
    wrk_cpu=$(awk '{print $1+$2}' /tmp/bench-sessions-time.txt)
    rps=$(awk '/Requests\/sec/{print $2}' /tmp/bench-sessions-wrk.txt)
    reqs=$(awk '/requests in/{print $1}' /tmp/bench-sessions-wrk.txt)
    p99=$(awk '$1=="99%"{print $2}' /tmp/bench-sessions-wrk.txt)
    errs=$(awk '/Non-2xx/{print $5}' /tmp/bench-sessions-wrk.txt)
    echo "$id $rps $p99 ${errs:-0} $reqs $app $store $wrk_cpu" >> "$RESULTS"
  done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$RESULTS" "$CONNS" "$DURATION" "$REPS" "$NODE_THREADS" "$TICK_HZ" "$LOAD_START" "$LOAD_END" \
  "${NAME[a]}" "${NAME[b]}" "${NAME[c]}" "${NAME[d]}" > /tmp/bench-sessions-table.md <<'PY'
import sys, statistics
path, conns, dur, reps, threads, hz, load0, load1 = sys.argv[1:9]
hz = float(hz)
names = dict(zip("abcd", sys.argv[9:13]))
def ms(s):
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if s.endswith(unit) and (unit != "s" or not s.endswith(("us", "ms"))):
            return float(s[: -len(unit)]) * f
    return float(s)
rows = {}
for line in open(path):
    i, rps, p99, errs, reqs, app, store, wrk = line.split()
    us = lambda t: t / max(int(reqs), 1) * 1e6
    rows.setdefault(i, []).append({
        "rps": float(rps), "p99": ms(p99), "errs": int(errs),
        "app": us(int(app) / hz), "store": us(int(store) / hz), "wrk": us(float(wrk)),
    })
med = lambda i, k: statistics.median(r[k] for r in rows[i])
a = {k: med("a", k) for k in ("rps", "p99")}
a_cpu = med("a", "app") + med("a", "store") + med("a", "wrk")
print(f"wrk -t2 -c{conns} -d{dur}s, median of {reps} interleaved runs, one session per case, node threads: {threads}, "
      f"load average {load0} at the start, {load1} at the end")
print()
print("| case | req/s | p99 (ms) | req/s vs (a) (min-max) | p99 vs (a) | CPU µs/req app + store + wrk | CPU-bound ratio vs (a) | non-2xx |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for i in "abcd":
    ratios = sorted(x["rps"] / y["rps"] for x, y in zip(rows[i], rows["a"]))
    cpu = med(i, "app") + med(i, "store") + med(i, "wrk")
    print(f"| ({i}) {names[i]} | {med(i, 'rps'):,.0f} | {med(i, 'p99'):.2f} | {med(i, 'rps') / a['rps']:.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f}) "
          f"| {med(i, 'p99') / a['p99']:.2f}x | {med(i, 'app'):.1f} + {med(i, 'store'):.1f} + {med(i, 'wrk'):.1f} = {cpu:.1f} "
          f"| {a_cpu / cpu:.2f}x | {sum(r['errs'] for r in rows[i])} |")
print()
print("Per repetition (req/s, p99 ms):")
print()
for i in "abcd":
    print(f"- ({i}) " + ", ".join(f"{r['rps']:,.0f} / {r['p99']:.2f}" for r in rows[i]))
PY
cat /tmp/bench-sessions-table.md
[ -n "$OUT" ] && cp /tmp/bench-sessions-table.md "$OUT"
rm -f "$RESULTS"
