//! Which requests are metered (the four protocols' call paths), which are forwarded unmetered, and which are
//! refused; and what of a request's head decides how it is forwarded (the client's own key, the codings the
//! tap can read).

use crate::usage::{self, Protocol};
use http::header::{self, HeaderMap, HeaderValue};
use http::Method;

pub(super) const OPENAI_PATH: &str = "/compatible-mode/v1/chat/completions";
pub(super) const NATIVE_PATH: &str = "/api/v1/services/aigc/text-generation/generation";
pub(super) const RESPONSES_PATH: &str = "/compatible-mode/v1/responses";
pub(super) const ANTHROPIC_PATH: &str = "/apps/anthropic/v1/messages";
/// The Anthropic API's key header (its clients send the key here rather than in `Authorization`).
pub(super) const API_KEY_HEADER: &str = "x-api-key";

/// What the proxy does with a request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    Metered(Protocol),
    /// Forwarded and counted, not metered. The protocol decides the error shape.
    Forward(Protocol),
    NotFound,
}

pub(super) fn route(method: &Method, path: &str) -> Route {
    if has_dot_segment(path) {
        return Route::NotFound;
    }
    let protocol = if path.starts_with("/compatible-mode/") {
        Protocol::OpenAi
    } else if path.starts_with("/api/v1/") {
        Protocol::DashScope
    } else if path.starts_with("/apps/anthropic/") {
        Protocol::Anthropic
    } else {
        return Route::NotFound;
    };
    match (method == Method::POST, path) {
        (true, OPENAI_PATH) => Route::Metered(Protocol::OpenAi),
        (true, NATIVE_PATH) => Route::Metered(Protocol::DashScope),
        (true, RESPONSES_PATH) => Route::Metered(Protocol::Responses),
        (true, ANTHROPIC_PATH) => Route::Metered(Protocol::Anthropic),
        _ => Route::Forward(protocol),
    }
}

/// The client's `Accept-Encoding` without the codings the tap cannot decode (`None`: the client sent none,
/// nothing to change). `*` goes too: it would let the upstream pick any coding.
pub(super) fn readable_encodings(headers: &HeaderMap) -> Option<HeaderValue> {
    let values: Vec<&str> = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.is_empty() && !headers.contains_key(header::ACCEPT_ENCODING) {
        return None;
    }
    let kept: Vec<&str> = values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|item| {
            let coding = item
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            coding == "identity" || usage::decode::ACCEPTED.contains(&coding.as_str())
        })
        .collect();
    let value = if kept.is_empty() {
        "identity".to_owned()
    } else {
        kept.join(", ")
    };
    HeaderValue::from_str(&value).ok()
}

/// The client sent a key of its own: `Authorization`, or the Anthropic API's `x-api-key`.
pub(super) fn has_own_key(headers: &HeaderMap) -> bool {
    headers.contains_key(header::AUTHORIZATION) || headers.contains_key(API_KEY_HEADER)
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
        assert_eq!(
            route(&Method::POST, RESPONSES_PATH),
            Route::Metered(Protocol::Responses)
        );
        assert_eq!(
            route(&Method::POST, ANTHROPIC_PATH),
            Route::Metered(Protocol::Anthropic)
        );
        assert_eq!(
            route(&Method::POST, "/apps/anthropic/v1/messages/count_tokens"),
            Route::Forward(Protocol::Anthropic)
        );
        assert_eq!(route(&Method::POST, "/apps/other/v1"), Route::NotFound);
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
    fn only_decodable_codings_are_offered_upstream() {
        let offered = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            readable_encodings(&h).unwrap().to_str().unwrap().to_owned()
        };
        assert_eq!(offered("gzip, deflate"), "gzip, deflate");
        assert_eq!(
            offered("gzip;q=1.0, br;q=0.8, zstd, compress, *;q=0.1"),
            "gzip;q=1.0, br;q=0.8, zstd"
        );
        assert_eq!(offered("compress, sdch"), "identity");
        assert!(readable_encodings(&HeaderMap::new()).is_none());
    }
}
