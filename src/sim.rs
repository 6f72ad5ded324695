//! The built-in DashScope simulator: both protocols, streaming and not, with the reference's shapes.
//!
//! Used by `deepseek-meter sim`, by `serve --upstream sim`, by the tests and by the benchmarks. It speaks
//! exactly the captured wire formats (reference §1–§2): compat chunks with `usage: null` until the
//! usage-only chunk (sent only when `stream_options.include_usage` is true) and `data: [DONE]`; native
//! events with `id:`/`event:`/`:HTTP_STATUS/NNN`/`data:` (no space), cumulative usage and the string
//! `"null"` as finish reason, incremental or full-text.
//!
//! Model semantics follow the platform: `deepseek-v3` never thinks; `deepseek-r1`, `-r1-0528` and the
//! distills always do; `deepseek-v3.1` and `-v3.2-exp` think only with `enable_thinking`. Any other
//! `deepseek-*` name is served like `deepseek-v3` (so unpriced models can be exercised); other names get the
//! platform's model-not-found error.
//!
//! Usage is consistent by construction: one text piece is one token, `reasoning ⊂ output`, input tokens
//! are the estimator's count of the prompt. Responses are a pure function of (seed, model, prompt, knobs).
//!
//! Per-request knobs, as request headers (they pass through the proxy like any other header):
//! - `x-sim-fault`: `401`, `429`, `500`, `sse-error` (compat: SSE-framed 400; native: `event:error` with
//!   HTTP 200), `moderation` (error event after half the stream), `reset` (connection cut after half),
//!   `stall` (silence after half), `garbage` (non-JSON bytes in place of events).
//! - `x-sim-chunks`: text pieces per channel; `x-sim-cached-tokens`: cached tokens to report;
//!   `x-sim-gzip: 1`: gzip the body when the client accepts it.

use crate::app::Connections;
use crate::config::SimArgs;
use crate::usage::estimate::TextTally;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub ttft: Duration,
    pub chunk_interval: Duration,
    pub seed: u64,
    pub chunks: u32,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            ttft: Duration::ZERO,
            chunk_interval: Duration::ZERO,
            seed: 0,
            chunks: 16,
        }
    }
}

impl From<&SimArgs> for SimOptions {
    fn from(a: &SimArgs) -> Self {
        SimOptions {
            ttft: Duration::from_millis(a.ttft_ms),
            chunk_interval: Duration::from_millis(a.chunk_interval_ms),
            seed: a.seed,
            chunks: a.chunks,
        }
    }
}

/// A running simulator on its own listener.
pub struct SimServer {
    pub addr: SocketAddr,
    conns: Connections,
}

impl SimServer {
    pub async fn start(options: SimOptions, addr: SocketAddr) -> std::io::Result<SimServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let conns = Connections {
            stop_accepting: CancellationToken::new(),
            abort: CancellationToken::new(),
            tracker: TaskTracker::new(),
            limits: crate::app::ConnectionLimits::new(100_000, std::time::Duration::from_secs(30)),
        };
        let service = hyper_util::service::TowerToHyperService::new(router(options));
        conns.tracker.spawn(conns.clone().serve(listener, service));
        Ok(SimServer { addr, conns })
    }

    /// Stops accepting and cuts open connections (a stalled stream would otherwise never end).
    pub async fn shutdown(self) {
        self.conns.stop_accepting.cancel();
        self.conns.abort.cancel();
        self.conns.tracker.close();
        self.conns.tracker.wait().await;
    }
}

pub fn router(options: SimOptions) -> Router {
    Router::new()
        .route("/compatible-mode/v1/chat/completions", post(compat))
        .route(
            "/api/v1/services/aigc/text-generation/generation",
            post(native),
        )
        .route("/compatible-mode/v1/models", get(models))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"code":"NotFound","message":"Not Found"}"#,
            )
        })
        .with_state(Arc::new(options))
}

/// `deepseek-meter sim`: serve until `signal`.
pub async fn run(
    args: SimArgs,
    signal: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let server = SimServer::start(SimOptions::from(&args), args.listen).await?;
    tracing::info!(addr = %server.addr, "DashScope simulator serving");
    signal.await;
    server.shutdown().await;
    Ok(())
}

