//! The fuzz oracles, one function per target. The cargo-fuzz targets call them on generated inputs, and
//! `tests/it/fuzz_regressions.rs` calls them on every committed input in `fuzz/regressions/<target>/` (the
//! minimized corpora and the inputs that once found a bug), so CI replays what the fuzzers found.
//! Each panics when its property fails.

use deepseek_meter::pricing::{PriceBook, DEFAULT_TIMEZONE};
use deepseek_meter::usage::tap::StreamEnd;
use deepseek_meter::usage::{
    estimate_prompt_tokens, inspect_request, Protocol, RequestInfo, ResponseTap, UsageSource,
};
use serde_json::value::RawValue;

/// Both SSE taps (compat and native): any bytes, split anywhere, never panic, give the same report as the
/// unsplit stream, and report usage only where the bytes carry a token count. Byte 0 picks protocol and
/// output mode, byte 1 the split.
pub fn tap_sse(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let protocol = if data[0] & 1 == 0 {
        Protocol::OpenAi
    } else {
        Protocol::DashScope
    };
    let info = RequestInfo {
        incremental_output: data[0] & 2 == 0,
        ..RequestInfo::default()
    };
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
    assert_reported_only_from_token_counts(body, whole.usage_source);
}

/// Usage is `reported` only if the upstream said it: the bytes must hold a `…_tokens` member.
fn assert_reported_only_from_token_counts(body: &[u8], source: UsageSource) {
    if !body.windows(7).any(|w| w == b"_tokens") {
        assert_ne!(source, UsageSource::Reported, "usage from nowhere");
    }
}

/// The non-streaming tap (JSON bodies, SSE-framed error bodies, gzip): never panics, and (uncompressed)
/// reports usage only where the bytes carry a token count.
pub fn tap_json(data: &[u8]) {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let protocol = if flags & 1 == 0 {
        Protocol::OpenAi
    } else {
        Protocol::DashScope
    };
    let status = if flags & 2 == 0 { 200 } else { 400 };
    let encoding = if flags & 4 == 0 { None } else { Some("gzip") };
    let mut tap = ResponseTap::new(
        protocol,
        &RequestInfo::default(),
        status,
        Some("application/json"),
        encoding,
    );
    for c in body.chunks(usize::from(flags >> 3).max(1)) {
        tap.feed(c);
    }
    let r = tap.finish(StreamEnd::Complete, || 0);
    if encoding.is_none() {
        assert_reported_only_from_token_counts(body, r.usage_source);
    }
}

/// Content decoding is transparent: a body encoded in any coding the proxy offers (gzip, deflate, br, zstd)
/// and fed in pieces gives the same report as the plain body; the same bytes labelled with a coding they are
/// not in never panic and never give usage. Byte 0: coding, protocol, SSE or JSON; byte 1: the piece size.
pub fn tap_encoded(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let codings = ["gzip", "deflate", "br", "zstd"];
    let coding = codings[usize::from(data[0] & 3)];
    let protocol = if data[0] & 4 == 0 {
        Protocol::OpenAi
    } else {
        Protocol::DashScope
    };
    let content_type = if data[0] & 8 == 0 {
        "text/event-stream"
    } else {
        "application/json"
    };
    let step = usize::from(data[1]).max(1);
    let plain = &data[2..];
    let encoded = encode(coding, plain);
    let run = |encoding: Option<&str>, body: &[u8]| {
        let mut tap = ResponseTap::new(
            protocol,
            &RequestInfo::default(),
            200,
            Some(content_type),
            encoding,
        );
        for c in body.chunks(step) {
            tap.feed(c);
        }
        tap.finish(StreamEnd::Complete, || 3)
    };
    let expected = run(None, plain);
    assert_eq!(run(Some(coding), &encoded), expected, "{coding}");
    // The plain bytes mislabelled: unreadable, never usage (unless by chance they decode to a token count).
    let mislabelled = run(Some(coding), plain);
    if !plain.windows(7).any(|w| w == b"_tokens") {
        assert_ne!(
            mislabelled.usage_source,
            UsageSource::Reported,
            "usage from nowhere"
        );
    }
}

/// `data` in a content coding: `gzip`, `deflate` (zlib), `raw deflate`, `br` or `zstd`.
pub fn encode(coding: &str, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match coding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "raw deflate" => {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "br" => {
            let mut out = Vec::new();
            let mut e = brotli::CompressorWriter::new(&mut out, 4096, 1, 22);
            e.write_all(data).unwrap();
            drop(e);
            out
        }
        "zstd" => zstd::encode_all(data, 1).unwrap(),
        other => panic!("no encoder for {other}"),
    }
}

/// The request inspector and include_usage rewriter: never panics; a rewritten body is a JSON object whose
/// `stream_options.include_usage` is true and whose every other member is the original's, as the same raw
/// JSON text in the same order (numbers and strings byte for byte: nothing the client sent may change).
pub fn request_rewrite(data: &[u8]) {
    for protocol in Protocol::ALL {
        let r = inspect_request(protocol, data, true);
        assert!(
            r.rewritten_body.is_none() || protocol == Protocol::OpenAi,
            "only chat is rewritten"
        );
        let _ = estimate_prompt_tokens(protocol, data);
        if let Some(body) = r.rewritten_body {
            let others = |m: Vec<(String, String)>| {
                m.into_iter()
                    .filter(|(k, _)| k != "stream_options")
                    .collect::<Vec<_>>()
            };
            let original = members(data);
            let rewritten = members(&body);
            assert_eq!(others(original), others(rewritten.clone()));
            let options = rewritten
                .iter()
                .find(|(k, _)| k == "stream_options")
                .unwrap();
            let options: serde_json::Value = serde_json::from_str(&options.1).unwrap();
            assert_eq!(options["include_usage"], true);
        }
    }
}

