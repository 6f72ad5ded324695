//! The usage tap on the two protocols of the 2026 platform (reference `bailian-2026.md` §4): the OpenAI
//! Responses API and the Anthropic Messages API, whole and streamed, with the shapes the reference gives
//! (usage objects verbatim where it quotes them). Each test states the record the payload must produce.

use deepseek_meter::usage::tap::{InputConvention, StreamEnd, UsageReport};
use deepseek_meter::usage::{CallStatus, Protocol, RequestInfo, ResponseTap, Tokens, UsageSource};
use proptest::prelude::*;

use crate::helpers::{split, split_by_text};

const SSE: Option<&str> = Some("text/event-stream");
const JSON: Option<&str> = Some("application/json");

fn tap(
    protocol: Protocol,
    convention: InputConvention,
    status: u16,
    content_type: Option<&str>,
    chunks: &[&[u8]],
    end: StreamEnd,
) -> UsageReport {
    let mut tap = ResponseTap::new(
        protocol,
        &RequestInfo::default(),
        status,
        content_type,
        None,
    )
    .with_anthropic_input(convention);
    for c in chunks {
        tap.feed(c);
    }
    tap.finish(end, || 7)
}

fn whole(protocol: Protocol, status: u16, content_type: Option<&str>, body: &str) -> UsageReport {
    tap(
        protocol,
        InputConvention::ExcludesCache,
        status,
        content_type,
        &[body.as_bytes()],
        StreamEnd::Complete,
    )
}

fn tokens(input: u64, cached: u64, cache_creation: u64, output: u64, reasoning: u64) -> Tokens {
    Tokens {
        input,
        cached,
        cache_creation,
        output,
        reasoning,
    }
}

// ---- Responses ---------------------------------------------------------------------------------------

/// The reference's usage object (§4), in a whole response with a reasoning item and a message.
const RESPONSES_JSON: &str = r#"{"id":"resp_0b5c","object":"response","created_at":1764000000,"status":"completed","model":"deepseek-v4-pro","output":[{"type":"reasoning","id":"rs_1","summary":[],"content":[{"type":"reasoning_text","text":"用户问的是身份。"}]},{"type":"message","id":"msg_1","role":"assistant","status":"completed","content":[{"type":"output_text","text":"我是DeepSeek。","annotations":[]}]}],"usage":{"input_tokens":57,"input_tokens_details":{"cached_tokens":0},"output_tokens":44,"output_tokens_details":{"reasoning_tokens":30},"total_tokens":101,"x_details":[{"input_tokens":57,"output_tokens":44,"total_tokens":101,"x_billing_type":"response_api"}]},"error":null,"incomplete_details":null}"#;

const RESPONSES_SSE: &str = concat!(
    "event: response.created\n",
    r#"data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_7","object":"response","status":"in_progress","model":"deepseek-v4-flash","output":[],"usage":null}}"#,
    "\n\n",
    "event: response.reasoning_text.delta\n",
    r#"data: {"type":"response.reasoning_text.delta","sequence_number":1,"item_id":"rs_7","output_index":0,"content_index":0,"delta":"嗯，先想一想"}"#,
    "\n\n",
    "event: response.output_text.delta\n",
    r#"data: {"type":"response.output_text.delta","sequence_number":2,"item_id":"msg_7","output_index":1,"content_index":0,"delta":"你好！"}"#,
    "\n\n",
    "event: response.completed\n",
    r#"data: {"type":"response.completed","sequence_number":3,"response":{"id":"resp_7","object":"response","status":"completed","model":"deepseek-v4-flash","usage":{"input_tokens":3000,"input_tokens_details":{"cached_tokens":1024},"output_tokens":120,"output_tokens_details":{"reasoning_tokens":90},"total_tokens":3120,"x_details":[{"input_tokens":3000,"output_tokens":120,"total_tokens":3120,"prompt_tokens_details":{"cache_creation_input_tokens":1500},"x_billing_type":"response_api"}]}}}"#,
    "\n\n",
);

