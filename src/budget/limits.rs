//! A call's worst-case cost, reserved against `block` budgets before it is forwarded. Pure.
//!
//! - **Input**: the request body's length in bytes, at most the model's maximum input. Every token of DeepSeek's
//!   byte-level BPE covers at least one byte of the request's text, and the JSON around the text and the chat
//!   template's few special tokens per message are smaller than the JSON keys they come with, so this never
//!   undercounts. The tokenizer would be tighter (about 4× on chat JSON) but costs ~100 µs of CPU per call
//!   (`bench/estimator`), and the input is the cheap part of a worst case. For a model with the explicit
//!   context cache, priced at the dearer of the input and cache-write prices: any of it may be a cache write.
//! - **Output**: the client's limit (`max_tokens`, `max_output_tokens`, …; at most the model's), plus — when the
//!   model thinks — its maximum chain of thought; without a limit from the client, the model's maximum. For the
//!   V4 models the limit bounds reasoning and reply together (reference `bailian-2026.md` §3: up to 393,216).
//!   Priced at the dearer of the reasoning and output prices where the call thinks.
//! - The model's facts come from [`crate::models`]; the prices from the book's entry in force now (and its
//!   period). A model without a price reserves nothing here: whether such a call may pass a budget is the
//!   budget's decision, not a zero cost.

use crate::models::facts;
use crate::pricing::PriceBook;
use crate::usage::Tokens;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

/// What a request may cost at most, by what it says.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub model: &'a str,
    pub body_bytes: usize,
    pub max_output_tokens: Option<u64>,
    pub enable_thinking: Option<bool>,
}

/// The worst-case tokens of `r`: all input uncached, and every output token reasoning where the call may think
/// (the cost takes the dearer split, see [`worst_case_cost`]).
pub fn worst_case_tokens(r: &Request<'_>) -> Tokens {
    let f = facts(r.model);
    let input = (r.body_bytes as u64).min(f.max_input);
    let thinks = f.thinking.thinks(r.enable_thinking);
    let limit = r
        .max_output_tokens
        .map_or(f.max_answer, |m| m.min(f.max_answer));
    let (reasoning, answer) = match (thinks, f.output_cap_includes_reasoning) {
        (false, _) => (0, limit),
        (true, true) => (limit, 0),
        (true, false) => (f.max_reasoning, limit),
    };
    Tokens {
        input,
        output: reasoning + answer,
        reasoning,
        ..Tokens::default()
    }
}

/// The worst-case cost of `r` in CNY at `at`, at the dearest period of the entry in force (a call that starts
/// off-peak may end at peak); `None` for a model without a price.
pub fn worst_case_cost(book: &PriceBook, r: &Request<'_>, at: DateTime<Utc>) -> Option<Decimal> {
    book.price_at(r.model, at)?;
    let entry = book.entry_at(r.model, at)?;
    entry.prices().iter().map(|p| worst_at(p, r)).max()
}

