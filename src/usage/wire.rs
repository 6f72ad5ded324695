//! The wire shapes of both protocols (reference §1–§2), as the tap reads them: one permissive type for
//! every JSON object (compat chunk or body, native event or body, error), unknown fields ignored.

use serde::Deserialize;
use std::borrow::Cow;

#[derive(Debug, Clone, Copy)]
pub(super) struct WireTokens {
    pub(super) input: u64,
    pub(super) cached: u64,
    pub(super) output: u64,
    pub(super) reasoning: Option<u64>,
}

/// One JSON object of either protocol: a compat chunk or body, a native event or body, or an error.
/// Fields are optional and unknown fields ignored, so every shape of the reference parses with this type.
#[derive(Deserialize, Default)]
pub(super) struct Wire<'a> {
    #[serde(borrow, default)]
    pub(super) id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) request_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) choices: Option<Vec<Choice<'a>>>,
    #[serde(borrow, default)]
    pub(super) output: Option<NativeOutput<'a>>,
    #[serde(default)]
    pub(super) usage: Option<WireUsage>,
    #[serde(default)]
    pub(super) error: Option<serde_json::Value>,
    #[serde(default)]
    pub(super) code: Option<serde_json::Value>,
}

/// The fallback when a chunk's content has a shape [`Wire`] does not expect: keep what the record needs.
#[derive(Deserialize, Default)]
pub(super) struct WireMinimal {
    #[serde(default)]
    pub(super) request_id: Option<String>,
    #[serde(default)]
    pub(super) usage: Option<WireUsage>,
    #[serde(default)]
    pub(super) error: Option<serde_json::Value>,
    #[serde(default)]
    pub(super) code: Option<serde_json::Value>,
}

#[derive(Deserialize)]
pub(super) struct Choice<'a> {
    #[serde(borrow, default)]
    pub(super) delta: Option<Message<'a>>,
    #[serde(borrow, default)]
    pub(super) message: Option<Message<'a>>,
    #[serde(borrow, default)]
    pub(super) finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub(super) struct NativeOutput<'a> {
    #[serde(borrow, default)]
    pub(super) choices: Option<Vec<Choice<'a>>>,
    #[serde(borrow, default)]
    pub(super) text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub(super) struct Message<'a> {
    #[serde(borrow, default)]
    pub(super) content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) tool_calls: Option<Vec<ToolCall<'a>>>,
}

#[derive(Deserialize)]
pub(super) struct ToolCall<'a> {
    #[serde(borrow, default)]
    pub(super) function: Option<ToolFunction<'a>>,
}

#[derive(Deserialize)]
pub(super) struct ToolFunction<'a> {
    #[serde(borrow, default)]
    pub(super) name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Clone, Copy)]
pub(super) struct WireUsage {
    #[serde(default)]
    pub(super) prompt_tokens: Option<u64>,
    #[serde(default)]
    pub(super) completion_tokens: Option<u64>,
    #[serde(default)]
    pub(super) input_tokens: Option<u64>,
    #[serde(default)]
    pub(super) output_tokens: Option<u64>,
    #[serde(default)]
    pub(super) completion_tokens_details: Option<OutputDetails>,
    #[serde(default)]
    pub(super) output_tokens_details: Option<OutputDetails>,
    #[serde(default)]
    pub(super) prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Deserialize, Clone, Copy)]
pub(super) struct OutputDetails {
    #[serde(default)]
    pub(super) reasoning_tokens: Option<u64>,
}

#[derive(Deserialize, Clone, Copy)]
pub(super) struct PromptDetails {
    #[serde(default)]
    pub(super) cached_tokens: Option<u64>,
}

impl WireUsage {
    pub(super) fn tokens(&self) -> Option<WireTokens> {
        let input = self.prompt_tokens.or(self.input_tokens);
        let output = self.completion_tokens.or(self.output_tokens);
        if input.is_none() && output.is_none() {
            return None;
        }
        let details = self
            .completion_tokens_details
            .or(self.output_tokens_details);
        Some(WireTokens {
            input: input.unwrap_or(0),
            cached: self
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            output: output.unwrap_or(0),
            reasoning: details.and_then(|d| d.reasoning_tokens),
        })
    }
}

/// Parses one JSON object of either protocol. When the full shape does not parse (a field of an unexpected
/// type, invalid UTF-8 in a text), a minimal parse still salvages usage and errors; the second value says
/// the object was only partly understood (counted as a parse error).
pub(super) fn parse_wire(data: &[u8]) -> Option<(Wire<'_>, bool)> {
    if let Ok(w) = serde_json::from_slice::<Wire<'_>>(data) {
        return Some((w, false));
    }
    let m: WireMinimal = serde_json::from_slice(data).ok()?;
    let w = Wire {
        request_id: m.request_id.map(Cow::Owned),
        usage: m.usage,
        error: m.error,
        code: m.code,
        ..Wire::default()
    };
    Some((w, true))
}

pub(super) fn error_code_of(error: &serde_json::Value) -> String {
    let pick = |k: &str| {
        error
            .get(k)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    pick("code")
        .or_else(|| pick("type"))
        .unwrap_or_else(|| "unknown".into())
}

/// Native streams send the string `"null"` until the last event.
pub(super) fn is_finished(reason: &str) -> bool {
    !reason.is_empty() && reason != "null"
}
