//! The metering step that ends every call: finish time, billing hour, price, metrics, log line, record.
//!
//! Every metered call, answered by the upstream or refused by us, passes through [`Meter::finish`] exactly
//! once (the one exception: a call refused because the journal cannot take records, which is counted in
//! `deepseek_meter_journal_full_refusals_total` and never forwarded). It reads the
//! wall clock once (the call's `finished_at`), and from that one reading takes the billing hour (the clock
//! hour in the billing time zone) and the price entry in force, so the three always agree. The record is
//! built here, complete; nothing downstream changes it.

use crate::budget::tracker::Tracker;
use crate::clock::Clock;
use crate::metrics::InstanceMetrics;
use crate::otel::{Exporter, Trace};
use crate::pricing::{self, PriceBook};
use crate::record::{Billing, CallFacts, CallRecord, Recorder};
use crate::usage::{CallStatus, UsageSource};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use std::sync::Arc;

/// The call log line (target `deepseek_meter::call`) at a given level: one field list for both levels.
macro_rules! call_log {
    ($level:expr, $r:expr) => {
        tracing::event!(
            target: "deepseek_meter::call",
            $level,
            call_id = %$r.call_id,
            protocol = $r.protocol.as_str(),
            model = %$r.model,
            stream = $r.stream,
            status = $r.status.as_str(),
            http_status = $r.http_status,
            error_code = $r.error_code.as_deref(),
            upstream_request_id = $r.upstream_request_id.as_deref(),
            input_tokens = $r.input_tokens,
            cached_tokens = $r.cached_tokens,
            cache_creation_tokens = $r.cache_creation_tokens,
            output_tokens = $r.output_tokens,
            reasoning_tokens = $r.reasoning_tokens,
            answer_tokens = $r.answer_tokens,
            usage_source = $r.usage_source.as_str(),
            ttft_ms = $r.ttft_ms,
            duration_ms = $r.duration_ms,
            key_fingerprint = $r.key_fingerprint.as_deref(),
            project = $r.project.as_deref(),
            end_user = $r.end_user.as_deref(),
            cost_total = $r.cost_total.map(|c| c.to_string()),
            price_period = $r.price_period.as_deref(),
            "call"
        )
    };
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Meter {
    inner: Arc<Inner>,
}

struct Inner {
    prices: PriceBook,
    timezone: Tz,
    clock: Clock,
    metrics: InstanceMetrics,
    recorder: Arc<dyn Recorder>,
    /// Set once at startup when budgets are configured: every finished call settles its reservation here.
    budgets: std::sync::OnceLock<Arc<Tracker>>,
    /// Set once at startup with `--otlp-endpoint`: every finished call's span goes here.
    exporter: std::sync::OnceLock<Exporter>,
}

impl Meter {
    pub fn new(
        prices: PriceBook,
        timezone: Tz,
        clock: Clock,
        metrics: InstanceMetrics,
        recorder: Arc<dyn Recorder>,
    ) -> Meter {
        metrics.start_at_zero(prices.retiring());
        Meter {
            inner: Arc::new(Inner {
                prices,
                timezone,
                clock,
                metrics,
                recorder,
                budgets: std::sync::OnceLock::new(),
                exporter: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The budgets every call is admitted against and settled in (once, at startup).
    pub fn set_budgets(&self, tracker: Arc<Tracker>) {
        let _ = self.inner.budgets.set(tracker);
    }

    pub fn budgets(&self) -> Option<&Arc<Tracker>> {
        self.inner.budgets.get()
    }

    /// Where every finished call's span goes (once, at startup).
    pub fn set_exporter(&self, exporter: Exporter) {
        let _ = self.inner.exporter.set(exporter);
    }

    pub fn exporter(&self) -> Option<&Exporter> {
        self.inner.exporter.get()
    }

    /// Whether calls carry a trace context (spans are exported).
    pub fn exporting(&self) -> bool {
        self.inner.exporter.get().is_some()
    }

    /// The worst-case cost of a request (`None`: the model has no price).
    pub fn worst_case(&self, request: &crate::budget::limits::Request<'_>) -> Option<Decimal> {
        crate::budget::limits::worst_case_cost(&self.inner.prices, request, self.now())
    }

    /// Wall time as billing sees it (a call's start is read here too).
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// The billing hour that is open now.
    pub fn open_hour(&self) -> DateTime<Utc> {
        pricing::billing_hour(self.now(), self.inner.timezone)
    }

    /// The bounded metric label of a model: itself if the price book knows it, else `other`.
    /// The price book every call is priced with.
    pub fn prices(&self) -> &PriceBook {
        &self.inner.prices
    }

    pub fn model_label<'a>(&'a self, model: &str) -> &'a str {
        self.inner.prices.model_label(model)
    }

    /// Whether a new metered call may start (the recorder can take its record).
    pub fn accepting(&self) -> bool {
        self.inner.recorder.accepting()
    }

    /// Completes the call's record, counts it, logs it, hands its span to the exporter (with `trace`) and
    /// records it. Returns the strict-durability ack, if the recorder gives one.
    pub fn finish(
        &self,
        mut facts: CallFacts,
        trace: Option<Trace>,
    ) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let me = &self.inner;
        let label = me.prices.model_label(&facts.model);
        let response_model = facts.response_model.take();
        let finish_reasons = std::mem::take(&mut facts.finish_reasons);
        let (record, by_class) = self.complete(facts);
        if let (Some(exporter), Some(trace)) = (me.exporter.get(), trace) {
            exporter.export(&record, trace, response_model.as_deref(), &finish_reasons);
        }
        me.metrics.observe_call(&record, label, by_class.as_ref());
        if me.prices.retired(&record.model, record.finished_at) {
            me.metrics.retired_model_call(label);
        }
        if let Some(budgets) = me.budgets.get() {
            budgets.settle(
                record.call_id,
                &record.attribution(),
                record.billing_hour,
                record.cost_total,
                record.finished_at,
            );
        }
        // The ledger row is the durable record of every call; the log line is for people. Calls that went
        // wrong or cannot be billed exactly (unpriced, usage not reported) are logged at info; the rest at
        // debug, which costs nothing when off (enable with METER_LOG=info,deepseek_meter::call=debug).
        if record.status == CallStatus::Ok
            && record.priced
            && record.usage_source == UsageSource::Reported
        {
            call_log!(tracing::Level::DEBUG, record);
        } else {
            call_log!(tracing::Level::INFO, record);
        }
        me.recorder.record(record)
    }

    /// The record of `facts` finishing now, and its cost by token class (`None`: unpriced).
    fn complete(&self, mut facts: CallFacts) -> (CallRecord, Option<[(&'static str, Decimal); 5]>) {
        let me = &self.inner;
        // Priced exactly as stored: bounded counts (and a bounded cost: 2^40 tokens at the price book's
        // ceiling fit the decimal type).
        facts.tokens = facts.tokens.clamp().0;
        // A wall clock stepped back mid-call must not finish a call before it started.
        let finished_at = me.clock.now().max(facts.started_at);
        let price = me.prices.price_at(&facts.model, finished_at);
        let by_class = price.map(|p| p.cost_by_class(&facts.tokens));
        let sum = |classes: &[(&str, Decimal)]| {
            classes.iter().map(|(_, v)| *v).sum::<Decimal>().normalize()
        };
        let billing = Billing {
            finished_at,
            billing_hour: pricing::billing_hour(finished_at, me.timezone),
            price_version: price.map(|p| p.version().to_owned()),
            price_period: price.and_then(|p| p.period).map(str::to_owned),
            cost_total: by_class.as_ref().map(|c| sum(c)),
            cost_input: by_class.as_ref().map(|c| sum(&c[..3])),
        };
        (CallRecord::new(facts, billing), by_class)
    }
}
