//! cargo-fuzz target `tap_responses`: the oracle is `checks::tap_responses` (shared with `tests/fuzz_regressions.rs`).
#![no_main]

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::tap_responses(data));
