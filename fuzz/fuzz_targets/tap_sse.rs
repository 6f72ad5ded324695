//! Both SSE taps (compat and native): any bytes, split anywhere, never panic, keep the token invariants,
//! and give the same report as the unsplit stream.
#![no_main]

use deepseek_meter::usage::tap::StreamEnd;
use deepseek_meter::usage::{Protocol, RequestInfo, ResponseTap};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let protocol = if data[0] & 1 == 0 { Protocol::OpenAi } else { Protocol::DashScope };
    let info = RequestInfo { incremental_output: data[0] & 2 == 0, ..RequestInfo::default() };
    let step = usize::from(data[1]).max(1);
    let body = &data[2..];
    let run = |chunks: &mut dyn Iterator<Item = &[u8]>| {
        let mut tap = ResponseTap::new(protocol, &info, 200, Some("text/event-stream"), None);
        for c in chunks {
            tap.feed(c);
        }
        tap.finish(StreamEnd::Complete, || 3)
    };
    let whole = run(&mut std::iter::once(body));
    let split = run(&mut body.chunks(step));
    assert_eq!(whole, split);
    assert!(whole.tokens.cached <= whole.tokens.input);
    assert!(whole.tokens.reasoning <= whole.tokens.output);
});
