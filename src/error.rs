//! Our own answers: the one error type for every refusal or failure of the sidecar itself.
//!
//! Each variant knows its HTTP status and code, and renders itself in the caller's shape: on the proxy, the
//! calling protocol's (OpenAI-compatible and Responses `{"error":{"message","type","param","code"},
//! "request_id"}`, native `{"code","message","request_id"}`, Anthropic `{"type":"error","error":{"type",
//! "message","code"},"request_id"}` — `request_id` being the call id, also sent as `X-Meter-Call-Id`); on the
//! admin listener, `{"error":{"message","code"}}`. Messages never carry internals. Upstream errors never
//! come through here: they are passed through verbatim and metered.

use crate::usage::Protocol;
use axum::body::Body;
use axum::response::IntoResponse;
use http::{header, HeaderValue, Response, StatusCode};
use uuid::Uuid;

/// The header that carries a call's id on every proxy response.
pub const CALL_ID_HEADER: &str = "x-meter-call-id";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("This path is not served by the metering proxy.")]
    NotFound,
    #[error("The metering journal cannot record more calls right now; nothing was forwarded.")]
    JournalFull,
    #[error("Request body exceeds {limit} bytes.")]
    RequestTooLarge { limit: usize },
    #[error("The request body could not be read.")]
    RequestBodyUnreadable,
    #[error("Could not build the upstream request.")]
    ProxyError,
    #[error("The upstream could not be reached.")]
    UpstreamUnavailable,
    #[error("The upstream did not answer in time.")]
    UpstreamTimeout,
    #[error("admin token required")]
    Unauthorized,
    #[error("call_id is not a UUID")]
    BadCallId,
    #[error("no ledger configured")]
    NoLedger,
    #[error(
        "no such call in the ledger (a call finished moments ago may still be in the journal)"
    )]
    CallNotFound,
    #[error("ledger database unavailable")]
    LedgerUnavailable,
    #[error("{0}")]
    BadReportQuery(String),
    #[error("This proxy lends its API key only to clients with the right X-Meter-Client-Token (or send your own Authorization).")]
    ClientToken,
    #[error("Budget `{budget}` has no room for this call{}; nothing was forwarded.{}",
        detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default(),
        if *suggest_max_tokens { " Set max_tokens to bound what the call may cost." } else { "" })]
    BudgetExceeded {
        budget: String,
        /// What the call needed and what was left, in words.
        detail: Option<String>,
        /// The worst case came from the model's maximum output: the client set no output limit.
        suggest_max_tokens: bool,
    },
    #[error("Budget `{budget}` cannot be checked (the ledger database is unreachable); nothing was forwarded.")]
    BudgetUnknown { budget: String },
    #[error("Model `{model}` has no price, so budget `{budget}` cannot bound what the call costs; nothing was forwarded (add the model to the price book, or set --budget-unpriced admit).")]
    BudgetUnpriced { budget: String, model: String },
}

impl From<crate::budget::gate::Refused> for ApiError {
    fn from(r: crate::budget::gate::Refused) -> ApiError {
        use crate::budget::tracker::Refusal;
        match r.refusal {
            Refusal::Exceeded {
                budget,
                needed,
                left,
            } => ApiError::BudgetExceeded {
                budget,
                detail: Some(crate::budget::gate::describe(needed, left)),
                suggest_max_tokens: r.worst_from_model_maximum,
            },
            Refusal::Unknown { budget } | Refusal::Pending { budget } => {
                ApiError::BudgetUnknown { budget }
            }
            Refusal::Unpriced { budget, model } => ApiError::BudgetUnpriced { budget, model },
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound | ApiError::NoLedger | ApiError::CallNotFound => {
                StatusCode::NOT_FOUND
            }
            ApiError::JournalFull
            | ApiError::LedgerUnavailable
            | ApiError::BudgetUnknown { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BudgetExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BudgetUnpriced { .. } => StatusCode::FORBIDDEN,
            ApiError::RequestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestBodyUnreadable | ApiError::BadCallId | ApiError::BadReportQuery(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::ProxyError => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Unauthorized | ApiError::ClientToken => StatusCode::UNAUTHORIZED,
        }
    }

    /// The machine-readable code; also the ledger row's `error_code` when the call is metered.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::NotFound => "not_found",
            ApiError::JournalFull => "MeterJournalFull",
            ApiError::RequestTooLarge { .. } => "RequestTooLarge",
            ApiError::RequestBodyUnreadable => "RequestBodyUnreadable",
            ApiError::ProxyError => "ProxyError",
            ApiError::UpstreamUnavailable => "UpstreamUnavailable",
            ApiError::UpstreamTimeout => "UpstreamTimeout",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::BadCallId => "InvalidCallId",
            ApiError::NoLedger => "NoLedger",
            ApiError::CallNotFound => "CallNotFound",
            ApiError::LedgerUnavailable => "LedgerUnavailable",
            ApiError::BadReportQuery(_) => "InvalidReportQuery",
            ApiError::BudgetExceeded { .. } => "BudgetExceeded",
            ApiError::ClientToken => "MeterClientTokenInvalid",
            ApiError::BudgetUnknown { .. } => "BudgetUnavailable",
            ApiError::BudgetUnpriced { .. } => "BudgetUnpricedModel",
        }
    }

