//! What the simulator writes: the reference's response shapes for the chat and native protocols, whole or
//! streamed (the Responses and Anthropic shapes are in their own files), the stream machinery all four share,
//! and the faults that end a stream.

use super::request::{Call, Fault, Script};
use super::shape::{now_secs, Proto};
use super::SimOptions;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;

/// `prompt_tokens_details` of the chat and native shapes (reference bailian-2026 §4): cache reads, and with
/// the explicit cache its writes, type and lifetime.
pub(super) fn prompt_details(call: &Call) -> Option<Value> {
    let mut d = json!({"cached_tokens": call.cached_tokens});
    if call.cache_creation_tokens > 0 {
        d["cache_creation_input_tokens"] = json!(call.cache_creation_tokens);
        d["cache_type"] = json!("ephemeral");
        d["cache_creation"] = json!({"ephemeral_5m_input_tokens": call.cache_creation_tokens});
    }
    (call.cached_tokens > 0 || call.cache_creation_tokens > 0).then_some(d)
}

pub(super) fn compat_usage(call: &Call, output: u64, reasoning: u64) -> Value {
    let mut u = json!({"prompt_tokens": call.input_tokens, "completion_tokens": output, "total_tokens": call.input_tokens + output});
    if call.thinking {
        u["completion_tokens_details"] = json!({"reasoning_tokens": reasoning});
    }
    if let Some(d) = prompt_details(call) {
        u["prompt_tokens_details"] = d;
    }
    u
}

pub(super) fn native_usage(call: &Call, output: u64, reasoning: u64) -> Value {
    let mut u = json!({"total_tokens": call.input_tokens + output, "output_tokens": output, "input_tokens": call.input_tokens});
    if call.thinking {
        u["output_tokens_details"] = json!({"reasoning_tokens": reasoning});
    }
    if let Some(d) = prompt_details(call) {
        u["prompt_tokens_details"] = d;
    }
    u
}

pub(super) fn tool_call(call: &Call, args: &str) -> Value {
    json!([{"function": {"arguments": args, "name": call.tool}, "id": format!("call_{}", &call.request_id.simple().to_string()[..22]), "index": 0, "type": "function"}])
}

pub(super) fn compat_body(call: &Call, s: &Script) -> Value {
    let mut message = json!({"content": s.answer.concat(), "role": "assistant"});
    if call.thinking {
        message["reasoning_content"] = json!(s.reasoning.concat());
    }
    let finish = if call.tool.is_some() {
        message["tool_calls"] = tool_call(call, &s.tool_args.concat());
        "tool_calls"
    } else {
        "stop"
    };
    json!({
        "choices": [{"message": message, "finish_reason": finish, "index": 0, "logprobs": null}],
        "object": "chat.completion",
        "usage": compat_usage(call, s.output_tokens(), s.reasoning_tokens()),
        "created": now_secs(), "system_fingerprint": null, "model": call.model,
        "id": format!("chatcmpl-{}", call.request_id),
    })
}

pub(super) fn native_body(call: &Call, s: &Script) -> Value {
    let mut message = json!({"role": "assistant", "content": s.answer.concat()});
    if call.thinking {
        message["reasoning_content"] = json!(s.reasoning.concat());
    }
    if call.tool.is_some() {
        message["tool_calls"] = tool_call(call, &s.tool_args.concat());
    }
    let finish = if call.tool.is_some() {
        "tool_calls"
    } else {
        "stop"
    };
    json!({
        "output": {"choices": [{"finish_reason": finish, "message": message}]},
        "usage": native_usage(call, s.output_tokens(), s.reasoning_tokens()),
        "request_id": call.request_id.to_string(),
    })
}

pub(super) fn base_headers(call: &Call, content_type: &'static str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&call.request_id.to_string()) {
        h.insert("x-request-id", v);
    }
    h.insert("x-dashscope-call-gateway", HeaderValue::from_static("true"));
    h
}

pub(super) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = e.write_all(bytes);
    e.finish().unwrap_or_default()
}

pub(super) fn whole_response(call: &Call, body: Vec<u8>) -> Response {
    let mut headers = base_headers(call, "application/json");
    let body = if call.gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        gzip(&body)
    } else {
        body
    };
    match call.fault {
        Some(Fault::Reset | Fault::Stall) => {
            // Half the body, then cut or silence.
            let half = Bytes::from(body[..body.len() / 2].to_vec());
            let stall = call.fault == Some(Fault::Stall);
            let tail = futures_util::stream::once(async move {
                if stall {
                    std::future::pending::<()>().await;
                }
                Err::<Bytes, std::io::Error>(std::io::Error::other("simulated connection reset"))
            });
            let stream = futures_util::stream::once(async move { Ok(half) }).chain(tail);
            (headers, Body::from_stream(stream)).into_response()
        }
        Some(Fault::Garbage) => (headers, Body::from("\u{fffd}garbage{\"usage\":")).into_response(),
        _ => (headers, body).into_response(),
    }
}

