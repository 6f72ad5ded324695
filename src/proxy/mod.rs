//! The proxy listener: forwards calls to the configured upstream unchanged and meters them on the way back.
//!
//! Invariants (DESIGN §3), which must not change lightly:
//! - Only `/compatible-mode/**` and `/api/v1/**` are forwarded, and only to the configured upstream: the
//!   upstream URI is built from the configured scheme and authority plus the request's path and query, so an
//!   absolute-form request URI or a forged `Host` header changes nothing. Paths with dot segments are 404.
//! - Bytes are forwarded as they arrive, one upstream read → one client write (see [`body::MeteredBody`]).
//!   The one exception is the usage-only chunk the proxy itself asked for, which the client never sees.
//! - Every response carries `X-Meter-Call-Id`; every metered call yields exactly one record.
//! - The API key is reduced to a fingerprint and a hint at the door and never stored.

pub mod body;
mod errors;

use crate::app::AppState;
use crate::record::CallRecord;
use crate::usage::{self, CallStatus, Protocol, RequestInfo, UsageSource};
use axum::body::Body;
use bytes::Bytes;
use chrono::Utc;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use std::time::Instant;
use uuid::Uuid;

pub use errors::error_response;

pub const CALL_ID_HEADER: &str = "x-meter-call-id";
const PROJECT_HEADER: &str = "x-meter-project";
const USER_HEADER: &str = "x-meter-user";
const OPENAI_PATH: &str = "/compatible-mode/v1/chat/completions";
const NATIVE_PATH: &str = "/api/v1/services/aigc/text-generation/generation";
/// Attribution values longer than this are cut: they are labels, not payloads.
const MAX_ATTRIBUTION_LEN: usize = 128;

/// What the proxy does with a request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Metered(Protocol),
    /// Forwarded and counted, not metered. The protocol decides the error shape.
    Forward(Protocol),
    NotFound,
}

fn route(method: &Method, path: &str) -> Route {
    if has_dot_segment(path) {
        return Route::NotFound;
    }
    let protocol = if path.starts_with("/compatible-mode/") {
        Protocol::OpenAi
    } else if path.starts_with("/api/v1/") {
        Protocol::DashScope
    } else {
        return Route::NotFound;
    };
    match (method == Method::POST, path) {
        (true, OPENAI_PATH) => Route::Metered(Protocol::OpenAi),
        (true, NATIVE_PATH) => Route::Metered(Protocol::DashScope),
        _ => Route::Forward(protocol),
    }
}

/// `.` or `..` segments, also percent-encoded: a path the upstream might resolve somewhere else.
fn has_dot_segment(path: &str) -> bool {
    if !path.contains(['.', '%']) {
        return false;
    }
    path.split('/').any(|seg| {
        let s = seg.to_ascii_lowercase().replace("%2e", ".");
        s == "." || s == ".."
    }) || path.to_ascii_lowercase().contains("%2f")
}

/// Everything known about a metered call before its response, kept until the record is built.
pub struct CallContext {
    pub call_id: Uuid,
    pub protocol: Protocol,
    pub info: RequestInfo,
    /// The request body as sent upstream; only read again to estimate prompt tokens of a cut call.
    pub request_body: Bytes,
    pub started_at: chrono::DateTime<Utc>,
    pub started: Instant,
    pub key_fingerprint: Option<String>,
    pub key_hint: Option<String>,
    pub project: Option<String>,
    pub end_user: Option<String>,
}

impl CallContext {
    /// The record of this call, from what the tap concluded.
    pub fn into_record(self, report: usage::tap::UsageReport, ttft: Option<Instant>) -> CallRecord {
        let now = Instant::now();
        let t = report.tokens;
        CallRecord {
            call_id: self.call_id,
            upstream_request_id: report.upstream_request_id,
            protocol: self.protocol,
            model: self
                .info
                .model
                .or(report.response_model)
                .unwrap_or_else(|| "unknown".into()),
            stream: self.info.stream || report.stream,
            status: report.status,
            http_status: Some(report.http_status),
            error_code: report.error_code,
            started_at: self.started_at,
            finished_at: self.started_at + (now - self.started),
            // Filled by `AppState::finish_call`, which owns the billing zone and the price book.
            billing_hour: self.started_at,
            priced: false,
            price_version: None,
            cost_total: None,
            ttft_ms: ttft.map(|t| (t - self.started).as_secs_f64() * 1000.0),
            duration_ms: (now - self.started).as_secs_f64() * 1000.0,
            input_tokens: t.input,
            cached_tokens: t.cached,
            output_tokens: t.output,
            reasoning_tokens: t.reasoning,
            answer_tokens: t.answer(),
            usage_source: report.usage_source,
            key_fingerprint: self.key_fingerprint,
            key_hint: self.key_hint,
            project: self.project,
            end_user: self.end_user,
        }
    }

