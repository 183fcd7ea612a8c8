#!/usr/bin/env bash
# The grid benchmark of issue 4, in one run on this machine:
#   1. throughput and CPU per request: our 3-node grid (R=0 and the default R=1) against a
#      3-node Redis Cluster (no replicas), and a grid of one against a one-node Redis Cluster,
#      with `redis-benchmark --cluster -r 100000 -t set|get` at -P 1 and -P 16, -c 50 (plain
#      mode for one node: redis-benchmark refuses --cluster with fewer than two); all
#      systems stay up, runs alternate between them (the order rotates per repetition),
#      medians over --reps; CPU is utime+stime of every server process of the system under
#      test (/proc/PID/stat) over the run, divided by its requests;
#   2. failover: a 3-node grid (R=1, cluster-node-timeout 1000 ms) with a writer looping over
#      keys of one member's slots; SIGKILL that member (once a follower, once the Raft
#      leader, each in a fresh grid) and time until the map no longer names it and until
#      every one of those keys takes a write again;
#   3. a join: a 3-node grid (R=1) loaded with --keys distinct keys, a 4th node joins (zone-a
#      again); slots whose primary changed and (slot, node) copies received, against the
#      minimum (the joiner's share), and the time until every migration is handed over.
# On a 2-core machine the systems share the cores with each other and with redis-benchmark:
# throughput ratios say little about scaling, CPU per request says more.
#
# Usage: scripts/bench-grid.sh [--reps N] [--requests N] [--keys N] [--node-timeout MS]
#            [--quick] [--out FILE]
#   --reps      repetitions per throughput case (default 3)
#   --requests  requests per -P 1 run (default 600000; -P 16 runs use 5x as many). With
#               --cluster, redis-benchmark runs one thread per node and notices the end on
#               its 250 ms throughput tick, so a run's time is rounded up to 250 ms steps:
#               runs must last several seconds for req/s to mean anything.
#   --keys      keys loaded before the join (default 100000)
#   --node-timeout  cluster-node-timeout (ms) of the throughput grids (default 1000, the
#               default; a member cut off from the leader for half of it answers CLUSTERDOWN)
#   --quick     a smoke run: 1 rep, 20000 requests, 10000 keys (not for the record)
#   --out       also write the markdown tables to FILE
#   --failover-only N  only part 2, N kills of each kind, each in a fresh grid; prints one
#               JSON line per kill and the median and maximum time until all keys took writes
#   --bin PATH  run this cachegrid binary instead of building the release one
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

REPS=3; REQUESTS=600000; KEYS=100000; NODE_TIMEOUT=1000; OUT=""; FAILOVER_ONLY=0; BIN=""
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS="$2"; shift ;;
    --requests) REQUESTS="$2"; shift ;;
    --keys) KEYS="$2"; shift ;;
    --node-timeout) NODE_TIMEOUT="$2"; shift ;;
    --quick) REPS=1; REQUESTS=20000; KEYS=10000 ;;
    --out) OUT="$2"; shift ;;
    --failover-only) FAILOVER_ONLY="$2"; shift ;;
    --bin) BIN="$2"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

need_tools "redis-server redis-benchmark redis-cli python3" "redis-server redis-tools python3"

if [ -z "$BIN" ]; then
  echo "==> building cachegrid (release)" >&2
  cargo build --release --quiet --bin cachegrid -p cachegrid
  BIN=target/release/cachegrid
fi

TMP=$(mktemp -d)
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
echo "==> load average at start: $LOAD_START" >&2

# The cluster side of the benchmark in Python (standard library only): RESP over sockets,
# CLUSTER SLOTS, the admin port's /cluster/moving, key slots (CRC16), the failover clock.
cat >"$TMP/grid.py" <<'PY'
import json, os, signal, socket, sys, time, urllib.request

class Err(str):
    pass

def read(f):
    line = f.readline()
    if not line:
        raise ConnectionError("closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+": return rest.decode()
    if kind == b"-": return Err(rest.decode())
    if kind == b":": return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0: return None
        data = f.read(n + 2)[:-2]
        return data.decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [read(f) for _ in range(n)]
    raise ValueError(f"unexpected reply {line!r}")

def encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)

