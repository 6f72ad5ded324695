//! What the simulator reads from a request: protocol, model and its thinking rule, knobs and faults; and
//! the text it will generate, a pure function of the seed, the model and the prompt.

use super::shape::{error, ErrorKind, Proto};
use super::SimOptions;
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
        _ => return None,
    })
}

/// Which models think: `Some(true)` always, `Some(false)` never, `None` only with `enable_thinking`.
pub(super) const THINKING_RULES: &[(&str, Option<bool>)] = &[
    ("deepseek-v3.2-exp", None),
    ("deepseek-v3.1", None),
    ("deepseek-r1", Some(true)),
    ("deepseek-r1-0528", Some(true)),
    ("deepseek-v3", Some(false)),
    ("deepseek-r1-distill-qwen-1.5b", Some(true)),
    ("deepseek-r1-distill-qwen-7b", Some(true)),
    ("deepseek-r1-distill-qwen-14b", Some(true)),
    ("deepseek-r1-distill-qwen-32b", Some(true)),
    ("deepseek-r1-distill-llama-8b", Some(true)),
    ("deepseek-r1-distill-llama-70b", Some(true)),
];

pub(super) struct Call {
    pub(super) proto: Proto,
    pub(super) model: String,
    pub(super) thinking: bool,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
    pub(super) incremental: bool,
    pub(super) tool: Option<String>,
    pub(super) prompt: String,
    pub(super) input_tokens: u64,
    pub(super) cached_tokens: u64,
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
    let (messages, params) = match proto {
        Proto::Compat => (v.get("messages"), &v),
        Proto::Native => (
            v.pointer("/input/messages"),
            v.get("parameters").unwrap_or(&Value::Null),
        ),
    };
    let Some(messages) = messages.and_then(Value::as_array).filter(|m| !m.is_empty()) else {
        return Err(bad(match proto {
            Proto::Compat => "'messages' must be a non-empty array.",
            Proto::Native => "Either \"prompt\" or \"messages\" must exist and cannot both be none",
        }));
    };
    let Some(rule) = thinking_rule(&model) else {
        return Err(Box::new(error(
            proto,
            StatusCode::NOT_FOUND,
            ErrorKind::ModelNotFound(model),
            request_id,
            false,
        )));
    };
    let enable_thinking = params
        .get("enable_thinking")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (prompt, input_tokens) = prompt_of(messages);
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
        .map(str::to_owned);
    let stream = is_stream(proto, &v, headers);
    let accepts_gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    Ok(Call {
        proto,
        thinking: rule.unwrap_or(enable_thinking),
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
        cached_tokens: header_num("x-sim-cached-tokens")
            .unwrap_or(0)
            .min(input_tokens),
        input_tokens,
        prompt,
        model,
        chunks: header_num("x-sim-chunks").map_or(options.chunks, |n| n.clamp(1, 100_000) as u32),
        fault: fault(headers),
        gzip: accepts_gzip && headers.contains_key("x-sim-gzip"),
        request_id,
    })
}

/// The model's thinking rule (`Some(true)` always, `Some(false)` never, `None` with `enable_thinking`), or
/// `None` for a model the platform does not have. Unknown `deepseek-*` names are served like deepseek-v3.
fn thinking_rule(model: &str) -> Option<Option<bool>> {
    THINKING_RULES
        .iter()
        .find(|(m, _)| *m == model)
        .map(|(_, r)| *r)
        .or_else(|| model.starts_with("deepseek-").then_some(Some(false)))
}

/// The prompt's text (every message's content, a line each) and its input tokens by the estimator.
fn prompt_of(messages: &[Value]) -> (String, u64) {
    let mut prompt = String::new();
    for m in messages {
        if let Some(s) = m.get("content").and_then(Value::as_str) {
            prompt.push_str(s);
            prompt.push('\n');
        }
    }
    let tokens = char_rate_tokens(&prompt) + 3 * messages.len() as u64;
    (prompt, tokens)
}

/// Compat: `"stream": true`; native: the `X-DashScope-SSE: enable` header.
fn is_stream(proto: Proto, body: &Value, headers: &HeaderMap) -> bool {
    match proto {
        Proto::Compat => body.get("stream").and_then(Value::as_bool).unwrap_or(false),
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
            pieces(options.seed, "r", call, REASONING_PIECES, call.chunks)
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
