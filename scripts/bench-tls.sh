#!/usr/bin/env bash
# TLS throughput side by side, in one run: redis-benchmark against a cachegrid node and a
# redis-server, each on a plaintext port and a TLS port (certificates made here with openssl,
# client certificates required on both), servers alternating, medians of --reps runs, and
# cachegrid/redis ratios. With --base BIN, a second cachegrid binary (e.g. one built from main
# before TLS) runs the plaintext cases too, to check that the plaintext path did not slow down.
#
# Usage: [BIN=path] scripts/bench-tls.sh [--quick] [--reps N] [--base BIN]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

QUICK=0; REPS=3; BASE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --reps) REPS="$2"; shift ;;
    --base) BASE="$2"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

# BIN=path runs a binary already built; otherwise this checkout's release build.
if [ -z "${BIN:-}" ]; then
  echo "==> building cachegrid (release)" >&2
  cargo build --release --quiet --bin cachegrid
  BIN=target/release/cachegrid
fi

WORK=$(mktemp -d)
cleanup() { stop_children; rm -rf "$WORK"; }
trap cleanup EXIT

# A CA, and one certificate for 127.0.0.1 that serves and connects.
(
  cd "$WORK"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=bench CA" -keyout ca.key -out ca.crt 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=bench" -keyout node.key -out node.csr 2>/dev/null
  printf "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n" > ext.cnf
  openssl x509 -req -in node.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf \
    -out node.crt 2>/dev/null
)
TLS_FILES=(--tls-cert-file "$WORK/node.crt" --tls-key-file "$WORK/node.key" --tls-ca-cert-file "$WORK/ca.crt")

CG=$(free_port); CG_TLS=$(free_port); RD=$(free_port); RD_TLS=$(free_port)
"$BIN" node --port "$CG" --tls-port "$CG_TLS" "${TLS_FILES[@]}" --admin-port "$(free_port)" \
  --log-level warn 2>"$WORK/cachegrid.log" &
PIDS+=($!)
redis-server --port "$RD" --tls-port "$RD_TLS" "${TLS_FILES[@]}" --bind 127.0.0.1 --save "" \
  --appendonly no --dir "$WORK" --logfile "$WORK/redis.log" &
PIDS+=($!)
PORTS=("$CG" "$RD")
if [ -n "$BASE" ]; then
  BASE_PORT=$(free_port)
  "$BASE" node --port "$BASE_PORT" --admin-port "$(free_port)" --log-level warn 2>"$WORK/base.log" &
  PIDS+=($!)
  PORTS+=("$BASE_PORT")
fi
for port in "${PORTS[@]}"; do
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
done

if [ "$QUICK" = 1 ]; then N=20000; NP=100000; else N=200000; NP=1000000; fi
CLIENT_TLS=(--tls --cacert "$WORK/ca.crt" --cert "$WORK/node.crt" --key "$WORK/node.key")

# rps of one redis-benchmark run: bench PORT TLS(0/1) TEST PIPELINE REQUESTS
bench() {
  local extra=()
  [ "$2" = 1 ] && extra=("${CLIENT_TLS[@]}")
  redis-benchmark -p "$1" "${extra[@]}" -t "$3" -P "$4" -n "$5" -c 50 -r 100000 -d 100 -q --csv 2>/dev/null |
    awk -F'","' 'NR==2 { print $2 }'
}

RESULTS="$WORK/results.csv"
for rep in $(seq "$REPS"); do
  for test in set get; do
    for p in 1 16; do
      n=$N; [ "$p" = 16 ] && n=$NP
      for tls in 0 1; do
        cgp=$CG; rdp=$RD
        [ "$tls" = 1 ] && cgp=$CG_TLS && rdp=$RD_TLS
        echo "$test,$p,$tls,cachegrid,$(bench "$cgp" "$tls" "$test" "$p" "$n")" >>"$RESULTS"
        echo "$test,$p,$tls,redis,$(bench "$rdp" "$tls" "$test" "$p" "$n")" >>"$RESULTS"
        if [ -n "$BASE" ] && [ "$tls" = 0 ]; then
          echo "$test,$p,$tls,base,$(bench "$BASE_PORT" 0 "$test" "$p" "$n")" >>"$RESULTS"
        fi
      done
    done
  done
  echo "==> rep $rep done" >&2
done

python3 - "$RESULTS" <<'EOF'
import csv, statistics, sys
rows = {}
for test, p, tls, who, rps in csv.reader(open(sys.argv[1])):
    if rps:
        rows.setdefault((test, p, tls, who), []).append(float(rps))
med = {k: statistics.median(v) for k, v in rows.items()}
print("| test | pipeline | transport | cachegrid rps | redis rps | cachegrid/redis | base cachegrid rps | this/base |")
print("|---|---|---|---|---|---|---|---|")
for test in ("set", "get"):
    for p in ("1", "16"):
        for tls in ("0", "1"):
            cg, rd = med.get((test, p, tls, "cachegrid")), med.get((test, p, tls, "redis"))
            base = med.get((test, p, tls, "base"))
            if not cg or not rd:
                continue
            b = f"{base:,.0f} | {cg / base:.2f}" if base else "– | –"
            t = "TLS" if tls == "1" else "plain"
            print(f"| {test.upper()} | {p} | {t} | {cg:,.0f} | {rd:,.0f} | {cg / rd:.2f} | {b} |")
EOF
