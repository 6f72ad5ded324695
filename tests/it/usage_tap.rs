//! The usage tap against the reference's captured payloads (reference §1–§2), verbatim where the reference
//! is verbatim. Each test states the record the capture must produce.

use deepseek_meter::usage::tap::{StreamEnd, UsageReport};
use deepseek_meter::usage::{CallStatus, Protocol, RequestInfo, ResponseTap, Tokens, UsageSource};
use proptest::prelude::*;

use crate::helpers::captures::*;
use crate::helpers::{split, split_by_text};

const SSE: Option<&str> = Some("text/event-stream;charset=UTF-8");
const JSON: Option<&str> = Some("application/json");

fn request(incremental: bool) -> RequestInfo {
    RequestInfo {
        incremental_output: incremental,
        ..RequestInfo::default()
    }
}

fn tap_with(
    protocol: Protocol,
    incremental: bool,
    status: u16,
    content_type: Option<&str>,
    encoding: Option<&str>,
    chunks: &[&[u8]],
    end: StreamEnd,
) -> UsageReport {
    let mut tap = ResponseTap::new(
        protocol,
        &request(incremental),
        status,
        content_type,
        encoding,
    );
    for c in chunks {
        tap.feed(c);
    }
    tap.finish(end, || 7)
}

fn tap(protocol: Protocol, status: u16, content_type: Option<&str>, body: &str) -> UsageReport {
    tap_with(
        protocol,
        true,
        status,
        content_type,
        None,
        &[body.as_bytes()],
        StreamEnd::Complete,
    )
}

fn tokens(input: u64, cached: u64, output: u64, reasoning: u64) -> Tokens {
    Tokens {
        input,
        cached,
        cache_creation: 0,
        output,
        reasoning,
    }
}

// ---- compat, non-streaming --------------------------------------------------------------------------

#[test]
fn compat_r1_json_without_details_splits_reasoning_by_text() {
    let r = tap(Protocol::OpenAi, 200, JSON, COMPAT_R1_JSON);
    assert_eq!(r.status, CallStatus::Ok);
    assert_eq!(r.usage_source, UsageSource::Reported);
    assert_eq!(
        r.upstream_request_id.as_deref(),
        Some("e55cdb8a-9ce1-9662-b87c-cf3da706e4f3")
    );
    assert_eq!(r.response_model.as_deref(), Some("deepseek-r1"));
    assert_eq!((r.tokens.input, r.tokens.output), (19, 797));
    // Output is exact; without reasoning_tokens the split follows the two texts' estimated sizes.
    let message = &json(COMPAT_R1_JSON)["choices"][0]["message"];
    assert_eq!(r.tokens.reasoning, split_message(797, message));
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

fn split_message(output: u64, message: &serde_json::Value) -> u64 {
    split_by_text(
        output,
        message["reasoning_content"].as_str().unwrap(),
        message["content"].as_str().unwrap(),
    )
}

#[test]
fn compat_v3_json_non_thinking() {
    let body = r#"{"choices":[{"message":{"content":"你好，Hollis！…","role":"assistant"},"finish_reason":"stop","index":0,"logprobs":null}],
 "object":"chat.completion","usage":{"prompt_tokens":6,"completion_tokens":64,"total_tokens":70},
 "created":1762409856,"system_fingerprint":null,"model":"deepseek-v3","id":"chatcmpl-f9bd2e05-7de1-40b2-8143-9681bfed3bc6"}"#;
    let r = tap(Protocol::OpenAi, 200, JSON, body);
    assert_eq!(r.tokens, tokens(6, 0, 64, 0));
    assert_eq!(
        r.upstream_request_id.as_deref(),
        Some("f9bd2e05-7de1-40b2-8143-9681bfed3bc6")
    );
    assert!(!r.stream);
}

#[test]
fn compat_tool_call_json() {
    let body = r#"{"choices":[{"message":{"content":"","role":"assistant","tool_calls":[{"function":{"arguments":"{\"city\":\"杭州\"}","name":
"getTemperatureByCityAndDate"},"id":"call_445b5671278f4be3a6f2d4","index":0,"type":"function"}]},"finish_reason":"tool_calls","index":0,"logprobs":null}],
"object":"chat.completion","usage":{"prompt_tokens":200,"completion_tokens":21,"total_tokens":221},"model":"deepseek-v3","id":"chatcmpl-1"}"#;
    let r = tap(Protocol::OpenAi, 200, JSON, body);
    assert_eq!(
        (r.status, r.tokens),
        (CallStatus::Ok, tokens(200, 0, 21, 0))
    );
    assert_eq!(r.finish_reasons, ["tool_calls"]);
}

