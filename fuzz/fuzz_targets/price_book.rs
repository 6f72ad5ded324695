//! The price-book parser: any text either parses into a valid book (no negative price) or errors.
#![no_main]

use deepseek_meter::pricing::{PriceBook, DEFAULT_TIMEZONE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(book) = PriceBook::parse(text, DEFAULT_TIMEZONE) {
        for p in book.entries() {
            assert!(!p.input.is_sign_negative() || p.input.is_zero());
            assert!(!p.output.is_sign_negative() || p.output.is_zero());
        }
    }
});
