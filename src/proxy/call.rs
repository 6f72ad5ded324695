//! One metered call between its request and its end: what is known before the response, and how that
//! becomes the call's facts for the meter step.

use crate::error::ApiError;
use crate::record::CallFacts;
use crate::usage::tap::UsageReport;
use crate::usage::{self, CallStatus, Protocol, RequestInfo, UsageSource};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use std::time::Instant;
use uuid::Uuid;

/// Everything known about a metered call before its response, kept until its facts are taken.
pub struct CallContext {
    pub call_id: Uuid,
    pub protocol: Protocol,
    pub info: RequestInfo,
    /// The request body as the client sent it; only read again to estimate prompt tokens of a cut call.
    pub request_body: Bytes,
    pub started_at: DateTime<Utc>,
    pub started: Instant,
    pub key_fingerprint: Option<String>,
    pub key_hint: Option<String>,
    pub project: Option<String>,
    pub end_user: Option<String>,
    pub workspace: Option<String>,
    /// The console's ID of the key (`[[api_key]]`).
    pub api_key_id: Option<String>,
    /// The upstream's `x-request-id` response header, for a body that carries no request id of its own.
    pub request_id_header: Option<String>,
    /// The call's trace context, when spans are exported (`--otlp-endpoint`).
    pub trace: Option<crate::otel::Trace>,
}

/// How a call that got no upstream response is metered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoResponse {
    /// Nothing reached the upstream, or nothing it would bill: no usage.
    Unanswered(CallStatus),
    /// The request may have reached the upstream, which reset or timed out before answering: the prompt
    /// is estimated, since the upstream may have started work it bills for.
    CutBeforeResponse,
    /// The client left while the upstream had the request and had not answered yet: estimated like a cut.
    ClientLeftBeforeResponse,
}

/// Runs `f`, which may count tokens. The first count loads the embedded tokenizer (about 250 ms of CPU,
/// `bench/estimator`); on a multi-threaded runtime that happens with this worker's other tasks handed to
/// another worker, so no unrelated call waits for it. Later counts are short and run in place.
pub fn counting<T>(f: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread && !usage::tokenizer::is_loaded() {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

impl CallContext {
    /// The facts of this call, from what the tap concluded.
    pub fn into_facts(self, report: UsageReport, first_token: Option<Instant>) -> CallFacts {
        let now = Instant::now();
        CallFacts {
            call_id: self.call_id,
            upstream_request_id: report.upstream_request_id.or(self.request_id_header),
            protocol: self.protocol,
            model: self
                .info
                .model
                .or_else(|| report.response_model.clone())
                .unwrap_or_else(|| crate::record::UNKNOWN_MODEL.into()),
            response_model: report.response_model,
            finish_reasons: report.finish_reasons,
            stream: self.info.stream || report.stream,
            status: report.status,
            http_status: Some(report.http_status),
            error_code: report.error_code,
            started_at: self.started_at,
            ttft_ms: first_token.map(|t| (t - self.started).as_secs_f64() * 1000.0),
            duration_ms: (now - self.started).as_secs_f64() * 1000.0,
            tokens: report.tokens,
            usage_source: report.usage_source,
            reasoning_estimated: report.reasoning_estimated,
            key_fingerprint: self.key_fingerprint,
            key_hint: self.key_hint,
            project: self.project,
            end_user: self.end_user,
            workspace: self.workspace,
            api_key_id: self.api_key_id,
        }
    }

    /// The facts of a call that got no upstream response, answered by us with `answer` (`None`: nobody
    /// was left to answer).
    pub fn into_refused_facts(self, answer: Option<&ApiError>, how: NoResponse) -> CallFacts {
        let estimated = |status| {
            let input =
                counting(|| usage::estimate_prompt_tokens(self.protocol, &self.request_body));
            let tokens = usage::Tokens {
                input,
                ..Default::default()
            };
            (status, tokens, UsageSource::Estimated)
        };
        let (status, tokens, usage_source) = match how {
            NoResponse::Unanswered(status) => (status, usage::Tokens::default(), UsageSource::None),
            NoResponse::CutBeforeResponse => estimated(CallStatus::UpstreamAborted),
            NoResponse::ClientLeftBeforeResponse => estimated(CallStatus::ClientAborted),
        };
        let report = UsageReport {
            status,
            http_status: answer.map_or(0, |e| e.status().as_u16()),
            error_code: answer.map(|e| e.code().to_owned()),
            upstream_request_id: None,
            response_model: None,
            finish_reasons: Vec::new(),
            stream: false,
            tokens,
            usage_source,
            parse_errors: 0,
            usage_clamped: false,
            reasoning_estimated: false,
        };
        let mut facts = self.into_facts(report, None);
        if answer.is_none() {
            facts.http_status = None;
        }
        facts
    }
}
