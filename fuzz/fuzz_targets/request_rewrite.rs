//! The request inspector and include_usage rewriter: never panics; a rewritten body is JSON with
//! `stream_options.include_usage = true` and every other top-level key of the original, unchanged.
#![no_main]

use deepseek_meter::usage::{estimate_prompt_tokens, inspect_request, Protocol};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for protocol in [Protocol::OpenAi, Protocol::DashScope] {
        let r = inspect_request(protocol, data, true);
        let _ = estimate_prompt_tokens(protocol, data);
        if let Some(body) = r.rewritten_body {
            let original: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(data).unwrap();
            let rewritten: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body).unwrap();
            assert_eq!(rewritten["stream_options"]["include_usage"], true);
            for (k, v) in &original {
                if k != "stream_options" {
                    assert_eq!(&rewritten[k], v);
                }
            }
        }
    }
});