    /// The record of a call that never got an upstream response (rejected, body unreadable, upstream
    /// unreachable).
    pub fn into_unanswered_record(
        self,
        status: CallStatus,
        http_status: u16,
        error_code: &str,
    ) -> CallRecord {
        let report = usage::tap::UsageReport {
            status,
            http_status,
            error_code: Some(error_code.to_owned()),
            upstream_request_id: None,
            response_model: None,
            stream: false,
            tokens: usage::Tokens::default(),
            usage_source: UsageSource::None,
            parse_errors: 0,
            usage_clamped: false,
        };
        self.into_record(report, None)
    }
}

/// The proxy's one handler: every request on the proxy listener comes through here.
pub async fn handle(state: AppState, req: Request<Body>) -> Response<Body> {
    let call_id = Uuid::now_v7();
    let started = Instant::now();
    let started_at = Utc::now();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let route = route(&parts.method, path);
    let protocol = match route {
        Route::NotFound => {
            return error_response(
                Protocol::OpenAi,
                StatusCode::NOT_FOUND,
                "not_found",
                "This path is not served by the metering proxy.",
                call_id,
            )
        }
        Route::Metered(p) | Route::Forward(p) => p,
    };
    let metered = matches!(route, Route::Metered(_));
    if metered && !state.accepting() {
        state.metrics.journal_full_refusals.inc();
        return error_response(
            protocol,
            StatusCode::SERVICE_UNAVAILABLE,
            "MeterJournalFull",
            "The metering journal cannot record more calls right now; nothing was forwarded.",
            call_id,
        );
    }

    // Attribution, taken before the headers are filtered.
    let client_auth = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    // Injected only when the client sent no Authorization at all (not merely an unreadable one).
    let injected = (!parts.headers.contains_key(header::AUTHORIZATION))
        .then(|| state.api_key_header.clone())
        .flatten();
    let identity = client_auth
        .or_else(|| injected.as_ref().and_then(|v| v.to_str().ok()))
        .and_then(usage::key_identity);
    let (key_fingerprint, key_hint) = identity.map_or((None, None), |(f, h)| (Some(f), Some(h)));
    let mut ctx = CallContext {
        call_id,
        protocol,
        info: RequestInfo::default(),
        request_body: Bytes::new(),
        started_at,
        started,
        key_fingerprint,
        key_hint,
        project: attribution(&parts.headers, PROJECT_HEADER),
        end_user: attribution(&parts.headers, USER_HEADER),
    };

    let body = match Limited::new(body, state.max_body_bytes).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let too_large = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            let (status, code, message, call_status) = if too_large {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestTooLarge",
                    format!("Request body exceeds {} bytes.", state.max_body_bytes),
                    CallStatus::Rejected,
                )
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    "RequestBodyUnreadable",
                    "The request body could not be read.".into(),
                    CallStatus::ClientAborted,
                )
            };
            if metered {
                record_unanswered(
                    &state,
                    ctx.into_unanswered_record(call_status, status.as_u16(), code),
                )
                .await;
            }
            return error_response(protocol, status, code, &message, call_id);
        }
    };

    let mut upstream_body = body.clone();
    if metered {
        let native_sse = parts
            .headers
            .get("x-dashscope-sse")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("enable"));
        let inspected = usage::inspect_request(protocol, &body, native_sse);
        if let Some(rewritten) = inspected.rewritten_body {
            upstream_body = Bytes::from(rewritten);
        }
        ctx.info = inspected.info;
        ctx.request_body = body;
    } else {
        state.metrics.forwarded_unmetered.inc();
    }
    // The proxy strips the usage-only chunk it asked for; that needs the stream uncompressed.
    let strip_usage_chunk =
        metered && ctx.info.stream && !ctx.info.client_wants_usage && protocol == Protocol::OpenAi;

    let mut upstream_req = Request::builder()
        .method(parts.method.clone())
        .uri(state.upstream_uri(&parts.uri));
    if let Some(h) = upstream_req.headers_mut() {
        copy_forward_headers(&parts.headers, h);
        if let Some(v) = injected {
            h.insert(header::AUTHORIZATION, v);
        }
        if strip_usage_chunk {
            h.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        if let Some(authority) = state.upstream_authority_header() {
            h.insert(header::HOST, authority);
        }
    }
    let upstream_req = match upstream_req.body(Full::new(upstream_body)) {
        Ok(r) => r,
        Err(_) => {
            if metered {
                let record = ctx.into_unanswered_record(CallStatus::ProxyError, 500, "ProxyError");
                record_unanswered(&state, record).await;
            }
            return error_response(
                protocol,
                StatusCode::INTERNAL_SERVER_ERROR,
                "ProxyError",
                "Could not build the upstream request.",
                call_id,
            );
        }
    };

    let upstream =
        tokio::time::timeout(state.idle_timeout, state.client.request(upstream_req)).await;
    let response = match upstream {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let connect = e.is_connect();
            tracing::warn!(call_id = %call_id, error = %errors::chain(&e), "upstream request failed");
            if metered {
                let record = if connect {
                    ctx.into_unanswered_record(
                        CallStatus::UpstreamAborted,
                        502,
                        "UpstreamUnavailable",
                    )
                } else {
                    body::cut_before_response(ctx, 502, "UpstreamUnavailable")
                };
                record_unanswered(&state, record).await;
            }
            return error_response(
                protocol,
                StatusCode::BAD_GATEWAY,
                "UpstreamUnavailable",
                "The upstream could not be reached.",
                call_id,
            );
        }
        Err(_) => {
            if metered {
                record_unanswered(
                    &state,
                    body::cut_before_response(ctx, 504, "UpstreamTimeout"),
                )
                .await;
            }
            return error_response(
                protocol,
                StatusCode::GATEWAY_TIMEOUT,
                "UpstreamTimeout",
                "The upstream did not answer in time.",
                call_id,
            );
        }
    };

    let (mut resp_parts, resp_body) = response.into_parts();
    let mut headers = HeaderMap::with_capacity(resp_parts.headers.len() + 1);
    copy_forward_headers(&resp_parts.headers, &mut headers);
    headers.insert(CALL_ID_HEADER, call_id_header(call_id));
    let body = if metered {
        let content_type = resp_parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let encoding = resp_parts
            .headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok());
        let tap = usage::ResponseTap::new(
            protocol,
            &ctx.info,
            resp_parts.status.as_u16(),
            content_type,
            encoding,
        );
        let is_sse = content_type.is_some_and(|c| c.contains("text/event-stream"));
        let strip = strip_usage_chunk
            && is_sse
            && encoding.is_none_or(|e| e.eq_ignore_ascii_case("identity"));
        if strip {
            headers.remove(header::CONTENT_LENGTH);
        }
        Body::new(body::MeteredBody::new(
            resp_body,
            tap,
            ctx,
            state.clone(),
            strip,
        ))
    } else {
        Body::new(resp_body)
    };
    resp_parts.headers = headers;
    Response::from_parts(resp_parts, body)
}

