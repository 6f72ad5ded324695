//! What a call asked for: the request body read once before forwarding (model, stream, limits, thinking),
//! the include_usage rewrite of an OpenAI-compatible stream, and the prompt estimate of a call whose usage
//! never arrived. Pure: bytes in, values out.
//!
//! Per protocol (reference `bailian-2026.md` §3–§4):
//!
//! | | stream | output limit | thinking switch |
//! |---|---|---|---|
//! | chat | `stream` | `max_completion_tokens`, else `max_tokens` | `enable_thinking` |
//! | native | `X-DashScope-SSE: enable` | `parameters.max_tokens` | `parameters.enable_thinking` (or top level) |
//! | responses | `stream` | `max_output_tokens` | `reasoning.effort` (`none`: off), `enable_thinking` |
//! | anthropic | `stream` | `max_tokens` | `thinking.type` (`disabled` / `enabled`) |

use super::{estimate, Protocol};
use serde::Deserialize;
use std::borrow::Cow;

/// What the request asked for, read once before forwarding.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    /// `model`, if the body was JSON and named one.
    pub model: Option<String>,
    /// The client asked for a stream (`stream: true`, or `X-DashScope-SSE: enable` on native).
    pub stream: bool,
    /// OpenAI-compatible: the client itself set `stream_options.include_usage: true`.
    pub client_wants_usage: bool,
    /// Native: `parameters.incremental_output` (otherwise every event repeats the full text so far).
    pub incremental_output: bool,
    /// The body did not parse as a JSON object. It is forwarded all the same; the upstream judges it.
    pub malformed: bool,
    /// The most output the client allowed (see the module's table). Budgets reserve by it.
    pub max_output_tokens: Option<u64>,
    /// Whether the client switched thinking on or off (see the module's table): `None` when it said nothing.
    pub enable_thinking: Option<bool>,
}

/// The result of reading a request: its facts and, when the proxy must ask for usage on the client's
/// behalf, the body to send upstream instead.
#[derive(Debug)]
pub struct InspectedRequest {
    pub info: RequestInfo,
    /// `Some` only for an OpenAI-compatible stream without `include_usage: true`.
    pub rewritten_body: Option<Vec<u8>>,
}

/// The members of a request the meter reads, in every protocol; anything else (the messages) is skipped
/// unparsed.
#[derive(Deserialize)]
struct RequestHead<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<serde_json::Value>,
    #[serde(default)]
    stream_options: Option<serde_json::Value>,
    #[serde(default)]
    parameters: Option<serde_json::Value>,
    #[serde(default)]
    max_tokens: Option<serde_json::Value>,
    #[serde(default)]
    max_completion_tokens: Option<serde_json::Value>,
    #[serde(default)]
    max_output_tokens: Option<serde_json::Value>,
    #[serde(default)]
    enable_thinking: Option<serde_json::Value>,
    /// Responses: `{"effort": "none" | "low" | … | "max"}`.
    #[serde(default)]
    reasoning: Option<serde_json::Value>,
    /// Anthropic: `{"type": "enabled" | "disabled", "budget_tokens": N}`.
    #[serde(default)]
    thinking: Option<serde_json::Value>,
}

/// A token count as a client may write it: a non-negative integer (or an integral float).
fn count(v: Option<&serde_json::Value>) -> Option<u64> {
    let v = v?;
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0)
            .map(|f| f as u64)
    })
}

fn flag(v: Option<&serde_json::Value>) -> Option<bool> {
    v.and_then(serde_json::Value::as_bool)
}

