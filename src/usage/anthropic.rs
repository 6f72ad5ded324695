//! The Anthropic Messages API as Bailian serves it (`/apps/anthropic/v1/messages`, reference
//! `bailian-2026.md` §4): a whole message, or an SSE stream of typed events.
//!
//! - Usage: `message_start` carries the input side (`input_tokens`, `cache_read_input_tokens`,
//!   `cache_creation_input_tokens`) and the output so far; `message_delta` the final counts (on Bailian all
//!   four). They are merged, newer fields winning. Whether `input_tokens` counts the cache reads and writes is
//!   the protocol's convention, applied when the call is concluded ([`InputConvention`]).
//! - Reasoning: the platform reports no reasoning count here. Thinking blocks (`thinking_delta`) are the
//!   chain of thought and text and tool-input blocks the answer; the reported output is split between them in
//!   proportion to their token counts, and the row says the split is an estimate.
//! - Outcome: `message_stop` ends a stream; an `error` event or an error body
//!   (`{"type":"error","error":{"type","message"}}`) is an upstream error whose code is `error.type`.

use super::observed::Observed;
use super::wire::{salvage, Text, WireUsage};
use serde::Deserialize;

/// What Anthropic's `input_tokens` counts. UNCONFIRMED on Bailian (reference §4): a setting
/// (`--anthropic-input-tokens`), and reconciliation with the platform's bill tells which is right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum InputConvention {
    /// Anthropic's own: `input_tokens` is only the input neither read from nor written to the cache; the
    /// call's input is the sum of the three.
    #[default]
    ExcludesCache,
    /// The OpenAI shapes' (and perhaps Bailian's): `input_tokens` already counts the cache reads and writes.
    IncludesCache,
}

/// One event of a stream, a whole message, or an error body.
#[derive(Deserialize, Default)]
struct Object<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Text<'a>,
    #[serde(borrow, default)]
    message: Option<Box<Object<'a>>>,
    #[serde(borrow, default)]
    id: Text<'a>,
    #[serde(borrow, default)]
    model: Text<'a>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(borrow, default)]
    delta: Option<Block<'a>>,
    #[serde(borrow, default)]
    content_block: Option<Block<'a>>,
    #[serde(borrow, default)]
    content: Option<Vec<Block<'a>>>,
    /// A whole message's reason for ending.
    #[serde(borrow, default)]
    stop_reason: Text<'a>,
}

/// A content block, or a delta of one.
#[derive(Deserialize, Default)]
struct Block<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Text<'a>,
    #[serde(borrow, default)]
    text: Text<'a>,
    #[serde(borrow, default)]
    thinking: Text<'a>,
    #[serde(borrow, default)]
    partial_json: Text<'a>,
    /// A `tool_use` block's tool name.
    #[serde(borrow, default)]
    name: Text<'a>,
    /// `message_delta`'s reason for ending.
    #[serde(borrow, default)]
    stop_reason: Text<'a>,
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
        Some("message_start") => {
            if let Some(m) = &o.message {
                obs.id(m.id.get());
                obs.model(m.model.get());
                obs.usage(m.usage.as_ref());
            }
        }
        Some("content_block_start") => block(obs, o.content_block.as_ref()),
        Some("content_block_delta") => block(obs, o.delta.as_ref()),
        Some("message_delta") => {
            obs.usage(o.usage.as_ref());
            if let Some(reason) = o.delta.as_ref().and_then(|d| d.stop_reason.get()) {
                obs.finish_reason(reason);
            }
        }
        Some("message_stop") => obs.terminal = true,
        Some("error") => match o.error.as_ref().filter(|e| e.is_object()) {
            Some(e) => obs.error(e),
            None => obs.error_code("unknown"),
        },
        _ if whole => {
            obs.id(o.id.get());
            obs.model(o.model.get());
            obs.usage(o.usage.as_ref());
            for b in o.content.iter().flatten() {
                block(obs, Some(b));
            }
            if let Some(reason) = o.stop_reason.get() {
                obs.finish_reason(reason);
            }
            obs.terminal = true;
        }
        // `ping`, `content_block_stop`, and events a newer API may add.
        _ => {}
    }
}

/// A block's text into its channel: thinking is the chain of thought; text, tool names and tool input the
/// answer. (A signature is neither: it is not generated text.)
fn block(obs: &mut Observed, b: Option<&Block<'_>>) {
    let Some(b) = b else { return };
    obs.reasoning_text(b.thinking.get().unwrap_or(""), true);
    obs.answer_text(b.text.get().unwrap_or(""), true);
    obs.answer_text(b.partial_json.get().unwrap_or(""), true);
    if b.kind.get() == Some("tool_use") {
        obs.answer_text(b.name.get().unwrap_or(""), true);
    }
}

fn salvaged(obs: &mut Observed, data: &[u8], whole: bool) {
    obs.parse_errors += 1;
    if let Some(s) = salvage(data) {
        obs.usage(s.usage.as_ref());
        if let Some(e) = s.error {
            obs.error(&e);
        }
        if whole || s.kind.as_deref() == Some("message_stop") {
            obs.terminal = true;
        }
    }
}
