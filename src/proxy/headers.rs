//! Which headers cross the proxy, and the attribution the proxy takes from them.

use crate::error::CALL_ID_HEADER;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use uuid::Uuid;

pub const PROJECT_HEADER: &str = "x-meter-project";
pub const USER_HEADER: &str = "x-meter-user";
/// The DashScope workspace a call runs in (absent: the default workspace). Forwarded unchanged; recorded.
pub const WORKSPACE_HEADER: &str = "x-dashscope-workspace";
/// The client token (`--client-token`): what a client without its own `Authorization` shows to use the injected
/// key. Never forwarded.
pub const CLIENT_TOKEN_HEADER: &str = "x-meter-client-token";
/// Attribution values longer than this are cut: they are labels, not payloads.
const MAX_ATTRIBUTION_LEN: usize = 128;

pub fn call_id_header(call_id: Uuid) -> HeaderValue {
    let mut buf = Uuid::encode_buffer();
    HeaderValue::from_str(call_id.hyphenated().encode_lower(&mut buf))
        .unwrap_or(HeaderValue::from_static("invalid"))
}

/// A header's value as text, trimmed and cut at 128 characters (attribution labels, request ids: labels, not
/// payloads); `None` if absent, empty or not text.
pub fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
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
            | CLIENT_TOKEN_HEADER
            | CALL_ID_HEADER
    )
}

/// Copies end-to-end headers. Headers named in `Connection` are hop-by-hop too. `Content-Length` is left to
/// the body: the HTTP library sets it from the body's exact size (which the rewrite may change).
pub fn copy_forward_headers(from: &HeaderMap, to: &mut HeaderMap) {
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
