//! The protocol a call speaks, and the platform's error shapes in each (reference §1.4, §2.4; the Responses
//! API answers errors in the chat shape, the Anthropic API in Anthropic's `{"type":"error","error":{…}}`).

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Proto {
    Compat,
    Native,
    Responses,
    Anthropic,
}

pub(super) enum ErrorKind {
    InvalidApiKey,
    RateLimited,
    Internal,
    Moderation,
    InvalidParameter(String),
    ModelNotFound(String),
}

/// The platform's error bodies (reference §1.4, §2.4), verbatim in shape.
pub(super) fn error(
    proto: Proto,
    status: StatusCode,
    kind: ErrorKind,
    request_id: uuid::Uuid,
    native_sse: bool,
) -> Response {
    let rid = request_id.to_string();
    let body = match proto {
        Proto::Anthropic => {
            let (ty, message) = match &kind {
                ErrorKind::InvalidApiKey => {
                    ("authentication_error", "invalid x-api-key".to_owned())
                }
                ErrorKind::RateLimited => (
                    "rate_limit_error",
                    "Requests rate limit exceeded, please try again later.".to_owned(),
                ),
                ErrorKind::Internal => (
                    "api_error",
                    "An internal error has occured, please try again later.".to_owned(),
                ),
                ErrorKind::Moderation => (
                    "invalid_request_error",
                    "Input data may contain inappropriate content.".to_owned(),
                ),
                ErrorKind::InvalidParameter(m) => ("invalid_request_error", m.clone()),
                ErrorKind::ModelNotFound(m) => ("not_found_error", format!("model: {m}")),
            };
            json!({"type": "error", "error": {"type": ty, "message": message}, "request_id": rid})
        }
        Proto::Compat | Proto::Responses => {
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

/// The `created` second of a response.
pub(super) fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}