#[test]
fn compat_cached_and_reasoning_details() {
    let body = r#"{"choices":[],"usage":{"prompt_tokens":3019,"completion_tokens":104,"total_tokens":3123,"prompt_tokens_details":{"cached_tokens":2048},"completion_tokens_details":{"reasoning_tokens":40}},"id":"chatcmpl-x"}"#;
    let r = tap(Protocol::OpenAi, 200, JSON, body);
    assert_eq!(r.tokens, tokens(3019, 2048, 104, 40));
    assert_eq!(r.tokens.answer(), 64);
}

#[test]
fn compat_error_bodies_give_their_code() {
    let cases = [
        (
            401,
            r#"{"error":{"message":"Incorrect API key provided. For details, see: https://help.aliyun.com/zh/model-studio/error-code#apikey-error","type":"invalid_request_error","param":null,"code":"invalid_api_key"},"request_id":"b02e047c-ca07-98df-ae99-d211d0990216"}"#,
            "invalid_api_key",
            Some("b02e047c-ca07-98df-ae99-d211d0990216"),
        ),
        (
            400,
            r#"{"error":{"code":"invalid_parameter_error","param":null,"message":"<400> InternalError.Algo.InvalidParameter: 'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.","type":"invalid_request_error"},"id":"chatcmpl-b41c1495-d9a4-4878-8ec5-48bb55fc921b","request_id":"b41c1495-d9a4-4878-8ec5-48bb55fc921b"}"#,
            "invalid_parameter_error",
            Some("b41c1495-d9a4-4878-8ec5-48bb55fc921b"),
        ),
        (
            400,
            r#"{"error":{"message":"Access denied, please make sure your account is in good standing…","type":"Arrearage","param":null,"code":"Arrearage"},"request_id":"8605e472-81b4-9cd7-b04d-878e89847c14"}"#,
            "Arrearage",
            Some("8605e472-81b4-9cd7-b04d-878e89847c14"),
        ),
        (
            429,
            r#"{"error":{"message":"You have exceeded your current request limit. For details, see: https://help.aliyun.com/zh/model-studio/error-code#rate-limit","type":"limit_requests","code":"limit_requests"}}"#,
            "limit_requests",
            None,
        ),
        (
            429,
            r#"{"error":{"code":"Throttling.RateQuota","message":"Requests rate limit exceeded, please try again later."}}"#,
            "Throttling.RateQuota",
            None,
        ),
    ];
    for (status, body, code, rid) in cases {
        let r = tap(Protocol::OpenAi, status, JSON, body);
        assert_eq!(r.status, CallStatus::UpstreamError, "{body}");
        assert_eq!(r.http_status, status);
        assert_eq!(r.error_code.as_deref(), Some(code));
        assert_eq!(r.upstream_request_id.as_deref(), rid);
        assert_eq!(r.usage_source, UsageSource::None);
        assert_eq!(r.tokens, Tokens::default());
    }
}

#[test]
fn compat_sse_framed_400_body_without_sse_content_type() {
    let body = "data: {\"error\":{\"code\":\"invalid_parameter_error\",\"param\":null,\"message\":\"Range of top_logprobs should be [0, 5]\",\"type\":\"invalid_request_error\"},\"id\":\"chatcmpl-54036480-037a-9e3e-b1fe-50453ba831a1\"}\n\n";
    for ct in [JSON, SSE, None] {
        let r = tap(Protocol::OpenAi, 400, ct, body);
        assert_eq!(r.status, CallStatus::UpstreamError);
        assert_eq!(r.error_code.as_deref(), Some("invalid_parameter_error"));
        assert_eq!(
            r.upstream_request_id.as_deref(),
            Some("54036480-037a-9e3e-b1fe-50453ba831a1")
        );
    }
}

// ---- compat, streaming ------------------------------------------------------------------------------

