#!/usr/bin/env bash
# Write-behind benchmark, side by side in one run: a node with no Postgres and a node whose
# `key:*` key space is written behind to a throwaway Postgres (initdb into a temp dir, run as
# the postgres user when we are root), loaded in turn by redis-benchmark.
#
# Reports: SET/s into the backed key space vs the plain node (target >= 90 %), rows written
# per client write under a hot-key workload (1,000 keys), and the grid's p99 while Postgres is
# SIGKILLed vs while it is up (target <= 1.1x). Only ratios from one run mean anything on a
# shared, noisy machine.
#
# Usage: scripts/bench-writebehind.sh [--quick] [--reps N] [--out FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

QUICK=0; REPS=3; OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --reps) REPS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
N=1000000; [ "$QUICK" = 1 ] && N=200000

PGBIN=$(dirname "$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb | tail -1)")
echo "==> building cachegrid (release)" >&2
cargo build --release --quiet
BIN=target/release/cachegrid

WORK=$(mktemp -d); chmod 755 "$WORK"
PG_PORT=$(free_port); PLAIN_PORT=$(free_port); BACKED_PORT=$(free_port)
AS_PG=(); [ "$(id -u)" = 0 ] && AS_PG=(runuser -u postgres --)
mkdir -p "$WORK/pg"; [ "$(id -u)" = 0 ] && chown postgres "$WORK/pg"

