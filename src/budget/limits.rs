//! A call's worst-case cost, reserved against `block` budgets before it is forwarded. Pure.
//!
//! - **Input**: the request body's length in bytes, at most the model's maximum input. Every token of DeepSeek's
//!   byte-level BPE covers at least one byte of the request's text, and the JSON around the text and the chat
//!   template's few special tokens per message are smaller than the JSON keys they come with, so this never
//!   undercounts. The tokenizer would be tighter (about 4× on chat JSON) but costs ~100 µs of CPU per call
//!   (`bench/estimator`), and the input is the cheap part of a worst case.
//! - **Output**: the client's `max_tokens` / `max_completion_tokens` (at most the model's maximum reply), plus —
//!   when the model thinks — its maximum chain of thought; without a limit from the client, the maximum reply
//!   (the platform's table: `reference/dashscope-protocol.md` §1.1, `000_17201332f88782c4.txt`).
//! - Priced by the price book's entry in force now: reasoning at its reasoning price, the reply at the output
//!   price. A model without a price reserves nothing (its calls are unpriced: they add nothing to spent).

use crate::pricing::PriceBook;
use crate::usage::Tokens;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

/// A model's limits in tokens, from the platform's model table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelLimits {
    pub max_input: u64,
    /// Largest chain of thought; 0 for a model that never thinks.
    pub max_reasoning: u64,
    pub max_answer: u64,
    /// Whether it thinks without `enable_thinking` (r1 and the distills always; v3.2-exp and v3.1 only when
    /// asked; v3 never).
    pub thinks_by_default: bool,
}

/// The platform's limits for `model`; a model outside the table gets the largest of every limit.
pub fn limits(model: &str) -> ModelLimits {
    let hybrid = ModelLimits {
        max_input: 98_304,
        max_reasoning: 32_768,
        max_answer: 65_536,
        thinks_by_default: false,
    };
    match model {
        "deepseek-v3.2-exp" | "deepseek-v3.1" => hybrid,
        "deepseek-r1" | "deepseek-r1-0528" => ModelLimits {
            max_answer: 16_384,
            thinks_by_default: true,
            ..hybrid
        },
        "deepseek-v3" => ModelLimits {
            max_input: 57_344,
            max_reasoning: 0,
            max_answer: 8_192,
            thinks_by_default: false,
        },
        m if m.starts_with("deepseek-r1-distill-") => ModelLimits {
            max_input: 32_768,
            max_reasoning: 16_384,
            max_answer: 16_384,
            thinks_by_default: true,
        },
        _ => ModelLimits {
            max_input: 131_072,
            max_reasoning: 32_768,
            max_answer: 65_536,
            thinks_by_default: true,
        },
    }
}

/// What a request may cost at most, by what it says.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub model: &'a str,
    pub body_bytes: usize,
    pub max_output_tokens: Option<u64>,
    pub enable_thinking: Option<bool>,
}

/// The worst-case tokens of `r` (input uncached, every output token at its dearest class).
pub fn worst_case_tokens(r: &Request<'_>) -> Tokens {
    let l = limits(r.model);
    let input = (r.body_bytes as u64).min(l.max_input);
    let answer = r
        .max_output_tokens
        .map_or(l.max_answer, |m| m.min(l.max_answer));
    let thinks = r.enable_thinking.unwrap_or(l.thinks_by_default) || l.thinks_by_default;
    let reasoning = if thinks { l.max_reasoning } else { 0 };
    Tokens {
        input,
        cached: 0,
        output: answer + reasoning,
        reasoning,
    }
}

/// The worst-case cost of `r` in CNY at `at`; `None` for a model without a price.
pub fn worst_case_cost(book: &PriceBook, r: &Request<'_>, at: DateTime<Utc>) -> Option<Decimal> {
    let price = book.price_at(r.model, at)?;
    Some(price.cost(&worst_case_tokens(r)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(model: &str, max: Option<u64>, thinking: Option<bool>) -> Request<'_> {
        Request {
            model,
            body_bytes: 200,
            max_output_tokens: max,
            enable_thinking: thinking,
        }
    }

    #[test]
    fn worst_cases_follow_the_platforms_table() {
        let t = worst_case_tokens(&req("deepseek-r1", None, None));
        assert_eq!(
            (t.input, t.reasoning, t.output),
            (200, 32_768, 32_768 + 16_384)
        );
        let t = worst_case_tokens(&req("deepseek-r1", Some(100), Some(false)));
        assert_eq!(
            (t.reasoning, t.output),
            (32_768, 32_768 + 100),
            "r1 always thinks"
        );
        let t = worst_case_tokens(&req("deepseek-v3.2-exp", Some(1000), None));
        assert_eq!((t.reasoning, t.output), (0, 1000));
        let t = worst_case_tokens(&req("deepseek-v3.2-exp", None, Some(true)));
        assert_eq!((t.reasoning, t.output), (32_768, 32_768 + 65_536));
        let t = worst_case_tokens(&req("deepseek-v3", Some(1_000_000), Some(true)));
        assert_eq!(
            (t.reasoning, t.output),
            (0, 8_192),
            "capped at the model's reply"
        );
        let big = Request {
            body_bytes: 10_000_000,
            ..req("deepseek-v3", None, None)
        };
        assert_eq!(worst_case_tokens(&big).input, 57_344);
    }

    #[test]
    fn the_cost_uses_the_price_in_force() {
        let book = PriceBook::builtin();
        let at: DateTime<Utc> = "2026-11-25T05:00:00Z".parse().unwrap();
        // deepseek-v3: 2 CNY/M input, 8 CNY/M output: 200 × 2 + 8192 × 8 = 65,936 per million.
        assert_eq!(
            worst_case_cost(&book, &req("deepseek-v3", None, None), at),
            Some("0.065936".parse().unwrap())
        );
        assert_eq!(
            worst_case_cost(&book, &req("mystery", None, None), at),
            None
        );
    }
}