#[test]
fn compat_r1_stream_with_usage_chunk() {
    let r = tap(Protocol::OpenAi, 200, SSE, COMPAT_R1_SSE);
    assert_eq!(r.status, CallStatus::Ok);
    assert!(r.stream);
    assert_eq!((r.tokens.input, r.tokens.output), (13, 1436));
    assert_eq!(r.usage_source, UsageSource::Reported);
    assert_eq!(
        r.upstream_request_id.as_deref(),
        Some("a351a53b-00a6-9cf6-9c64-ce491bc462a8")
    );
}

#[test]
fn compat_v32_stream_with_reasoning_details() {
    let r = tap(Protocol::OpenAi, 200, SSE, COMPAT_V32_SSE);
    assert_eq!(r.tokens, tokens(4, 0, 140, 79));
    assert_eq!(r.tokens.answer(), 61);
}

#[test]
fn usage_only_chunk_is_signalled() {
    let mut tap = ResponseTap::new(Protocol::OpenAi, &request(true), 200, SSE, None);
    let events: Vec<&str> = COMPAT_V32_SSE.split_inclusive("\n\n").collect();
    let signals: Vec<_> = events.iter().map(|e| tap.feed(e.as_bytes())).collect();
    assert!(signals[0].first_token);
    assert!(signals.iter().skip(1).all(|s| !s.first_token));
    let usage_only: Vec<bool> = signals.iter().map(|s| s.usage_only_chunk).collect();
    assert_eq!(usage_only, vec![false, false, false, true, false]);
}

#[test]
fn compat_stream_without_usage_chunk_is_estimated_when_cut() {
    let cut: String = COMPAT_V32_SSE.split_inclusive("\n\n").take(2).collect();
    let r = tap_with(
        Protocol::OpenAi,
        true,
        200,
        SSE,
        None,
        &[cut.as_bytes()],
        StreamEnd::ClientGone,
    );
    assert_eq!(r.status, CallStatus::ClientAborted);
    assert_eq!(r.usage_source, UsageSource::Estimated);
    // prompt estimate (7, from the closure) + 唔 (1 token) + "DeepSeek" (3, DeepSeek's tokenizer) + 5 hidden.
    assert_eq!(r.tokens, tokens(7, 0, 9, 1));
    let r = tap_with(
        Protocol::OpenAi,
        true,
        200,
        SSE,
        None,
        &[cut.as_bytes()],
        StreamEnd::UpstreamFailed,
    );
    assert_eq!(r.status, CallStatus::UpstreamAborted);
    // A stream that ends cleanly without [DONE] was cut short too.
    let r = tap_with(
        Protocol::OpenAi,
        true,
        200,
        SSE,
        None,
        &[cut.as_bytes()],
        StreamEnd::Complete,
    );
    assert_eq!(
        (r.status, r.usage_source),
        (CallStatus::UpstreamAborted, UsageSource::Estimated)
    );
}

#[test]
fn compat_mid_stream_moderation_error() {
    let partial: String = COMPAT_V32_SSE.split_inclusive("\n\n").take(2).collect();
    let body = format!("{partial}data: {{\"error\":{{\"message\":\"Output data may contain inappropriate content.\",\"type\":\"data_inspection_failed\",\"param\":null,\"code\":\"data_inspection_failed\"}}}}\n\n");
    let r = tap(Protocol::OpenAi, 200, SSE, &body);
    assert_eq!(r.status, CallStatus::UpstreamError);
    assert_eq!(r.error_code.as_deref(), Some("data_inspection_failed"));
    assert_eq!(r.usage_source, UsageSource::Estimated);
    assert!(r.tokens.output > 0);
}

#[test]
fn compat_event_error_with_flat_body() {
    let body = "event: error\ndata: {\"code\":\"invalid_model_error\",\"message\":\"Unsupported model \\\"\\\"\",\"request_id\":\"abc\"}\n\n";
    let r = tap(Protocol::OpenAi, 200, SSE, body);
    assert_eq!(r.status, CallStatus::UpstreamError);
    assert_eq!(r.error_code.as_deref(), Some("invalid_model_error"));
    assert_eq!(r.upstream_request_id.as_deref(), Some("abc"));
    assert_eq!(r.usage_source, UsageSource::None);
}

#[test]
fn gzip_stream_is_read_through_the_decoder() {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(COMPAT_V32_SSE.as_bytes()).unwrap();
    let gz = enc.finish().unwrap();
    let chunks: Vec<&[u8]> = gz.chunks(7).collect();
    let r = tap_with(
        Protocol::OpenAi,
        true,
        200,
        SSE,
        Some("gzip"),
        &chunks,
        StreamEnd::Complete,
    );
    assert_eq!(r.tokens, tokens(4, 0, 140, 79));
    assert_eq!(r.status, CallStatus::Ok);
}