/// The events of a stream, in order; each is one write.
pub(super) fn stream_events(call: &Call, s: &Script) -> Vec<Vec<u8>> {
    match call.proto {
        Proto::Compat => compat_events(call, s),
        Proto::Native => native_events(call, s),
        Proto::Responses => super::responses::events(call, s),
        Proto::Anthropic => super::anthropic::events(call, s),
    }
}

pub(super) fn compat_events(call: &Call, s: &Script) -> Vec<Vec<u8>> {
    let id = format!("chatcmpl-{}", call.request_id);
    let created = now_secs();
    let chunk = |choices: Value, usage: Value| {
        let v = json!({"choices": choices, "object": "chat.completion.chunk", "usage": usage, "created": created,
                       "system_fingerprint": null, "model": call.model, "id": id});
        format!("data: {v}\n\n").into_bytes()
    };
    let choice = |delta: Value| json!([{"delta": delta, "finish_reason": null, "index": 0, "logprobs": null}]);
    let mut out = Vec::new();
    let first = if call.thinking {
        json!({"content": "", "reasoning_content": "", "role": "assistant"})
    } else {
        json!({"content": "", "role": "assistant"})
    };
    out.push(chunk(choice(first), Value::Null));
    for p in &s.reasoning {
        out.push(chunk(
            choice(json!({"content": null, "reasoning_content": p})),
            Value::Null,
        ));
    }
    for p in &s.answer {
        let delta = if call.thinking {
            json!({"content": p, "reasoning_content": null})
        } else {
            json!({"content": p})
        };
        out.push(chunk(choice(delta), Value::Null));
    }
    for (i, p) in s.tool_args.iter().enumerate() {
        let mut tc = tool_call(call, p);
        if i > 0 {
            tc[0]["function"]["name"] = Value::Null;
        }
        out.push(chunk(
            choice(json!({"content": null, "tool_calls": tc})),
            Value::Null,
        ));
    }
    let finish = if call.tool.is_some() {
        "tool_calls"
    } else {
        "stop"
    };
    out.push(chunk(
        json!([{"finish_reason": finish, "delta": {"content": ""}, "index": 0, "logprobs": null}]),
        Value::Null,
    ));
    if call.include_usage {
        out.push(chunk(
            json!([]),
            compat_usage(call, s.output_tokens(), s.reasoning_tokens()),
        ));
    }
    out.push(b"data: [DONE]\n\n".to_vec());
    out
}

pub(super) fn native_events(call: &Call, s: &Script) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let (mut reasoning_so_far, mut answer_so_far) = (String::new(), String::new());
    let mut output = 0u64;
    let mut reasoning = 0u64;
    let request_id = call.request_id.to_string();
    let event =
        |out: &mut Vec<Vec<u8>>, message: Value, finish: &str, output: u64, reasoning: u64| {
            let n = out.len() + 1;
            let v = json!({"output": {"choices": [{"message": message, "finish_reason": finish}]},
                       "usage": native_usage(call, output, reasoning), "request_id": request_id});
            out.push(format!("id:{n}\nevent:result\n:HTTP_STATUS/200\ndata:{v}\n\n").into_bytes());
        };
    for p in &s.reasoning {
        output += 1;
        reasoning += 1;
        reasoning_so_far.push_str(p);
        let r = if call.incremental {
            p.to_string()
        } else {
            reasoning_so_far.clone()
        };
        event(
            &mut out,
            json!({"content": "", "reasoning_content": r, "role": "assistant"}),
            "null",
            output,
            reasoning,
        );
    }
    for p in s.answer.iter().chain(&s.tool_args) {
        output += 1;
        answer_so_far.push_str(p);
        let a = if call.incremental {
            p.to_string()
        } else {
            answer_so_far.clone()
        };
        let mut m = json!({"content": a, "role": "assistant"});
        if call.thinking {
            m["reasoning_content"] = json!("");
        }
        event(&mut out, m, "null", output, reasoning);
    }
    let mut last = if call.incremental {
        json!({"content": "", "role": "assistant"})
    } else {
        json!({"content": answer_so_far, "role": "assistant"})
    };
    if call.thinking {
        last["reasoning_content"] = json!(if call.incremental {
            String::new()
        } else {
            reasoning_so_far
        });
    }
    let finish = if call.tool.is_some() {
        "tool_calls"
    } else {
        "stop"
    };
    event(&mut out, last, finish, output, reasoning);
    out
}

/// What ends a stream early, after half its events.
pub(super) fn fault_event(call: &Call, n: usize) -> Option<Vec<u8>> {
    let moderation = "Output data may contain inappropriate content.";
    match (call.fault?, call.proto) {
        (Fault::Moderation, Proto::Compat) => Some(format!(
            "data: {}\n\n",
            json!({"error": {"message": moderation, "type": "data_inspection_failed", "param": null, "code": "data_inspection_failed"}})
        ).into_bytes()),
        (Fault::Moderation, Proto::Native) => Some(format!(
            "id:{n}\nevent:error\n:HTTP_STATUS/400\ndata:{}\n\n",
            json!({"code": "DataInspectionFailed", "message": moderation, "request_id": call.request_id.to_string()})
        ).into_bytes()),
        (Fault::Moderation, Proto::Responses) => {
            Some(super::responses::failed_event(call, n, "data_inspection_failed", moderation))
        }
        (Fault::Failed, Proto::Responses) => Some(super::responses::failed_event(
            call,
            n,
            "rate_limit_exceeded",
            "Requests rate limit exceeded, please try again later.",
        )),
        (Fault::Moderation, Proto::Anthropic) => {
            Some(super::anthropic::error_event("invalid_request_error", moderation))
        }
        (Fault::Failed, Proto::Anthropic) => {
            Some(super::anthropic::error_event("overloaded_error", "Overloaded"))
        }
        _ => None,
    }
}

