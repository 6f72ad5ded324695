//! The built-in DashScope simulator: the four protocols DeepSeek answers on, streaming and not, with the
//! reference's shapes.
//!
//! Used by `deepseek-meter sim`, by `serve --upstream sim`, by the tests and by the benchmarks. It speaks
//! exactly the captured wire formats (reference §1–§2): compat chunks with `usage: null` until the
//! usage-only chunk (sent only when `stream_options.include_usage` is true) and `data: [DONE]`; native
//! events with `id:`/`event:`/`:HTTP_STATUS/NNN`/`data:` (no space), cumulative usage and the string
//! `"null"` as finish reason, incremental or full-text; the Responses API's typed events ending in
//! `response.completed` ([`responses`]); the Anthropic Messages API's events ending in `message_stop`
//! ([`anthropic`]).
//!
//! Model semantics follow the platform ([`crate::models`]): the V4 models think unless asked not to
//! (`enable_thinking: false`, `reasoning.effort: "none"`, `thinking.type: "disabled"`); `deepseek-v3` never
//! thinks; `deepseek-r1`, `-r1-0528` and the distills always do; `deepseek-v3.x` think only with
//! `enable_thinking`. An effort of `max` or `xhigh` doubles the chain of thought (the Anthropic API's default is
//! `max`). The models served are the built-in price book's; any other `deepseek-*` name is served like
//! `deepseek-v3` (so unpriced models can be exercised); other names get the platform's model-not-found error.
//!
//! Usage is consistent by construction: one text piece is one token, `reasoning ⊂ output`, input tokens
//! are the estimator's count of the prompt. Responses are a pure function of (seed, model, prompt, knobs).
//!
//! Per-request knobs, as request headers (they pass through the proxy like any other header):
//! - `x-sim-fault`: `401`, `429`, `500`, `sse-error` (compat: SSE-framed 400; native: `event:error` with
//!   HTTP 200; Responses and Anthropic: an `error` event with HTTP 200), `moderation` (error event after half
//!   the stream), `failed` (Responses: HTTP 200 with `"status": "failed"`, or `response.failed` after half the
//!   stream; Anthropic: an `error` event after half the stream; the others: 429), `reset` (connection cut
//!   after half), `stall` (silence after half), `garbage` (non-JSON bytes in place of events).
//! - `x-sim-chunks`: text pieces per channel; `x-sim-cached-tokens`: cache reads to report;
//!   `x-sim-cache-creation-tokens`: explicit cache writes to report (both within the input);
//!   `x-sim-gzip: 1`: gzip the body when the client accepts it.

mod anthropic;
pub mod billing;
mod request;
mod responses;
mod shape;
mod wire;

use crate::config::SimArgs;
use crate::server::{ConnectionLimits, Connections};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use request::{parse_call, Fault, Script};
use serde_json::{json, Value};
use shape::{error, ErrorKind, Proto};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wire::{compat_body, native_body, sse_error, stream_response, whole_response};

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub ttft: Duration,
    pub chunk_interval: Duration,
    pub seed: u64,
    pub chunks: u32,
    /// The platform's bill of the calls served (`None`: not kept).
    pub bill: Option<Arc<billing::PlatformBill>>,
    /// The workspace this simulator plays the per-workspace host of (`{WorkspaceId}.…maas.aliyuncs.com`):
    /// its calls are billed there whatever header they carry. `None`: the shared host.
    pub workspace: Option<String>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            ttft: Duration::ZERO,
            chunk_interval: Duration::ZERO,
            seed: 0,
            chunks: 16,
            bill: None,
            workspace: None,
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
            bill: a.bill_export.as_ref().map(|_| {
                Arc::new(billing::PlatformBill::new(
                    crate::clock::Clock::system(),
                    Duration::from_millis(a.booking_delay_ms),
                ))
            }),
            workspace: None,
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
            limits: ConnectionLimits::new(100_000, std::time::Duration::from_secs(30)),
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
        .route("/compatible-mode/v1/responses", post(responses_api))
        .route("/apps/anthropic/v1/messages", post(anthropic_api))
        .route("/compatible-mode/v1/models", get(models))
        .route("/sim/bill.csv", get(bill_csv))
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
    let options = SimOptions::from(&args);
    let bill = options.bill.clone();
    let server = SimServer::start(options, args.listen).await?;
    tracing::info!(addr = %server.addr, "DashScope simulator serving");
    signal.await;
    server.shutdown().await;
    if let (Some(bill), Some(path)) = (bill, &args.bill_export) {
        use anyhow::Context as _;
        std::fs::write(path, bill.csv(false))
            .with_context(|| format!("writing the bill export {}", path.display()))?;
        tracing::info!(path = %path.display(), "bill-detail export written");
    }
    Ok(())
}

/// The bill-detail export of the calls served so far (`?lang=zh`: the Chinese headers); 404 when the
/// simulator keeps no bill.
async fn bill_csv(
    State(options): State<Arc<SimOptions>>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let Some(bill) = &options.bill else {
        return (
            StatusCode::NOT_FOUND,
            "this simulator keeps no bill (start it with --bill-export)\n",
        )
            .into_response();
    };
    let chinese = query.is_some_and(|q| q.split('&').any(|p| p == "lang=zh"));
    (
        [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
        bill.csv(chinese),
    )
        .into_response()
}

async fn models() -> impl IntoResponse {
    let data: Vec<Value> = request::served_models()
        .iter()
        .map(|m| json!({"id": m, "object": "model", "owned_by": "system"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data}))
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

async fn responses_api(
    State(options): State<Arc<SimOptions>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(Proto::Responses, &options, &headers, &body).await
}

async fn anthropic_api(
    State(options): State<Arc<SimOptions>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(Proto::Anthropic, &options, &headers, &body).await
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
        // Only the Responses and Anthropic APIs fail with HTTP 200 (whole, or mid-stream).
        Some(Fault::Failed) if matches!(proto, Proto::Compat | Proto::Native) => {
            Some((StatusCode::TOO_MANY_REQUESTS, ErrorKind::RateLimited))
        }
        Some(Fault::Failed) if proto == Proto::Anthropic && !call.stream => Some((
            StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            ErrorKind::Internal,
        )),
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
    if let (Some(bill), None) = (&options.bill, call.fault) {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let authorization = text("authorization")
            .map(str::to_owned)
            .or_else(|| text("x-api-key").map(|k| format!("Bearer {k}")));
        bill.book(&billing::Booking {
            authorization: authorization.as_deref(),
            workspace: options
                .workspace
                .as_deref()
                .or(text("x-dashscope-workspace").filter(|w| !w.is_empty())),
            model: &call.model,
            tokens: crate::usage::Tokens {
                input: call.input_tokens,
                cached: call.cached_tokens,
                cache_creation: call.cache_creation_tokens,
                output: script.output_tokens(),
                reasoning: script.reasoning_tokens(),
            },
        });
    }
    if call.stream {
        stream_response(call, script, options)
    } else {
        let body = match proto {
            Proto::Compat => compat_body(&call, &script),
            Proto::Native => native_body(&call, &script),
            Proto::Responses => responses::body(&call, &script),
            Proto::Anthropic => anthropic::body(&call, &script),
        };
        whole_response(&call, body.to_string().into_bytes())
    }
}