/// The price-book parser: any text either parses into a valid book (no negative price of any of the five
/// token classes, and every hour of the day priced by exactly one period of an entry) or errors; read over the
/// built-in book the same holds.
pub fn price_book(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for book in [
        PriceBook::parse(text, DEFAULT_TIMEZONE),
        PriceBook::with_file(text, DEFAULT_TIMEZONE),
    ]
    .into_iter()
    .flatten()
    {
        for e in book.entries() {
            for hour in 0..24 {
                let p = e.at_hour(hour).expect("every hour has a price");
                let r = p.rates;
                for price in [
                    r.input,
                    r.cached_input,
                    r.cache_write,
                    r.output,
                    r.reasoning,
                ] {
                    assert!(!price.is_sign_negative() || price.is_zero(), "{e:?}");
                }
            }
        }
    }
}

/// The Responses and Anthropic readers (`protocol`): any bytes, as a stream split anywhere or as a whole
/// body, never panic, give the same report however split, keep the token invariants, and report usage only
/// where the bytes carry a token count. Byte 0 picks stream or body and the Anthropic input reading, byte 1
/// the split.
fn tap_new_protocol(protocol: Protocol, data: &[u8]) {
    use deepseek_meter::usage::tap::InputConvention;
    if data.len() < 3 {
        return;
    }
    let content_type = if data[0] & 1 == 0 {
        "text/event-stream"
    } else {
        "application/json"
    };
    let convention = if data[0] & 2 == 0 {
        InputConvention::ExcludesCache
    } else {
        InputConvention::IncludesCache
    };
    let step = usize::from(data[1]).max(1);
    let body = &data[2..];
    let run = |chunks: &mut dyn Iterator<Item = &[u8]>| {
        let mut tap = ResponseTap::new(
            protocol,
            &RequestInfo::default(),
            200,
            Some(content_type),
            None,
        )
        .with_anthropic_input(convention);
        for c in chunks {
            tap.feed(c);
        }
        tap.finish(StreamEnd::Complete, || 3)
    };
    let whole = run(&mut std::iter::once(body));
    assert_eq!(whole, run(&mut body.chunks(step)));
    let t = whole.tokens;
    assert!(
        t.cached + t.cache_creation <= t.input && t.reasoning <= t.output,
        "{t:?}"
    );
    assert_reported_only_from_token_counts(body, whole.usage_source);
}

pub fn tap_responses(data: &[u8]) {
    tap_new_protocol(Protocol::Responses, data)
}

pub fn tap_anthropic(data: &[u8]) {
    tap_new_protocol(Protocol::Anthropic, data)
}

/// A fuzz oracle: panics when its property fails.
pub type Oracle = fn(&[u8]);

/// Every oracle by target name.
/// The bill-detail importer: any bytes read to lines or to an error naming a line of the input (1 = the
/// header), never a panic; read lines hold whole token counts within the ledger's bound, and reading is a
/// pure function of the bytes.
pub fn bill_csv(data: &[u8]) {
    use deepseek_meter::reconcile::import::{read, Columns};
    let tz = DEFAULT_TIMEZONE;
    let first = read(data, &Columns::default(), tz);
    match &first {
        Ok(bill) => {
            for l in &bill.lines {
                assert!(l.tokens <= deepseek_meter::usage::Tokens::MAX);
                assert!(!l.model.is_empty() && !l.workspace.is_empty());
            }
        }
        Err(e) => {
            let lines = data.iter().filter(|b| matches!(b, b'\n' | b'\r')).count() as u64 + 2;
            assert!(e.line >= 1 && e.line <= lines, "line {} of {lines}", e.line);
            assert!(!e.problem.is_empty());
        }
    }
    let again = read(data, &Columns::default(), tz);
    assert_eq!(
        first
            .as_ref()
            .map(|b| b.lines.clone())
            .map_err(Clone::clone),
        again
            .as_ref()
            .map(|b| b.lines.clone())
            .map_err(Clone::clone)
    );
}

pub const TARGETS: [(&str, Oracle); 8] = [
    ("tap_sse", tap_sse),
    ("tap_json", tap_json),
    ("tap_responses", tap_responses),
    ("tap_anthropic", tap_anthropic),
    ("tap_encoded", tap_encoded),
    ("request_rewrite", request_rewrite),
    ("price_book", price_book),
    ("bill_csv", bill_csv),
];

/// The members of a JSON object as raw text, in order (duplicates kept).
fn members(json: &[u8]) -> Vec<(String, String)> {
    let map: Members = serde_json::from_slice(json).unwrap();
    map.0
        .into_iter()
        .map(|(k, v)| (k, v.get().to_owned()))
        .collect()
}

struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Members, A::Error> {
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