/// Reads a request body. `native_sse` is whether the native `X-DashScope-SSE: enable` header was sent.
pub fn inspect_request(protocol: Protocol, body: &[u8], native_sse: bool) -> InspectedRequest {
    let head: RequestHead<'_> = match serde_json::from_slice(body) {
        Ok(h) => h,
        Err(_) => {
            return InspectedRequest {
                info: RequestInfo {
                    stream: native_sse && protocol == Protocol::DashScope,
                    malformed: true,
                    ..RequestInfo::default()
                },
                rewritten_body: None,
            }
        }
    };
    let model = head.model.as_deref().map(str::to_owned);
    let stream = flag(head.stream.as_ref()).unwrap_or(false);
    let mut rewritten_body = None;
    let info = match protocol {
        Protocol::OpenAi => {
            let client_wants_usage = flag(
                head.stream_options
                    .as_ref()
                    .and_then(|o| o.get("include_usage")),
            )
            .unwrap_or(false);
            rewritten_body = (stream && !client_wants_usage)
                .then(|| with_include_usage(body))
                .flatten();
            RequestInfo {
                model,
                stream,
                client_wants_usage,
                incremental_output: true,
                malformed: false,
                max_output_tokens: count(head.max_completion_tokens.as_ref())
                    .or_else(|| count(head.max_tokens.as_ref())),
                enable_thinking: flag(head.enable_thinking.as_ref()),
            }
        }
        Protocol::DashScope => {
            let parameter = |name: &str| head.parameters.as_ref().and_then(|p| p.get(name));
            RequestInfo {
                model,
                stream: native_sse,
                client_wants_usage: true,
                incremental_output: flag(parameter("incremental_output")).unwrap_or(false),
                malformed: false,
                max_output_tokens: count(parameter("max_tokens")),
                enable_thinking: flag(parameter("enable_thinking"))
                    .or(flag(head.enable_thinking.as_ref())),
            }
        }
        Protocol::Responses => {
            let effort = head
                .reasoning
                .as_ref()
                .and_then(|r| r.get("effort"))
                .and_then(serde_json::Value::as_str);
            RequestInfo {
                model,
                stream,
                client_wants_usage: true,
                incremental_output: true,
                malformed: false,
                max_output_tokens: count(head.max_output_tokens.as_ref()),
                enable_thinking: match effort {
                    Some("none") => Some(false),
                    Some(_) => Some(true),
                    None => flag(head.enable_thinking.as_ref()),
                },
            }
        }
        Protocol::Anthropic => {
            let kind = head
                .thinking
                .as_ref()
                .and_then(|t| t.get("type"))
                .and_then(serde_json::Value::as_str);
            RequestInfo {
                model,
                stream,
                client_wants_usage: true,
                incremental_output: true,
                malformed: false,
                max_output_tokens: count(head.max_tokens.as_ref()),
                enable_thinking: match kind {
                    Some("disabled") => Some(false),
                    Some("enabled") => Some(true),
                    _ => None,
                },
            }
        }
    };
    InspectedRequest {
        info,
        rewritten_body,
    }
}

/// The same JSON object with `stream_options.include_usage = true`. Every other member is copied as its raw
/// JSON text — numbers and strings byte for byte, order and duplicates kept — so nothing the client sent
/// changes (a round trip through `f64` could alter a number). Only insignificant whitespace goes.
fn with_include_usage(body: &[u8]) -> Option<Vec<u8>> {
    let Members(members) = serde_json::from_slice(body).ok()?;
    let mut out = Vec::with_capacity(body.len() + 40);
    out.push(b'{');
    let mut seen = false;
    for (key, value) in &members {
        if out.len() > 1 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, key).ok()?;
        out.push(b':');
        if key == "stream_options" && !seen {
            seen = true;
            let mut options = match serde_json::from_str::<serde_json::Value>(value.get()) {
                Ok(serde_json::Value::Object(o)) => o,
                _ => serde_json::Map::new(),
            };
            options.insert("include_usage".into(), serde_json::Value::Bool(true));
            serde_json::to_writer(&mut out, &options).ok()?;
        } else {
            out.extend_from_slice(value.get().as_bytes());
        }
    }
    if !seen {
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
    }
    out.push(b'}');
    Some(out)
}