#[test]
fn responses_json_gives_the_reported_usage_and_its_id() {
    let r = whole(Protocol::Responses, 200, JSON, RESPONSES_JSON);
    assert_eq!(r.status, CallStatus::Ok);
    assert_eq!(r.usage_source, UsageSource::Reported);
    assert_eq!(r.tokens, tokens(57, 0, 0, 44, 30));
    assert_eq!(r.upstream_request_id.as_deref(), Some("resp_0b5c"));
    assert_eq!(r.response_model.as_deref(), Some("deepseek-v4-pro"));
    assert_eq!(r.finish_reasons, ["completed"]);
    assert!(!r.reasoning_estimated && !r.stream && r.parse_errors == 0);
}

#[test]
fn responses_stream_reads_cache_reads_and_writes_from_the_last_event() {
    let r = whole(Protocol::Responses, 200, SSE, RESPONSES_SSE);
    assert_eq!(r.status, CallStatus::Ok);
    assert!(r.stream);
    // x_details carries the writes; input_tokens counts them with the reads.
    assert_eq!(r.tokens, tokens(3000, 1024, 1500, 120, 90));
    assert_eq!(r.upstream_request_id.as_deref(), Some("resp_7"));
}

#[test]
fn responses_first_token_is_the_first_delta() {
    let mut t = ResponseTap::new(Protocol::Responses, &RequestInfo::default(), 200, SSE, None);
    let events: Vec<&str> = RESPONSES_SSE.split_inclusive("\n\n").collect();
    assert!(
        !t.feed(events[0].as_bytes()).first_token,
        "created is no token"
    );
    assert!(
        t.feed(events[1].as_bytes()).first_token,
        "the reasoning delta is"
    );
    assert!(!t.feed(events[2].as_bytes()).first_token);
}

#[test]
fn responses_failed_with_http_200_is_an_upstream_error_with_its_code() {
    let body = r#"{"id":"resp_9","object":"response","status":"failed","model":"deepseek-v4-pro","output":[],"usage":null,"error":{"code":"rate_limit_exceeded","message":"Requests rate limit exceeded"}}"#;
    let r = whole(Protocol::Responses, 200, JSON, body);
    assert_eq!(r.status, CallStatus::UpstreamError);
    assert_eq!(r.http_status, 200);
    assert_eq!(r.error_code.as_deref(), Some("rate_limit_exceeded"));
    assert_eq!(
        r.usage_source,
        UsageSource::None,
        "nothing generated, nothing billed"
    );
    // Streamed: `response.failed` after some text.
    let stream = concat!(
        "event: response.output_text.delta\n",
        r#"data: {"type":"response.output_text.delta","delta":"你好"}"#,
        "\n\nevent: response.failed\n",
        r#"data: {"type":"response.failed","response":{"id":"resp_9","status":"failed","error":{"code":"data_inspection_failed","message":"x"},"usage":null}}"#,
        "\n\n"
    );
    let r = whole(Protocol::Responses, 200, SSE, stream);
    assert_eq!(r.status, CallStatus::UpstreamError);
    assert_eq!(r.error_code.as_deref(), Some("data_inspection_failed"));
    assert_eq!(r.usage_source, UsageSource::Estimated, "text was generated");
}

#[test]
fn responses_incomplete_is_cut_short_with_its_reason_and_usage() {
    let stream = concat!(
        "event: response.output_text.delta\n",
        r#"data: {"type":"response.output_text.delta","delta":"你好"}"#,
        "\n\nevent: response.incomplete\n",
        r#"data: {"type":"response.incomplete","response":{"id":"resp_3","status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"usage":{"input_tokens":12,"output_tokens":16,"output_tokens_details":{"reasoning_tokens":16}}}}"#,
        "\n\n"
    );
    let r = whole(Protocol::Responses, 200, SSE, stream);
    assert_eq!(r.status, CallStatus::UpstreamAborted);
    assert_eq!(r.error_code.as_deref(), Some("max_output_tokens"));
    assert_eq!(r.finish_reasons, ["max_output_tokens"]);
    assert_eq!(r.usage_source, UsageSource::Reported);
    assert_eq!(r.tokens, tokens(12, 0, 0, 16, 16));
}

