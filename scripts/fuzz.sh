#!/usr/bin/env bash
# Runs the libFuzzer targets in fuzz/ the way cargo-fuzz does (cargo-fuzz itself is not needed):
# a nightly build with coverage instrumentation, then each target for a fixed time.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default 600 s, both targets)
# Findings land in fuzz/artifacts/<target>/; the corpus grows in fuzz/corpus/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(request_parser commands)

if ! rustup toolchain list | grep -q nightly; then
  echo "installing the nightly toolchain (needed for coverage instrumentation)" >&2
  rustup toolchain install nightly --profile minimal
fi
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
triple=$(rustc -vV | awk '/^host:/ {print $2}')
cargo +nightly build --release --bins --target "$triple"
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  echo "==> fuzzing $t for ${secs}s" >&2
  "./target/$triple/release/$t" -max_total_time="$secs" -rss_limit_mb=2048 \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 "corpus/$t"
done
