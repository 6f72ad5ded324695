//! The parsers of setting values: each takes the raw text (flag, environment or file) and returns the value
//! or a message that names what is wrong. `serve_settings!` (in [`super::table`]) applies them by name.

use super::Upstream;
use chrono_tz::Tz;
use clap::ValueEnum;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(super) fn given(raw: Option<&str>) -> Result<&str, String> {
    raw.ok_or_else(|| "is required".to_owned())
}

pub(super) fn address(raw: Option<&str>) -> Result<SocketAddr, String> {
    let raw = given(raw)?;
    raw.parse()
        .map_err(|_| format!("{raw:?} is not an address like 127.0.0.1:8787"))
}

pub(super) fn optional_address(raw: Option<&str>) -> Result<Option<SocketAddr>, String> {
    raw.filter(|r| !r.is_empty())
        .map(|r| address(Some(r)))
        .transpose()
}

/// A retention in days (`400d`), at least a month's worth: the ledger drops whole months.
pub(super) fn retention(raw: Option<&str>) -> Result<Option<chrono::Duration>, String> {
    let Some(raw) = raw.map(str::trim).filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    let days: i64 = raw
        .strip_suffix('d')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("{raw:?} is not a number of days like 400d"))?;
    if days < 31 {
        return Err(format!(
            "{raw:?} is shorter than a month (the ledger drops whole months)"
        ));
    }
    Ok(Some(chrono::Duration::days(days)))
}

pub(super) fn secret(raw: Option<&str>) -> Result<Option<String>, String> {
    Ok(raw.filter(|t| !t.is_empty()).map(str::to_owned))
}

pub(super) fn positive(raw: Option<&str>) -> Result<u64, String> {
    let raw = given(raw)?;
    match raw.trim().parse::<u64>() {
        Ok(0) => Err("must be greater than 0".into()),
        Ok(v) => Ok(v),
        Err(_) => Err(format!("{raw:?} is not a whole non-negative number")),
    }
}

pub(super) fn millis(raw: Option<&str>) -> Result<Duration, String> {
    positive(raw).map(Duration::from_millis)
}

/// A duration with its unit: `500ms`, `30s`, `10m`, `1h` (at most a week).
pub(super) fn duration(raw: Option<&str>) -> Result<Duration, String> {
    let raw = given(raw)?.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration like 500ms, 30s, 10m or 1h"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "{raw:?} is not a duration like 500ms, 30s, 10m or 1h"
            ))
        }
    };
    if d > Duration::from_secs(7 * 24 * 3600) {
        return Err(format!("{raw:?} is longer than a week"));
    }
    Ok(d)
}

/// A secret from a file: its text without the surrounding whitespace (the final newline an editor adds). The
/// problem never quotes the content.
pub(super) fn read_secret(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(secret.to_owned())
}

pub(super) fn optional_path(raw: Option<&str>) -> Result<Option<PathBuf>, String> {
    Ok(raw.filter(|p| !p.is_empty()).map(PathBuf::from))
}

pub(super) fn path(raw: Option<&str>) -> Result<PathBuf, String> {
    given(raw).map(PathBuf::from)
}

pub(super) fn postgres_url(raw: Option<&str>) -> Result<String, String> {
    let raw = given(raw)?;
    if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
        Ok(raw.to_owned())
    } else {
        Err("must be a postgres:// URL".into())
    }
}

pub(super) fn timezone(raw: Option<&str>) -> Result<Tz, String> {
    let raw = given(raw)?;
    raw.parse()
        .map_err(|_| format!("{raw:?} is not an IANA time zone like Asia/Shanghai"))
}

/// The words clap accepts for a boolean flag's environment variable.
pub(super) fn flag(raw: Option<&str>) -> Result<bool, String> {
    match given(raw)?.trim().to_ascii_lowercase().as_str() {
        "" | "y" | "yes" | "t" | "true" | "on" | "1" => Ok(true),
        "n" | "no" | "f" | "false" | "off" | "0" => Ok(false),
        other => Err(format!("{other:?} is not true or false")),
    }
}

pub(super) fn choice<T: ValueEnum>(raw: Option<&str>) -> Result<T, String> {
    let raw = given(raw)?;
    T::from_str(raw, true).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|p| p.get_name().to_owned())
            .collect();
        format!("{raw:?} is not one of {}", names.join(", "))
    })
}

/// An optional `http://` or `https://` URL with a host (a webhook). The problem never quotes the URL: it may
/// hold a secret.
pub(super) fn optional_url(raw: Option<&str>) -> Result<Option<http::Uri>, String> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    let uri: http::Uri = raw
        .parse()
        .map_err(|_| "is not a URL like https://hooks.example.com/path".to_owned())?;
    if !matches!(uri.scheme_str(), Some("http") | Some("https")) || uri.host().is_none() {
        return Err("must be an http:// or https:// URL with a host".into());
    }
    Ok(Some(uri))
}

pub(super) fn upstream(raw: Option<&str>) -> Result<Upstream, String> {
    let raw = given(raw)?;
    if raw == "sim" {
        return Ok(Upstream::Sim);
    }
    let uri: http::Uri = raw.parse().map_err(|_| format!("{raw:?} is not a URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(format!(
                "{raw:?} must start with http:// or https://, or be `sim`"
            ))
        }
    }
    if uri.authority().is_none() {
        return Err(format!("{raw:?} has no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{raw:?} must be a base URL without a path (paths come from the calls)"
        ));
    }
    Ok(Upstream::Url(uri))
}

/// A non-empty text (`OTEL_SERVICE_NAME`).
pub(super) fn text(raw: Option<&str>) -> Result<String, String> {
    let raw = given(raw)?.trim();
    if raw.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(raw.to_owned())
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL`: the one transport the exporter speaks.
pub(super) fn otlp_protocol(raw: Option<&str>) -> Result<crate::otel::Protocol, String> {
    match given(raw)?.trim() {
        "http/protobuf" => Ok(crate::otel::Protocol::HttpProtobuf),
        other => Err(format!(
            "{other:?} is not supported: the exporter speaks http/protobuf (OTLP over HTTP, to port 4318)"
        )),
    }
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: `key=value` pairs (the problem never quotes a value: it may be a secret).
pub(super) fn otlp_headers(
    raw: Option<&str>,
) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, String> {
    raw.map_or(Ok(Vec::new()), crate::otel::parse_headers)
}

/// `OTEL_RESOURCE_ATTRIBUTES`: `key=value` pairs.
pub(super) fn resource_attributes(raw: Option<&str>) -> Result<Vec<(String, String)>, String> {
    raw.map_or(Ok(Vec::new()), crate::otel::parse_resource)
}