#[test]
fn unknown_encoding_is_not_read_and_not_fatal() {
    // Plain bytes that would give reported usage if the tap ignored the encoding and read them.
    let plain = tap_with(
        Protocol::OpenAi,
        true,
        200,
        SSE,
        None,
        &[COMPAT_V32_SSE.as_bytes()],
        StreamEnd::Complete,
    );
    assert_eq!(plain.usage_source, UsageSource::Reported);
    let r = tap_with(
        Protocol::OpenAi,
        true,
        200,
        SSE,
        Some("compress"),
        &[COMPAT_V32_SSE.as_bytes()],
        StreamEnd::Complete,
    );
    // Not read as plain text, and not booked at 0: the prompt is estimated (7, from the closure).
    assert_eq!(r.usage_source, UsageSource::Estimated);
    assert_eq!(r.tokens, tokens(7, 0, 0, 0));
    assert!(r.parse_errors > 0);
}

#[test]
fn every_coding_decodes_in_any_piece_size_and_ends_complete_or_truncated() {
    use deepseek_meter::usage::decode::{BodyDecoder, DecodeError};
    let text = COMPAT_V32_SSE.as_bytes();
    for coding in ["gzip", "deflate", "raw deflate", "zstd", "br"] {
        let label = if coding == "raw deflate" {
            "deflate"
        } else {
            coding
        };
        let encoded = crate::fuzz_checks::encode(coding, text);
        for piece in [1, 2, 7, encoded.len()] {
            let mut d = BodyDecoder::for_encoding(Some(label)).unwrap();
            let mut out = Vec::new();
            for c in encoded.chunks(piece) {
                d.push(c, &mut out).unwrap();
            }
            assert_eq!(d.finish(&mut out), Ok(()), "{coding} in pieces of {piece}");
            assert_eq!(out, text, "{coding} in pieces of {piece}");
        }
        // Cut two bytes before its end: an error now, or a truncated end.
        let mut d = BodyDecoder::for_encoding(Some(label)).unwrap();
        let mut out = Vec::new();
        let pushed = d.push(&encoded[..encoded.len() - 2], &mut out);
        assert!(
            pushed.is_err() || d.finish(&mut out) == Err(DecodeError::Truncated),
            "{coding} cut"
        );
    }
}

// ---- native -----------------------------------------------------------------------------------------

#[test]
fn native_r1_json() {
    let r = tap(Protocol::DashScope, 200, JSON, NATIVE_R1_JSON);
    assert_eq!((r.tokens.input, r.tokens.output), (11, 302));
    let message = &json(NATIVE_R1_JSON)["output"]["choices"][0]["message"];
    assert_eq!(r.tokens.reasoning, split_message(302, message));
    assert_eq!(
        r.upstream_request_id.as_deref(),
        Some("7039d8ff-89e0-9191-b4d3-0d258a7d70e1")
    );
    assert_eq!(r.status, CallStatus::Ok);
}

#[test]
fn native_full_usage_shape_with_unknown_keys() {
    let body = r#"{"output":{"choices":[{"finish_reason":"length","message":{"content":"","reasoning_content":"我们被问到：\"请问 1+1 是多少？\" 这是一个简单的问题。答案显然是","role":"assistant"}}],"search_info":{}},
 "usage":{"input_tokens":12,"output_tokens":21,"output_tokens_details":{"reasoning_tokens":20},"prompt_tokens_details":{"cached_tokens":0},"total_tokens":33,"plugins":{"code_interpreter":{"count":1}}},
 "request_id":"7c8beccf-3e76-9034-95c1-db1f1ab9d6e0"}"#;
    let r = tap(Protocol::DashScope, 200, JSON, body);
    assert_eq!(r.tokens, tokens(12, 0, 21, 20));
    assert_eq!(r.finish_reasons, ["length"]);
}

#[test]
fn native_r1_stream_cumulative_usage() {
    let r = tap(Protocol::DashScope, 200, SSE, NATIVE_R1_SSE);
    assert_eq!(r.status, CallStatus::Ok);
    assert_eq!((r.tokens.input, r.tokens.output), (11, 406));
    assert_eq!(
        r.upstream_request_id.as_deref(),
        Some("e4ad5d0f-8019-9716-adc6-eae1411d3c9a")
    );
}

