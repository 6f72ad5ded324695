//! The Anthropic Messages API as the simulator writes it (reference `bailian-2026.md` §4): a whole message, or
//! the event stream `message_start` → content blocks (thinking, then text) → `message_delta` (the final usage,
//! all four fields) → `message_stop`, with a `ping`.
//!
//! Usage follows Anthropic's own convention: `input_tokens` is the input neither read from nor written to the
//! cache (`cache_read_input_tokens`, `cache_creation_input_tokens` apart). Whether Bailian does the same is
//! UNCONFIRMED; the simulator's bill counts every input token, so a reconciliation tells a meter set to the
//! other convention (`--anthropic-input-tokens`) apart.

use super::request::{Call, Script};
use serde_json::{json, Value};

fn usage(call: &Call, output: u64) -> Value {
    json!({
        "input_tokens": call.input_tokens - call.cached_tokens - call.cache_creation_tokens,
        "cache_creation_input_tokens": call.cache_creation_tokens,
        "cache_read_input_tokens": call.cached_tokens,
        "output_tokens": output,
    })
}

fn id(call: &Call) -> String {
    format!("msg_{}", call.request_id.simple())
}

/// A signature of a thinking block (opaque to clients).
fn signature(call: &Call) -> String {
    format!("sim-{}", &call.request_id.simple().to_string()[..16])
}

/// The whole body of a call that did not stream.
pub(super) fn body(call: &Call, s: &Script) -> Value {
    let mut content = Vec::new();
    if call.thinking {
        content.push(json!({"type": "thinking", "thinking": s.reasoning.concat(), "signature": signature(call)}));
    }
    content.push(json!({"type": "text", "text": s.answer.concat()}));
    json!({
        "id": id(call), "type": "message", "role": "assistant", "model": call.model, "content": content,
        "stop_reason": "end_turn", "stop_sequence": null, "usage": usage(call, s.output_tokens()),
    })
}

fn event(kind: &str, mut data: Value) -> Vec<u8> {
    data["type"] = json!(kind);
    format!("event: {kind}\ndata: {data}\n\n").into_bytes()
}

/// An `error` event: how the API reports a failure after the stream began (HTTP 200).
pub(super) fn error_event(kind: &str, message: &str) -> Vec<u8> {
    event(
        "error",
        json!({"error": {"type": kind, "message": message}}),
    )
}

/// The events of a stream, in order; each is one write.
pub(super) fn events(call: &Call, s: &Script) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let message = json!({"id": id(call), "type": "message", "role": "assistant", "model": call.model,
                         "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage(call, 1)});
    out.push(event("message_start", json!({"message": message})));
    let mut index = 0;
    if call.thinking {
        out.push(event(
            "content_block_start",
            json!({"index": index,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        ));
        out.push(event("ping", json!({})));
        for p in &s.reasoning {
            out.push(event(
                "content_block_delta",
                json!({"index": index, "delta": {"type": "thinking_delta", "thinking": p}}),
            ));
        }
        out.push(event("content_block_delta",
            json!({"index": index, "delta": {"type": "signature_delta", "signature": signature(call)}})));
        out.push(event("content_block_stop", json!({"index": index})));
        index += 1;
    }
    out.push(event(
        "content_block_start",
        json!({"index": index,
        "content_block": {"type": "text", "text": ""}}),
    ));
    for p in &s.answer {
        out.push(event(
            "content_block_delta",
            json!({"index": index, "delta": {"type": "text_delta", "text": p}}),
        ));
    }
    out.push(event("content_block_stop", json!({"index": index})));
    out.push(event(
        "message_delta",
        json!({"delta": {"stop_reason": "end_turn", "stop_sequence": null},
        "usage": usage(call, s.output_tokens())}),
    ));
    out.push(event("message_stop", json!({})));
    out
}
