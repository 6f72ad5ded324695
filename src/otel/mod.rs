//! OpenTelemetry export (off by default): one CLIENT span per metered call, with the GenAI semantic
//! conventions, sent over OTLP/HTTP (protobuf) in batches that never hold a byte of a call or its ledger row.
//!
//! - [`trace`]: the W3C trace context — the client's `traceparent` read, and the one sent upstream (pure);
//! - [`span`]: a finished call's record as a span: its name, kind, times and attributes (pure);
//! - [`proto`]: the OTLP protobuf encoding of a batch (pure);
//! - [`exporter`]: the bounded queue and the task that batches and POSTs (I/O). A full queue or an unreachable
//!   collector loses spans, counted, never calls.

pub mod exporter;
pub mod proto;
pub mod span;
pub mod trace;

pub use exporter::Exporter;
pub use trace::Trace;

use std::time::Duration;

/// The export's settings (`--otlp-*`, `--otel-*` and the standard `OTEL_*` variables).
#[derive(Debug, Clone)]
pub struct OtelSettings {
    /// Where batches are POSTed: the traces endpoint itself (`…/v1/traces`).
    pub traces_endpoint: http::Uri,
    /// Extra request headers (`OTEL_EXPORTER_OTLP_HEADERS`: a collector's API key). Secret: never logged.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// How long one POST may take.
    pub timeout: Duration,
    /// How long a batch waits for more spans after its first (`OTEL_BSP_SCHEDULE_DELAY`).
    pub schedule_delay: Duration,
    /// `service.name` and any other resource attributes (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`).
    pub resource: Vec<(String, String)>,
    /// Also emit the deprecated `gen_ai.system` beside `gen_ai.provider.name` (for backends on older
    /// conventions).
    pub gen_ai_system: bool,
}

/// The OTLP transport (`OTEL_EXPORTER_OTLP_PROTOCOL`): OTLP/HTTP with protobuf bodies, the one every
/// collector takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    HttpProtobuf,
}

/// `gen_ai.provider.name` (and `gen_ai.system`): the models run on Alibaba Cloud Model Studio, which the
/// conventions' list of well-known providers does not name; `server.address` says which host.
pub const PROVIDER: &str = "alibaba_cloud";

/// Parses `OTEL_EXPORTER_OTLP_HEADERS`: `key=value` pairs separated by commas, values percent-encoded
/// (the OpenTelemetry specification's format). The values are secrets, and a mistyped pair may put one where a
/// name should be: an error names the pair by its position, never by its text.
pub fn parse_headers(text: &str) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, String> {
    let mut out = Vec::new();
    for (n, pair) in text
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .enumerate()
    {
        let n = n + 1;
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("pair {n} is not key=value (pairs are separated by commas)"))?;
        let name = http::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("pair {n} does not start with a header name"))?;
        let decoded = percent_decode(value.trim())
            .map_err(|problem| format!("the value of pair {n} {problem}"))?;
        let mut value = http::HeaderValue::from_str(&decoded)
            .map_err(|_| format!("the value of pair {n} is not a header value"))?;
        value.set_sensitive(true);
        out.push((name, value));
    }
    Ok(out)
}

/// Parses `OTEL_RESOURCE_ATTRIBUTES`: `key=value` pairs separated by commas, values percent-encoded.
pub fn parse_resource(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| "expected key=value pairs separated by commas".to_owned())?;
            if k.trim().is_empty() {
                return Err("an attribute without a key".to_owned());
            }
            let v = percent_decode(v.trim())
                .map_err(|problem| format!("the value of {} {problem}", k.trim()))?;
            Ok((k.trim().to_owned(), v))
        })
        .collect()
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "has a % not followed by two hex digits".to_owned())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "does not decode to UTF-8".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_resource_attributes_read_as_the_specification_writes_them() {
        let h = parse_headers("api-key=s%3Dcret, x-tenant = a ").unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].0.as_str(), "api-key");
        assert_eq!(h[0].1.to_str().unwrap(), "s=cret");
        assert!(h[0].1.is_sensitive());
        assert_eq!(h[1].1.to_str().unwrap(), "a");
        assert!(parse_headers("novalue").is_err());
        assert!(parse_headers("a=%zz").is_err());
        // No error quotes what it read: values are secrets, and a mistyped pair can put one in the name.
        for typo in [
            "Authorization=Bearer s3cret%zz",
            "Authorization: Bearer s3cret==",
            "x=1,Authorization Bearer s3cret",
            "a=s3cret%ff%fe",
        ] {
            let e = parse_headers(typo).unwrap_err();
            assert!(
                !e.contains("s3cret") && !e.contains("Bearer"),
                "{typo}: {e}"
            );
        }
        assert_eq!(
            parse_resource("service.namespace=billing,deployment.environment=prod%20cn").unwrap(),
            vec![
                ("service.namespace".to_owned(), "billing".to_owned()),
                ("deployment.environment".to_owned(), "prod cn".to_owned())
            ]
        );
        assert!(parse_resource("=x").is_err());
        assert!(parse_resource("").unwrap().is_empty());
    }
}