pg_start() {
  "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/log" -w \
    -o "-p $PG_PORT -k $WORK/pg -c listen_addresses=127.0.0.1" start >/dev/null
}
pg_kill() {
  local pid; pid=$(head -1 "$WORK/pg/data/postmaster.pid")
  local kids; kids=$(pgrep -P "$pid" || true)
  kill -KILL "$pid" $kids 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
}
cleanup() {
  kill "${PLAIN_PID:-}" "${BACKED_PID:-}" 2>/dev/null || true
  [ -f "$WORK/pg/data/postmaster.pid" ] && pg_kill
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "==> starting a throwaway Postgres on $PG_PORT" >&2
"${AS_PG[@]}" "$PGBIN/initdb" -D "$WORK/pg/data" -A trust -U postgres >/dev/null
pg_start

cat >"$WORK/backed.toml" <<TOML
postgres-url = "host=127.0.0.1 port=$PG_PORT user=postgres dbname=postgres"

[[keyspace]]
name = "bench"
pattern = "key:*"
table = "bench"
queue-max-bytes = "4gb"
TOML
mkdir -p "$WORK/plain" "$WORK/backed"
"$BIN" node --port "$PLAIN_PORT" --dir "$WORK/plain" --log-level warn 2>"$WORK/plain.log" &
PLAIN_PID=$!
"$BIN" node --port "$BACKED_PORT" --dir "$WORK/backed" --config "$WORK/backed.toml" --log-level info 2>"$WORK/backed.log" &
BACKED_PID=$!
for p in "$PLAIN_PORT" "$BACKED_PORT"; do
  until redis-cli -p "$p" ping >/dev/null 2>&1; do sleep 0.05; done
done

field() { redis-cli -p "$BACKED_PORT" info persistence | tr ',' '\n' | sed -n "s/^$1=//p" | tr -d '\r'; }
rps() { redis-benchmark -p "$1" -t set -n "$N" -r 100000 -P 16 -c 50 -q --csv | tail -1 | cut -d, -f2 | tr -d '"'; }
# CPU ticks (1/100 s) used so far by a process and its live children: on a shared machine CPU
# per request is a steadier measure than requests per second.
ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    [ -r "/proc/$p/stat" ] && total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}
pg_pid() { head -1 "$WORK/pg/data/postmaster.pid"; }
# rps_cpu PORT PID FILE: runs rps, appends "rps node_us_per_req pg_us_per_req" to FILE.
rps_cpu() {
  local n0 g0 r n1 g1
  n0=$(ticks "$2"); g0=$(ticks "$(pg_pid)")
  r=$(rps "$1")
  sleep 1.5  # the write delay: the rows of this run reach Postgres before we count
  n1=$(ticks "$2"); g1=$(ticks "$(pg_pid)")
  echo "$r $(( (n1 - n0) * 10000000 / N )) $(( (g1 - g0) * 10000000 / N ))" >>"$3"
}
p99() { redis-benchmark -p "$1" -t set -n "$2" -r 100000 -c 50 --csv | tail -1 | cut -d, -f7 | tr -d '"'; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
wait_drained() {
  for _ in $(seq 1 1200); do [ "$(field pending_keys)" = 0 ] && return; sleep 0.1; done
  echo "backlog did not drain" >&2
}

echo "==> SET throughput, $REPS reps alternating, $N requests, P=16, 100k keys" >&2
: >"$WORK/plain.rps"; : >"$WORK/backed.rps"
for _ in $(seq 1 "$REPS"); do
  rps_cpu "$PLAIN_PORT" "$PLAIN_PID" "$WORK/plain.rps"
  rps_cpu "$BACKED_PORT" "$BACKED_PID" "$WORK/backed.rps"
done
PLAIN_RPS=$(cut -d' ' -f1 "$WORK/plain.rps" | median); BACKED_RPS=$(cut -d' ' -f1 "$WORK/backed.rps" | median)
PLAIN_NS=$(cut -d' ' -f2 "$WORK/plain.rps" | median); BACKED_NS=$(cut -d' ' -f2 "$WORK/backed.rps" | median)
PG_NS=$(cut -d' ' -f3 "$WORK/backed.rps" | median)
wait_drained

echo "==> hot keys: $N SETs over 1,000 keys" >&2
W0=$(field rows_written)
redis-benchmark -p "$BACKED_PORT" -t set -n "$N" -r 1000 -P 16 -c 50 -q >/dev/null
wait_drained
W1=$(field rows_written)

echo "==> p99 with Postgres up, then SIGKILLed" >&2
LAT_N=$((N / 5))
: >"$WORK/up.p99"; : >"$WORK/down.p99"
for _ in $(seq 1 "$REPS"); do p99 "$BACKED_PORT" "$LAT_N" >>"$WORK/up.p99"; done
pg_kill
sleep 1
for _ in $(seq 1 "$REPS"); do p99 "$BACKED_PORT" "$LAT_N" >>"$WORK/down.p99"; done
# Throughput with the queue only (Postgres down): the node's own cost, without Postgres's CPU.
: >"$WORK/queue.rps"; : >"$WORK/plain2.rps"
for _ in $(seq 1 "$REPS"); do
  rps "$PLAIN_PORT" >>"$WORK/plain2.rps"
  rps "$BACKED_PORT" >>"$WORK/queue.rps"
done
PLAIN2_RPS=$(median <"$WORK/plain2.rps"); QUEUE_RPS=$(median <"$WORK/queue.rps")
STATUS_DOWN=$(redis-cli -p "$BACKED_PORT" info persistence | sed -n 's/^postgres_status://p' | tr -d '\r')
QUEUED=$(field queue_bytes)
pg_start
T0=$(date +%s.%N)
wait_drained
T1=$(date +%s.%N)
UP_P99=$(median <"$WORK/up.p99"); DOWN_P99=$(median <"$WORK/down.p99")

python3 - "$PLAIN_RPS" "$BACKED_RPS" "$N" "$W0" "$W1" "$UP_P99" "$DOWN_P99" "$STATUS_DOWN" "$QUEUED" "$T0" "$T1" "$PLAIN2_RPS" "$QUEUE_RPS" "$PLAIN_NS" "$BACKED_NS" "$PG_NS" <<'PY' | tee ${OUT:+"$OUT"}
import sys
plain, backed, n, w0, w1, up, down, status, queued, t0, t1, plain2, queue, pns, bns, gns = sys.argv[1:]
pns, bns, gns = int(pns), int(bns), int(gns)
plain, backed, up, down, plain2, queue = map(float, (plain, backed, up, down, plain2, queue))
rows = int(w1) - int(w0)
print("| measure | no Postgres | write-behind to Postgres | ratio |")
print("| --- | --- | --- | --- |")
print(f"| SET/s, P=16, 50 clients, 100k keys | {plain:,.0f} | {backed:,.0f} | {backed/plain:.2f} (target >= 0.90) |")
print(f"| node CPU ns per SET (the same runs) | {pns:,} | {bns:,} | {pns/bns:.2f} (CPU-bound throughput ratio) |")
print(f"| Postgres CPU ns per SET (the same runs) | - | {gns:,} | |")
print(f"| SET/s as above, Postgres down (queue on disk only) | {plain2:,.0f} | {queue:,.0f} | {queue/plain2:.2f} |")
print(f"| rows written per client write, {int(n):,} SETs over 1,000 keys | - | {rows:,} rows | {rows/int(n):.4f} (target <= 0.20) |")
print(f"| p99 ms, SET, 50 clients, no pipelining | Postgres up: {up:.3f} | Postgres killed ({status}): {down:.3f} | {down/up:.2f} (target <= 1.1) |")
print(f"| backlog after the outage | | {int(queued):,} bytes queued, drained in {float(t1)-float(t0):.1f} s | |")
PY
