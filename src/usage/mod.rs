//! Pure parsing of both DashScope protocols: what a call asked for, and what its response says it used.
//!
//! Nothing here does I/O or reads a clock; the proxy feeds bytes in and gets values out. That is what lets
//! the parsers be property-tested (any split of a stream gives the same result) and fuzzed.
//!
//! - [`inspect_request`] reads the request body once: model, stream flag, whether the client asked for
//!   usage, and (OpenAI-compatible streams only) the rewritten body that asks for it on the client's behalf.
//! - [`tap::ResponseTap`] follows a response as it streams past and yields a [`UsageReport`].
//! - [`estimate`] holds the estimator for calls whose usage never arrived.
//!
//! Metering rules (DESIGN §4): `output_tokens` includes reasoning; `answer = output − reasoning`;
//! `cached ⊂ input`. These invariants hold for every [`Tokens`] this module produces.

pub mod decode;
pub mod estimate;
pub mod sse;
pub mod tap;
pub mod tokenizer;
mod wire;

use serde::Deserialize;
use std::borrow::Cow;

pub use tap::{CallStatus, ResponseTap, TapSignal};

/// Which of the two wire protocols a call used. Stored as `protocol` in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `/compatible-mode/v1/chat/completions`
    #[serde(rename = "openai")]
    OpenAi,
    /// `/api/v1/services/aigc/text-generation/generation`
    #[serde(rename = "dashscope")]
    DashScope,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::OpenAi => "openai",
            Protocol::DashScope => "dashscope",
        }
    }
}

/// Where a record's token counts came from. Stored as `usage_source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageSource {
    /// The upstream's own usage object (for a cut native stream: its last cumulative usage).
    Reported,
    /// Estimated from the request and the text that streamed (see [`estimate`]).
    Estimated,
    /// No usage and nothing to estimate from (e.g. a 401).
    None,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::Reported => "reported",
            UsageSource::Estimated => "estimated",
            UsageSource::None => "none",
        }
    }
}

/// The four token classes of one call. Invariants: `cached <= input`, `reasoning <= output`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Tokens {
    pub input: u64,
    pub cached: u64,
    pub output: u64,
    pub reasoning: u64,
}

impl Tokens {
    /// Largest count a call can carry: 2^40, about 10^12 — millions of times any context window, and small
    /// enough that every count fits the ledger's `bigint` and every cost the exact decimal type.
    pub const MAX: u64 = 1 << 40;

    /// Builds counts, bounding each at [`Tokens::MAX`] and the subsets by their totals. Returns whether
    /// anything had to be bounded (an upstream inconsistency worth counting, never worth failing a call over).
    pub fn clamped(input: u64, cached: u64, output: u64, reasoning: u64) -> (Tokens, bool) {
        let bound = |v: u64| v.min(Tokens::MAX);
        let (input_b, output_b) = (bound(input), bound(output));
        let t = Tokens {
            input: input_b,
            cached: cached.min(input_b),
            output: output_b,
            reasoning: reasoning.min(output_b),
        };
        let clamped =
            input_b != input || output_b != output || cached > input_b || reasoning > output_b;
        (t, clamped)
    }

    pub fn answer(&self) -> u64 {
        self.output - self.reasoning
    }

    /// Input tokens not served from the cache.
    pub fn uncached_input(&self) -> u64 {
        self.input - self.cached
    }
}

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
    /// The most output the client allowed: `max_completion_tokens` or `max_tokens` (OpenAI-compatible),
    /// `parameters.max_tokens` (native). Budgets reserve by it.
    pub max_output_tokens: Option<u64>,
    /// `enable_thinking` as the client set it (top level, or native `parameters`): `None` when absent.
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
    enable_thinking: Option<serde_json::Value>,
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

