//! The request inspector and include_usage rewriter: never panics; a rewritten body is a JSON object whose
//! `stream_options.include_usage` is true and whose every other member is the original's, as the same raw JSON
//! text in the same order (numbers and strings byte for byte: nothing the client sent may change).
#![no_main]

use deepseek_meter::usage::{estimate_prompt_tokens, inspect_request, Protocol};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

/// The members of a JSON object as raw text, in order (duplicates kept).
fn members(json: &[u8]) -> Vec<(String, String)> {
    let map: indexmap_like::Members = serde_json::from_slice(json).unwrap();
    map.0.into_iter().map(|(k, v)| (k, v.get().to_owned())).collect()
}

mod indexmap_like {
    use super::RawValue;
    pub struct Members(pub Vec<(String, Box<RawValue>)>);
    impl<'de> serde::Deserialize<'de> for Members {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Members;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Members, A::Error> {
                    let mut out = Vec::new();
                    while let Some(e) = m.next_entry()? {
                        out.push(e);
                    }
                    Ok(Members(out))
                }
            }
            d.deserialize_map(V)
        }
    }
}

fuzz_target!(|data: &[u8]| {
    for protocol in [Protocol::OpenAi, Protocol::DashScope] {
        let r = inspect_request(protocol, data, true);
        let _ = estimate_prompt_tokens(protocol, data);
        if let Some(body) = r.rewritten_body {
            let others = |m: Vec<(String, String)>| m.into_iter().filter(|(k, _)| k != "stream_options").collect::<Vec<_>>();
            let original = members(data);
            let rewritten = members(&body);
            assert_eq!(others(original), others(rewritten.clone()));
            let options = rewritten.iter().find(|(k, _)| k == "stream_options").unwrap();
            let options: serde_json::Value = serde_json::from_str(&options.1).unwrap();
            assert_eq!(options["include_usage"], true);
        }
    }
});
