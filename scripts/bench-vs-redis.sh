#!/usr/bin/env bash
# Side-by-side benchmark of a cachegrid node and redis-server on this machine, in one run.
#
# Starts both (no persistence, free ports), runs redis-benchmark against each in turn,
# alternating servers and repeating, and prints medians and cachegrid/redis ratios; then loads
# exactly 1,000,000 distinct 100-byte keys into each with `redis-cli --pipe` and compares
# memory per key. Only ratios from one run mean anything on a shared, noisy machine.
#
# Usage: scripts/bench-vs-redis.sh [--quick] [--threads N] [--reps N] [--out FILE]
#   --quick     fewer requests and keys (a smoke run, not for the record)
#   --threads   cachegrid worker threads (default: the node's default)
#   --reps      repetitions per case (default 3)
#   --out       also write the markdown tables to FILE
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

QUICK=0; THREADS=""; REPS=3; OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --threads) THREADS="$2"; shift ;;
    --reps) REPS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

need_tools "redis-server redis-benchmark redis-cli python3" "redis-server redis-tools python3"

echo "==> building cachegrid (release)" >&2
cargo build --release --quiet
BIN=target/release/cachegrid

CG_PORT=$(free_port); RD_PORT=$(free_port)
WORK=$(mktemp -d)
cleanup() { kill "$CG_PID" "$RD_PID" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

THREAD_ARGS=()
[ -n "$THREADS" ] && THREAD_ARGS=(--threads "$THREADS")
"$BIN" node --port "$CG_PORT" "${THREAD_ARGS[@]}" --log-level warn 2>"$WORK/cachegrid.log" &
CG_PID=$!
redis-server --port "$RD_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
  --logfile "$WORK/redis.log" &
RD_PID=$!
for port in "$CG_PORT" "$RD_PORT"; do
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
done
echo "==> cachegrid on $CG_PORT (threads: ${THREADS:-default}), redis-server $(redis-server --version | awk '{print $3}') on $RD_PORT" >&2

if [ "$QUICK" = 1 ]; then N1=20000; N16=100000; KEYS=100000; else N1=200000; N16=1000000; KEYS=1000000; fi

RESULTS="$WORK/results.csv"
echo "server,pipeline,size,keyspace,test,rps,p50,p99" >"$RESULTS"
cases=()
for pipeline in 1 16; do for size in 3 1024; do for keyspace in hot random; do
  cases+=("$pipeline $size $keyspace")
done; done; done
total=$(( ${#cases[@]} * REPS * 2 )); done_runs=0
for rep in $(seq "$REPS"); do
  for c in "${cases[@]}"; do
    read -r pipeline size keyspace <<<"$c"
    n=$N1; [ "$pipeline" = 16 ] && n=$N16
    extra=(); [ "$keyspace" = random ] && extra=(-r 100000)
    # Alternate which server goes first so drift on the machine hits both alike.
    order="cachegrid redis"; [ $((rep % 2)) = 0 ] && order="redis cachegrid"
    for server in $order; do
      port=$CG_PORT; [ "$server" = redis ] && port=$RD_PORT
      redis-benchmark -p "$port" -c 50 -n "$n" -P "$pipeline" -d "$size" -t set,get "${extra[@]}" --csv -q 2>/dev/null \
        | tail -n +2 | tr -d '"' | while IFS=, read -r test rps _avg _min p50 _p95 p99 _max; do
            echo "$server,$pipeline,$size,$keyspace,$test,$rps,$p50,$p99"
          done >>"$RESULTS"
      done_runs=$((done_runs + 1))
      printf '\r==> throughput: %d/%d runs' "$done_runs" "$total" >&2
    done
  done
done
echo >&2

echo "==> memory: loading $KEYS distinct keys of 100 B into each server with redis-cli --pipe" >&2
python3 - "$KEYS" >"$WORK/load.resp" <<'PY'
import sys
n = int(sys.argv[1]); value = b"v" * 100; out = sys.stdout.buffer
for i in range(n):
    key = b"key:%010d" % i
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$100\r\n%s\r\n" % (len(key), key, value))
PY
MEM="$WORK/memory.csv"; echo "server,keys,used_before,used_after,rss_before,rss_after" >"$MEM"
for server in cachegrid redis; do
  port=$CG_PORT; [ "$server" = redis ] && port=$RD_PORT
  redis-cli -p "$port" flushall >/dev/null
  sleep 1
  before=$(redis-cli -p "$port" info memory | tr -d '\r')
  redis-cli -p "$port" --pipe <"$WORK/load.resp" >"$WORK/pipe-$server.log"
  sleep 1
  after=$(redis-cli -p "$port" info memory | tr -d '\r')
  keys=$(redis-cli -p "$port" dbsize)
  field() { echo "$1" | awk -F: -v f="$2" '$1==f {print $2}'; }
  echo "$server,$keys,$(field "$before" used_memory),$(field "$after" used_memory),$(field "$before" used_memory_rss),$(field "$after" used_memory_rss)" >>"$MEM"
  echo "    $server: $(tail -1 "$WORK/pipe-$server.log")" >&2
done

python3 - "$RESULTS" "$MEM" "$REPS" <<'PY' | tee "${OUT:-/dev/null}"
import csv, sys, statistics
from collections import defaultdict
rows = list(csv.DictReader(open(sys.argv[1])))
med = defaultdict(list)
for r in rows:
    key = (r["pipeline"], r["size"], r["keyspace"], r["test"])
    med[(r["server"],) + key].append((float(r["rps"]), float(r["p99"])))
print(f"Throughput: redis-benchmark -c 50, median of {sys.argv[3]} alternating runs per case\n")
print("| test | -P | value | keys | cachegrid ops/s | redis ops/s | ratio | cachegrid p99 ms | redis p99 ms | p99 ratio |")
print("|---|---|---|---|---|---|---|---|---|---|")
cases = sorted({k[1:] for k in med}, key=lambda k: (k[3], int(k[0]), int(k[1]), k[2]))
for c in cases:
    cg = med.get(("cachegrid",) + c); rd = med.get(("redis",) + c)
    if not cg or not rd: continue
    cr = statistics.median(x[0] for x in cg); rr = statistics.median(x[0] for x in rd)
    cp = statistics.median(x[1] for x in cg); rp = statistics.median(x[1] for x in rd)
    keys = "1 hot key" if c[2] == "hot" else "-r 100000"
    print(f"| {c[3]} | {c[0]} | {c[1]} B | {keys} | {cr:,.0f} | {rr:,.0f} | {cr/rr:.2f} | {cp:.3f} | {rp:.3f} | {cp/rp if rp else float('nan'):.2f} |")
print("\nMemory: 1,000,000 distinct keys, 100 B values, loaded with redis-cli --pipe\n" if True else "")
print("| server | keys | used_memory/key | RSS/key |")
print("|---|---|---|---|")
mem = {r["server"]: r for r in csv.DictReader(open(sys.argv[2]))}
per = {}
for s, r in mem.items():
    k = int(r["keys"]) or 1
    used = (int(r["used_after"]) - int(r["used_before"])) / k
    rss = (int(r["rss_after"]) - int(r["rss_before"])) / k
    per[s] = (used, rss)
    print(f"| {s} | {r['keys']} | {used:.1f} B | {rss:.1f} B |")
if "cachegrid" in per and "redis" in per:
    print(f"\nBytes per key, cachegrid/redis: used_memory {per['cachegrid'][0]/per['redis'][0]:.2f}, RSS {per['cachegrid'][1]/per['redis'][1]:.2f}")
PY
