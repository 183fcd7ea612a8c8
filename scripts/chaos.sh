#!/usr/bin/env bash
# Long fault-injection runs against a real grid (tests/faults.rs's ignored `chaos` test): three
# nodes in three zones, sync replication, clients writing and reading throughout, the keys
# written behind to a throwaway Postgres, and faults one after another (a member cut off at the
# cluster bus, a primary SIGKILLed, a primary SIGSTOPped for 5-35 s, every bus message delayed,
# a failpoint crash, Postgres SIGKILLed for 5-30 s with a primary SIGKILLed during half of those
# outages). At the end every acknowledged write is read back, every shared key's history
# checked for linearizability, and Postgres must hold every key of the grid with its value (rows
# beyond the grid's keys are counted: an open defect, docs/RELIABILITY.md; FAULTS_STRICT=1 fails on them).
#
#   scripts/chaos.sh                   # 30 minutes of mixed faults
#   scripts/chaos.sh --minutes 10      # shorter
#   scripts/chaos.sh --kills 100       # 100 primary kills (SIGKILL, failover, restart)
#   scripts/chaos.sh --no-update       # do not touch docs/RELIABILITY.md
#   CHAOS_POSTGRES=0 scripts/chaos.sh  # no Postgres (and no Postgres faults)
#
# Progress is printed as it goes (one CHAOS line per fault); the log is kept in
# target/chaos-<scenario>.log. Unless --no-update, the scenario's row of the table in
# docs/RELIABILITY.md ("Long runs") is written or refreshed with the figures measured.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=30
kills=0
update=1
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --kills) kills="$2"; shift 2 ;;
    --no-update) update=0; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown flag $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ "$kills" -gt 0 ]; then scenario="chaos-primary-kills"; else scenario="chaos-mixed"; fi
log="target/chaos-$scenario.log"
mkdir -p target
echo "running $scenario (minutes=$minutes kills=$kills); log: $log" >&2

# The test build with failpoints (the crash faults need them), as scripts/test.sh builds it.
CHAOS_SECONDS=$((minutes * 60)) CHAOS_KILLS="$kills" \
  cargo nextest run --features cachegrid/failpoints --test faults --run-ignored only \
  --no-capture chaos 2>&1 | tee "$log" | grep --line-buffered -E "^(CHAOS|FAULTS|NOT LINEARIZABLE|ROWS BEYOND|thread|test result)" || true

summary=$(grep -E "^FAULTS scenario=$scenario " "$log" | tail -1 || true)
postgres=$(grep -E "^FAULTS scenario=$scenario-postgres " "$log" | tail -1 || true)
chaos=$(grep -E "^CHAOS summary" "$log" | tail -1 || true)
if [ -z "$summary" ] || [ -z "$chaos" ]; then
  echo "the run did not finish (see $log)" >&2
  exit 1
fi
echo "$chaos"
echo "$summary"
[ -z "$postgres" ] || echo "$postgres"
if ! grep -q "test result: ok" "$log"; then
  echo "the run FAILED (see $log): the figures are not written" >&2
  exit 1
fi
[ "$update" = 1 ] || exit 0

SUMMARY="$summary" CHAOS="$chaos" POSTGRES="$postgres" SCENARIO="$scenario" python3 - <<'PY'
import os, re, datetime
def fields(line):
    return dict(re.findall(r"(\w+)=(\S+)", line))
s, c = fields(os.environ["SUMMARY"]), fields(os.environ["CHAOS"])
scenario = os.environ["SCENARIO"]
minutes = int(c["seconds"]) // 60
pg = fields(os.environ.get("POSTGRES", ""))
what = {"chaos-mixed": "mixed faults (cut off, SIGKILL, SIGSTOP 5-35 s, bus delay, failpoint crash"
                       + (", Postgres SIGKILLed 5-30 s, half the time with a primary SIGKILL" if pg else "") + ")",
        "chaos-primary-kills": "primary SIGKILLed, failed over, restarted"}[scenario]
row = (f"| {scenario}: {what} | {c['faults']} faults in {minutes} min "
       f"({datetime.date.today()}) | {int(s['acked']):,} | {s['lost']} | {s['unknown']} "
       f"({s['unknown_applied']} of the own keys among them took effect) | {s['not_linearizable']} of {s.get('registers', '?')} "
       f"| failover p50 {c['failover_p50_ms']} ms, max {c['failover_max_ms']} ms; longest write pause "
       f"{s['longest_gap_ms']} ms"
       + (f"; Postgres: {int(pg['rows']):,} rows of the grid all there {pg['converged_ms']} ms after the end, "
          f"{pg['missing_or_stale']} missing or stale, **{pg['extra']} beyond the grid**" if pg else "")
       + " |")
path = "docs/RELIABILITY.md"
text = open(path).read()
lines = text.split("\n")
start = next(i for i, l in enumerate(lines) if l.startswith("<!-- chaos table -->"))
end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("<!-- end chaos table -->"))
rows = [l for l in lines[start + 1:end] if l.startswith("| chaos-") and not l.startswith(f"| {scenario}:")]
header = lines[start + 1:start + 3]
lines[start + 1:end] = header + sorted(rows + [row])
open(path, "w").write("\n".join(lines))
print(f"docs/RELIABILITY.md: {scenario} row written")
PY