#[test]
fn a_cut_responses_stream_is_estimated_from_its_text() {
    let cut: String = RESPONSES_SSE.split_inclusive("\n\n").take(3).collect();
    let r = tap(
        Protocol::Responses,
        InputConvention::default(),
        200,
        SSE,
        &[cut.as_bytes()],
        StreamEnd::UpstreamFailed,
    );
    assert_eq!(r.status, CallStatus::UpstreamAborted);
    assert_eq!(r.usage_source, UsageSource::Estimated);
    assert_eq!(r.tokens.input, 7, "the prompt estimate");
    assert!(r.tokens.reasoning > 0 && r.tokens.output > r.tokens.reasoning);
    // Ended by the upstream without its last event: cut short too.
    let r = whole(Protocol::Responses, 200, SSE, &cut);
    assert_eq!(r.status, CallStatus::UpstreamAborted);
}

#[test]
fn responses_error_event_and_error_body() {
    let event = "event: error\ndata: {\"type\":\"error\",\"code\":\"invalid_parameter_error\",\"message\":\"x\",\"sequence_number\":0}\n\n";
    let r = whole(Protocol::Responses, 200, SSE, event);
    assert_eq!(r.status, CallStatus::UpstreamError);
    assert_eq!(r.error_code.as_deref(), Some("invalid_parameter_error"));
    let body = r#"{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","param":null,"code":"invalid_api_key"},"request_id":"9f"}"#;
    let r = whole(Protocol::Responses, 401, JSON, body);
    assert_eq!(r.status, CallStatus::UpstreamError);
    assert_eq!(r.error_code.as_deref(), Some("invalid_api_key"));
    assert_eq!(r.upstream_request_id.as_deref(), Some("9f"));
}

// ---- Anthropic ---------------------------------------------------------------------------------------

/// The reference's usage object (§4) with cache reads and writes, in a whole message with a thinking block.
const ANTHROPIC_JSON: &str = r#"{"id":"msg_01","type":"message","role":"assistant","model":"deepseek-v4-pro","content":[{"type":"thinking","thinking":"用户问的是身份，我先想一想怎么回答比较好。","signature":"sig"},{"type":"text","text":"我是DeepSeek。"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":15,"output_tokens":1078,"cache_creation_input_tokens":2000,"cache_read_input_tokens":1000}}"#;

const ANTHROPIC_SSE: &str = concat!(
    "event: message_start\n",
    r#"data: {"type":"message_start","message":{"id":"msg_02","type":"message","role":"assistant","model":"deepseek-v4-flash","content":[],"stop_reason":null,"usage":{"input_tokens":15,"output_tokens":1,"cache_creation_input_tokens":0,"cache_read_input_tokens":512}}}"#,
    "\n\n",
    "event: content_block_start\n",
    r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#,
    "\n\nevent: ping\ndata: {\"type\": \"ping\"}\n\n",
    "event: content_block_delta\n",
    r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"嗯，用户在问我是谁，我应该简单介绍一下自己。"}}"#,
    "\n\n",
    "event: content_block_delta\n",
    r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM"}}"#,
    "\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: content_block_start\n",
    r#"data: {"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#,
    "\n\n",
    "event: content_block_delta\n",
    r#"data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"你好！我是DeepSeek。"}}"#,
    "\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: message_delta\n",
    r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":60}}"#,
    "\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
);

#[test]
fn anthropic_json_counts_every_input_token_and_splits_reasoning_by_text() {
    let r = whole(Protocol::Anthropic, 200, JSON, ANTHROPIC_JSON);
    assert_eq!(r.status, CallStatus::Ok);
    assert_eq!(r.usage_source, UsageSource::Reported);
    assert_eq!(r.finish_reasons, ["end_turn"]);
    // Anthropic's convention: input_tokens is the rest; the call's input is the three together.
    assert_eq!(
        (r.tokens.input, r.tokens.cached, r.tokens.cache_creation),
        (3015, 1000, 2000)
    );
    assert_eq!(r.tokens.output, 1078);
    // No reasoning count on this API: the output is split by the two texts, and the row says so.
    let v: serde_json::Value = serde_json::from_str(ANTHROPIC_JSON).unwrap();
    let (thinking, text) = (
        v["content"][0]["thinking"].as_str().unwrap(),
        v["content"][1]["text"].as_str().unwrap(),
    );
    assert_eq!(r.tokens.reasoning, split_by_text(1078, thinking, text));
    // The same number, pinned: the thinking text is 2.2 times the answer's tokens.
    assert_eq!(r.tokens.reasoning, 741);
    assert!(r.reasoning_estimated);
    assert_eq!(r.upstream_request_id.as_deref(), Some("msg_01"));
}

