//! The one place our own errors become HTTP responses, in the calling protocol's error shape.
//!
//! Upstream errors never come through here: they are passed through verbatim and metered.

use crate::usage::Protocol;
use axum::body::Body;
use http::{header, HeaderValue, Response, StatusCode};
use uuid::Uuid;

/// An error of the proxy's own, shaped like the platform's: OpenAI-compatible
/// `{"error":{"message","type","param","code"},"request_id"}` or native `{"code","message","request_id"}`.
/// `request_id` is the call id, also sent as `X-Meter-Call-Id`.
pub fn error_response(
    protocol: Protocol,
    status: StatusCode,
    code: &str,
    message: &str,
    call_id: Uuid,
) -> Response<Body> {
    let id = call_id.to_string();
    let body = match protocol {
        Protocol::OpenAi => serde_json::json!({
            "error": {"message": message, "type": error_type(status), "param": null, "code": code},
            "request_id": id,
        }),
        Protocol::DashScope => {
            serde_json::json!({"code": code, "message": message, "request_id": id})
        }
    };
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(super::CALL_ID_HEADER, v);
    }
    resp
}

fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
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