/// Reads a request body. `native_sse` is whether the native `X-DashScope-SSE: enable` header was sent.
pub fn inspect_request(protocol: Protocol, body: &[u8], native_sse: bool) -> InspectedRequest {
    let head: RequestHead<'_> = match serde_json::from_slice(body) {
        Ok(h) => h,
        Err(_) => {
            return InspectedRequest {
                info: RequestInfo {
                    stream: native_sse,
                    malformed: true,
                    ..RequestInfo::default()
                },
                rewritten_body: None,
            }
        }
    };
    let model = head.model.map(Cow::into_owned);
    match protocol {
        Protocol::OpenAi => {
            let stream = head
                .stream
                .as_ref()
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false);
            let client_wants_usage = head
                .stream_options
                .as_ref()
                .and_then(|o| o.get("include_usage"))
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false);
            let rewritten_body = (stream && !client_wants_usage)
                .then(|| with_include_usage(body))
                .flatten();
            InspectedRequest {
                info: RequestInfo {
                    model,
                    stream,
                    client_wants_usage,
                    incremental_output: true,
                    malformed: false,
                    max_output_tokens: count(head.max_completion_tokens.as_ref())
                        .or_else(|| count(head.max_tokens.as_ref())),
                    enable_thinking: head.enable_thinking.as_ref().and_then(|v| v.as_bool()),
                },
                rewritten_body,
            }
        }
        Protocol::DashScope => {
            let incremental_output = head
                .parameters
                .as_ref()
                .and_then(|p| p.get("incremental_output"))
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false);
            let parameter = |name: &str| head.parameters.as_ref().and_then(|p| p.get(name));
            InspectedRequest {
                info: RequestInfo {
                    model,
                    stream: native_sse,
                    client_wants_usage: true,
                    incremental_output,
                    malformed: false,
                    max_output_tokens: count(parameter("max_tokens")),
                    enable_thinking: parameter("enable_thinking")
                        .or(head.enable_thinking.as_ref())
                        .and_then(|v| v.as_bool()),
                },
                rewritten_body: None,
            }
        }
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

/// Estimated prompt tokens of a request body (both protocols), for calls whose usage never arrived: the
/// messages rendered through DeepSeek's chat template and counted with its tokenizer. A body that is not
/// JSON is counted as one user turn of its text (the upstream read something; it bills what it read).
pub fn estimate_prompt_tokens(protocol: Protocol, body: &[u8]) -> u64 {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        let text = String::from_utf8_lossy(body);
        return estimate::prompt_text([(estimate::Role::User, text.as_ref())]).tokens();
    };
    let input = value.get("input");
    let messages = match protocol {
        Protocol::OpenAi => value.get("messages"),
        Protocol::DashScope => input.and_then(|i| i.get("messages")),
    };
    let mut turns: Vec<(estimate::Role, String)> = Vec::new();
    for message in messages.and_then(|m| m.as_array()).into_iter().flatten() {
        let role = message
            .get("role")
            .and_then(|r| r.as_str())
            .unwrap_or("user");
        let text = match message.get("content") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
                .collect::<Vec<_>>()
                .join(""),
            _ => String::new(),
        };
        turns.push((estimate::Role::parse(role), text));
    }
    if let Some(prompt) = input.and_then(|i| i.get("prompt")).and_then(|p| p.as_str()) {
        turns.push((estimate::Role::User, prompt.to_owned()));
    }
    estimate::prompt_text(turns.iter().map(|(r, t)| (*r, t.as_str()))).tokens()
}

/// SHA-256 fingerprint (first 12 hex chars) and display hint (`sk-…` + last 4) of an API key.
/// The key itself never leaves this function.
pub fn key_identity(authorization: &str) -> Option<(String, String)> {
    use sha2::Digest;
    let key = authorization
        .strip_prefix("Bearer ")
        .or_else(|| authorization.strip_prefix("bearer "))?
        .trim();
    if key.is_empty() {
        return None;
    }
    let digest = sha2::Sha256::digest(key.as_bytes());
    let fingerprint = hex::encode(&digest[..6]);
    let last4: String = key
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Some((fingerprint, format!("sk-…{last4}")))
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
    fn key_fingerprint_is_sha256_prefix_and_hint_last_four() {
        let (fp, hint) = key_identity("Bearer sk-abcdef1234").unwrap();
        // sha256("sk-abcdef1234")
        use sha2::Digest;
        let full = hex::encode(sha2::Sha256::digest(b"sk-abcdef1234"));
        assert_eq!(fp, full[..12]);
        assert_eq!(hint, "sk-…1234");
        assert!(key_identity("Basic xyz").is_none());
        assert!(key_identity("Bearer ").is_none());
    }
}