class Conn:
    def __init__(self, port, timeout=2.0):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.f = self.s.makefile("rb")
    def cmd(self, *args):
        self.s.sendall(encode(*args))
        return read(self.f)
    def close(self):
        self.s.close()

def cmd(port, *args, timeout=2.0):
    c = Conn(port, timeout)
    try:
        return c.cmd(*args)
    finally:
        c.close()

def crc16(data):
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc

def key_slot(key):
    k = key.encode()
    s = k.find(b"{")
    if s >= 0:
        e = k.find(b"}", s + 1)
        if e > s + 1:
            k = k[s + 1:e]
    return crc16(k) % 16384

def owners(port):
    """Per slot: (primary port, sorted ports of every copy); None where unassigned."""
    table = [None] * 16384
    for entry in cmd(port, "CLUSTER", "SLOTS"):
        start, end, nodes = entry[0], entry[1], entry[2:]
        primary = nodes[0][1]
        copies = tuple(sorted(n[1] for n in nodes))
        for s in range(start, end + 1):
            table[s] = (primary, copies)
    return table

def info(port):
    text = cmd(port, "CLUSTER", "INFO")
    return dict(l.split(":", 1) for l in text.replace("\r", "").split("\n") if ":" in l)

def http_get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
        return r.read().decode()

def ints(arg):
    return [int(x) for x in arg.split(",") if x]

def wait_grid(ports, admins, label, limit=300):
    """Until no member has slots leaving, all agree on the map, and CLUSTER INFO is ok with
    every member known. Prints progress to stderr; returns the seconds it took."""
    start = time.time(); last = 0.0; moving = "?"
    while time.time() - start < limit:
        try:
            moves = [http_get(a, "/cluster/moving").split() for a in admins]
            moving = max(int(m[m.index("slots_moving") + 1]) for m in moves)
            if all(m[m.index("slots_leaving") + 1] == "0" for m in moves) and all(m == moves[0] for m in moves):
                infos = [info(p) for p in ports]
                slots = [cmd(p, "CLUSTER", "SLOTS") for p in ports]
                if (all(i.get("cluster_state") == "ok" and i.get("cluster_known_nodes") == str(len(ports))
                        and i.get("cluster_current_epoch", "0") != "0" for i in infos)
                        and len({i["cluster_current_epoch"] for i in infos}) == 1
                        and all(s == slots[0] for s in slots)):
                    again = [http_get(a, "/cluster/moving") for a in admins]
                    if all(" slots_leaving 0 " in t for t in again) and len(set(again)) == 1:
                        return time.time() - start
        except (OSError, ValueError, ConnectionError):
            pass
        if time.time() - last > 2:
            print(f"    {label}: waiting for the grid to settle ({time.time() - start:.0f} s, slots moving: {moving})", file=sys.stderr)
            last = time.time()
        time.sleep(0.1)
    sys.exit(f"{label}: the grid did not settle in {limit} s")

def wait_redis_cluster(ports, limit=60):
    start = time.time()
    while time.time() - start < limit:
        try:
            infos = [info(p) for p in ports]
            if all(i.get("cluster_state") == "ok" and i.get("cluster_slots_ok") == "16384" for i in infos):
                return time.time() - start
        except (OSError, ConnectionError):
            pass
        time.sleep(0.1)
    sys.exit("the Redis Cluster never reached cluster_state:ok")

def load(port, n):
    """SETs key:0..n-1 (100-byte values), each sent to its slot's primary, pipelined."""
    table = owners(port)
    value = b"v" * 100
    per = {}
    for i in range(n):
        key = f"key:{i}"
        per.setdefault(table[key_slot(key)][0], []).append(encode("SET", key, value))
    bad = 0
    for p, cmds in per.items():
        c = Conn(p, timeout=30)
        for i in range(0, len(cmds), 1000):
            chunk = cmds[i:i + 1000]
            # A member that just joined can be fenced (CLUSTERDOWN) for a few seconds while
            # it applies the log: refused SETs are sent again for up to 30 s.
            for attempt in range(60):
                c.s.sendall(b"".join(chunk))
                chunk = [cmd for cmd in chunk if read(c.f) != "OK"]
                if not chunk:
                    break
                time.sleep(0.5)
            bad += len(chunk)
        c.close()
    if bad:
        sys.exit(f"{bad} of {n} SETs were refused")