/// The worst case of `r` at one price.
fn worst_at(price: &crate::pricing::Price<'_>, r: &Request<'_>) -> Decimal {
    let t = worst_case_tokens(r);
    // The same tokens in their dearest classes: input as cache writes or not, output that may be reasoning
    // as reasoning or as answer.
    let (rates, f) = (price.rates, facts(r.model));
    let cache_creation = if f.explicit_cache && rates.cache_write > rates.input {
        t.input
    } else {
        0
    };
    let reasoning = if rates.reasoning >= rates.output || !f.output_cap_includes_reasoning {
        t.reasoning
    } else {
        0
    };
    price.cost(&Tokens {
        cache_creation,
        reasoning,
        ..t
    })
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
    fn v4_output_limits_cover_reasoning_and_reply_together() {
        let t = worst_case_tokens(&req("deepseek-v4-pro", None, None));
        assert_eq!(
            (t.reasoning, t.output),
            (393_216, 393_216),
            "thinks by default"
        );
        let t = worst_case_tokens(&req("deepseek-v4-pro", Some(1000), None));
        assert_eq!((t.reasoning, t.output), (1000, 1000));
        let t = worst_case_tokens(&req("deepseek-v4-flash", Some(1000), Some(false)));
        assert_eq!((t.reasoning, t.output), (0, 1000));
        let t = worst_case_tokens(&req("vanchin/deepseek-v4-pro", Some(10_000_000), None));
        assert_eq!(t.output, 393_216, "capped at the model's maximum");
    }

    #[test]
    fn the_input_may_all_be_a_cache_write() {
        let book = PriceBook::builtin();
        let at: DateTime<Utc> = "2026-11-25T05:00:00Z".parse().unwrap();
        // deepseek-v4-pro: 200 bytes at the write price 15 (above input 12), 100 output at 24:
        // 200 × 15 + 100 × 24 = 5,400 per million.
        assert_eq!(
            worst_case_cost(&book, &req("deepseek-v4-pro", Some(100), None), at),
            Some("0.0054".parse().unwrap())
        );
    }

    #[test]
    fn a_call_starting_off_peak_reserves_at_the_peak_price() {
        let book = PriceBook::builtin();
        // 07:59 Beijing, off-peak; the call may end at peak: 200 × 3 + 100 × 9 = 1,500 per million.
        let at: DateTime<Utc> = "2026-11-24T23:59:00Z".parse().unwrap();
        assert_eq!(
            worst_case_cost(
                &book,
                &req("deepseek-v4-flash-0731", Some(100), Some(false)),
                at
            ),
            Some("0.0015".parse().unwrap())
        );
    }

    #[test]
    fn the_cost_uses_the_price_in_force() {
        let book = PriceBook::builtin();
        let at: DateTime<Utc> = "2026-11-25T05:00:00Z".parse().unwrap();
        // deepseek-v3: 2 CNY/M input, 8 CNY/M output: 200 × 2 + 8192 × 8 = 65,936 per million (no explicit
        // cache: its input is never a cache write).
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

/// The README's table of worst cases is this function's output (`the_readmes_table_of_worst_cases`).
#[cfg(test)]
mod readme {
    use super::*;

    fn group(n: u64) -> String {
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    }

    /// One row: the model, its limits, and the worst case of a 500-byte request without and with
    /// `max_tokens: 1024` (thinking off / on where the request chooses), at the built-in prices of 2026-12-04
    /// at 10:00 Beijing (peak where a model has periods).
    fn row(model: &str) -> String {
        let book = PriceBook::builtin();
        let at: DateTime<Utc> = "2026-12-04T02:00:00Z".parse().unwrap();
        let f = facts(model);
        let cost = |max: Option<u64>, thinking: Option<bool>| {
            let r = Request {
                model,
                body_bytes: 500,
                max_output_tokens: max,
                enable_thinking: thinking,
            };
            worst_case_cost(&book, &r, at)
                .unwrap()
                .normalize()
                .to_string()
        };
        // Where the request chooses whether the model thinks and it changes the worst case: off / on.
        let chooses = matches!(
            f.thinking,
            crate::models::Thinking::DefaultOn | crate::models::Thinking::DefaultOff
        ) && cost(None, Some(false)) != cost(None, Some(true));
        let both = |max: Option<u64>| {
            if chooses {
                format!("{} / {}", cost(max, Some(false)), cost(max, Some(true)))
            } else {
                cost(max, None)
            }
        };
        let name = if chooses {
            format!("{model} (thinking off / on)")
        } else {
            model.to_owned()
        };
        let cot = if f.output_cap_includes_reasoning {
            "in the reply".to_owned()
        } else if matches!(f.thinking, crate::models::Thinking::Never) {
            "–".to_owned()
        } else {
            group(f.max_reasoning)
        };
        format!(
            "  | {name} | {} / {cot} / {} | {} | {} |",
            group(f.max_input),
            group(f.max_answer),
            both(None),
            both(Some(1024))
        )
    }

    #[test]
    fn the_readmes_table_of_worst_cases() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let rows: Vec<String> = [
            "deepseek-v4-pro",
            "deepseek-v4-flash",
            "deepseek-v3.2-exp",
            "deepseek-r1",
            "deepseek-v3",
        ]
        .iter()
        .map(|m| row(m))
        .collect();
        // The table's rows, exactly: no row missing, none stale.
        let table: Vec<&str> = readme
            .lines()
            .skip_while(|l| !l.starts_with("  | model | max input / CoT / reply |"))
            .skip(2)
            .take_while(|l| l.starts_with("  | "))
            .collect();
        assert_eq!(table, rows, "README rows to be:\n{}", rows.join("\n"));
    }
}
