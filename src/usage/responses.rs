//! The OpenAI Responses API as Bailian serves it (`/compatible-mode/v1/responses`, reference
//! `bailian-2026.md` §4): a whole response object, or an SSE stream of typed events.
//!
//! - Usage: the response object's `usage` (`input_tokens` counts every input token; cache reads in
//!   `input_tokens_details.cached_tokens`, cache writes in `x_details[].prompt_tokens_details`; reasoning in
//!   `output_tokens_details.reasoning_tokens`). A stream carries it in its last event, `response.completed`
//!   (or `response.incomplete` / `response.failed`), inside `response`.
//! - Text, for the estimate of a cut stream: `response.reasoning_text.delta` (and the summary's deltas) is the
//!   chain of thought; `response.output_text.delta` and `response.function_call_arguments.delta` the answer.
//! - Outcome: `status: "failed"` (also with HTTP 200, e.g. a rate limit) is an upstream error with
//!   `error.code`; `status: "incomplete"` is a call the upstream cut short (its reason is kept as the error
//!   code); an `error` event is an upstream error. Only one of the three terminal events ends a stream.

use super::observed::Observed;
use super::wire::{salvage, Text, WireUsage};
use serde::Deserialize;

/// One event of a stream, or a whole response (the same type: a whole body is the `response` of the last
/// event), or an error body.
#[derive(Deserialize, Default)]
struct Object<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Text<'a>,
    #[serde(borrow, default)]
    delta: Text<'a>,
    #[serde(borrow, default)]
    response: Option<Box<Object<'a>>>,
    #[serde(borrow, default)]
    id: Text<'a>,
    #[serde(borrow, default)]
    request_id: Text<'a>,
    #[serde(borrow, default)]
    model: Text<'a>,
    #[serde(borrow, default)]
    status: Text<'a>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
    /// An `error` event's own code (`{"type":"error","code":…,"message":…}`).
    #[serde(borrow, default)]
    code: Text<'a>,
    #[serde(borrow, default)]
    incomplete_details: Option<Incomplete<'a>>,
    #[serde(borrow, default)]
    output: Option<Vec<Item<'a>>>,
}

#[derive(Deserialize, Default)]
struct Incomplete<'a> {
    #[serde(borrow, default)]
    reason: Text<'a>,
}

/// An output item of a whole response: `reasoning`, `message` or `function_call`.
#[derive(Deserialize)]
struct Item<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Text<'a>,
    #[serde(borrow, default)]
    content: Option<Vec<Part<'a>>>,
    #[serde(borrow, default)]
    summary: Option<Vec<Part<'a>>>,
    #[serde(borrow, default)]
    name: Text<'a>,
    #[serde(borrow, default)]
    arguments: Text<'a>,
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Text<'a>,
}

/// Reads one JSON object: an SSE event's data, or (`whole`) a whole body.
pub(super) fn absorb(obs: &mut Observed, data: &[u8], whole: bool) {
    let data = super::wire::skip_bom(data.trim_ascii_start());
    let o: Object<'_> = match serde_json::from_slice(data) {
        Ok(o) => o,
        Err(_) => {
            salvaged(obs, data, whole);
            return;
        }
    };
    match o.kind.get() {
        Some("response.output_text.delta") | Some("response.function_call_arguments.delta") => {
            obs.answer_text(o.delta.get().unwrap_or(""), true)
        }
        Some("response.reasoning_text.delta") | Some("response.reasoning_summary_text.delta") => {
            obs.reasoning_text(o.delta.get().unwrap_or(""), true)
        }
        Some(kind) if is_last(kind) => {
            if let Some(r) = &o.response {
                response(obs, r);
            }
            obs.terminal = true;
        }
        Some("error") => match (&o.error, o.code.get()) {
            (Some(e), _) if e.is_object() => obs.error(e),
            (_, Some(code)) if !code.is_empty() => obs.error_code(code),
            _ => obs.error_code("unknown"),
        },
        _ if whole => {
            response(obs, &o);
            for item in o.output.iter().flatten() {
                tally_item(obs, item);
            }
            obs.terminal = true;
        }
        // `response.created`, `response.in_progress`, …: the response so far (its id and model).
        _ => {
            if let Some(r) = &o.response {
                obs.id(r.id.get());
                obs.model(r.model.get());
            }
        }
    }
}

/// The three events that end a stream.
fn is_last(kind: &str) -> bool {
    matches!(
        kind,
        "response.completed" | "response.incomplete" | "response.failed"
    )
}

/// A response object: its id, model, usage and outcome.
fn response(obs: &mut Observed, r: &Object<'_>) {
    obs.id(r.request_id.get().or(r.id.get()));
    obs.model(r.model.get());
    obs.usage(r.usage.as_ref());
    if let Some(e) = r.error.as_ref().filter(|e| e.is_object()) {
        obs.error(e);
    }
    match r.status.get() {
        Some("failed") if !obs.errored => obs.error_code("failed"),
        Some("incomplete") => {
            let reason = r.incomplete_details.as_ref().and_then(|d| d.reason.get());
            obs.incomplete = Some(reason.unwrap_or("incomplete").to_owned());
            obs.finish_reason(reason.unwrap_or("incomplete"));
        }
        Some("completed") => obs.finish_reason("completed"),
        _ => {}
    }
}

fn tally_item(obs: &mut Observed, item: &Item<'_>) {
    let parts = item.content.iter().chain(&item.summary).flatten();
    match item.kind.get() {
        Some("reasoning") => {
            parts.for_each(|p| obs.reasoning_text(p.text.get().unwrap_or(""), true))
        }
        Some("function_call") => {
            obs.answer_text(item.name.get().unwrap_or(""), true);
            obs.answer_text(item.arguments.get().unwrap_or(""), true);
        }
        _ => parts.for_each(|p| obs.answer_text(p.text.get().unwrap_or(""), true)),
    }
}

/// An object that is JSON but not of the expected shape: its usage and error, if they can be found.
fn salvaged(obs: &mut Observed, data: &[u8], whole: bool) {
    obs.parse_errors += 1;
    if let Some(s) = salvage(data) {
        obs.usage(s.usage.as_ref());
        if let Some(e) = s.error {
            obs.error(&e);
        }
        if whole || s.kind.as_deref().is_some_and(is_last) {
            obs.terminal = true;
        }
    }
}
