#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 300) on the stable toolchain (cargo-fuzz needs -Z flags,
# which RUSTC_BOOTSTRAP unlocks). Seeds: fuzz/corpus/<target>. Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}; shift || true
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(tap_sse tap_json request_rewrite price_book)
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -print_final_stats=1 2>&1 \
    | grep -E "stat::number_of_executed_units|Done|ERROR|panicked" || true
done
