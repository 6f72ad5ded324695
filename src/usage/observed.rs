//! What the tap keeps of a response while it streams past, whatever its protocol: ids, the usage so far,
//! errors, how it ended, and running text tallies for the estimator. Each protocol's reader
//! (`compat`, `responses`, `anthropic`) writes into one [`Observed`] through the methods here.

use super::estimate::Transcript;
use super::wire::{error_code_of, UsageRead, WireTokens, WireUsage};

#[derive(Debug, Default)]
pub(super) struct Observed {
    pub(super) request_id: Option<String>,
    pub(super) model: Option<String>,
    /// Every usage object seen, merged (newer fields win).
    pub(super) usage: Option<WireTokens>,
    /// A usage object arrived whose counts are not counts.
    pub(super) usage_unreadable: bool,
    pub(super) error_code: Option<String>,
    pub(super) errored: bool,
    /// The upstream itself said the response stopped short (Responses `incomplete`), and why.
    pub(super) incomplete: Option<String>,
    pub(super) inband_status: Option<u16>,
    /// The protocol's last event (or a whole body) arrived.
    pub(super) terminal: bool,
    pub(super) reasoning: Transcript,
    pub(super) answer: Transcript,
    pub(super) saw_token: bool,
    pub(super) parse_errors: u64,
    /// Why the response's choices ended, as the upstream wrote it (`stop`, `length`, `end_turn`, …), each once.
    pub(super) finish_reasons: Vec<String>,
}

impl Observed {
    pub(super) fn new() -> Observed {
        Observed {
            reasoning: Transcript::new(),
            answer: Transcript::new(),
            ..Observed::default()
        }
    }

    /// The response's id, the first non-empty one seen.
    pub(super) fn id(&mut self, id: Option<&str>) {
        if self.request_id.is_none() {
            self.request_id = id.filter(|s| !s.is_empty()).map(str::to_owned);
        }
    }

    /// The model the response named, the first seen.
    pub(super) fn model(&mut self, model: Option<&str>) {
        if self.model.is_none() {
            self.model = model.map(str::to_owned);
        }
    }

    /// A choice's reason for ending (at most 8 distinct reasons are kept: they are labels).
    pub(super) fn finish_reason(&mut self, reason: &str) {
        if !self.finish_reasons.iter().any(|r| r == reason) && self.finish_reasons.len() < 8 {
            self.finish_reasons.push(reason.to_owned());
        }
    }

    /// An error object (`{"code"|"type", "message"}`) from the upstream.
    pub(super) fn error(&mut self, error: &serde_json::Value) {
        self.errored = true;
        self.error_code = Some(error_code_of(error));
    }

    /// An error code given as a plain string.
    pub(super) fn error_code(&mut self, code: &str) {
        self.errored = true;
        self.error_code = Some(code.to_owned());
    }

    /// A usage object; returns whether it held readable counts.
    pub(super) fn usage(&mut self, usage: Option<&WireUsage>) -> bool {
        match usage.map(WireUsage::read) {
            Some(UsageRead::Read(u)) => {
                self.usage = Some(self.usage.unwrap_or_default().merge(u));
                true
            }
            Some(UsageRead::Unreadable) => {
                self.usage_unreadable = true;
                self.parse_errors += 1;
                false
            }
            Some(UsageRead::Absent) | None => false,
        }
    }

    /// Text of the chain of thought (`add`: a delta; otherwise the whole text so far).
    pub(super) fn reasoning_text(&mut self, text: &str, add: bool) {
        if text.is_empty() {
            return;
        }
        self.saw_token = true;
        if add {
            self.reasoning.add(text);
        } else {
            self.reasoning.replace(text);
        }
    }

    /// Text of the answer, tool calls included (`add`: a delta; otherwise the whole text so far).
    pub(super) fn answer_text(&mut self, text: &str, add: bool) {
        if text.is_empty() {
            return;
        }
        self.saw_token = true;
        if add {
            self.answer.add(text);
        } else {
            self.answer.replace(text);
        }
    }
}