def dbsize(port):
    return cmd(port, "DBSIZE")

def write_once(port, key, alive, value):
    """One SET of key through port, following one MOVED to a member in alive."""
    try:
        r = cmd(port, "SET", key, value, timeout=0.5)
        if isinstance(r, Err) and r.startswith(("MOVED", "ASK")):
            target = int(r.split()[2].rsplit(":", 1)[1])
            if target not in alive:
                return False
            c = Conn(target, timeout=0.5)
            try:
                if r.startswith("ASK"):
                    c.cmd("ASKING")
                r = c.cmd("SET", key, value)
            finally:
                c.close()
        return r == "OK"
    except (OSError, ConnectionError, ValueError):
        return False

def failover(ports_arg, victim_port, victim_pid):
    """SIGKILLs the victim while writing to 20 keys of its slots through the others; prints
    seconds from the kill until the map names it no more and until every key took a write."""
    ports = ints(ports_arg)
    alive = [p for p in ports if p != victim_port]
    table = owners(alive[0])
    keys = []; i = 0
    while len(keys) < 20:
        key = f"failover:{i}"
        if table[key_slot(key)][0] == victim_port:
            keys.append(key)
        i += 1
    # Writes succeed before the kill (the writer follows MOVED to the victim then).
    for k in keys:
        if not write_once(alive[0], k, ports, "before"):
            sys.exit(f"a write to {k} failed before the kill")
    os.kill(victim_pid, signal.SIGKILL)
    killed = time.time()
    map_s = first_s = all_s = None; done = set(); failed_writes = 0; n = 0
    while time.time() - killed < 60 and (map_s is None or all_s is None):
        now = time.time() - killed
        if map_s is None:
            try:
                named = any(victim_port in (t[1] if t else ()) for t in owners(alive[0]))
                if not named:
                    map_s = now
            except (OSError, ConnectionError, ValueError):
                pass
        for k in keys:
            if k in done:
                continue
            n += 1
            if write_once(alive[n % len(alive)], k, alive, "after"):
                done.add(k)
                first_s = first_s if first_s is not None else time.time() - killed
            else:
                failed_writes += 1
        if all_s is None and len(done) == len(keys):
            all_s = time.time() - killed
        time.sleep(0.01)
    print(json.dumps({"map_s": map_s, "first_write_s": first_s, "all_writes_s": all_s,
                      "failed_writes": failed_writes, "keys": len(keys)}))

def moved(before_file, after_file, joiner):
    before = json.load(open(before_file)); after = json.load(open(after_file))
    primaries = sum(1 for b, a in zip(before, after) if b[0] != a[0])
    copies = sum(len(set(a[1]) - set(b[1])) for b, a in zip(before, after))
    joiner_primary = sum(1 for a in after if a[0] == joiner)
    joiner_copies = sum(1 for a in after if joiner in a[1])
    print(json.dumps({"primaries_moved": primaries, "copies_moved": copies,
                      "joiner_primary": joiner_primary, "joiner_copies": joiner_copies}))

if __name__ == "__main__":
    op, args = sys.argv[1], sys.argv[2:]
    if op == "wait-grid":
        print(f"{wait_grid(ints(args[0]), ints(args[1]), args[2]):.2f}")
    elif op == "wait-redis-cluster":
        print(f"{wait_redis_cluster(ints(args[0])):.2f}")
    elif op == "owners":
        print(json.dumps(owners(int(args[0]))))
    elif op == "load":
        load(int(args[0]), int(args[1]))
    elif op == "dbsize":
        print(sum(dbsize(p) for p in ints(args[0])))
    elif op == "failover":
        failover(args[0], int(args[1]), int(args[2]))
    elif op == "moved":
        moved(args[0], args[1], int(args[2]))
    elif op == "leader":
        nodes = json.loads(http_get(int(args[0]), "/cluster"))["nodes"]
        print(next(n["address"].rsplit(":", 1)[1] for n in nodes if n.get("leader")))
    else:
        sys.exit(f"unknown op {op}")
PY
g() { python3 "$TMP/grid.py" "$@"; }

