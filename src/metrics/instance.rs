//! What this process measures. Every update goes through a method here, called by the code that sees the
//! event: the meter step for calls, the proxy for refusals, the shipper for ledger writes, the admin
//! listener (at scrape time) for the journal's backlog.

use crate::journal::Backlog;
use crate::record::CallRecord;
use crate::usage::CallStatus;
use prometheus::{CounterVec, GaugeVec, HistogramVec, IntCounter, IntCounterVec, IntGauge};
use rust_decimal::Decimal;

metrics! {
    /// Per-process counters, histograms and gauges.
    pub struct InstanceMetrics {
        /// Metered calls by protocol, model and outcome.
        requests: IntCounterVec = "deepseek_meter_requests_total" ["protocol", "model", "status"],
        /// Tokens by class: input (uncached), cached_input, cache_creation_input, reasoning, answer (they add up).
        tokens: IntCounterVec = "deepseek_meter_tokens_total" ["model", "type"],
        /// Cost in CNY by token class (metrics only; the ledger is exact).
        cost: CounterVec = "deepseek_meter_cost_yuan_total" ["model", "type"],
        /// Call duration as the client saw it.
        duration: HistogramVec = "deepseek_meter_request_duration_seconds" ["protocol", "model"],
        /// Time to the first generated token.
        ttft: HistogramVec = "deepseek_meter_time_to_first_token_seconds" ["model"],
        /// Calls the upstream answered with an error (status upstream_error), by error code.
        upstream_errors: IntCounterVec = "deepseek_meter_upstream_errors_total" ["model", "code"],
        /// Calls to models without a price.
        unpriced: IntCounterVec = "deepseek_meter_unpriced_requests_total" ["model"],
        /// Calls to a model past its announced retirement (still priced).
        retired: IntCounterVec = "deepseek_meter_retired_model_requests_total" ["model"],
        /// Response events or bodies the usage tap could not read (the client still got them).
        parse_errors: IntCounter = "deepseek_meter_response_parse_errors_total" [],
        /// Forwarded calls to paths that are not metered (counted only).
        forwarded_unmetered: IntCounter = "deepseek_meter_forwarded_unmetered_total" [],
        /// Upstream usage objects with cached > input or reasoning > output (clamped).
        usage_clamped: IntCounter = "deepseek_meter_usage_inconsistent_total" [],
        /// Calls journaled and not yet in Postgres.
        ledger_pending: IntGauge = "deepseek_meter_ledger_pending_records" [],
        /// Bytes of journal segments on disk.
        journal_bytes: IntGauge = "deepseek_meter_journal_bytes" [],
        /// Rows inserted into the ledger.
        ledger_written: IntCounter = "deepseek_meter_ledger_written_total" [],
        /// Failed ledger inserts (retried; nothing is dropped).
        ledger_write_failures: IntCounter = "deepseek_meter_ledger_write_failures_total" [],
        /// Calls served without a record (journal at its cap with --on-journal-full=serve, or unwritable at shutdown).
        ledger_unrecorded: IntGauge = "deepseek_meter_ledger_unrecorded_calls" [],
        /// Calls refused with 503 because the journal could not take their record.
        journal_full_refusals: IntCounter = "deepseek_meter_journal_full_refusals_total" [],
        /// Closed hours' reports delivered, by target (`dir`, `webhook`).
        report_deliveries: IntCounterVec = "deepseek_meter_report_deliveries_total" ["target"],
        /// Failed report delivery attempts, by target (retried with backoff; never dropped).
        report_delivery_failures: IntCounterVec = "deepseek_meter_report_delivery_failures_total" ["target"],
        /// Report deliveries of this sidecar's destinations not made yet.
        report_deliveries_pending: IntGauge = "deepseek_meter_report_deliveries_pending" [],
        /// A budget's limit in its current window.
        budget_limit: GaugeVec = "deepseek_meter_budget_limit_yuan" ["budget"],
        /// Spent in a budget's current window: the ledger (every sidecar) and this sidecar's calls not yet in it.
        budget_spent: GaugeVec = "deepseek_meter_budget_spent_yuan" ["budget"],
        /// Worst-case costs of this sidecar's calls in flight, reserved against a `block` budget.
        budget_reserved: GaugeVec = "deepseek_meter_budget_reserved_yuan" ["budget"],
        /// When a budget's current window ends (it resets), Unix seconds.
        budget_window_end: GaugeVec = "deepseek_meter_budget_window_end_timestamp_seconds" ["budget"],
        /// Calls refused (429) by a `block` budget.
        budget_rejections: IntCounterVec = "deepseek_meter_budget_rejections_total" ["budget"],
        /// Calls served without a budget check while the budget's spent was unknown (database away, `open`).
        budget_unchecked: IntCounterVec = "deepseek_meter_budget_unchecked_calls_total" ["budget"],
        /// Calls to a model without a price a `block` budget served (`--budget-unpriced admit`), uncounted in spent.
        budget_unpriced_admitted: IntCounterVec = "deepseek_meter_budget_unpriced_admitted_total" ["budget"],
        /// Closed hours whose bill this sidecar's roller found different from their ledger (the close-time audit).
        bill_audit_mismatches: IntCounter = "deepseek_meter_bill_audit_mismatches_total" [],
        /// OpenTelemetry spans by outcome: `exported`, `failed` (the collector did not take them), `dropped` (the queue was full).
        otel_spans: IntCounterVec = "deepseek_meter_otel_spans_total" ["outcome"],
        /// Threshold alerts this sidecar raised (each crossing is raised by one sidecar, once).
        budget_alerts: IntCounterVec = "deepseek_meter_budget_alerts_total" ["budget"],
    }
}

