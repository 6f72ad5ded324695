#!/usr/bin/env bash
# Runs cargo-fuzz targets on the stable toolchain (cargo-fuzz needs -Z flags, which RUSTC_BOOTSTRAP unlocks).
# Usage: fuzz/run.sh [SECONDS] [TARGET...]      each target for SECONDS (default 300)
#        FUZZ_RUNS=10000000 fuzz/run.sh 0 ...   each target for a number of executions instead
# FUZZ_SANITIZER=none skips AddressSanitizer (the crate forbids unsafe code; it roughly doubles the speed).
# Seeds and findings: fuzz/corpus/<target>.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}; shift || true
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(tap_sse tap_json tap_responses tap_anthropic tap_encoded request_rewrite price_book bill_csv)
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
limit=(-max_total_time="$secs"); [ -n "${FUZZ_RUNS:-}" ] && limit=(-runs="$FUZZ_RUNS")
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  echo "== $t"
  RUSTC_BOOTSTRAP=1 cargo fuzz run -O -s "${FUZZ_SANITIZER:-address}" "$t" "fuzz/corpus/$t" -- "${limit[@]}" \
    -print_final_stats=1 2>&1 | grep -E "stat::number_of_executed_units|Done|ERROR|panicked" || true
done
