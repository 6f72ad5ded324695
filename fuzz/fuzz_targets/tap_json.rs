//! cargo-fuzz target `tap_json`: the oracle is `checks::tap_json` (shared with `tests/fuzz_regressions.rs`).
#![no_main]

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::tap_json(data));
