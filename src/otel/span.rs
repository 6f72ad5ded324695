//! A finished call as an OpenTelemetry span: the GenAI semantic conventions' CLIENT span of an inference
//! call (`{operation} {model}`, `gen_ai.*`, `server.*`, `error.type`) plus the meter's own attributes
//! (`deepseek_meter.*`: the exact cost in CNY, the price version, the project, the call id). Never the key: the
//! record holds only its fingerprint, and the span does not carry even that.

use super::trace::Trace;
use crate::record::CallRecord;
use crate::usage::CallStatus;

/// `gen_ai.operation.name`: every metered protocol here is a chat completion (messages in, a message out).
pub const OPERATION: &str = "chat";

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    Strs(Vec<String>),
}

/// The status of a span (OTLP `Status`): `Unset` for calls that went as the client asked.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Unset,
    Error(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub trace: Trace,
    pub name: String,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, Value)>,
    pub status: Status,
}

/// What a span needs beside the record: where the upstream is, and which conventions to speak.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub server_address: Option<&'a str>,
    pub server_port: Option<u16>,
    pub gen_ai_system: bool,
    /// The model the response named, when it named one.
    pub response_model: Option<&'a str>,
    /// Why the response ended, as the upstream said.
    pub finish_reasons: &'a [String],
}

impl Span {
    pub fn of(record: &CallRecord, trace: Trace, cx: &Context<'_>) -> Span {
        let nanos = |t: chrono::DateTime<chrono::Utc>| {
            t.timestamp_nanos_opt()
                .map_or(0, |n| u64::try_from(n).unwrap_or(0))
        };
        let int = |n: u64| Value::Int(i64::try_from(n).unwrap_or(i64::MAX));
        let text = |s: &str| Value::Str(s.to_owned());
        let mut a: Vec<(&'static str, Value)> = Vec::with_capacity(24);
        a.push(("gen_ai.operation.name", text(OPERATION)));
        a.push(("gen_ai.provider.name", text(super::PROVIDER)));
        if cx.gen_ai_system {
            a.push(("gen_ai.system", text(super::PROVIDER)));
        }
        a.push(("gen_ai.request.model", text(&record.model)));
        if let Some(m) = cx.response_model {
            a.push(("gen_ai.response.model", text(m)));
        }
        if let Some(id) = &record.upstream_request_id {
            a.push(("gen_ai.response.id", text(id)));
        }
        if !cx.finish_reasons.is_empty() {
            a.push((
                "gen_ai.response.finish_reasons",
                Value::Strs(cx.finish_reasons.to_vec()),
            ));
        }
        if record.usage_source != crate::usage::UsageSource::None {
            a.push(("gen_ai.usage.input_tokens", int(record.input_tokens)));
            a.push(("gen_ai.usage.output_tokens", int(record.output_tokens)));
            a.push((
                "gen_ai.usage.reasoning.output_tokens",
                int(record.reasoning_tokens),
            ));
            a.push((
                "gen_ai.usage.cache_read.input_tokens",
                int(record.cached_tokens),
            ));
            a.push((
                "gen_ai.usage.cache_creation.input_tokens",
                int(record.cache_creation_tokens),
            ));
        }
        if let Some(host) = cx.server_address {
            a.push(("server.address", text(host)));
        }
        if let Some(port) = cx.server_port {
            a.push(("server.port", Value::Int(i64::from(port))));
        }
        if let Some(s) = record.http_status {
            a.push(("http.response.status_code", Value::Int(i64::from(s))));
        }
        let error = (record.status != CallStatus::Ok).then(|| {
            record
                .error_code
                .clone()
                .unwrap_or_else(|| record.status.as_str().to_owned())
        });
        if let Some(e) = &error {
            a.push(("error.type", text(e)));
        }
        a.push(("deepseek_meter.call_id", text(&record.call_id.to_string())));
        a.push(("deepseek_meter.protocol", text(record.protocol.as_str())));
        a.push(("deepseek_meter.status", text(record.status.as_str())));
        a.push(("deepseek_meter.stream", Value::Bool(record.stream)));
        a.push((
            "deepseek_meter.usage_source",
            text(record.usage_source.as_str()),
        ));
        a.push(("deepseek_meter.priced", Value::Bool(record.priced)));
        if let Some(cost) = record.cost_total {
            // Exact, as the ledger has it: a string, not a double.
            a.push((
                "deepseek_meter.cost_cny",
                Value::Str(cost.normalize().to_string()),
            ));
        }
        if let Some(v) = &record.price_version {
            a.push(("deepseek_meter.price_version", text(v)));
        }
        if let Some(p) = &record.price_period {
            a.push(("deepseek_meter.price_period", text(p)));
        }
        if let Some(p) = &record.project {
            a.push(("deepseek_meter.project", text(p)));
        }
        if let Some(w) = &record.workspace {
            a.push(("deepseek_meter.workspace", text(w)));
        }
        Span {
            trace,
            name: format!("{OPERATION} {}", record.model),
            start_unix_nanos: nanos(record.started_at),
            end_unix_nanos: nanos(record.finished_at),
            attributes: a,
            status: error.map_or(Status::Unset, Status::Error),
        }
    }
}