#[test]
fn native_stream_cut_keeps_last_cumulative_usage() {
    let cut: String = NATIVE_R1_SSE.split_inclusive("\n\n").take(2).collect();
    let r = tap_with(
        Protocol::DashScope,
        true,
        200,
        SSE,
        None,
        &[cut.as_bytes()],
        StreamEnd::ClientGone,
    );
    assert_eq!(r.status, CallStatus::ClientAborted);
    assert_eq!(r.usage_source, UsageSource::Reported);
    assert_eq!((r.tokens.input, r.tokens.output), (11, 4));
    // Ends cleanly but without a finish_reason: cut short by the upstream.
    let r = tap_with(
        Protocol::DashScope,
        true,
        200,
        SSE,
        None,
        &[cut.as_bytes()],
        StreamEnd::Complete,
    );
    assert_eq!(r.status, CallStatus::UpstreamAborted);
}

#[test]
fn native_crlf_stream() {
    let crlf = NATIVE_R1_SSE.replace('\n', "\r\n");
    let r = tap(Protocol::DashScope, 200, SSE, &crlf);
    assert_eq!((r.status, r.tokens.output), (CallStatus::Ok, 406));
}

#[test]
fn native_events_without_blank_separators() {
    let no_blanks = NATIVE_R1_SSE.replace("\n\n", "\n");
    let r = tap(Protocol::DashScope, 200, SSE, &no_blanks);
    assert_eq!((r.status, r.tokens.output), (CallStatus::Ok, 406));
}

#[test]
fn native_error_event_with_http_200() {
    let body = "id:1\nevent:error\n:HTTP_STATUS/400\ndata:{\"code\":\"InvalidParameter\",\"message\":\"Role must be user or assistant and Content length must be greater than 0\",\"request_id\":\"7671ecd8-93cc-9ee9-bc89-739f0fd8b809\"}";
    let r = tap(Protocol::DashScope, 200, SSE, body);
    assert_eq!(r.status, CallStatus::UpstreamError);
    assert_eq!(r.http_status, 400);
    assert_eq!(r.error_code.as_deref(), Some("InvalidParameter"));
    assert_eq!(
        r.upstream_request_id.as_deref(),
        Some("7671ecd8-93cc-9ee9-bc89-739f0fd8b809")
    );
}

#[test]
fn native_error_bodies() {
    let r = tap(
        Protocol::DashScope,
        401,
        JSON,
        r#"{"code":"InvalidApiKey","message":"Invalid API-key provided.","request_id":"a1c0561c-1dfe-98a6-a62f-983577b8bc5e"}"#,
    );
    assert_eq!(
        (r.status, r.error_code.as_deref()),
        (CallStatus::UpstreamError, Some("InvalidApiKey"))
    );
    let r = tap(
        Protocol::DashScope,
        400,
        JSON,
        r#"{"code":"InvalidParameter","message":"Role must be user or assistant and Content length must be greater than 0","request_id":"a5898c04-d210-901b-965f-e4bd90478805"}"#,
    );
    assert_eq!(r.error_code.as_deref(), Some("InvalidParameter"));
}

#[test]
fn native_full_text_mode_tallies_the_latest_text() {
    // incremental_output=false: each event repeats everything so far; a cut stream estimates from the
    // last event's text, not the sum of all events.
    let ev = |n: u32, text: &str| {
        format!("id:{n}\nevent:result\n:HTTP_STATUS/200\ndata:{{\"output\":{{\"choices\":[{{\"message\":{{\"content\":\"{text}\",\"role\":\"assistant\"}},\"finish_reason\":\"null\"}}]}},\"request_id\":\"r\"}}\n\n")
    };
    let body = format!(
        "{}{}{}",
        ev(1, "abcd"),
        ev(2, "abcdabcd"),
        ev(3, "abcdabcdabcd")
    );
    let full = tap_with(
        Protocol::DashScope,
        false,
        200,
        SSE,
        None,
        &[body.as_bytes()],
        StreamEnd::ClientGone,
    );
    let incr = tap_with(
        Protocol::DashScope,
        true,
        200,
        SSE,
        None,
        &[body.as_bytes()],
        StreamEnd::ClientGone,
    );
    assert_eq!(full.usage_source, UsageSource::Estimated);
    assert_eq!(full.tokens.output, 3 + 5); // 12 chars → 3 tokens, + 5 hidden
    assert_eq!(incr.tokens.output, 6 + 5); // 4 + 8 + 12 = 24 chars → 6 tokens, + 5 hidden
}

