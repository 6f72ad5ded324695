//! Pure parsing of the four protocols DeepSeek answers on (OpenAI chat, DashScope native, OpenAI Responses,
//! Anthropic Messages): what a call asked for, and what its response says it used.
//!
//! Nothing here does I/O or reads a clock; the proxy feeds bytes in and gets values out. That is what lets
//! the parsers be property-tested (any split of a stream gives the same result) and fuzzed.
//!
//! - [`inspect_request`] reads the request body once: model, stream flag, whether the client asked for
//!   usage, and (OpenAI-compatible streams only) the rewritten body that asks for it on the client's behalf.
//! - [`tap::ResponseTap`] follows a response as it streams past and yields a [`UsageReport`].
//! - [`estimate`] holds the estimator for calls whose usage never arrived.
//!
//! Metering rules (DESIGN §4): `output_tokens` includes reasoning; `answer = output − reasoning`;
//! `cached + cache_creation ⊆ input` (`input` counts every input token of the call, whatever the protocol's own
//! convention). These invariants hold for every [`Tokens`] this module produces.

mod anthropic;
mod compat;
pub mod decode;
pub mod estimate;
mod observed;
mod request;
mod responses;
pub mod sse;
pub mod tap;
pub mod tokenizer;
mod wire;

pub use request::{estimate_prompt_tokens, inspect_request, InspectedRequest, RequestInfo};

pub use tap::{CallStatus, ResponseTap, TapSignal};

/// Which wire protocol a call used. Stored as `protocol` in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `/compatible-mode/v1/chat/completions`
    #[serde(rename = "openai")]
    OpenAi,
    /// `/api/v1/services/aigc/text-generation/generation`
    #[serde(rename = "dashscope")]
    DashScope,
    /// `/compatible-mode/v1/responses` (the OpenAI Responses API)
    #[serde(rename = "responses")]
    Responses,
    /// `/apps/anthropic/v1/messages` (the Anthropic Messages API)
    #[serde(rename = "anthropic")]
    Anthropic,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [
        Protocol::OpenAi,
        Protocol::DashScope,
        Protocol::Responses,
        Protocol::Anthropic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::OpenAi => "openai",
            Protocol::DashScope => "dashscope",
            Protocol::Responses => "responses",
            Protocol::Anthropic => "anthropic",
        }
    }
}

/// Where a record's token counts came from. Stored as `usage_source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageSource {
    /// The upstream's own usage object (for a cut native stream: its last cumulative usage).
    Reported,
    /// Estimated from the request and the text that streamed (see [`estimate`]).
    Estimated,
    /// No usage and nothing to estimate from (e.g. a 401).
    None,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::Reported => "reported",
            UsageSource::Estimated => "estimated",
            UsageSource::None => "none",
        }
    }
}

/// The token counts of one call. `input` is every input token; `cached` (cache reads) and `cache_creation`
/// (explicit cache writes) are disjoint parts of it; `reasoning` is part of `output`. Invariants:
/// `cached + cache_creation <= input`, `reasoning <= output`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Tokens {
    pub input: u64,
    pub cached: u64,
    pub cache_creation: u64,
    pub output: u64,
    pub reasoning: u64,
}

impl Tokens {
    /// Largest count a call can carry: 2^40, about 10^12 — millions of times any context window, and small
    /// enough that every count fits the ledger's `bigint` and every cost the exact decimal type.
    pub const MAX: u64 = 1 << 40;

    /// These counts bounded: each at [`Tokens::MAX`], the subsets by their totals (cache reads first, then
    /// cache writes in what is left of the input). Returns whether anything had to be bounded (an upstream
    /// inconsistency worth counting, never worth failing a call over).
    pub fn clamp(self) -> (Tokens, bool) {
        let bound = |v: u64| v.min(Tokens::MAX);
        let (input, output) = (bound(self.input), bound(self.output));
        let cached = self.cached.min(input);
        let t = Tokens {
            input,
            cached,
            cache_creation: self.cache_creation.min(input - cached),
            output,
            reasoning: self.reasoning.min(output),
        };
        let clamped = t != self;
        (t, clamped)
    }

    pub fn answer(&self) -> u64 {
        self.output - self.reasoning
    }

    /// Input tokens neither read from nor written to the cache.
    pub fn uncached_input(&self) -> u64 {
        self.input - self.cached - self.cache_creation
    }

    /// The five classes, in the order and with the names of the metrics' `type` label; they add up to every
    /// token of the call.
    pub fn by_class(&self) -> [(&'static str, u64); 5] {
        [
            ("input", self.uncached_input()),
            ("cached_input", self.cached),
            ("cache_creation_input", self.cache_creation),
            ("reasoning", self.reasoning),
            ("answer", self.answer()),
        ]
    }
}

/// SHA-256 fingerprint (first 12 hex chars) and display hint (`sk-…` + last 4) of the key in an
/// `Authorization: Bearer` value. The key itself never leaves this function.
pub fn key_identity(authorization: &str) -> Option<(String, String)> {
    let key = authorization
        .strip_prefix("Bearer ")
        .or_else(|| authorization.strip_prefix("bearer "))?;
    key_identity_of(key)
}

/// Fingerprint and hint of a bare key (the Anthropic API's `x-api-key` value).
pub fn key_identity_of(key: &str) -> Option<(String, String)> {
    use sha2::Digest;
    let key = key.trim();
    if key.is_empty() {
        return None;
    }
    let digest = sha2::Sha256::digest(key.as_bytes());
    let fingerprint = hex::encode(&digest[..6]);
    let last4: String = key
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Some((fingerprint, format!("sk-…{last4}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_fingerprint_is_sha256_prefix_and_hint_last_four() {
        let (fp, hint) = key_identity("Bearer sk-abcdef1234").unwrap();
        // sha256("sk-abcdef1234")
        use sha2::Digest;
        let full = hex::encode(sha2::Sha256::digest(b"sk-abcdef1234"));
        assert_eq!(fp, full[..12]);
        assert_eq!(hint, "sk-…1234");
        assert!(key_identity("Basic xyz").is_none());
        assert!(key_identity("Bearer ").is_none());
        assert_eq!(key_identity_of(" sk-abcdef1234 "), Some((fp, hint)));
        assert!(key_identity_of("  ").is_none());
    }
}