impl InstanceMetrics {
    /// Counts `n` spans of the OpenTelemetry export by outcome.
    pub fn otel_spans(&self, outcome: &str, n: u64) {
        self.otel_spans.with_label_values(&[outcome]).inc_by(n);
    }

    /// Counts one finished call. `model_label` is the bounded label (a price-book model or `other`);
    /// `cost_by_class` is `None` for an unpriced call.
    pub fn observe_call(
        &self,
        record: &CallRecord,
        model_label: &str,
        cost_by_class: Option<&[(&'static str, Decimal); 5]>,
    ) {
        use rust_decimal::prelude::ToPrimitive;
        for (class, cost) in cost_by_class.into_iter().flatten() {
            if !cost.is_zero() {
                self.cost
                    .with_label_values(&[model_label, class])
                    .inc_by(cost.to_f64().unwrap_or(0.0));
            }
        }
        // A call is unpriced when there is something to price: a model it named, or tokens it used. A call
        // refused before its request was read (an oversized upload's 413) is neither.
        let t = record.tokens();
        let something_to_price =
            record.model != crate::record::UNKNOWN_MODEL || t.input + t.output > 0;
        if cost_by_class.is_none() && something_to_price {
            self.unpriced.with_label_values(&[model_label]).inc();
        }
        let protocol = record.protocol.as_str();
        self.requests
            .with_label_values(&[protocol, model_label, record.status.as_str()])
            .inc();
        for (class, n) in record.tokens().by_class() {
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
        // Only the upstream's own errors: our refusals (413, 503) and cut connections have codes too, but
        // they are not the upstream's, and a dashboard of upstream health must not count them.
        if record.status == CallStatus::UpstreamError {
            let code = record.error_code.as_deref().map_or("unknown", bounded_code);
            self.upstream_errors
                .with_label_values(&[model_label, code])
                .inc();
        }
    }

    /// Starts at 0 the series that alert on their first increase: unpriced calls (`other`) and calls to each
    /// model with an announced retirement. A series born at 1 would hide its first call from `increase()`.
    pub fn start_at_zero<'a>(&self, retiring: impl Iterator<Item = &'a str>) {
        self.unpriced.with_label_values(&["other"]);
        for model in retiring {
            self.retired.with_label_values(&[model]);
        }
    }

    pub fn retired_model_call(&self, model_label: &str) {
        self.retired.with_label_values(&[model_label]).inc();
    }

    /// What the tap could not read in one response.
    pub fn tap_trouble(&self, parse_errors: u64, usage_clamped: bool) {
        if parse_errors > 0 {
            self.parse_errors.inc_by(parse_errors);
        }
        if usage_clamped {
            self.usage_clamped.inc();
        }
    }

    pub fn forwarded_unmetered(&self) {
        self.forwarded_unmetered.inc();
    }

    pub fn journal_full_refusal(&self) {
        self.journal_full_refusals.inc();
    }

    pub fn ledger_rows_written(&self, rows: u64) {
        self.ledger_written.inc_by(rows);
    }

    pub fn ledger_write_failed(&self) {
        self.ledger_write_failures.inc();
    }

    pub fn report_delivered(&self, target: &str) {
        self.report_deliveries.with_label_values(&[target]).inc();
    }

    pub fn report_delivery_failed(&self, target: &str) {
        self.report_delivery_failures
            .with_label_values(&[target])
            .inc();
    }

    pub fn publish_deliveries_pending(&self, pending: i64) {
        self.report_deliveries_pending.set(pending);
    }

    pub fn budget_rejected(&self, budget: &str) {
        self.budget_rejections.with_label_values(&[budget]).inc();
    }

    pub fn budget_unchecked(&self, budget: &str) {
        self.budget_unchecked.with_label_values(&[budget]).inc();
    }

    pub fn budget_unpriced_admitted(&self, budget: &str) {
        self.budget_unpriced_admitted
            .with_label_values(&[budget])
            .inc();
    }

    pub fn bill_audit_mismatch(&self) {
        self.bill_audit_mismatches.inc();
    }

    pub fn budget_alert_raised(&self, budget: &str) {
        self.budget_alerts.with_label_values(&[budget]).inc();
    }

    /// One budget's gauges, as of a scrape.
    pub fn publish_budget(
        &self,
        budget: &str,
        limit: Decimal,
        spent: Decimal,
        reserved: Decimal,
        window_end: chrono::DateTime<chrono::Utc>,
    ) {
        use rust_decimal::prelude::ToPrimitive;
        let name = [budget];
        let f = |d: Decimal| d.to_f64().unwrap_or(0.0);
        self.budget_limit.with_label_values(&name).set(f(limit));
        self.budget_spent.with_label_values(&name).set(f(spent));
        self.budget_reserved
            .with_label_values(&name)
            .set(f(reserved));
        self.budget_window_end
            .with_label_values(&name)
            .set(window_end.timestamp() as f64);
    }

    /// The journal's gauges, as of a scrape.
    pub fn publish_backlog(&self, backlog: &Backlog) {
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.ledger_pending.set(as_i64(backlog.pending_records));
        self.journal_bytes.set(as_i64(backlog.bytes));
        self.ledger_unrecorded.set(as_i64(backlog.unrecorded_calls));
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