    /// This error as the proxy's answer to a call in `protocol`, with the call's id (the key of its ledger row).
    pub fn for_call(&self, protocol: Protocol, call_id: Uuid) -> Response<Body> {
        let id = call_id.to_string();
        let mut resp = self.shaped(protocol, Some(&id));
        if let Ok(v) = HeaderValue::from_str(&id) {
            resp.headers_mut().insert(CALL_ID_HEADER, v);
        }
        resp
    }

    /// This error as the proxy's answer to a request that is not a call (a path it does not serve): in
    /// `protocol`'s shape, without a call id — nothing is recorded for it.
    pub fn for_request(&self, protocol: Protocol) -> Response<Body> {
        self.shaped(protocol, None)
    }

    fn shaped(&self, protocol: Protocol, id: Option<&str>) -> Response<Body> {
        let (status, code, message) = (self.status(), self.code(), self.to_string());
        let body = match protocol {
            Protocol::OpenAi | Protocol::Responses => serde_json::json!({
                "error": {"message": message, "type": openai_type(status), "param": null, "code": code},
                "request_id": id,
            }),
            Protocol::DashScope => {
                serde_json::json!({"code": code, "message": message, "request_id": id})
            }
            // Anthropic's own shape; our code rides along inside `error`, which its clients ignore.
            Protocol::Anthropic => serde_json::json!({
                "type": "error",
                "error": {"type": anthropic_type(status), "message": message, "code": code},
                "request_id": id,
            }),
        };
        let mut body = body;
        if id.is_none() {
            if let Some(o) = body.as_object_mut() {
                o.remove("request_id");
            }
        }
        json_response(status, &body)
    }
}

/// The admin listener's shape.
impl IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let body = serde_json::json!({"error": {"message": self.to_string(), "code": self.code()}});
        let mut resp = json_response(self.status(), &body);
        if self == ApiError::Unauthorized {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn openai_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

/// Anthropic's error types by status (its API's own list).
fn anthropic_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// An error and its causes on one line (hyper's client errors hide the useful part in `source()`).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn json(resp: Response<Body>) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn renders_in_each_protocols_shape_with_the_call_id() {
        let id = Uuid::now_v7();
        let err = ApiError::RequestTooLarge { limit: 10 };
        let compat = err.for_call(Protocol::OpenAi, id);
        assert_eq!(compat.status(), 413);
        assert_eq!(compat.headers()[CALL_ID_HEADER], id.to_string().as_str());
        assert_eq!(
            json(compat).await,
            serde_json::json!({"error": {"message": "Request body exceeds 10 bytes.",
                "type": "invalid_request_error", "param": null, "code": "RequestTooLarge"},
                "request_id": id.to_string()})
        );
        let native = json(ApiError::UpstreamTimeout.for_call(Protocol::DashScope, id)).await;
        assert_eq!(
            native,
            serde_json::json!({"code": "UpstreamTimeout",
                "message": "The upstream did not answer in time.", "request_id": id.to_string()})
        );
    }

    #[tokio::test]
    async fn admin_errors_carry_status_code_and_the_bearer_challenge() {
        let resp = ApiError::Unauthorized.into_response();
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(json(resp).await["error"]["code"], "Unauthorized");
        assert_eq!(ApiError::BadCallId.into_response().status(), 400);
    }

    #[tokio::test]
    async fn a_budget_refusal_is_a_429_in_each_protocols_shape() {
        let id = Uuid::now_v7();
        let err = ApiError::BudgetExceeded {
            budget: "alpha-daily".into(),
            detail: None,
            suggest_max_tokens: false,
        };
        let compat = err.for_call(Protocol::OpenAi, id);
        assert_eq!(compat.status(), 429);
        let body = json(compat).await;
        assert_eq!(body["error"]["code"], "BudgetExceeded");
        assert_eq!(body["error"]["type"], "rate_limit_error");
        let anthropic = err.for_call(Protocol::Anthropic, id);
        assert_eq!(anthropic.status(), 429);
        let body = json(anthropic).await;
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "rate_limit_error");
        assert_eq!(body["error"]["code"], "BudgetExceeded");
        let too_large =
            json(ApiError::RequestTooLarge { limit: 1 }.for_call(Protocol::Anthropic, id)).await;
        assert_eq!(too_large["error"]["type"], "request_too_large");
        let responses = json(err.for_call(Protocol::Responses, id)).await;
        assert_eq!(responses["error"]["code"], "BudgetExceeded");
        let native = err.for_call(Protocol::DashScope, id);
        assert_eq!(native.status(), 429);
        assert_eq!(
            json(native).await,
            serde_json::json!({"code": "BudgetExceeded", "request_id": id.to_string(),
                "message": "Budget `alpha-daily` has no room for this call; nothing was forwarded."})
        );
    }
}