#[test]
fn anthropic_input_convention_is_a_setting() {
    let r = tap(
        Protocol::Anthropic,
        InputConvention::IncludesCache,
        200,
        JSON,
        &[ANTHROPIC_JSON.as_bytes()],
        StreamEnd::Complete,
    );
    // If the platform's input_tokens already counts the cache, the reads and writes are parts of it. Here
    // they are more than it: the usage is inconsistent, bounded, and counted as such.
    assert_eq!(r.tokens.input, 15);
    assert!(r.usage_clamped);
    // A consistent usage in that reading: the cache is part of the input, nothing added, nothing clamped.
    let body = ANTHROPIC_JSON.replace("\"input_tokens\":15", "\"input_tokens\":3015");
    let r = tap(
        Protocol::Anthropic,
        InputConvention::IncludesCache,
        200,
        JSON,
        &[body.as_bytes()],
        StreamEnd::Complete,
    );
    assert_eq!(
        (
            r.tokens.input,
            r.tokens.cached,
            r.tokens.cache_creation,
            r.usage_clamped
        ),
        (3015, 1000, 2000, false)
    );
    // The convention is Anthropic's alone: the other protocols read input_tokens as every input token.
    let responses = tap(
        Protocol::Responses,
        InputConvention::ExcludesCache,
        200,
        JSON,
        &[RESPONSES_JSON.as_bytes()],
        StreamEnd::Complete,
    );
    assert_eq!(responses.tokens.input, 57);
}

#[test]
fn anthropic_stream_merges_message_start_and_message_delta() {
    let r = whole(Protocol::Anthropic, 200, SSE, ANTHROPIC_SSE);
    assert_eq!(r.status, CallStatus::Ok);
    assert!(r.stream);
    // message_start's `"stop_reason": null` is no reason; message_delta's is.
    assert_eq!(r.finish_reasons, ["end_turn"]);
    assert_eq!(
        (r.tokens.input, r.tokens.cached, r.tokens.output),
        (527, 512, 60)
    );
    // Split by the thinking and text deltas' token counts (the signature is not text): 38 of 60.
    assert!(r.reasoning_estimated);
    assert_eq!(r.tokens.reasoning, 38);
    assert_eq!(r.response_model.as_deref(), Some("deepseek-v4-flash"));
    // The thinking delta is the first token; the signature is not text.
    let mut t = ResponseTap::new(Protocol::Anthropic, &RequestInfo::default(), 200, SSE, None);
    let events: Vec<&str> = ANTHROPIC_SSE.split_inclusive("\n\n").collect();
    let firsts: Vec<bool> = events
        .iter()
        .map(|e| t.feed(e.as_bytes()).first_token)
        .collect();
    assert_eq!(firsts.iter().position(|f| *f), Some(3), "{firsts:?}");
}

#[test]
fn an_anthropic_stream_cut_before_its_final_usage_estimates_the_output_only() {
    let cut: String = ANTHROPIC_SSE.split_inclusive("\n\n").take(9).collect();
    let r = tap(
        Protocol::Anthropic,
        InputConvention::ExcludesCache,
        200,
        SSE,
        &[cut.as_bytes()],
        StreamEnd::ClientGone,
    );
    assert_eq!(r.status, CallStatus::ClientAborted);
    assert_eq!(r.usage_source, UsageSource::Estimated);
    // The input is message_start's, exact; the output is the text that streamed, not the 1 so far.
    assert_eq!((r.tokens.input, r.tokens.cached), (527, 512));
    assert!(
        r.tokens.output > 10 && r.tokens.reasoning > 0,
        "{:?}",
        r.tokens
    );
}

