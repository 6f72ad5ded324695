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
    cost: prometheus::CounterVec,
    pub ledger_pending: prometheus::IntGauge,
    pub journal_bytes: prometheus::IntGauge,
    pub ledger_written: IntCounter,
    pub ledger_write_failures: IntCounter,
    pub ledger_unrecorded: prometheus::IntGauge,
    pub journal_full_refusals: IntCounter,
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
        let cost = prometheus::CounterVec::new(
            Opts::new(
                "deepseek_meter_cost_yuan_total",
                "Cost in CNY by token class (metrics only; the ledger is exact).",
            ),
            &["model", "type"],
        )?;
        let ledger_pending = prometheus::IntGauge::new(
            "deepseek_meter_ledger_pending_records",
            "Calls journaled and not yet in Postgres.",
        )?;
        let journal_bytes = prometheus::IntGauge::new(
            "deepseek_meter_journal_bytes",
            "Bytes of journal segments on disk.",
        )?;
        let ledger_written = IntCounter::new(
            "deepseek_meter_ledger_written_total",
            "Rows inserted into the ledger.",
        )?;
        let ledger_write_failures = IntCounter::new(
            "deepseek_meter_ledger_write_failures_total",
            "Failed ledger inserts (retried; nothing is dropped).",
        )?;
        let ledger_unrecorded = prometheus::IntGauge::new(
            "deepseek_meter_ledger_unrecorded_calls",
            "Calls served without a record (journal at its cap with --on-journal-full=serve, or unwritable at shutdown).",
        )?;
        let journal_full_refusals = IntCounter::new(
            "deepseek_meter_journal_full_refusals_total",
            "Calls refused with 503 because the journal could not take their record.",
        )?;
        for m in [&ledger_pending, &journal_bytes, &ledger_unrecorded] {
            registry.register(Box::new(m.clone()))?;
        }
        registry.register(Box::new(cost.clone()))?;
        registry.register(Box::new(ledger_written.clone()))?;
        registry.register(Box::new(ledger_write_failures.clone()))?;
        registry.register(Box::new(journal_full_refusals.clone()))?;
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
            cost,
            ledger_pending,
            journal_bytes,
            ledger_written,
            ledger_write_failures,
            ledger_unrecorded,
            journal_full_refusals,
            parse_errors,
            forwarded_unmetered,
            usage_clamped,
        })
    }

    /// Counts one finished call. `model_label` is the bounded label (a price-book model or `other`).
    pub fn observe_call(
        &self,
        record: &CallRecord,
        model_label: &str,
        cost_by_class: Option<&[(&'static str, rust_decimal::Decimal); 4]>,
    ) {
        use rust_decimal::prelude::ToPrimitive;
        for (class, cost) in cost_by_class.into_iter().flatten() {
            if !cost.is_zero() {
                self.cost
                    .with_label_values(&[model_label, class])
                    .inc_by(cost.to_f64().unwrap_or(0.0));
            }
        }
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
