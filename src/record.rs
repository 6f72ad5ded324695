//! The call record: one per call that reached the proxy, handed to a [`Recorder`].
//!
//! The proxy measures a call into [`CallFacts`] when it ends; the meter step (`crate::meter`) completes
//! them, once, into a [`CallRecord`] with its finish time, billing hour and price. The record is the unit
//! the journal and the ledger store. It never contains the API key or message content: only `key_fingerprint` (first 12 hex
//! chars of SHA-256 of the key) and `key_hint` (`sk-…` + last 4).

use crate::usage::{CallStatus, Protocol, Tokens, UsageSource};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use uuid::Uuid;

/// The model of a call whose request named none (or could not be read).
pub const UNKNOWN_MODEL: &str = "unknown";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    pub call_id: Uuid,
    pub upstream_request_id: Option<String>,
    pub protocol: Protocol,
    /// The model the request named (else the one the response echoed, else `unknown`).
    pub model: String,
    pub stream: bool,
    pub status: CallStatus,
    pub http_status: Option<u16>,
    pub error_code: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Start of the clock hour, in the billing time zone, in which the call finished.
    pub billing_hour: DateTime<Utc>,
    /// Time from receiving the request to the first generated token reaching the client.
    pub ttft_ms: Option<f64>,
    pub duration_ms: f64,
    /// Every input token of the call, whatever the protocol's own convention.
    pub input_tokens: u64,
    /// Cache reads (part of `input_tokens`).
    pub cached_tokens: u64,
    /// Explicit cache writes (part of `input_tokens`, apart from `cached_tokens`).
    #[serde(default)]
    pub cache_creation_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    pub answer_tokens: u64,
    pub usage_source: UsageSource,
    /// The upstream reported the output but not its reasoning share, which was estimated from the texts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reasoning_estimated: bool,
    /// The model had a price when the call finished. Unpriced rows have no cost (never a zero cost).
    pub priced: bool,
    /// `model@effective_from` of the price entry used.
    pub price_version: Option<String>,
    /// The time-of-day period of the price (`peak`, `off-peak`; `None`: the entry has one price all day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_period: Option<String>,
    /// CNY, exact.
    pub cost_total: Option<Decimal>,
    /// The part of `cost_total` that is input money (uncached, cache reads, cache writes): the platform's bill
    /// shows input and output apart. `None` for unpriced calls (and for records of builds before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_input: Option<Decimal>,
    pub key_fingerprint: Option<String>,
    pub key_hint: Option<String>,
    pub project: Option<String>,
    pub end_user: Option<String>,
    /// The workspace the call ran in (`X-DashScope-WorkSpace`; `None`: the default workspace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// The console's ID of the key (`[[api_key]]` `key_id`), when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_id: Option<String>,
}

/// What the proxy measured of one call: everything but the wall-clock finish and the money, which the meter
/// step adds.
#[derive(Debug, Clone, PartialEq)]
pub struct CallFacts {
    pub call_id: Uuid,
    pub upstream_request_id: Option<String>,
    pub protocol: Protocol,
    pub model: String,
    /// The model the response named, if it named one (`gen_ai.response.model` of the call's span).
    pub response_model: Option<String>,
    /// Why the response ended, as the upstream said (`gen_ai.response.finish_reasons` of the call's span).
    pub finish_reasons: Vec<String>,
    pub stream: bool,
    pub status: CallStatus,
    pub http_status: Option<u16>,
    pub error_code: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ttft_ms: Option<f64>,
    pub duration_ms: f64,
    pub tokens: Tokens,
    pub usage_source: UsageSource,
    pub reasoning_estimated: bool,
    pub key_fingerprint: Option<String>,
    pub key_hint: Option<String>,
    pub project: Option<String>,
    pub end_user: Option<String>,
    pub workspace: Option<String>,
    pub api_key_id: Option<String>,
}

/// What the meter step adds to the facts: when the call finished, and what it costs.
#[derive(Debug, Clone, PartialEq)]
pub struct Billing {
    pub finished_at: DateTime<Utc>,
    pub billing_hour: DateTime<Utc>,
    /// `None`: the model had no price when the call finished.
    pub price_version: Option<String>,
    pub price_period: Option<String>,
    pub cost_total: Option<Decimal>,
    pub cost_input: Option<Decimal>,
}

