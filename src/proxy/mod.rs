//! The proxy listener: forwards calls to the configured upstream unchanged and meters them on the way back.
//!
//! A request's path through [`Proxy::handle`]: [`route`] (metered, forwarded, or 404) → the call's context
//! (key fingerprint, attribution) → the body, read whole and inspected (model, stream, the include_usage
//! rewrite) → the upstream request ([`upstream`]) → the response, whose body is a [`body::MeteredBody`]
//! that forwards each upstream read as it arrives and tees it into the usage tap. Every metered call ends in
//! the meter step (`crate::meter`) exactly once: when its body ends or is dropped, or here, when we answer
//! with one of our own errors ([`Proxy::refuse`]).
//!
//! Invariants (DESIGN §3), which must not change lightly:
//! - Only `/compatible-mode/**`, `/api/v1/**` and `/apps/anthropic/**` are forwarded, and only to the
//!   configured upstream (see [`upstream`]); an absolute-form request URI or a forged `Host` header changes
//!   nothing. Paths with dot segments are 404.
//! - Bytes are forwarded as they arrive, one upstream read → one client write (see [`body::MeteredBody`]).
//!   The one exception is the usage-only chunk the proxy itself asked for, which the client never sees.
//! - Every response carries `X-Meter-Call-Id`; every metered call yields exactly one record.
//! - The API key (`Authorization: Bearer`, or the Anthropic API's `x-api-key`) is reduced to a fingerprint and
//!   a hint at the door and never stored.

pub mod body;
mod call;
mod headers;
mod route;
pub mod upstream;

use crate::error::{self, ApiError, CALL_ID_HEADER};
use crate::state::AppState;
use crate::usage::{self, CallStatus, Protocol, RequestInfo};
use axum::body::Body;
use bytes::Bytes;
use call::{CallContext, NoResponse};
use headers::{call_id_header, copy_forward_headers, header_text, PROJECT_HEADER, USER_HEADER};
use http::header::{self, HeaderMap, HeaderValue};
use http::{request, Request, Response};
use http_body_util::{BodyExt, Full};
use route::{has_own_key, readable_encodings, route, Route, API_KEY_HEADER};
use std::sync::Arc;
use std::time::{Duration, Instant};
use upstream::Upstream;
use uuid::Uuid;

/// The platform's request id on every response (reference §0); a fallback for bodies without one.
const UPSTREAM_REQUEST_ID_HEADER: &str = "x-request-id";
/// How much of an oversized request body is read and discarded before the 413 (see [`Proxy::read_body`]).
const DRAIN_BYTES: usize = 64 * 1024 * 1024;
/// How long an oversized body may take to arrive before the 413 goes out regardless.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// The proxy: cheap to clone, one per listener.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    upstream: Upstream,
    state: AppState,
    /// `Bearer <DASHSCOPE_API_KEY>`, injected only when a client sends no Authorization.
    api_key_header: Option<HeaderValue>,
    max_body_bytes: usize,
    /// Longest silence allowed from the upstream, before its response head or between body reads.
    idle_timeout: Duration,
    /// `--client-token`: what a client without its own key must show to use the injected key.
    client_token: Option<String>,
    /// What the Anthropic API's `input_tokens` counts (`--anthropic-input-tokens`).
    anthropic_input: usage::tap::InputConvention,
}

/// The proxy's own settings.
pub struct ProxyOptions {
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    pub idle_timeout: Duration,
    pub client_token: Option<String>,
    pub anthropic_input: usage::tap::InputConvention,
}

/// A call whose request is with the upstream, not yet answered. Dropped unsettled (the client left, or the
/// connection was aborted at the drain deadline), it records the call `client_aborted` with its prompt
/// estimated: every call that reached the upstream has its row.
struct InFlight<'a> {
    proxy: &'a Proxy,
    ctx: Option<CallContext>,
    metered: bool,
}

impl InFlight<'_> {
    /// The upstream answered, or failed, while the client still waited: the call goes on.
    fn settle(mut self) -> Option<CallContext> {
        self.ctx.take()
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let (Some(ctx), true) = (self.ctx.take(), self.metered) {
            let trace = ctx.trace;
            let facts = ctx.into_refused_facts(None, NoResponse::ClientLeftBeforeResponse);
            // No one is left to hold a strict-durability ack for.
            let _ = self.proxy.inner.state.meter.finish(facts, trace);
        }
    }
}

/// A request on its way upstream.
struct Outgoing {
    request: Request<Full<Bytes>>,
    /// Length of the client's body (a bound on its prompt tokens, for budgets).
    body_bytes: usize,
    /// The proxy asked for usage the client did not: drop the usage-only chunk from the client's stream.
    strip_usage_chunk: bool,
}