async fn models() -> impl IntoResponse {
    let data: Vec<Value> = THINKING_RULES
        .iter()
        .map(|(m, _)| json!({"id": m, "object": "model", "owned_by": "system"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data}))
}

// ---- request ----------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Compat,
    Native,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Unauthorized,
    RateLimited,
    Internal,
    SseError,
    Moderation,
    Reset,
    Stall,
    Garbage,
}

fn fault(headers: &HeaderMap) -> Option<Fault> {
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
const THINKING_RULES: &[(&str, Option<bool>)] = &[
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

struct Call {
    proto: Proto,
    model: String,
    thinking: bool,
    stream: bool,
    include_usage: bool,
    incremental: bool,
    tool: Option<String>,
    prompt: String,
    input_tokens: u64,
    cached_tokens: u64,
    chunks: u32,
    fault: Option<Fault>,
    gzip: bool,
    request_id: uuid::Uuid,
}

fn parse_call(
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
    let rule = THINKING_RULES
        .iter()
        .find(|(m, _)| *m == model)
        .map(|(_, r)| *r);
    let rule = match rule {
        Some(r) => r,
        None if model.starts_with("deepseek-") => Some(false),
        None => {
            return Err(Box::new(error(
                proto,
                StatusCode::NOT_FOUND,
                ErrorKind::ModelNotFound(model),
                request_id,
                false,
            )))
        }
    };
    let enable_thinking = params
        .get("enable_thinking")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut prompt = String::new();
    for m in messages {
        if let Some(s) = m.get("content").and_then(Value::as_str) {
            prompt.push_str(s);
            prompt.push('\n');
        }
    }
    let input_tokens = TextTally::of(&prompt).tokens() + 3 * messages.len() as u64;
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
    let stream = match proto {
        Proto::Compat => v.get("stream").and_then(Value::as_bool).unwrap_or(false),
        Proto::Native => headers
            .get("x-dashscope-sse")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("enable")),
    };
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

// ---- generated text ---------------------------------------------------------------------------------

const REASONING_PIECES: &[&str] = &[
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
const ANSWER_PIECES: &[&str] = &[
    "你好", "！", "我是", "DeepSeek", "，", "一个", "智能", "助手", "。", " Hello", " there", "!",
    " 2", "。", "😊", "\n",
];

/// The pieces of one channel: a pure function of the seed, the model and the prompt.
fn pieces(seed: u64, salt: &str, call: &Call, table: &[&'static str], n: u32) -> Vec<&'static str> {
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

struct Script {
    reasoning: Vec<&'static str>,
    answer: Vec<&'static str>,
    tool_args: Vec<&'static str>,
}

impl Script {
    fn new(call: &Call, options: &SimOptions) -> Script {
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

    fn reasoning_tokens(&self) -> u64 {
        self.reasoning.len() as u64
    }

    fn output_tokens(&self) -> u64 {
        (self.reasoning.len() + self.answer.len() + self.tool_args.len()) as u64
    }
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

fn compat_usage(call: &Call, output: u64, reasoning: u64) -> Value {
    let mut u = json!({"prompt_tokens": call.input_tokens, "completion_tokens": output, "total_tokens": call.input_tokens + output});
    if call.thinking {
        u["completion_tokens_details"] = json!({"reasoning_tokens": reasoning});
    }
    if call.cached_tokens > 0 {
        u["prompt_tokens_details"] = json!({"cached_tokens": call.cached_tokens});
    }
    u
}

fn native_usage(call: &Call, output: u64, reasoning: u64) -> Value {
    let mut u = json!({"total_tokens": call.input_tokens + output, "output_tokens": output, "input_tokens": call.input_tokens});
    if call.thinking {
        u["output_tokens_details"] = json!({"reasoning_tokens": reasoning});
    }
    if call.cached_tokens > 0 {
        u["prompt_tokens_details"] = json!({"cached_tokens": call.cached_tokens});
    }
    u
}

fn tool_call(call: &Call, args: &str) -> Value {
    json!([{"function": {"arguments": args, "name": call.tool}, "id": format!("call_{}", &call.request_id.simple().to_string()[..22]), "index": 0, "type": "function"}])
}

// ---- handlers ---------------------------------------------------------------------------------------

async fn compat(
    State(options): State<Arc<SimOptions>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(Proto::Compat, &options, &headers, &body).await
}

async fn native(
    State(options): State<Arc<SimOptions>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(Proto::Native, &options, &headers, &body).await
}

async fn serve(proto: Proto, options: &SimOptions, headers: &HeaderMap, body: &[u8]) -> Response {
    let call = match parse_call(proto, headers, body, options) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let kind = match call.fault {
        Some(Fault::Unauthorized) => Some((StatusCode::UNAUTHORIZED, ErrorKind::InvalidApiKey)),
        Some(Fault::RateLimited) => Some((StatusCode::TOO_MANY_REQUESTS, ErrorKind::RateLimited)),
        Some(Fault::Internal) => Some((StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Internal)),
        Some(Fault::Moderation) if !call.stream => {
            Some((StatusCode::BAD_REQUEST, ErrorKind::Moderation))
        }
        _ => None,
    };
    if let Some((status, kind)) = kind {
        return error(
            proto,
            status,
            kind,
            call.request_id,
            call.stream && proto == Proto::Native,
        );
    }
    if call.fault == Some(Fault::SseError) && call.stream {
        return sse_error(&call);
    }
    if !options.ttft.is_zero() && !call.stream {
        tokio::time::sleep(options.ttft).await;
    }
    let script = Script::new(&call, options);
    if call.stream {
        stream_response(call, script, options)
    } else {
        let body = match proto {
            Proto::Compat => compat_body(&call, &script),
            Proto::Native => native_body(&call, &script),
        };
        whole_response(&call, body.to_string().into_bytes())
    }
}

fn compat_body(call: &Call, s: &Script) -> Value {
    let mut message = json!({"content": s.answer.concat(), "role": "assistant"});
    if call.thinking {
        message["reasoning_content"] = json!(s.reasoning.concat());
    }
    let finish = if call.tool.is_some() {
        message["tool_calls"] = tool_call(call, &s.tool_args.concat());
        "tool_calls"
    } else {
        "stop"
    };
    json!({
        "choices": [{"message": message, "finish_reason": finish, "index": 0, "logprobs": null}],
        "object": "chat.completion",
        "usage": compat_usage(call, s.output_tokens(), s.reasoning_tokens()),
        "created": now_secs(), "system_fingerprint": null, "model": call.model,
        "id": format!("chatcmpl-{}", call.request_id),
    })
}

fn native_body(call: &Call, s: &Script) -> Value {
    let mut message = json!({"role": "assistant", "content": s.answer.concat()});
    if call.thinking {
        message["reasoning_content"] = json!(s.reasoning.concat());
    }
    if call.tool.is_some() {
        message["tool_calls"] = tool_call(call, &s.tool_args.concat());
    }
    let finish = if call.tool.is_some() {
        "tool_calls"
    } else {
        "stop"
    };
    json!({
        "output": {"choices": [{"finish_reason": finish, "message": message}]},
        "usage": native_usage(call, s.output_tokens(), s.reasoning_tokens()),
        "request_id": call.request_id.to_string(),
    })
}

fn base_headers(call: &Call, content_type: &'static str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&call.request_id.to_string()) {
        h.insert("x-request-id", v);
    }
    h.insert("x-dashscope-call-gateway", HeaderValue::from_static("true"));
    h
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = e.write_all(bytes);
    e.finish().unwrap_or_default()
}

fn whole_response(call: &Call, body: Vec<u8>) -> Response {
    let mut headers = base_headers(call, "application/json");
    let body = if call.gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        gzip(&body)
    } else {
        body
    };
    match call.fault {
        Some(Fault::Reset | Fault::Stall) => {
            // Half the body, then cut or silence.
            let half = Bytes::from(body[..body.len() / 2].to_vec());
            let stall = call.fault == Some(Fault::Stall);
            let tail = futures_util::stream::once(async move {
                if stall {
                    std::future::pending::<()>().await;
                }
                Err::<Bytes, std::io::Error>(std::io::Error::other("simulated connection reset"))
            });
            let stream = futures_util::stream::once(async move { Ok(half) }).chain(tail);
            (headers, Body::from_stream(stream)).into_response()
        }
        Some(Fault::Garbage) => (headers, Body::from("\u{fffd}garbage{\"usage\":")).into_response(),
        _ => (headers, body).into_response(),
    }
}

/// The events of a stream, in order; each is one write.
fn stream_events(call: &Call, s: &Script) -> Vec<Vec<u8>> {
    match call.proto {
        Proto::Compat => compat_events(call, s),
        Proto::Native => native_events(call, s),
    }
}

fn compat_events(call: &Call, s: &Script) -> Vec<Vec<u8>> {
    let id = format!("chatcmpl-{}", call.request_id);
    let created = now_secs();
    let chunk = |choices: Value, usage: Value| {
        let v = json!({"choices": choices, "object": "chat.completion.chunk", "usage": usage, "created": created,
                       "system_fingerprint": null, "model": call.model, "id": id});
        format!("data: {v}\n\n").into_bytes()
    };
    let choice = |delta: Value| json!([{"delta": delta, "finish_reason": null, "index": 0, "logprobs": null}]);
    let mut out = Vec::new();
    let first = if call.thinking {
        json!({"content": "", "reasoning_content": "", "role": "assistant"})
    } else {
        json!({"content": "", "role": "assistant"})
    };
    out.push(chunk(choice(first), Value::Null));
    for p in &s.reasoning {
        out.push(chunk(
            choice(json!({"content": null, "reasoning_content": p})),
            Value::Null,
        ));
    }
    for p in &s.answer {
        let delta = if call.thinking {
            json!({"content": p, "reasoning_content": null})
        } else {
            json!({"content": p})
        };
        out.push(chunk(choice(delta), Value::Null));
    }
    for (i, p) in s.tool_args.iter().enumerate() {
        let mut tc = tool_call(call, p);
        if i > 0 {
            tc[0]["function"]["name"] = Value::Null;
        }
        out.push(chunk(
            choice(json!({"content": null, "tool_calls": tc})),
            Value::Null,
        ));
    }
    let finish = if call.tool.is_some() {
        "tool_calls"
    } else {
        "stop"
    };
    out.push(chunk(
        json!([{"finish_reason": finish, "delta": {"content": ""}, "index": 0, "logprobs": null}]),
        Value::Null,
    ));
    if call.include_usage {
        out.push(chunk(
            json!([]),
            compat_usage(call, s.output_tokens(), s.reasoning_tokens()),
        ));
    }
    out.push(b"data: [DONE]\n\n".to_vec());
    out
}

fn native_events(call: &Call, s: &Script) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let (mut reasoning_so_far, mut answer_so_far) = (String::new(), String::new());
    let mut output = 0u64;
    let mut reasoning = 0u64;
    let request_id = call.request_id.to_string();
    let event =
        |out: &mut Vec<Vec<u8>>, message: Value, finish: &str, output: u64, reasoning: u64| {
            let n = out.len() + 1;
            let v = json!({"output": {"choices": [{"message": message, "finish_reason": finish}]},
                       "usage": native_usage(call, output, reasoning), "request_id": request_id});
            out.push(format!("id:{n}\nevent:result\n:HTTP_STATUS/200\ndata:{v}\n\n").into_bytes());
        };
    for p in &s.reasoning {
        output += 1;
        reasoning += 1;
        reasoning_so_far.push_str(p);
        let r = if call.incremental {
            p.to_string()
        } else {
            reasoning_so_far.clone()
        };
        event(
            &mut out,
            json!({"content": "", "reasoning_content": r, "role": "assistant"}),
            "null",
            output,
            reasoning,
        );
    }
    for p in s.answer.iter().chain(&s.tool_args) {
        output += 1;
        answer_so_far.push_str(p);
        let a = if call.incremental {
            p.to_string()
        } else {
            answer_so_far.clone()
        };
        let mut m = json!({"content": a, "role": "assistant"});
        if call.thinking {
            m["reasoning_content"] = json!("");
        }
        event(&mut out, m, "null", output, reasoning);
    }
    let mut last = if call.incremental {
        json!({"content": "", "role": "assistant"})
    } else {
        json!({"content": answer_so_far, "role": "assistant"})
    };
    if call.thinking {
        last["reasoning_content"] = json!(if call.incremental {
            String::new()
        } else {
            reasoning_so_far
        });
    }
    let finish = if call.tool.is_some() {
        "tool_calls"
    } else {
        "stop"
    };
    event(&mut out, last, finish, output, reasoning);
    out
}

/// What ends a stream early, after half its events.
fn fault_event(call: &Call, n: usize) -> Option<Vec<u8>> {
    match call.fault {
        Some(Fault::Moderation) => Some(match call.proto {
            Proto::Compat => br#"data: {"error":{"message":"Output data may contain inappropriate content.","type":"data_inspection_failed","param":null,"code":"data_inspection_failed"}}"#
                .iter()
                .chain(b"\n\n")
                .copied()
                .collect(),
            Proto::Native => format!(
                "id:{n}\nevent:error\n:HTTP_STATUS/400\ndata:{}\n\n",
                json!({"code": "DataInspectionFailed", "message": "Output data may contain inappropriate content.", "request_id": call.request_id.to_string()})
            )
            .into_bytes(),
        }),
        _ => None,
    }
}

struct StreamState {
    events: std::vec::IntoIter<Vec<u8>>,
    sent: usize,
    cut_at: Option<usize>,
    fault: Option<Fault>,
    ttft: Duration,
    interval: Duration,
    encoder: Option<flate2::write::GzEncoder<Vec<u8>>>,
    done: bool,
}

impl StreamState {
    fn encode(&mut self, bytes: Vec<u8>) -> Bytes {
        match &mut self.encoder {
            Some(e) => {
                let _ = e.write_all(&bytes);
                let _ = e.flush();
                Bytes::from(std::mem::take(e.get_mut()))
            }
            None => Bytes::from(bytes),
        }
    }
}

fn stream_response(call: Call, script: Script, options: &SimOptions) -> Response {
    let mut headers = base_headers(&call, "text/event-stream;charset=UTF-8");
    if call.proto == Proto::Native {
        headers.insert("x-dashscope-finished", HeaderValue::from_static("false"));
    }
    let mut events = stream_events(&call, &script);
    let cut_at = call
        .fault
        .filter(|f| matches!(f, Fault::Moderation | Fault::Reset | Fault::Stall))
        .map(|_| events.len() / 2);
    if let (Some(cut), Some(ev)) = (cut_at, fault_event(&call, events.len() / 2 + 1)) {
        events.truncate(cut);
        events.push(ev);
    }
    if call.fault == Some(Fault::Garbage) {
        events = vec![
            b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":{\"prompt_tokens\":"
                .to_vec(),
            vec![0xff, 0xfe, b'\n', b'\n'],
        ];
    }
    let encoder = call.gzip.then(|| {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast())
    });
    let state = StreamState {
        events: events.into_iter(),
        sent: 0,
        cut_at: cut_at.filter(|_| matches!(call.fault, Some(Fault::Reset | Fault::Stall))),
        fault: call.fault,
        ttft: options.ttft,
        interval: options.chunk_interval,
        encoder,
        done: false,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if st.cut_at == Some(st.sent) {
            if st.fault == Some(Fault::Stall) {
                std::future::pending::<()>().await;
            }
            st.done = true;
            return Some((Err(std::io::Error::other("simulated connection reset")), st));
        }
        let delay = if st.sent == 0 { st.ttft } else { st.interval };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match st.events.next() {
            Some(ev) => {
                st.sent += 1;
                let bytes = st.encode(ev);
                Some((Ok(bytes), st))
            }
            None => {
                st.done = true;
                let tail = st
                    .encoder
                    .take()
                    .and_then(|e| e.finish().ok())
                    .filter(|t| !t.is_empty())?;
                Some((Ok(Bytes::from(tail)), st))
            }
        }
    });
    (headers, Body::from_stream(stream)).into_response()
}

fn sse_error(call: &Call) -> Response {
    let headers = base_headers(call, "text/event-stream;charset=UTF-8");
    match call.proto {
        Proto::Compat => {
            let body = format!(
                "data: {}\n\n",
                json!({"error": {"code": "invalid_parameter_error", "param": null, "message": "Range of top_logprobs should be [0, 5]", "type": "invalid_request_error"}, "id": format!("chatcmpl-{}", call.request_id)})
            );
            (StatusCode::BAD_REQUEST, headers, body).into_response()
        }
        Proto::Native => {
            let body = format!(
                "id:1\nevent:error\n:HTTP_STATUS/400\ndata:{}\n\n",
                json!({"code": "InvalidParameter", "message": "Role must be user or assistant and Content length must be greater than 0", "request_id": call.request_id.to_string()})
            );
            (StatusCode::OK, headers, body).into_response()
        }
    }
}

// ---- errors -----------------------------------------------------------------------------------------

enum ErrorKind {
    InvalidApiKey,
    RateLimited,
    Internal,
    Moderation,
    InvalidParameter(String),
    ModelNotFound(String),
}

/// The platform's error bodies (reference §1.4, §2.4), verbatim in shape.
fn error(
    proto: Proto,
    status: StatusCode,
    kind: ErrorKind,
    request_id: uuid::Uuid,
    native_sse: bool,
) -> Response {
    let rid = request_id.to_string();
    let body = match proto {
        Proto::Compat => {
            let (code, ty, message) = match &kind {
                ErrorKind::InvalidApiKey => ("invalid_api_key", "invalid_request_error", "Incorrect API key provided. For details, see: https://help.aliyun.com/zh/model-studio/error-code#apikey-error".to_owned()),
                ErrorKind::RateLimited => ("limit_requests", "limit_requests", "You have exceeded your current request limit. For details, see: https://help.aliyun.com/zh/model-studio/error-code#rate-limit".to_owned()),
                ErrorKind::Internal => ("internal_error", "internal_error", "An internal error has occured, please try again later or contact service support.".to_owned()),
                ErrorKind::Moderation => ("data_inspection_failed", "data_inspection_failed", "Input data may contain inappropriate content.".to_owned()),
                ErrorKind::InvalidParameter(m) => ("invalid_parameter_error", "invalid_request_error", m.clone()),
                ErrorKind::ModelNotFound(m) => ("model_not_found", "invalid_request_error", format!("The model `{m}` does not exist or you do not have access to it.")),
            };
            json!({"error": {"message": message, "type": ty, "param": null, "code": code}, "request_id": rid})
        }
        Proto::Native => {
            let (code, message) = match &kind {
                ErrorKind::InvalidApiKey => ("InvalidApiKey", "Invalid API-key provided.".to_owned()),
                ErrorKind::RateLimited => ("Throttling.RateQuota", "Requests rate limit exceeded, please try again later.".to_owned()),
                ErrorKind::Internal => ("InternalError", "An internal error has occured, please try again later or contact service support.".to_owned()),
                ErrorKind::Moderation => ("DataInspectionFailed", "Input data may contain inappropriate content.".to_owned()),
                ErrorKind::InvalidParameter(m) => ("InvalidParameter", m.clone()),
                ErrorKind::ModelNotFound(m) => ("ModelNotFound", format!("Model not exist: {m}")),
            };
            json!({"code": code, "message": message, "request_id": rid})
        }
    };
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&rid) {
        headers.insert("x-request-id", v);
    }
    if native_sse {
        // Native SSE errors arrive as an event with HTTP 200 and the real status in a comment.
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream;charset=UTF-8"),
        );
        let text = format!(
            "id:1\nevent:error\n:HTTP_STATUS/{}\ndata:{body}\n\n",
            status.as_u16()
        );
        return (StatusCode::OK, headers, text).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    (status, headers, body.to_string()).into_response()
}
