//! Prometheus metrics: a typed struct owning its own registry (no global default registry).
//!
//! Names and labels are a contract (DESIGN §7). Labels stay bounded: `model` is a price-book model or
//! `other`, never a key, user or request id.

use crate::record::CallRecord;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    tokens: IntCounterVec,
    duration: HistogramVec,
    ttft: HistogramVec,
    upstream_errors: IntCounterVec,
    pub unpriced: IntCounterVec,
    pub parse_errors: IntCounter,
    pub forwarded_unmetered: IntCounter,
    pub usage_clamped: IntCounter,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "deepseek_meter_requests_total",
                "Metered calls by protocol, model and outcome.",
            ),
            &["protocol", "model", "status"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "deepseek_meter_tokens_total",
                "Tokens by class: input (uncached), cached_input, reasoning, answer; the four add up to all tokens.",
            ),
            &["model", "type"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "deepseek_meter_request_duration_seconds",
                "Call duration as the client saw it.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["protocol", "model"],
        )?;
        let ttft = HistogramVec::new(
            HistogramOpts::new(
                "deepseek_meter_time_to_first_token_seconds",
                "Time to the first generated token.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["model"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "deepseek_meter_upstream_errors_total",
                "Upstream errors by error code.",
            ),
            &["model", "code"],
        )?;
        let unpriced = IntCounterVec::new(
            Opts::new(
                "deepseek_meter_unpriced_requests_total",
                "Calls to models without a price.",
            ),
            &["model"],
        )?;
        let parse_errors = IntCounter::new(
            "deepseek_meter_response_parse_errors_total",
            "Response events or bodies the usage tap could not read (the client still got them).",
        )?;
        let forwarded_unmetered = IntCounter::new(
            "deepseek_meter_forwarded_unmetered_total",
            "Forwarded calls to paths that are not metered (counted only).",
        )?;
        let usage_clamped = IntCounter::new(
            "deepseek_meter_usage_inconsistent_total",
            "Upstream usage objects with cached > input or reasoning > output (clamped).",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(ttft.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(unpriced.clone()))?;
        registry.register(Box::new(parse_errors.clone()))?;
        registry.register(Box::new(forwarded_unmetered.clone()))?;
        registry.register(Box::new(usage_clamped.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            tokens,
            duration,
            ttft,
            upstream_errors,
            unpriced,
            parse_errors,
            forwarded_unmetered,
            usage_clamped,
        })
    }

    /// Counts one finished call. `model_label` is the bounded label (a price-book model or `other`).
    pub fn observe_call(&self, record: &CallRecord, model_label: &str) {
        let protocol = record.protocol.as_str();
        self.requests
            .with_label_values(&[protocol, model_label, record.status.as_str()])
            .inc();
        let t = record.tokens();
        for (class, n) in [
            ("input", t.uncached_input()),
            ("cached_input", t.cached),
            ("reasoning", t.reasoning),
            ("answer", t.answer()),
        ] {
            if n > 0 {
                self.tokens
                    .with_label_values(&[model_label, class])
                    .inc_by(n);
            }
        }
        self.duration
            .with_label_values(&[protocol, model_label])
            .observe(record.duration_ms / 1000.0);
        if let Some(ttft) = record.ttft_ms {
            self.ttft
                .with_label_values(&[model_label])
                .observe(ttft / 1000.0);
        }
        if let Some(code) = &record.error_code {
            self.upstream_errors
                .with_label_values(&[model_label, bounded_code(code)])
                .inc();
        } else if record.status == crate::usage::CallStatus::UpstreamError {
            self.upstream_errors
                .with_label_values(&[model_label, "unknown"])
                .inc();
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Error codes come from the upstream; keep the label set bounded and printable.
fn bounded_code(code: &str) -> &str {
    if code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        code
    } else {
        "other"
    }
}
