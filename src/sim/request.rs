//! What the simulator reads from a request: protocol, model and its thinking rule, knobs and faults; and
//! the text it will generate, a pure function of the seed, the model and the prompt.

use super::shape::{error, ErrorKind, Proto};
use super::SimOptions;
use crate::models::Thinking;
use crate::usage::estimate::char_rate_tokens;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

// ---- request ----------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    Unauthorized,
    RateLimited,
    Internal,
    SseError,
    Moderation,
    Reset,
    Stall,
    Garbage,
    /// The call fails after it started, with HTTP 200: Responses `"status": "failed"`, an Anthropic `error`
    /// event (a 429 in the other two protocols).
    Failed,
}

pub(super) fn fault(headers: &HeaderMap) -> Option<Fault> {
    Some(match headers.get("x-sim-fault")?.to_str().ok()? {
        "401" => Fault::Unauthorized,
        "429" => Fault::RateLimited,
        "500" => Fault::Internal,
        "sse-error" => Fault::SseError,
        "moderation" => Fault::Moderation,
        "reset" => Fault::Reset,
        "stall" => Fault::Stall,
        "garbage" => Fault::Garbage,
        "failed" => Fault::Failed,
        _ => return None,
    })
}

/// Whether the platform serves `model`, and whether a call to it thinks: the built-in price book's models
/// (the reference's), thinking as [`crate::models`] says; any other `deepseek-*` name is served like
/// deepseek-v3 (never thinks), so unpriced models can be exercised. `None`: no such model.
pub(super) fn thinking_rule(model: &str) -> Option<Thinking> {
    static BOOK: std::sync::OnceLock<crate::pricing::PriceBook> = std::sync::OnceLock::new();
    let book = BOOK.get_or_init(crate::pricing::PriceBook::builtin);
    if book.knows(model) {
        Some(crate::models::facts(model).thinking)
    } else {
        model.starts_with("deepseek-").then_some(Thinking::Never)
    }
}

/// The models the simulator serves by name (`GET /compatible-mode/v1/models`).
pub(super) fn served_models() -> Vec<String> {
    crate::pricing::PriceBook::builtin()
        .models()
        .map(str::to_owned)
        .collect()
}

pub(super) struct Call {
    pub(super) proto: Proto,
    pub(super) model: String,
    pub(super) thinking: bool,
    /// How long the chain of thought is, in multiples of `chunks`: the request's effort (`max`/`xhigh`: 2;
    /// `low`, `medium`, `high`: 1, as the platform maps them).
    pub(super) effort: u32,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
    pub(super) incremental: bool,
    pub(super) tool: Option<String>,
    pub(super) prompt: String,
    /// Every input token (cache reads and writes included).
    pub(super) input_tokens: u64,
    pub(super) cached_tokens: u64,
    pub(super) cache_creation_tokens: u64,
    pub(super) chunks: u32,
    pub(super) fault: Option<Fault>,
    pub(super) gzip: bool,
    pub(super) request_id: uuid::Uuid,
}

