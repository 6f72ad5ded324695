//! The chat (OpenAI-compatible) and native DashScope shapes (reference `dashscope-protocol.md` §1–§2): one
//! JSON object — a compat chunk or body, a native event or body, an error — into what the tap observes.

use super::observed::Observed;
use super::wire::{is_finished, Message, Wire};
use super::{Protocol, TapSignal};

/// Reads one parsed object. `error_event`: it came as an `event:error` SSE event.
pub(super) fn absorb(
    obs: &mut Observed,
    protocol: Protocol,
    incremental: bool,
    w: Wire<'_>,
    error_event: bool,
    signal: &mut TapSignal,
) {
    let id = w
        .request_id
        .as_deref()
        .or_else(|| w.id.as_deref().map(|i| i.trim_start_matches("chatcmpl-")));
    obs.id(id);
    obs.model(w.model.as_deref());
    if let Some(error) = w.error.as_ref().filter(|e| !e.is_null()) {
        obs.error(error);
    }
    let flat_code = w
        .code
        .as_ref()
        .and_then(|c| c.as_str())
        .filter(|c| !c.is_empty());
    if let Some(code) = flat_code {
        if error_event || (w.choices.is_none() && w.output.is_none() && w.usage.is_none()) {
            obs.error_code(code);
        }
    }
    // Compat reports once; native reports cumulative totals in every event: the latest wins either way.
    let has_usage = obs.usage(w.usage.as_ref());
    if let Some(choices) = &w.choices {
        if choices.is_empty() && has_usage {
            signal.usage_only_chunk = true;
        }
        for c in choices {
            tally_message(obs, c.delta.as_ref().or(c.message.as_ref()), true);
            if let Some(reason) = c.finish_reason.as_deref().filter(|r| is_finished(r)) {
                obs.finish_reason(reason);
                if protocol == Protocol::DashScope {
                    obs.terminal = true;
                }
            }
        }
    }
    if let Some(out) = &w.output {
        let accumulate = incremental || protocol == Protocol::OpenAi;
        for c in out.choices.iter().flatten() {
            tally_message(obs, c.message.as_ref().or(c.delta.as_ref()), accumulate);
            if let Some(reason) = c.finish_reason.as_deref().filter(|r| is_finished(r)) {
                obs.finish_reason(reason);
                obs.terminal = true;
            }
        }
        if let Some(text) = out.text.as_deref() {
            obs.answer_text(text, accumulate);
        }
        if let Some(reason) = out.finish_reason.as_deref().filter(|r| is_finished(r)) {
            obs.finish_reason(reason);
            obs.terminal = true;
        }
    }
}

fn tally_message(obs: &mut Observed, message: Option<&Message<'_>>, accumulate: bool) {
    let Some(m) = message else { return };
    let reasoning = m.reasoning_content.as_deref().unwrap_or("");
    let content = m.content.as_deref().unwrap_or("");
    let tools = m
        .tool_calls
        .iter()
        .flatten()
        .filter_map(|t| t.function.as_ref());
    let has_tools = tools.clone().any(|f| {
        f.name.as_deref().is_some_and(|n| !n.is_empty())
            || f.arguments.as_deref().is_some_and(|a| !a.is_empty())
    });
    if !reasoning.is_empty() || !content.is_empty() || has_tools {
        obs.saw_token = true;
    }
    if accumulate {
        obs.reasoning.add(reasoning);
        obs.answer.add(content);
    } else {
        // Full-text mode: each event repeats everything so far.
        if !reasoning.is_empty() {
            obs.reasoning.replace(reasoning);
        }
        if content.is_empty() && !has_tools {
            return;
        }
        obs.answer.replace(content);
    }
    for f in tools {
        obs.answer.add(f.name.as_deref().unwrap_or(""));
        obs.answer.add(f.arguments.as_deref().unwrap_or(""));
    }
}
