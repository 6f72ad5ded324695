//! The non-streaming tap (JSON bodies, SSE-framed error bodies, gzip): never panics, keeps invariants.
#![no_main]

use deepseek_meter::usage::tap::StreamEnd;
use deepseek_meter::usage::{Protocol, RequestInfo, ResponseTap};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else { return };
    let protocol = if flags & 1 == 0 { Protocol::OpenAi } else { Protocol::DashScope };
    let status = if flags & 2 == 0 { 200 } else { 400 };
    let encoding = if flags & 4 == 0 { None } else { Some("gzip") };
    let mut tap = ResponseTap::new(protocol, &RequestInfo::default(), status, Some("application/json"), encoding);
    for c in body.chunks(usize::from(flags >> 3).max(1)) {
        tap.feed(c);
    }
    let r = tap.finish(StreamEnd::Complete, || 0);
    assert!(r.tokens.cached <= r.tokens.input);
    assert!(r.tokens.reasoning <= r.tokens.output);
});