pub(super) fn parse_call(
    proto: Proto,
    headers: &HeaderMap,
    body: &[u8],
    options: &SimOptions,
) -> Result<Call, Box<Response>> {
    let request_id = uuid::Uuid::now_v7();
    let bad = |msg: &str| {
        Box::new(error(
            proto,
            StatusCode::BAD_REQUEST,
            ErrorKind::InvalidParameter(msg.to_owned()),
            request_id,
            false,
        ))
    };
    let v: Value =
        serde_json::from_slice(body).map_err(|_| bad("The request body is not valid JSON."))?;
    let model = v
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let params = match proto {
        Proto::Native => v.get("parameters").unwrap_or(&Value::Null),
        _ => &v,
    };
    // The conversation as (text) turns; the system prompt where a protocol keeps it apart.
    fn list(v: Option<&Value>) -> Option<Vec<&Value>> {
        v.and_then(Value::as_array).map(|a| a.iter().collect())
    }
    let turns: Vec<&Value> = match proto {
        Proto::Compat | Proto::Anthropic => list(v.get("messages")),
        Proto::Native => list(v.pointer("/input/messages")),
        Proto::Responses => match v.get("input") {
            Some(s @ Value::String(_)) => Some(vec![s]),
            other => list(other),
        },
    }
    .unwrap_or_default();
    if turns.is_empty() {
        return Err(bad(match proto {
            Proto::Compat | Proto::Anthropic => "'messages' must be a non-empty array.",
            Proto::Native => "Either \"prompt\" or \"messages\" must exist and cannot both be none",
            Proto::Responses => "'input' must be a string or a non-empty array.",
        }));
    }
    let Some(rule) = thinking_rule(&model) else {
        return Err(Box::new(error(
            proto,
            StatusCode::NOT_FOUND,
            ErrorKind::ModelNotFound(model),
            request_id,
            false,
        )));
    };
    let text = |p: &str| v.pointer(p).and_then(Value::as_str);
    let (switch, effort) = match proto {
        Proto::Compat | Proto::Native => (
            params.get("enable_thinking").and_then(Value::as_bool),
            params.get("reasoning_effort").and_then(Value::as_str),
        ),
        Proto::Responses => {
            let effort = text("/reasoning/effort");
            let switch = match effort {
                Some("none") => Some(false),
                _ => v.get("enable_thinking").and_then(Value::as_bool),
            };
            (switch, effort)
        }
        Proto::Anthropic => (
            match text("/thinking/type") {
                Some("disabled") => Some(false),
                Some("enabled") => Some(true),
                _ => None,
            },
            // The Anthropic API's default effort is `max`.
            Some(text("/output_config/effort").unwrap_or("max")),
        ),
    };
    let system = match proto {
        Proto::Responses => v.get("instructions"),
        Proto::Anthropic => v.get("system"),
        Proto::Compat | Proto::Native => None,
    };
    let (prompt, input_tokens) = prompt_of(system, &turns);
    let header_num = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let tool = params
        .get("tools")
        .and_then(Value::as_array)
        .and_then(|t| t.first())
        .and_then(|t| t.pointer("/function/name"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .filter(|_| matches!(proto, Proto::Compat | Proto::Native));
    let stream = is_stream(proto, &v, headers);
    let accepts_gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    let cached_tokens = header_num("x-sim-cached-tokens")
        .unwrap_or(0)
        .min(input_tokens);
    Ok(Call {
        proto,
        thinking: rule.thinks(switch),
        effort: match effort {
            Some("max") | Some("xhigh") => 2,
            _ => 1,
        },
        stream,
        include_usage: v
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        incremental: params
            .get("incremental_output")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        tool,
        cached_tokens,
        cache_creation_tokens: header_num("x-sim-cache-creation-tokens")
            .unwrap_or(0)
            .min(input_tokens - cached_tokens),
        input_tokens,
        prompt,
        model,
        chunks: header_num("x-sim-chunks").map_or(options.chunks, |n| n.clamp(1, 100_000) as u32),
        fault: fault(headers),
        gzip: accepts_gzip && headers.contains_key("x-sim-gzip"),
        request_id,
    })
}

/// The prompt's text (the system prompt and every turn's content, a line each) and its input tokens by the
/// estimator. A content is a string, or parts with `text` (Responses also `output` for a tool result).
fn prompt_of(system: Option<&Value>, turns: &[&Value]) -> (String, u64) {
    fn text(v: &Value, out: &mut String) {
        match v {
            Value::String(s) => out.push_str(s),
            Value::Array(parts) => {
                for p in parts {
                    match p.get("text") {
                        Some(t) => text(t, out),
                        None => text(p.get("content").unwrap_or(&Value::Null), out),
                    }
                }
            }
            _ => {}
        }
    }
    let mut prompt = String::new();
    let mut n = 0u64;
    for v in system.into_iter().chain(turns.iter().map(|t| {
        if t.is_string() {
            t
        } else {
            t.get("content")
                .or_else(|| t.get("output"))
                .unwrap_or(&Value::Null)
        }
    })) {
        text(v, &mut prompt);
        prompt.push('\n');
        n += 1;
    }
    let tokens = char_rate_tokens(&prompt) + 3 * n;
    (prompt, tokens)
}

/// Native: the `X-DashScope-SSE: enable` header; the others: `"stream": true`.
fn is_stream(proto: Proto, body: &Value, headers: &HeaderMap) -> bool {
    match proto {
        Proto::Compat | Proto::Responses | Proto::Anthropic => {
            body.get("stream").and_then(Value::as_bool).unwrap_or(false)
        }
        Proto::Native => headers
            .get("x-dashscope-sse")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("enable")),
    }
}

// ---- generated text ---------------------------------------------------------------------------------

pub(super) const REASONING_PIECES: &[&str] = &[
    "嗯",
    "，",
    "用户",
    "问的是",
    "这个",
    "问题",
    "。",
    "我需要",
    "先",
    "想一想",
    "Let",
    " me",
    " check",
    " 1+1",
    "。",
    "好的",
];
pub(super) const ANSWER_PIECES: &[&str] = &[
    "你好", "！", "我是", "DeepSeek", "，", "一个", "智能", "助手", "。", " Hello", " there", "!",
    " 2", "。", "😊", "\n",
];

/// The pieces of one channel: a pure function of the seed, the model and the prompt.
pub(super) fn pieces(
    seed: u64,
    salt: &str,
    call: &Call,
    table: &[&'static str],
    n: u32,
) -> Vec<&'static str> {
    let mut h: u64 = 0xcbf29ce484222325 ^ seed;
    for b in call
        .model
        .bytes()
        .chain(call.prompt.bytes())
        .chain(salt.bytes())
    {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    let mut rng = SmallRng::seed_from_u64(h);
    (0..n)
        .map(|_| table[rng.random_range(0..table.len())])
        .collect()
}

pub(super) struct Script {
    pub(super) reasoning: Vec<&'static str>,
    pub(super) answer: Vec<&'static str>,
    pub(super) tool_args: Vec<&'static str>,
}

impl Script {
    pub(super) fn new(call: &Call, options: &SimOptions) -> Script {
        let reasoning = if call.thinking {
            let n = call.chunks.saturating_mul(call.effort);
            pieces(options.seed, "r", call, REASONING_PIECES, n)
        } else {
            vec![]
        };
        let (answer, tool_args) = if call.tool.is_some() {
            (vec![], vec!["{\"city\":", " \"杭州\"", "}"])
        } else {
            (
                pieces(options.seed, "a", call, ANSWER_PIECES, call.chunks),
                vec![],
            )
        };
        Script {
            reasoning,
            answer,
            tool_args,
        }
    }

    pub(super) fn reasoning_tokens(&self) -> u64 {
        self.reasoning.len() as u64
    }

    pub(super) fn output_tokens(&self) -> u64 {
        (self.reasoning.len() + self.answer.len() + self.tool_args.len()) as u64
    }
}
