#!/usr/bin/env bash
# Minimizes each target's corpus (fuzz/corpus/<target>, grown by fuzz/run.sh) into fuzz/regressions/<target>,
# the inputs CI replays through the same oracles (tests/it/fuzz_regressions.rs). Inputs that once found a bug
# are kept by name: files called regression-* in fuzz/regressions/<target> are never removed.
# Usage: fuzz/minimize.sh [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(tap_sse tap_json tap_responses tap_anthropic tap_encoded request_rewrite price_book bill_csv)
for t in "${targets[@]}"; do
  out="fuzz/regressions/$t"
  mkdir -p "$out"
  find "$out" -type f ! -name 'regression-*' -delete
  RUSTC_BOOTSTRAP=1 cargo fuzz cmin -O -s "${FUZZ_SANITIZER:-none}" "$t" "fuzz/corpus/$t" 2>&1 | grep -E "MERGE-OUTER: [0-9]+ new files" || true
  cp fuzz/corpus/"$t"/* "$out"/
  echo "$t: $(ls "$out" | wc -l) inputs"
done