#[test]
fn anthropic_errors_in_its_own_shape() {
    let body = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}"#;
    let r = whole(Protocol::Anthropic, 529, JSON, body);
    assert_eq!(r.status, CallStatus::UpstreamError);
    assert_eq!(r.error_code.as_deref(), Some("overloaded_error"));
    let mid: String = ANTHROPIC_SSE
        .split_inclusive("\n\n")
        .take(4)
        .chain(["event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"])
        .collect();
    let r = whole(Protocol::Anthropic, 200, SSE, &mid);
    assert_eq!(r.status, CallStatus::UpstreamError);
    assert_eq!(r.error_code.as_deref(), Some("overloaded_error"));
    assert_eq!(r.http_status, 200);
}

#[test]
fn odd_shapes_are_counted_never_fatal() {
    // A delta that is not a string, a usage whose count is not a count, a non-JSON event.
    let stream = concat!(
        "event: response.output_text.delta\n",
        r#"data: {"type":"response.output_text.delta","delta":{"text":"x"}}"#,
        "\n\ndata: not json\n\n",
        "event: response.completed\n",
        r#"data: {"type":"response.completed","response":{"status":"completed","usage":{"input_tokens":"3","output_tokens":1}}}"#,
        "\n\n"
    );
    let r = whole(Protocol::Responses, 200, SSE, stream);
    assert_eq!(r.status, CallStatus::Ok);
    assert_eq!(
        r.usage_source,
        UsageSource::Estimated,
        "an unreadable count is no count"
    );
    assert!(r.parse_errors >= 2, "{r:?}");
    // A message whose content is not a list still gives its usage (salvaged).
    let body =
        r#"{"type":"message","content":"plain","usage":{"input_tokens":3,"output_tokens":1}}"#;
    let r = whole(Protocol::Anthropic, 200, JSON, body);
    assert_eq!(r.usage_source, UsageSource::Reported);
    assert_eq!((r.tokens.input, r.tokens.output, r.parse_errors), (3, 1, 1));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn any_split_of_a_new_protocols_stream_gives_the_same_report(
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
        which in 0usize..4,
        crlf in any::<bool>(),
    ) {
        let (protocol, body) = [
            (Protocol::Responses, RESPONSES_SSE),
            (Protocol::Anthropic, ANTHROPIC_SSE),
            (Protocol::Responses, RESPONSES_JSON),
            (Protocol::Anthropic, ANTHROPIC_JSON),
        ][which];
        let body = if crlf { body.replace('\n', "\r\n") } else { body.to_owned() };
        let content_type = if which < 2 { SSE } else { JSON };
        let conv = InputConvention::ExcludesCache;
        let one = tap(protocol, conv, 200, content_type, &[body.as_bytes()], StreamEnd::Complete);
        let pieces = split(body.as_bytes(), &cuts);
        let refs: Vec<&[u8]> = pieces.iter().map(|p| p.as_slice()).collect();
        let many = tap(protocol, conv, 200, content_type, &refs, StreamEnd::Complete);
        prop_assert_eq!(one.usage_source, UsageSource::Reported);
        prop_assert_eq!(one, many);
    }

    #[test]
    fn arbitrary_bytes_never_panic_in_the_new_readers(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
        sse in any::<bool>(),
        anthropic in any::<bool>(),
    ) {
        let protocol = if anthropic { Protocol::Anthropic } else { Protocol::Responses };
        let refs: Vec<&[u8]> = chunks.iter().map(|c| c.as_slice()).collect();
        let r = tap(protocol, InputConvention::ExcludesCache, 200, if sse { SSE } else { JSON }, &refs, StreamEnd::Complete);
        let all: Vec<u8> = chunks.concat();
        if !all.windows(7).any(|w| w == b"_tokens") {
            prop_assert_ne!(r.usage_source, UsageSource::Reported);
        }
    }
}