wait_ping() { for _ in $(seq 300); do redis-cli -p "$1" ping >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "port $1 never answered" >&2; exit 1; }

# Per system: its client ports and server PIDs (space separated).
declare -A SYS_PORTS SYS_PIDS SYS_ADMINS SYS_SEED

# start_grid NAME N REPLICAS TIMEOUT: a grid of N cachegrid nodes (zones a, b, c in turn),
# each joining the one before; waits until it has settled.
start_grid() {
  local name=$1 n=$2 replicas=$3 timeout=$4 i port bus admin seed="" zones=(zone-a zone-b zone-c)
  SYS_PORTS[$name]=""; SYS_PIDS[$name]=""; SYS_ADMINS[$name]=""
  for i in $(seq 0 $((n - 1))); do
    port=$(free_port); bus=$(free_port); admin=$(free_port)
    local args=(node --port "$port" --bind 127.0.0.1 --dir "$TMP/$name-$i" --zone "${zones[$((i % 3))]}"
      --cluster-port "$bus" --admin-port "$admin" --cluster-node-timeout "$timeout" --log-level warn)
    if [ -z "$seed" ]; then args+=(--cluster-enabled true); else args+=(--join "$seed"); fi
    CACHEGRID_CLUSTER_REPLICAS=$replicas "$BIN" "${args[@]}" 2>>"$TMP/$name.log" & PIDS+=($!)
    SYS_PIDS[$name]+="$! "; SYS_PORTS[$name]+="$port "; SYS_ADMINS[$name]+="$admin "
    wait_ping "$port"
    seed="127.0.0.1:$port@$bus"
    if [ "$i" = 0 ]; then SYS_SEED[$name]=$seed; fi
  done
  local secs
  secs=$(g wait-grid "$(csv "${SYS_PORTS[$name]}")" "$(csv "${SYS_ADMINS[$name]}")" "$name")
  echo "    $name: $n node(s), R=$replicas, settled in $secs s" >&2
}
csv() { echo $1 | tr ' ' ','; }

# start_redis_cluster NAME N: N redis-server masters in cluster mode holding all slots.
start_redis_cluster() {
  local name=$1 n=$2 i port bus addrs=()
  SYS_PORTS[$name]=""; SYS_PIDS[$name]=""
  for i in $(seq 0 $((n - 1))); do
    port=$(free_port); bus=$(free_port)
    mkdir -p "$TMP/$name-$i"
    redis-server --port "$port" --cluster-port "$bus" --cluster-enabled yes \
      --cluster-config-file "$TMP/$name-$i/nodes-$port.conf" --dir "$TMP/$name-$i" \
      --save '' --appendonly no --bind 127.0.0.1 --logfile "$TMP/$name-$i/redis.log" & PIDS+=($!)
    SYS_PIDS[$name]+="$! "; SYS_PORTS[$name]+="$port "
    addrs+=("127.0.0.1:$port")
    wait_ping "$port"
  done
  if [ "$n" -ge 3 ]; then
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes >"$TMP/$name-create.log"
  else
    redis-cli -p "$port" cluster addslotsrange 0 16383 >/dev/null
  fi
  local secs
  secs=$(g wait-redis-cluster "$(csv "${SYS_PORTS[$name]}")")
  echo "    $name: $n redis-server(s) in cluster mode, ok after $secs s" >&2
}

# CPU ticks (1/100 s) used so far by a system's server processes (every thread included).
ticks() {
  local total=0 p
  for p in $1; do
    [ -r "/proc/$p/stat" ] && total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}

# One SIGKILL of a 3-node grid's follower or Raft leader: appends "kind,{json}" to $FAILOVER.
failover_once() {
  local victim_kind=$1 name=fo-$1-$2 i victim leader out
  echo "==> failover: SIGKILL the $victim_kind of a 3-node grid (R=1, node timeout 1000 ms)" >&2
  start_grid "$name" 3 1 1000
  g load "${SYS_PORTS[$name]%% *}" 10000
  leader=$(g leader "${SYS_ADMINS[$name]%% *}")
  ports=(${SYS_PORTS[$name]}); pids=(${SYS_PIDS[$name]})
  victim=""
  for i in 0 1 2; do
    if { [ "$victim_kind" = leader ] && [ "${ports[$i]}" = "$leader" ]; } ||
       { [ "$victim_kind" = follower ] && [ "${ports[$i]}" != "$leader" ]; }; then victim=$i; fi
  done
  out=$(g failover "$(csv "${SYS_PORTS[$name]}")" "${ports[$victim]}" "${pids[$victim]}")
  echo "    $out" >&2
  echo "$victim_kind,$out" >>"$FAILOVER"
  for p in ${SYS_PIDS[$name]}; do kill "$p" 2>/dev/null || true; done
}