pub(super) struct StreamState {
    pub(super) events: std::vec::IntoIter<Vec<u8>>,
    pub(super) sent: usize,
    pub(super) cut_at: Option<usize>,
    pub(super) fault: Option<Fault>,
    pub(super) ttft: Duration,
    pub(super) interval: Duration,
    pub(super) encoder: Option<flate2::write::GzEncoder<Vec<u8>>>,
    pub(super) done: bool,
}

impl StreamState {
    fn encode(&mut self, bytes: Vec<u8>) -> Bytes {
        match &mut self.encoder {
            Some(e) => {
                let _ = e.write_all(&bytes);
                let _ = e.flush();
                Bytes::from(std::mem::take(e.get_mut()))
            }
            None => Bytes::from(bytes),
        }
    }
}

pub(super) fn stream_response(call: Call, script: Script, options: &SimOptions) -> Response {
    let mut headers = base_headers(&call, "text/event-stream;charset=UTF-8");
    if call.proto == Proto::Native {
        headers.insert("x-dashscope-finished", HeaderValue::from_static("false"));
    }
    let mut events = stream_events(&call, &script);
    let cut_at = call
        .fault
        .filter(|f| {
            matches!(
                f,
                Fault::Moderation | Fault::Reset | Fault::Stall | Fault::Failed
            )
        })
        .map(|_| events.len() / 2);
    if let (Some(cut), Some(ev)) = (cut_at, fault_event(&call, events.len() / 2 + 1)) {
        events.truncate(cut);
        events.push(ev);
    }
    if call.fault == Some(Fault::Garbage) {
        events = vec![
            b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":{\"prompt_tokens\":"
                .to_vec(),
            vec![0xff, 0xfe, b'\n', b'\n'],
        ];
    }
    let encoder = call.gzip.then(|| {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast())
    });
    let state = StreamState {
        events: events.into_iter(),
        sent: 0,
        cut_at: cut_at.filter(|_| matches!(call.fault, Some(Fault::Reset | Fault::Stall))),
        fault: call.fault,
        ttft: options.ttft,
        interval: options.chunk_interval,
        encoder,
        done: false,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if st.cut_at == Some(st.sent) {
            if st.fault == Some(Fault::Stall) {
                std::future::pending::<()>().await;
            }
            st.done = true;
            return Some((Err(std::io::Error::other("simulated connection reset")), st));
        }
        let delay = if st.sent == 0 { st.ttft } else { st.interval };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match st.events.next() {
            Some(ev) => {
                st.sent += 1;
                let bytes = st.encode(ev);
                Some((Ok(bytes), st))
            }
            None => {
                st.done = true;
                let tail = st
                    .encoder
                    .take()
                    .and_then(|e| e.finish().ok())
                    .filter(|t| !t.is_empty())?;
                Some((Ok(Bytes::from(tail)), st))
            }
        }
    });
    (headers, Body::from_stream(stream)).into_response()
}

pub(super) fn sse_error(call: &Call) -> Response {
    let headers = base_headers(call, "text/event-stream;charset=UTF-8");
    match call.proto {
        Proto::Compat => {
            let body = format!(
                "data: {}\n\n",
                json!({"error": {"code": "invalid_parameter_error", "param": null, "message": "Range of top_logprobs should be [0, 5]", "type": "invalid_request_error"}, "id": format!("chatcmpl-{}", call.request_id)})
            );
            (StatusCode::BAD_REQUEST, headers, body).into_response()
        }
        Proto::Native => {
            let body = format!(
                "id:1\nevent:error\n:HTTP_STATUS/400\ndata:{}\n\n",
                json!({"code": "InvalidParameter", "message": "Role must be user or assistant and Content length must be greater than 0", "request_id": call.request_id.to_string()})
            );
            (StatusCode::OK, headers, body).into_response()
        }
        // The Responses and Anthropic streams say it in an `error` event, with HTTP 200.
        Proto::Responses => {
            let body = format!(
                "event: error\ndata: {}\n\n",
                json!({"type": "error", "code": "invalid_parameter_error", "message": "Range of top_logprobs should be [0, 5]", "param": null, "sequence_number": 0})
            );
            (StatusCode::OK, headers, body).into_response()
        }
        Proto::Anthropic => (
            StatusCode::OK,
            headers,
            super::anthropic::error_event("invalid_request_error", "max_tokens: must be positive"),
        )
            .into_response(),
    }
}

// ---- errors -----------------------------------------------------------------------------------------
