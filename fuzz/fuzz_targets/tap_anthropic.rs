//! cargo-fuzz target `tap_anthropic`: the oracle is `checks::tap_anthropic` (shared with `tests/fuzz_regressions.rs`).
#![no_main]

#[path = "../checks.rs"]
#[allow(dead_code)]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::tap_anthropic(data));