FAILOVER="$TMP/failover.csv"; : >"$FAILOVER"
if [ "$FAILOVER_ONLY" -gt 0 ]; then
  for i in $(seq "$FAILOVER_ONLY"); do
    for victim_kind in follower leader; do
      echo "==> failover $i/$FAILOVER_ONLY" >&2
      failover_once "$victim_kind" "$i"
    done
  done
  python3 - "$FAILOVER" <<'PY'
import json, statistics, sys
by = {}
for line in open(sys.argv[1]):
    kind, rest = line.split(",", 1)
    by.setdefault(kind, []).append(json.loads(rest)["all_writes_s"])
for kind, times in by.items():
    ok = [t for t in times if t is not None]
    print(f"{kind}: {len(times)} kills, all keys writable again after: median {statistics.median(ok):.2f} s, "
          f"max {max(ok):.2f} s, each {', '.join(f'{t:.2f}' for t in ok)}; never: {len(times) - len(ok)}")
PY
  exit 0
fi
SYSTEMS=(grid3-r0 grid3-r1 redis-cluster3 grid1 redis-cluster1)
echo "==> starting the systems under test" >&2
start_grid grid3-r0 3 0 "$NODE_TIMEOUT"
start_grid grid3-r1 3 1 "$NODE_TIMEOUT"
start_redis_cluster redis-cluster3 3
start_grid grid1 1 0 "$NODE_TIMEOUT"
start_redis_cluster redis-cluster1 1

# What the idle systems cost while another is measured.
IDLE="$TMP/idle.csv"; : >"$IDLE"
declare -A T0
for s in "${SYSTEMS[@]}"; do T0[$s]=$(ticks "${SYS_PIDS[$s]}"); done
sleep 5
for s in "${SYSTEMS[@]}"; do echo "$s,$(( ($(ticks "${SYS_PIDS[$s]}") - T0[$s]) * 10 / 5 ))" >>"$IDLE"; done

