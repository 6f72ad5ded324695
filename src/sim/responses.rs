//! The OpenAI Responses API as the simulator writes it (reference `bailian-2026.md` §4): a whole response
//! object, or typed SSE events (`event:` name and a `data:` object with `type` and `sequence_number`) from
//! `response.created` to `response.completed`, the usage in the last one.

use super::request::{Call, Script};
use serde_json::{json, Value};

fn usage(call: &Call, s: &Script) -> Value {
    let (input, output) = (call.input_tokens, s.output_tokens());
    let mut detail = json!({"input_tokens": input, "output_tokens": output, "total_tokens": input + output,
                            "x_billing_type": "response_api"});
    if call.cache_creation_tokens > 0 {
        detail["prompt_tokens_details"] =
            json!({"cache_creation_input_tokens": call.cache_creation_tokens});
    }
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": call.cached_tokens},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": s.reasoning_tokens()},
        "total_tokens": input + output,
        "x_details": [detail],
    })
}

fn ids(call: &Call) -> (String, String, String) {
    let id = call.request_id.simple().to_string();
    (
        format!("resp_{id}"),
        format!("rs_{}", &id[..24]),
        format!("msg_{}", &id[..24]),
    )
}

/// The response object: `status` completed (with output and usage), in progress (neither yet), or failed.
fn response(call: &Call, s: &Script, status: &str, error: Option<Value>) -> Value {
    let (id, rs, msg) = ids(call);
    let done = status == "completed";
    let mut output = Vec::new();
    if done && call.thinking {
        output.push(json!({"type": "reasoning", "id": rs, "summary": [],
                           "content": [{"type": "reasoning_text", "text": s.reasoning.concat()}]}));
    }
    if done {
        output.push(json!({"type": "message", "id": msg, "role": "assistant", "status": "completed",
                           "content": [{"type": "output_text", "text": s.answer.concat(), "annotations": []}]}));
    }
    json!({
        "id": id, "object": "response", "created_at": super::shape::now_secs(), "status": status,
        "model": call.model, "output": output, "error": error, "incomplete_details": null,
        "usage": if done { usage(call, s) } else { Value::Null },
    })
}

/// The whole body of a call that did not stream. A failed call (`x-sim-fault: failed`) is HTTP 200 with
/// `"status": "failed"`.
pub(super) fn body(call: &Call, s: &Script) -> Value {
    if call.fault == Some(super::request::Fault::Failed) {
        return response(call, s, "failed", Some(rate_limited()));
    }
    response(call, s, "completed", None)
}

fn rate_limited() -> Value {
    json!({"code": "rate_limit_exceeded", "message": "Requests rate limit exceeded, please try again later."})
}

fn event(out: &mut Vec<Vec<u8>>, kind: &str, mut data: Value) {
    data["type"] = json!(kind);
    data["sequence_number"] = json!(out.len());
    out.push(format!("event: {kind}\ndata: {data}\n\n").into_bytes());
}

/// The events of a stream, in order; each is one write.
pub(super) fn events(call: &Call, s: &Script) -> Vec<Vec<u8>> {
    let (_, rs, msg) = ids(call);
    let mut out = Vec::new();
    let progress = response(call, s, "in_progress", None);
    event(&mut out, "response.created", json!({"response": progress}));
    event(
        &mut out,
        "response.in_progress",
        json!({"response": progress}),
    );
    let mut index = 0;
    if call.thinking {
        let item = json!({"type": "reasoning", "id": rs, "summary": [], "content": []});
        event(
            &mut out,
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
        );
        for p in &s.reasoning {
            event(
                &mut out,
                "response.reasoning_text.delta",
                json!({"item_id": rs, "output_index": index, "content_index": 0, "delta": p}),
            );
        }
        event(
            &mut out,
            "response.reasoning_text.done",
            json!({"item_id": rs, "output_index": index, "content_index": 0, "text": s.reasoning.concat()}),
        );
        event(
            &mut out,
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        );
        index += 1;
    }
    let item = json!({"type": "message", "id": msg, "role": "assistant", "status": "in_progress", "content": []});
    event(
        &mut out,
        "response.output_item.added",
        json!({"output_index": index, "item": item}),
    );
    let part = json!({"type": "output_text", "text": "", "annotations": []});
    event(
        &mut out,
        "response.content_part.added",
        json!({"item_id": msg, "output_index": index, "content_index": 0, "part": part}),
    );
    for p in &s.answer {
        event(
            &mut out,
            "response.output_text.delta",
            json!({"item_id": msg, "output_index": index, "content_index": 0, "delta": p, "logprobs": []}),
        );
    }
    let text = s.answer.concat();
    event(
        &mut out,
        "response.output_text.done",
        json!({"item_id": msg, "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
    );
    let part = json!({"type": "output_text", "text": text, "annotations": []});
    event(
        &mut out,
        "response.content_part.done",
        json!({"item_id": msg, "output_index": index, "content_index": 0, "part": part}),
    );
    let item = json!({"type": "message", "id": msg, "role": "assistant", "status": "completed",
                      "content": [part]});
    event(
        &mut out,
        "response.output_item.done",
        json!({"output_index": index, "item": item}),
    );
    event(
        &mut out,
        "response.completed",
        json!({"response": response(call, s, "completed", None)}),
    );
    out
}

/// The event that ends a stream that failed (moderation, or `x-sim-fault: failed`).
pub(super) fn failed_event(call: &Call, n: usize, code: &str, message: &str) -> Vec<u8> {
    let empty = Script {
        reasoning: vec![],
        answer: vec![],
        tool_args: vec![],
    };
    let mut r = response(
        call,
        &empty,
        "failed",
        Some(json!({"code": code, "message": message})),
    );
    r["usage"] = Value::Null;
    // `n` counts from 1, as native event ids do; sequence numbers count from 0.
    let data =
        json!({"type": "response.failed", "sequence_number": n.saturating_sub(1), "response": r});
    format!("event: response.failed\ndata: {data}\n\n").into_bytes()
}
