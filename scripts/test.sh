#!/usr/bin/env bash
# The whole test suite: what CI runs, and what a developer runs before pushing.
# Tests start the nodes they need; they use the Redis on 127.0.0.1:6379 as the reference for
# differential tests (required when CI=true) and redis-cli where installed.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-cli >/dev/null || ! command -v redis-server >/dev/null; then
  echo "installing redis-tools and redis-server (redis-cli, the reference server)" >&2
  apt-get update -qq && apt-get install -y -qq redis-tools redis-server >/dev/null
fi
if ! redis-cli -p 6379 ping >/dev/null 2>&1; then
  echo "starting the reference Redis on 127.0.0.1:6379" >&2
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  for _ in $(seq 50); do redis-cli -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

# The admin tests check /metrics with promtool (Debian's prometheus) and load the dashboard in
# headless Chromium; both are skipped with a message when missing outside CI.
if ! command -v promtool >/dev/null || ! command -v chromium >/dev/null; then
  echo "installing prometheus (promtool) and chromium for the admin and dashboard tests" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus chromium >/dev/null
fi
# The clock-skew fault test runs one node under libfaketime (Debian's faketime); skipped with a
# message when missing outside CI.
if ! command -v faketime >/dev/null; then
  echo "installing faketime (libfaketime) for the clock-skew fault test" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  echo "warning: no Postgres on 127.0.0.1:5432; the persistence tests need it (trust auth, database test)" >&2
fi

# CI builds from a clean checkout: incremental compilation would only write caches no later
# build reads.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi

# The test build has the failpoints (tests/faults.rs crashes nodes with them); they are no-ops
# unless armed. Release builds and the benchmarks never have them.
FEATURES=(--features cachegrid/failpoints)

# nextest runs each test in its own process; a test that fails and then passes on its one
# retry is reported as FLAKY in the summary (and must be looked at), not hidden.
# The grid on turmoil's simulated network (tests/sim.rs) needs the `simulation` feature, which
# swaps the node's sockets: its own run, rebuilding only this crate (docs/RELIABILITY.md).
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-targets "${FEATURES[@]}" --retries 1 "$@"
  # The deterministic simulation (tests/sim.rs) needs its own build of the crate; the same
  # workspace and features otherwise, so only cachegrid itself is compiled again.
  cargo nextest run --workspace "${FEATURES[@]}" --features cachegrid/simulation --test sim --retries 1
  cargo test --workspace --doc
else
  echo "cargo-nextest not found: running cargo test (no retries)" >&2
  cargo test --workspace --all-targets "${FEATURES[@]}" "$@"
  cargo test --workspace "${FEATURES[@]}" --features cachegrid/simulation --test sim
  cargo test --workspace --doc
fi