RESULTS="$TMP/results.csv"; : >"$RESULTS"; : >"$TMP/errors.log"
LOADS="$TMP/loads"; : >"$LOADS"
total=$((REPS * 2 * 2 * ${#SYSTEMS[@]})); done_runs=0
echo "==> throughput: $REPS reps x -P 1,16 x set,get x ${#SYSTEMS[@]} systems = $total runs" >&2
for rep in $(seq "$REPS"); do
  # Rotate the order per repetition so drift on the machine hits every system alike.
  order=("${SYSTEMS[@]:$(( (rep - 1) % ${#SYSTEMS[@]} ))}" "${SYSTEMS[@]:0:$(( (rep - 1) % ${#SYSTEMS[@]} ))}")
  for pipeline in 1 16; do
    n=$REQUESTS; [ "$pipeline" = 16 ] && n=$((REQUESTS * 5))
    for test in set get; do
      for s in "${order[@]}"; do
        port=${SYS_PORTS[$s]%% *}
        t0=$(ticks "${SYS_PIDS[$s]}")
        # redis-benchmark refuses --cluster with one node ("Invalid cluster"): a single node
        # holds every slot, so plain mode sends every key to the right node anyway.
        cluster=(--cluster); [ "${SYS_PORTS[$s]}" = "$port " ] && cluster=()
        # redis-benchmark counts error replies as requests, and in cluster mode it can stall
        # for good after a burst of them: errors are counted, a stalled run is cut off.
        rps=$(timeout 300 redis-benchmark "${cluster[@]}" -h 127.0.0.1 -p "$port" -c 50 -n "$n" -P "$pipeline" -r 100000 -t "$test" --csv 2>"$TMP/bench.err" \
          | awk -F'","' 'toupper($1) ~ /"(SET|GET)$/ {print $2}' || true)
        t1=$(ticks "${SYS_PIDS[$s]}")
        errors=$(grep -c "^Error from server" "$TMP/bench.err" || true)
        if [ -s "$TMP/bench.err" ]; then
          { echo "--- $s -P $pipeline $test, rep $rep"; sort "$TMP/bench.err" | uniq -c | sort -rn | head -5; } >>"$TMP/errors.log"
        fi
        [ -n "$rps" ] || { rps=NA; echo; echo "    $s -P $pipeline $test: no figure (stalled or failed)" >&2; }
        echo "$s,$pipeline,$test,$rps,$(( (t1 - t0) * 10000000 / n )),$errors" >>"$RESULTS"
        done_runs=$((done_runs + 1))
        printf '\r==> throughput: %d/%d runs (load %s)   ' "$done_runs" "$total" "$(cut -d' ' -f1 /proc/loadavg)" >&2
      done
    done
  done
  cut -d' ' -f1 /proc/loadavg >>"$LOADS"
done
echo >&2
LOAD_BENCH=$(sort -n "$LOADS" | tr '\n' ' ')

# Throughput systems down before the failover and join parts.
for s in "${SYSTEMS[@]}"; do for p in ${SYS_PIDS[$s]}; do kill "$p" 2>/dev/null || true; done; done
sleep 1

for victim_kind in follower leader; do
  failover_once "$victim_kind" 0
done

echo "==> join: a 4th node joins a 3-node grid (R=1) holding $KEYS keys" >&2
start_grid join 3 1 1000
first=${SYS_PORTS[join]%% *}
g load "$first" "$KEYS"
KEYS_BEFORE=$(g dbsize "$(csv "${SYS_PORTS[join]}")")
g owners "$first" >"$TMP/before.json"
port=$(free_port); bus=$(free_port); admin=$(free_port)
JOIN_START=$(date +%s.%N)
"$BIN" node --port "$port" --bind 127.0.0.1 --dir "$TMP/join-3" --zone zone-a --cluster-port "$bus" \
  --admin-port "$admin" --cluster-node-timeout 1000 --log-level warn --join "${SYS_SEED[join]}" \
  2>>"$TMP/join.log" & PIDS+=($!)
SYS_PIDS[join]+="$! "; SYS_PORTS[join]+="$port "; SYS_ADMINS[join]+="$admin "
g wait-grid "$(csv "${SYS_PORTS[join]}")" "$(csv "${SYS_ADMINS[join]}")" join >/dev/null
JOIN_SECS=$(echo "$(date +%s.%N) - $JOIN_START" | bc -l)
g owners "$first" >"$TMP/after.json"
MOVED=$(g moved "$TMP/before.json" "$TMP/after.json" "$port")
JOINER_KEYS=$(g dbsize "$port")
KEYS_AFTER=$(g dbsize "$(csv "${SYS_PORTS[join]}")")
echo "    $MOVED, joiner holds $JOINER_KEYS keys, settled in $JOIN_SECS s" >&2
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$RESULTS" "$IDLE" "$FAILOVER" "$MOVED" "$KEYS" "$KEYS_BEFORE" "$KEYS_AFTER" "$JOINER_KEYS" "$JOIN_SECS" \
  "$REPS" "$REQUESTS" "$LOAD_START" "$LOAD_BENCH" "$LOAD_END" <<'PY' | tee "${OUT:-/dev/null}"
import csv, json, statistics, sys
from collections import defaultdict
(results, idle, failover, moved, keys, keys_before, keys_after, joiner_keys, join_secs,
 reps, requests, load_start, load_bench, load_end) = sys.argv[1:]
med = defaultdict(list); errs = defaultdict(int); failed = defaultdict(int)
for s, p, t, rps, ns, e in csv.reader(open(results)):
    errs[s] += int(e)
    if rps == "NA":
        failed[s] += 1
    else:
        med[(s, p, t)].append((float(rps), int(ns)))
nan = float("nan")
m = defaultdict(lambda: (nan, nan))
m.update({k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in med.items()})
names = {"grid3-r0": "grid, 3 nodes, R=0", "grid3-r1": "grid, 3 nodes, R=1 (default)",
         "redis-cluster3": "Redis Cluster, 3 masters", "grid1": "grid of one",
         "redis-cluster1": "Redis Cluster of one"}
print(f"load average: {load_start} at the start, {load_bench.strip()} after each repetition, {load_end} at the end\n")
print(f"Throughput: redis-benchmark --cluster -c 50 -r 100000, {requests} requests at -P 1 and "
      f"{int(requests) * 5} at -P 16, median of {reps}; CPU = server processes' utime+stime per request\n")
print("| system | -P | SET req/s | GET req/s | SET CPU ns/req | GET CPU ns/req |")
print("|---|---|---:|---:|---:|---:|")
for s in names:
    for p in ("1", "16"):
        print(f"| {names[s]} | {p} | {m[(s,p,'set')][0]:,.0f} | {m[(s,p,'get')][0]:,.0f} | "
              f"{m[(s,p,'set')][1]:,.0f} | {m[(s,p,'get')][1]:,.0f} |")
print("\nRatios (throughput: higher is better for the first; CPU: lower is better for the first)\n")
print("| comparison | -P | SET req/s | GET req/s | SET CPU/req | GET CPU/req |")
print("|---|---|---:|---:|---:|---:|")
for a, b in (("grid3-r0", "redis-cluster3"), ("grid3-r1", "redis-cluster3"), ("grid3-r0", "grid1"),
             ("grid3-r1", "grid1"), ("redis-cluster3", "redis-cluster1"), ("grid1", "redis-cluster1")):
    for p in ("1", "16"):
        r = [m[(a, p, t)][0] / m[(b, p, t)][0] for t in ("set", "get")]
        c = [m[(a, p, t)][1] / m[(b, p, t)][1] if m[(b, p, t)][1] else nan for t in ("set", "get")]
        print(f"| {names[a]} / {names[b]} | {p} | {r[0]:.2f} | {r[1]:.2f} | {c[0]:.2f} | {c[1]:.2f} |")
print("\nError replies seen by redis-benchmark (counted by it as requests) and runs that gave no figure:",
      ", ".join(f"{names[s]} {errs[s]} errors, {failed[s]} runs" for s in names))
print("\nIdle CPU of each system while the others are measured (ms of CPU per second):",
      ", ".join(f"{names[s]} {v}" for s, v in csv.reader(open(idle))))
print("\nFailover: 3-node grid, R=1, cluster-node-timeout 1000 ms, 20 keys of the victim's slots written in a loop through the survivors\n")
print("| SIGKILLed | map without it | first write ok | all 20 keys writable | failed write attempts meanwhile |")
print("|---|---:|---:|---:|---:|")
for line in open(failover):
    kind, js = line.split(",", 1)
    f = json.loads(js)
    fmt = lambda x: "-" if x is None else f"{x:.2f} s"
    print(f"| {kind} | {fmt(f['map_s'])} | {fmt(f['first_write_s'])} | {fmt(f['all_writes_s'])} | {f['failed_writes']} |")
mv = json.loads(moved)
print(f"\nJoin: 3 → 4 nodes (zones a,b,c + a), R=1, {int(keys):,} keys loaded (DBSIZE summed, replica copies included: {keys_before} before, {keys_after} after)\n")
print("| measure | moved | minimum | ratio |")
print("|---|---:|---:|---:|")
print(f"| slots whose primary changed | {mv['primaries_moved']} | {mv['joiner_primary']} (the joiner's; ⌈16384/4⌉ = 4096) | {mv['primaries_moved'] / max(1, mv['joiner_primary']):.2f} |")
print(f"| (slot, node) copies received | {mv['copies_moved']} | {mv['joiner_copies']} (the joiner's) | {mv['copies_moved'] / max(1, mv['joiner_copies']):.2f} |")
print(f"\nThe joiner holds {joiner_keys} keys (primary and replica copies); the grid settled {float(join_secs):.1f} s after the joiner started.")
PY
if [ -s "$TMP/errors.log" ]; then
  { echo "==> redis-benchmark's stderr (most frequent lines per run that had any):"; cat "$TMP/errors.log"; } >&2
fi