/// Records a call that got no upstream body; in strict durability the answer waits for the fsync too.
async fn record_unanswered(state: &AppState, record: CallRecord) {
    if let Some(ack) = state.finish_call(record) {
        let _ = ack.await;
    }
}

fn call_id_header(call_id: Uuid) -> HeaderValue {
    let mut buf = Uuid::encode_buffer();
    HeaderValue::from_str(call_id.hyphenated().encode_lower(&mut buf))
        .unwrap_or(HeaderValue::from_static("invalid"))
}

fn attribution(headers: &HeaderMap, name: &str) -> Option<String> {
    let v = headers.get(name)?.to_str().ok()?.trim();
    if v.is_empty() {
        return None;
    }
    let cut = v
        .char_indices()
        .nth(MAX_ATTRIBUTION_LEN)
        .map_or(v.len(), |(i, _)| i);
    Some(v[..cut].to_owned())
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus our own and `Host`.
fn is_not_forwarded(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
            | PROJECT_HEADER
            | USER_HEADER
            | CALL_ID_HEADER
    )
}

/// Copies end-to-end headers. Headers named in `Connection` are hop-by-hop too. `Content-Length` is left to
/// the body: the HTTP library sets it from the body's exact size (which the rewrite may change).
fn copy_forward_headers(from: &HeaderMap, to: &mut HeaderMap) {
    let listed: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in from {
        if is_not_forwarded(name) || listed.iter().any(|l| l == name.as_str()) {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(&Method::POST, OPENAI_PATH),
            Route::Metered(Protocol::OpenAi)
        );
        assert_eq!(
            route(&Method::POST, NATIVE_PATH),
            Route::Metered(Protocol::DashScope)
        );
        assert_eq!(
            route(&Method::GET, OPENAI_PATH),
            Route::Forward(Protocol::OpenAi)
        );
        assert_eq!(
            route(&Method::GET, "/compatible-mode/v1/models"),
            Route::Forward(Protocol::OpenAi)
        );
        assert_eq!(
            route(&Method::POST, "/api/v1/tasks/x"),
            Route::Forward(Protocol::DashScope)
        );
        assert_eq!(route(&Method::GET, "/admin"), Route::NotFound);
        assert_eq!(
            route(&Method::GET, "/compatible-mode/../admin"),
            Route::NotFound
        );
        assert_eq!(
            route(&Method::GET, "/compatible-mode/%2E%2e/admin"),
            Route::NotFound
        );
        assert_eq!(
            route(&Method::GET, "/compatible-mode/v1%2F..%2Fadmin"),
            Route::NotFound
        );
        assert_eq!(route(&Method::GET, "/compatible-mode"), Route::NotFound);
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_dropped() {
        let mut from = HeaderMap::new();
        from.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        from.insert("x-secret-hop", HeaderValue::from_static("1"));
        from.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        from.insert("x-meter-project", HeaderValue::from_static("p"));
        from.insert("x-dashscope-sse", HeaderValue::from_static("enable"));
        from.insert("authorization", HeaderValue::from_static("Bearer k"));
        let mut to = HeaderMap::new();
        copy_forward_headers(&from, &mut to);
        let mut names: Vec<_> = to.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["authorization", "x-dashscope-sse"]);
    }
}