impl Proxy {
    pub fn new(
        upstream: Upstream,
        state: AppState,
        options: ProxyOptions,
    ) -> anyhow::Result<Proxy> {
        let api_key_header = match options.api_key {
            Some(k) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {k}")).map_err(|_| {
                    anyhow::anyhow!("invalid setting DASHSCOPE_API_KEY: not a valid header value")
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(Proxy {
            inner: Arc::new(Inner {
                upstream,
                state,
                api_key_header,
                max_body_bytes: options.max_body_bytes,
                idle_timeout: options.idle_timeout,
                client_token: options.client_token,
                anthropic_input: options.anthropic_input,
            }),
        })
    }

    pub fn state(&self) -> &AppState {
        &self.inner.state
    }

    pub fn idle_timeout(&self) -> Duration {
        self.inner.idle_timeout
    }

    /// The proxy's one handler: every request on the proxy listener comes through here.
    pub async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let call_id = Uuid::now_v7();
        let (parts, body) = req.into_parts();
        let route = route(&parts.method, parts.uri.path());
        let (protocol, metered) = match route {
            Route::NotFound => return ApiError::NotFound.for_request(Protocol::OpenAi),
            Route::Metered(p) => (p, true),
            Route::Forward(p) => (p, false),
        };
        let state = &self.inner.state;
        if metered && !state.meter.accepting() {
            state.metrics.instance.journal_full_refusal();
            return ApiError::JournalFull.for_call(protocol, call_id);
        }
        let mut ctx = self.context(call_id, protocol, &parts.headers);
        let body = match self.read_body(&parts.headers, body).await {
            Ok(b) => b,
            Err((e, status)) => {
                return self
                    .refuse(ctx, metered, e, NoResponse::Unanswered(status))
                    .await
            }
        };
        if !self.client_may_call(&parts.headers) {
            let how = NoResponse::Unanswered(CallStatus::Rejected);
            return self.refuse(ctx, metered, ApiError::ClientToken, how).await;
        }
        let outgoing = match self.outgoing(&parts, body, &mut ctx, metered) {
            Some(o) => o,
            None => {
                let how = NoResponse::Unanswered(CallStatus::ProxyError);
                return self.refuse(ctx, metered, ApiError::ProxyError, how).await;
            }
        };
        if metered {
            if let Err(refusal) = self.admit(&ctx, outgoing.body_bytes).await {
                let how = NoResponse::Unanswered(CallStatus::Rejected);
                return self.refuse(ctx, metered, refusal, how).await;
            }
        }
        // While the upstream has the request and has not answered, the client may leave: hyper then drops
        // this future, and the guard records the call (the upstream may bill what it started).
        let in_flight = InFlight {
            proxy: self,
            ctx: Some(ctx),
            metered,
        };
        let upstream = self.inner.upstream.client.request(outgoing.request);
        let answered = tokio::time::timeout(self.inner.idle_timeout, upstream).await;
        let Some(ctx) = in_flight.settle() else {
            return ApiError::ProxyError.for_call(protocol, call_id);
        };
        let response = match answered {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(call_id = %call_id, error = %error::chain(&e), "upstream request failed");
                // Refused at connect: the request never left. Otherwise it may have reached the upstream.
                let how = if e.is_connect() {
                    NoResponse::Unanswered(CallStatus::UpstreamAborted)
                } else {
                    NoResponse::CutBeforeResponse
                };
                return self
                    .refuse(ctx, metered, ApiError::UpstreamUnavailable, how)
                    .await;
            }
            Err(_) => {
                let how = NoResponse::CutBeforeResponse;
                return self
                    .refuse(ctx, metered, ApiError::UpstreamTimeout, how)
                    .await;
            }
        };
        self.respond(response, ctx, metered, outgoing.strip_usage_chunk)
    }

    /// The call against the `block` budgets that cover it (`crate::budget::gate`): admitted with its worst case
    /// reserved, or refused in the caller's shape.
    async fn admit(&self, ctx: &CallContext, body_bytes: usize) -> Result<(), ApiError> {
        let state = &self.inner.state;
        let Some(budgets) = &state.budgets else {
            return Ok(());
        };
        let model = ctx
            .info
            .model
            .as_deref()
            .unwrap_or(crate::record::UNKNOWN_MODEL);
        let call = crate::budget::gate::Call {
            call_id: ctx.call_id,
            attribution: crate::budget::Attribution {
                project: ctx.project.as_deref(),
                model,
                key_fingerprint: ctx.key_fingerprint.as_deref(),
                end_user: ctx.end_user.as_deref(),
            },
            request: crate::budget::limits::Request {
                model,
                body_bytes,
                max_output_tokens: ctx.info.max_output_tokens,
                enable_thinking: ctx.info.enable_thinking,
            },
        };
        budgets
            .admit(&call, state.meter.now())
            .await
            .map_err(ApiError::from)
    }

    /// What is known of the call from its head: key identity and attribution, taken before the headers
    /// are filtered.
    fn context(&self, call_id: Uuid, protocol: Protocol, headers: &HeaderMap) -> CallContext {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let identity = match (text(header::AUTHORIZATION.as_str()), text(API_KEY_HEADER)) {
            (Some(auth), _) => usage::key_identity(auth),
            (None, Some(key)) => usage::key_identity_of(key),
            (None, None) => self
                .injected_key(headers)
                .and_then(|v| v.to_str().ok())
                .and_then(usage::key_identity),
        };
        let (key_fingerprint, key_hint) =
            identity.map_or((None, None), |(f, h)| (Some(f), Some(h)));
        // `[[api_key]]`: the key's console ID, and the attribution it pins.
        let who = self.inner.state.api_keys.attribute(
            key_fingerprint.as_deref(),
            header_text(headers, PROJECT_HEADER),
            header_text(headers, USER_HEADER),
        );
        CallContext {
            call_id,
            protocol,
            info: RequestInfo::default(),
            request_body: Bytes::new(),
            started_at: self.inner.state.meter.now(),
            started: Instant::now(),
            key_fingerprint,
            key_hint,
            project: who.project,
            end_user: who.end_user,
            // A per-workspace host serves one workspace, whatever the header says.
            workspace: self
                .inner
                .upstream
                .workspace()
                .map(str::to_owned)
                .or_else(|| header_text(headers, headers::WORKSPACE_HEADER)),
            api_key_id: who.key_id,
            request_id_header: None,
            // Spans exported: the client's trace continues through this call (else nothing changes).
            trace: self.inner.state.meter.exporting().then(|| {
                crate::otel::Trace::for_call(
                    call_id,
                    headers
                        .get(crate::otel::trace::TRACEPARENT)
                        .map(HeaderValue::as_bytes),
                )
            }),
        }
    }

    /// With `--client-token`, a client without its own key (one that would use the injected key) must send
    /// the client token; a client with its own key is unaffected.
    fn client_may_call(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.inner.client_token else {
            return true;
        };
        if has_own_key(headers) {
            return true;
        }
        headers
            .get(headers::CLIENT_TOKEN_HEADER)
            .is_some_and(|given| crate::auth::matches(given.as_bytes(), token.as_bytes()))
    }

    /// The configured key, for a request that brings no key at all (not merely an unreadable one).
    fn injected_key(&self, headers: &HeaderMap) -> Option<&HeaderValue> {
        if has_own_key(headers) {
            return None;
        }
        self.inner.api_key_header.as_ref()
    }

    /// The whole request body, within the size limit; on failure our error and how the call ended.
    ///
    /// A body over the limit is still read to its end (up to [`DRAIN_BYTES`] more, for at most
    /// [`DRAIN_TIME`]) and thrown away before the 413 goes out: a server that answers and closes while the
    /// client is still sending makes the client's TCP stack see a reset, and the client never reads the 413.
    /// A client that announced an oversized body and waits for `100 Continue` before sending it is refused at
    /// once: the body is never polled, so no `100 Continue` goes out and the client sends nothing.
    async fn read_body(
        &self,
        headers: &HeaderMap,
        mut body: Body,
    ) -> Result<Bytes, (ApiError, CallStatus)> {
        let limit = self.inner.max_body_bytes;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        let waits_for_continue = headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if waits_for_continue && declared.is_some_and(|n| n > limit as u64) {
            return Err((ApiError::RequestTooLarge { limit }, CallStatus::Rejected));
        }
        let unreadable = (ApiError::RequestBodyUnreadable, CallStatus::ClientAborted);
        let mut frames: Vec<Bytes> = Vec::new();
        let mut size = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(|_| unreadable.clone())?.into_data() else {
                continue;
            };
            size += data.len();
            if size > limit {
                drop(frames);
                let drained = tokio::time::timeout(DRAIN_TIME, async {
                    let mut discarded = size;
                    while discarded <= limit.saturating_add(DRAIN_BYTES) {
                        match body.frame().await {
                            Some(Ok(f)) => discarded += f.data_ref().map_or(0, Bytes::len),
                            Some(Err(_)) | None => break,
                        }
                    }
                })
                .await;
                if drained.is_err() {
                    tracing::debug!(
                        "oversized request body still arriving after the drain time; closing"
                    );
                }
                return Err((ApiError::RequestTooLarge { limit }, CallStatus::Rejected));
            }
            frames.push(data);
        }
        Ok(match frames.len() {
            0 => Bytes::new(),
            1 => frames.pop().unwrap_or_default(),
            _ => Bytes::from(frames.concat()),
        })
    }

    /// The upstream request: same method, path, query and body (a metered body inspected and, for the
    /// include_usage rewrite, rewritten), end-to-end headers, the configured `Host`. `None` if it cannot be
    /// built.
    fn outgoing(
        &self,
        parts: &request::Parts,
        body: Bytes,
        ctx: &mut CallContext,
        metered: bool,
    ) -> Option<Outgoing> {
        let mut upstream_body = body.clone();
        if metered {
            let native_sse = ctx.protocol == Protocol::DashScope
                && parts
                    .headers
                    .get("x-dashscope-sse")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.eq_ignore_ascii_case("enable"));
            let inspected = usage::inspect_request(ctx.protocol, &body, native_sse);
            if let Some(rewritten) = inspected.rewritten_body {
                upstream_body = Bytes::from(rewritten);
            }
            ctx.info = inspected.info;
            ctx.request_body = body;
        } else {
            self.inner.state.metrics.instance.forwarded_unmetered();
        }
        // The proxy strips the usage-only chunk it asked for; that needs the stream uncompressed.
        let strip_usage_chunk = metered
            && ctx.info.stream
            && !ctx.info.client_wants_usage
            && ctx.protocol == Protocol::OpenAi;
        let mut request = Request::builder()
            .method(parts.method.clone())
            .uri(self.inner.upstream.uri_for(&parts.uri));
        if let Some(h) = request.headers_mut() {
            copy_forward_headers(&parts.headers, h);
            if let Some(v) = self.injected_key(&parts.headers) {
                h.insert(header::AUTHORIZATION, v.clone());
            }
            if strip_usage_chunk {
                h.insert(
                    header::ACCEPT_ENCODING,
                    HeaderValue::from_static("identity"),
                );
            } else if metered {
                // The tap must read every body: offer the upstream only codings it can decode.
                if let Some(v) = readable_encodings(&parts.headers) {
                    h.insert(header::ACCEPT_ENCODING, v);
                }
            }
            if let Some(authority) = self.inner.upstream.host_header() {
                h.insert(header::HOST, authority);
            }
            // The upstream's spans hang under this call's. The client's `tracestate` goes along with its trace,
            // and is dropped when the call starts a new one (W3C: it belongs to the trace it came with).
            if let Some(trace) = &ctx.trace {
                h.insert(crate::otel::trace::TRACEPARENT, trace.header());
                if trace.parent_span_id.is_none() {
                    h.remove(crate::otel::trace::TRACESTATE);
                }
            }
        }
        let request = request.body(Full::new(upstream_body)).ok()?;
        Some(Outgoing {
            request,
            body_bytes: ctx.request_body.len(),
            strip_usage_chunk,
        })
    }

    /// The upstream's response, with end-to-end headers, our call id, and (metered) a tapped body.
    fn respond(
        &self,
        response: Response<hyper::body::Incoming>,
        mut ctx: CallContext,
        metered: bool,
        strip_usage_chunk: bool,
    ) -> Response<Body> {
        let (mut resp_parts, resp_body) = response.into_parts();
        ctx.request_id_header = header_text(&resp_parts.headers, UPSTREAM_REQUEST_ID_HEADER);
        let mut headers = HeaderMap::with_capacity(resp_parts.headers.len() + 1);
        copy_forward_headers(&resp_parts.headers, &mut headers);
        headers.insert(CALL_ID_HEADER, call_id_header(ctx.call_id));
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
                ctx.protocol,
                &ctx.info,
                resp_parts.status.as_u16(),
                content_type,
                encoding,
            )
            .with_anthropic_input(self.inner.anthropic_input);
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
                self.clone(),
                strip,
            ))
        } else {
            Body::new(resp_body)
        };
        resp_parts.headers = headers;
        Response::from_parts(resp_parts, body)
    }

    /// Answers with our own error; a metered call is recorded first (in strict durability the answer
    /// waits for the record's fsync too).
    async fn refuse(
        &self,
        ctx: CallContext,
        metered: bool,
        error: ApiError,
        how: NoResponse,
    ) -> Response<Body> {
        let (protocol, call_id) = (ctx.protocol, ctx.call_id);
        if metered {
            let trace = ctx.trace;
            let facts = ctx.into_refused_facts(Some(&error), how);
            if let Some(ack) = self.inner.state.meter.finish(facts, trace) {
                let _ = ack.await;
            }
        }
        error.for_call(protocol, call_id)
    }
}
