//! cargo-fuzz target `bill_csv`: the oracle is `checks::bill_csv` (shared with `tests/fuzz_regressions.rs`).
#![no_main]

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::bill_csv(data));
