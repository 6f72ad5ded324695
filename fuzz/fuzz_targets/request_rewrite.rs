//! cargo-fuzz target `request_rewrite`: the oracle is `checks::request_rewrite` (shared with `tests/fuzz_regressions.rs`).
#![no_main]

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::request_rewrite(data));