impl CallRecord {
    /// The complete record. Whatever the facts say, the record satisfies the ledger's checks: counts are
    /// bounded ([`Tokens::clamp`]), `answer = output − reasoning`, and an HTTP status outside 100–599 (a
    /// broken in-band status) is not stored.
    pub fn new(facts: CallFacts, billing: Billing) -> CallRecord {
        let (t, _) = facts.tokens.clamp();
        CallRecord {
            call_id: facts.call_id,
            upstream_request_id: facts.upstream_request_id,
            protocol: facts.protocol,
            model: facts.model,
            stream: facts.stream,
            status: facts.status,
            http_status: facts.http_status.filter(|s| (100..=599).contains(s)),
            error_code: facts.error_code,
            started_at: facts.started_at,
            finished_at: billing.finished_at,
            billing_hour: billing.billing_hour,
            ttft_ms: facts.ttft_ms,
            duration_ms: facts.duration_ms,
            input_tokens: t.input,
            cached_tokens: t.cached,
            cache_creation_tokens: t.cache_creation,
            output_tokens: t.output,
            reasoning_tokens: t.reasoning,
            answer_tokens: t.answer(),
            usage_source: facts.usage_source,
            reasoning_estimated: facts.reasoning_estimated,
            priced: billing.price_version.is_some(),
            price_version: billing.price_version,
            price_period: billing.price_period,
            cost_total: billing.cost_total,
            cost_input: billing.cost_input,
            key_fingerprint: facts.key_fingerprint,
            key_hint: facts.key_hint,
            project: facts.project,
            end_user: facts.end_user,
            workspace: facts.workspace,
            api_key_id: facts.api_key_id,
        }
    }

    /// What the call is attributed to, as budgets see it.
    pub fn attribution(&self) -> Attribution<'_> {
        Attribution {
            project: self.project.as_deref(),
            model: &self.model,
            key_fingerprint: self.key_fingerprint.as_deref(),
            end_user: self.end_user.as_deref(),
        }
    }

    pub fn tokens(&self) -> Tokens {
        Tokens {
            input: self.input_tokens,
            cached: self.cached_tokens,
            cache_creation: self.cache_creation_tokens,
            output: self.output_tokens,
            reasoning: self.reasoning_tokens,
        }
    }
}

/// Where finished calls go. Called once per call, on the task that finished it: it must not block.
pub trait Recorder: Send + Sync + 'static {
    /// Takes the record. In strict durability the receiver fires once the record is on disk; the proxy
    /// then holds the call's last byte until it does.
    fn record(&self, record: CallRecord) -> Option<tokio::sync::oneshot::Receiver<()>>;

    /// Whether new calls may start (a full journal in `refuse` mode says no).
    fn accepting(&self) -> bool {
        true
    }
}

/// Keeps records in memory: tests, and embedding the app without a ledger.
#[derive(Debug, Default, Clone)]
pub struct MemoryRecorder {
    inner: Arc<(Mutex<Vec<CallRecord>>, Notify)>,
}

impl MemoryRecorder {
    pub fn records(&self) -> Vec<CallRecord> {
        self.inner.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Waits until at least `n` records exist and returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<CallRecord> {
        loop {
            let notified = self.inner.1.notified();
            let records = self.records();
            if records.len() >= n {
                return records;
            }
            notified.await;
        }
    }

    /// Waits for the record of one call.
    pub async fn wait_for_call(&self, call_id: Uuid) -> CallRecord {
        loop {
            let notified = self.inner.1.notified();
            if let Some(r) = self.records().into_iter().find(|r| r.call_id == call_id) {
                return r;
            }
            notified.await;
        }
    }
}

impl Recorder for MemoryRecorder {
    fn record(&self, record: CallRecord) -> Option<tokio::sync::oneshot::Receiver<()>> {
        if let Ok(mut v) = self.inner.0.lock() {
            v.push(record);
        }
        self.inner.1.notify_waiters();
        None
    }
}

/// What a call is attributed to: the four columns a budget's scope can name.
#[derive(Debug, Clone, Copy)]
pub struct Attribution<'a> {
    pub project: Option<&'a str>,
    pub model: &'a str,
    pub key_fingerprint: Option<&'a str>,
    pub end_user: Option<&'a str>,
}