/// A JSON object's members in order, values unparsed.
struct Members(Vec<(String, Box<serde_json::value::RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Estimated prompt tokens of a request body (every protocol), for calls whose usage never arrived: the
/// messages rendered through DeepSeek's chat template and counted with its tokenizer. A body that is not
/// JSON is counted as one user turn of its text (the upstream read something; it bills what it read).
pub fn estimate_prompt_tokens(protocol: Protocol, body: &[u8]) -> u64 {
    use serde_json::Value;
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        let text = String::from_utf8_lossy(body);
        return estimate::prompt_text([(estimate::Role::User, text.as_ref())]).tokens();
    };
    let mut turns: Vec<(estimate::Role, String)> = Vec::new();
    // The system prompt where a protocol keeps it apart from the messages.
    let system = match protocol {
        Protocol::Responses => value.get("instructions"),
        Protocol::Anthropic => value.get("system"),
        Protocol::OpenAi | Protocol::DashScope => None,
    };
    if let Some(text) = system.map(text_of).filter(|t| !t.is_empty()) {
        turns.push((estimate::Role::System, text));
    }
    let input = value.get("input");
    let messages = match protocol {
        Protocol::OpenAi | Protocol::Anthropic => value.get("messages"),
        Protocol::DashScope => input.and_then(|i| i.get("messages")),
        Protocol::Responses => input,
    };
    match messages {
        // Responses: `input` may be the user's text itself.
        Some(Value::String(s)) => turns.push((estimate::Role::User, s.clone())),
        Some(Value::Array(items)) => {
            for message in items {
                let role = message
                    .get("role")
                    .and_then(Value::as_str)
                    .unwrap_or("user");
                // A Responses tool result carries `output`; every other item its `content`.
                let content = message.get("content").or_else(|| message.get("output"));
                turns.push((
                    estimate::Role::parse(role),
                    content.map(text_of).unwrap_or_default(),
                ));
            }
        }
        _ => {}
    }
    if let Some(prompt) = input.and_then(|i| i.get("prompt")).and_then(Value::as_str) {
        turns.push((estimate::Role::User, prompt.to_owned()));
    }
    estimate::prompt_text(turns.iter().map(|(r, t)| (*r, t.as_str()))).tokens()
}

/// The text of a content value: a string, or the `text` (or nested `content`) of each of its parts.
fn text_of(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(parts) => parts
            .iter()
            .map(|p| match p.get("text") {
                Some(serde_json::Value::String(t)) => t.clone(),
                _ => p.get("content").map(text_of).unwrap_or_default(),
            })
            .collect(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compat_stream_without_usage_is_rewritten_keeping_key_order() {
        let body = br#"{"model":"deepseek-v3.2-exp","messages":[{"role":"user","content":"hi"}],"stream":true,"enable_thinking":true}"#;
        let r = inspect_request(Protocol::OpenAi, body, false);
        assert_eq!(r.info.model.as_deref(), Some("deepseek-v3.2-exp"));
        assert!(r.info.stream && !r.info.client_wants_usage);
        let rewritten = String::from_utf8(r.rewritten_body.unwrap()).unwrap();
        assert_eq!(
            rewritten,
            r#"{"model":"deepseek-v3.2-exp","messages":[{"role":"user","content":"hi"}],"stream":true,"enable_thinking":true,"stream_options":{"include_usage":true}}"#
        );
    }

    #[test]
    fn numbers_and_strings_pass_the_rewrite_byte_for_byte() {
        // Found by the request_rewrite fuzzer: a round trip through f64 changed 50e0035 by one ULP.
        let body = br#"{"meam":true,"stream_onq":{"includi":50e0035},"inputodel":"m","stream":true,"t":0.1000000000000000055511151231257827,"s":"\u00e9\n","big":123456789012345678901234567890}"#;
        let r = inspect_request(Protocol::OpenAi, body, false);
        let out = String::from_utf8(r.rewritten_body.unwrap()).unwrap();
        assert_eq!(
            out,
            r#"{"meam":true,"stream_onq":{"includi":50e0035},"inputodel":"m","stream":true,"t":0.1000000000000000055511151231257827,"s":"\u00e9\n","big":123456789012345678901234567890,"stream_options":{"include_usage":true}}"#
        );
    }

    #[test]
    fn compat_stream_with_usage_false_is_turned_on() {
        let body = br#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#;
        let r = inspect_request(Protocol::OpenAi, body, false);
        let v: serde_json::Value = serde_json::from_slice(&r.rewritten_body.unwrap()).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    #[test]
    fn compat_with_usage_or_without_stream_is_untouched() {
        let asked = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
        assert!(inspect_request(Protocol::OpenAi, asked, false)
            .rewritten_body
            .is_none());
        let plain = br#"{"model":"m","messages":[]}"#;
        assert!(inspect_request(Protocol::OpenAi, plain, false)
            .rewritten_body
            .is_none());
    }

    #[test]
    fn malformed_body_is_reported_not_rejected() {
        let r = inspect_request(Protocol::OpenAi, b"{not json", false);
        assert!(r.info.malformed && r.info.model.is_none() && r.rewritten_body.is_none());
    }

    #[test]
    fn native_reads_sse_header_and_incremental_flag() {
        let body = r#"{"model":"deepseek-r1","input":{"messages":[{"role":"user","content":"你是谁？"}]},"parameters":{"incremental_output":true}}"#.as_bytes();
        let r = inspect_request(Protocol::DashScope, body, true);
        assert!(r.info.stream && r.info.incremental_output);
        // Reference §2.2: the platform counted 5 input tokens for this prompt.
        assert_eq!(estimate_prompt_tokens(Protocol::DashScope, body), 5);
    }

    #[test]
    fn responses_reads_its_limit_and_effort() {
        let body = br#"{"model":"deepseek-v4-pro","input":"hi","stream":true,"max_output_tokens":512,"reasoning":{"effort":"none"}}"#;
        let r = inspect_request(Protocol::Responses, body, false);
        assert!(r.info.stream && r.rewritten_body.is_none());
        assert_eq!(r.info.max_output_tokens, Some(512));
        assert_eq!(r.info.enable_thinking, Some(false));
        let body = br#"{"model":"deepseek-v4-pro","input":"hi","reasoning":{"effort":"max"}}"#;
        let r = inspect_request(Protocol::Responses, body, true);
        assert!(!r.info.stream, "the native SSE header means nothing here");
        assert_eq!(r.info.enable_thinking, Some(true));
        // No effort: the top-level switch, as the chat API takes it.
        let body = br#"{"model":"deepseek-v3.2","input":"hi","enable_thinking":true}"#;
        let r = inspect_request(Protocol::Responses, body, false);
        assert_eq!(r.info.enable_thinking, Some(true));
    }

    #[test]
    fn anthropic_reads_max_tokens_and_the_thinking_switch() {
        let body = br#"{"model":"deepseek-v4-flash","max_tokens":1024,"stream":true,"thinking":{"type":"disabled"},"messages":[{"role":"user","content":"hi"}]}"#;
        let r = inspect_request(Protocol::Anthropic, body, false);
        assert!(r.info.stream);
        assert_eq!(r.info.max_output_tokens, Some(1024));
        assert_eq!(r.info.enable_thinking, Some(false));
        let body = br#"{"model":"m","max_tokens":8,"messages":[]}"#;
        assert_eq!(
            inspect_request(Protocol::Anthropic, body, false)
                .info
                .enable_thinking,
            None
        );
    }

    #[test]
    fn every_protocols_prompt_is_estimated_from_its_own_shape() {
        let chat = r#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"你是谁？"}]}"#.as_bytes();
        let responses = r#"{"instructions":"be brief","input":[{"role":"user","content":[{"type":"input_text","text":"你是谁？"}]}]}"#.as_bytes();
        let anthropic = r#"{"system":[{"type":"text","text":"be brief"}],"messages":[{"role":"user","content":[{"type":"text","text":"你是谁？"}]}]}"#.as_bytes();
        let expected = estimate_prompt_tokens(Protocol::OpenAi, chat);
        assert!(expected > 5);
        assert_eq!(
            estimate_prompt_tokens(Protocol::Responses, responses),
            expected
        );
        assert_eq!(
            estimate_prompt_tokens(Protocol::Anthropic, anthropic),
            expected
        );
        // A Responses input given as a plain string is the user's turn.
        let plain = r#"{"input":"你是谁？"}"#.as_bytes();
        let user_only = r#"{"messages":[{"role":"user","content":"你是谁？"}]}"#.as_bytes();
        assert_eq!(
            estimate_prompt_tokens(Protocol::Responses, plain),
            estimate_prompt_tokens(Protocol::OpenAi, user_only)
        );
    }
}