#[test]
fn garbage_never_fails_and_is_counted() {
    for body in ["\u{0}\u{1}not json", "{\"usage\":", "data: {broken\n\n", ""] {
        let r = tap(Protocol::OpenAi, 200, JSON, body);
        // A 200 without readable usage is estimated, never booked at 0.
        assert_eq!(r.usage_source, UsageSource::Estimated, "{body:?}");
        assert_eq!(r.parse_errors > 0, !body.is_empty(), "{body:?}");
    }
    let r = tap_with(
        Protocol::OpenAi,
        true,
        200,
        SSE,
        None,
        &[&[0xff, 0xfe, b'\n', b'\n']],
        StreamEnd::Complete,
    );
    assert_eq!(r.status, CallStatus::UpstreamAborted);
}

#[test]
fn inconsistent_usage_is_clamped_and_flagged() {
    let body = r#"{"usage":{"prompt_tokens":5,"completion_tokens":10,"completion_tokens_details":{"reasoning_tokens":50},"prompt_tokens_details":{"cached_tokens":9}}}"#;
    let r = tap(Protocol::OpenAi, 200, JSON, body);
    assert_eq!(r.tokens, tokens(5, 5, 10, 10));
    assert!(r.usage_clamped);
}

// ---- any split of the stream gives the same report --------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn any_split_gives_the_same_report(cuts in proptest::collection::vec(any::<usize>(), 0..40), which in 0usize..7, crlf in any::<bool>()) {
        let json_after_space = format!(" \n{COMPAT_R1_JSON}");
        let (protocol, body) = [
            (Protocol::OpenAi, COMPAT_R1_SSE),
            (Protocol::OpenAi, COMPAT_V32_SSE),
            (Protocol::DashScope, NATIVE_R1_SSE),
            (Protocol::OpenAi, "data: {\"error\":{\"code\":\"invalid_parameter_error\"},\"id\":\"chatcmpl-5\"}\n\n"),
            (Protocol::DashScope, "id:1\nevent:error\n:HTTP_STATUS/400\ndata:{\"code\":\"InvalidParameter\",\"request_id\":\"7\"}"),
            // A JSON body labelled as a stream, after whitespace; a stream after a BOM.
            (Protocol::OpenAi, json_after_space.as_str()),
            (Protocol::DashScope, concat!("\u{feff}", "id:1\nevent:result\n:HTTP_STATUS/200\ndata:{\"output\":{\"choices\":[{\"message\":{\"content\":\"2\"},\"finish_reason\":\"stop\"}]},\"usage\":{\"input_tokens\":11,\"output_tokens\":6}}\n\n")),
        ][which];
        let body = if crlf { body.replace('\n', "\r\n") } else { body.to_owned() };
        let whole = tap_with(protocol, true, 200, SSE, None, &[body.as_bytes()], StreamEnd::Complete);
        let pieces = split(body.as_bytes(), &cuts);
        let refs: Vec<&[u8]> = pieces.iter().map(|p| p.as_slice()).collect();
        let split = tap_with(protocol, true, 200, SSE, None, &refs, StreamEnd::Complete);
        if which >= 5 {
            // Both read to their usage whatever the split (JSON as JSON; the BOM skipped).
            prop_assert_eq!(whole.usage_source, UsageSource::Reported);
        }
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8), sse in any::<bool>(), native in any::<bool>()) {
        let protocol = if native { Protocol::DashScope } else { Protocol::OpenAi };
        let refs: Vec<&[u8]> = chunks.iter().map(|c| c.as_slice()).collect();
        let r = tap_with(protocol, true, 200, if sse { SSE } else { JSON }, None, &refs, StreamEnd::Complete);
        // Usage is reported only if the upstream said it: the bytes must hold a `…_tokens` member.
        let all: Vec<u8> = chunks.concat();
        if !all.windows(7).any(|w| w == b"_tokens") {
            prop_assert_ne!(r.usage_source, UsageSource::Reported);
        }
    }
}
