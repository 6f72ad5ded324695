//! The price book and the cost of a call. Pure: tokens and a finish time in, CNY out.
//!
//! Money is `rust_decimal::Decimal` end to end (stored as Postgres NUMERIC). Prices are CNY per million
//! tokens; the cost of a call is
//!
//! ```text
//! (uncached_input × input + cached × cached_input + reasoning × reasoning + answer × output) / 1_000_000
//! ```
//!
//! and is exact: dividing a decimal by 10^6 only moves its decimal point, so no rounding happens anywhere
//! in pricing. Sums of costs are therefore exactly the cost of summed tokens (property-tested).
//!
//! An entry applies from its `effective_from` date (midnight in the billing time zone) until the next entry
//! of the same model; a call is priced by the entry in effect when it finished, and its row stores that
//! entry's `price_version` (`model@date`). A model without an entry is *unpriced*: never billed as zero.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The default billing time zone: the platform bills by the hour in China Standard Time.
pub const DEFAULT_TIMEZONE: Tz = chrono_tz::Asia::Shanghai;

/// One price entry, per million tokens, in CNY.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Price {
    pub model: String,
    pub effective_from: NaiveDate,
    pub input: Decimal,
    pub cached_input: Decimal,
    pub output: Decimal,
    /// Price of chain-of-thought tokens; the platform bills them as output.
    pub reasoning: Decimal,
    #[serde(skip)]
    starts_at: DateTime<Utc>,
}

impl Price {
    /// `model@YYYY-MM-DD`, stored on each priced row.
    pub fn version(&self) -> String {
        format!("{}@{}", self.model, self.effective_from)
    }

    /// Cost of one call's tokens in CNY (exact).
    pub fn cost(&self, t: &crate::usage::Tokens) -> Decimal {
        self.cost_by_class(t).iter().map(|(_, c)| *c).sum()
    }

    /// Cost per token class, in the order and with the names of the `type` metric label.
    pub fn cost_by_class(&self, t: &crate::usage::Tokens) -> [(&'static str, Decimal); 4] {
        let million = Decimal::from(1_000_000u32);
        let of = |n: u64, price: Decimal| Decimal::from(n) * price / million;
        [
            ("input", of(t.uncached_input(), self.input)),
            ("cached_input", of(t.cached, self.cached_input)),
            ("reasoning", of(t.reasoning, self.reasoning)),
            ("answer", of(t.answer(), self.output)),
        ]
    }
}

/// The highest price a book may set, CNY per million tokens (a typo guard, and with
/// [`crate::usage::Tokens::MAX`] the bound that keeps every cost inside the exact decimal type).
pub const MAX_PRICE: u32 = 1_000_000;

/// Start of the clock hour, in `tz`, that contains `at`: the billing hour of a call that finished at `at`.
pub fn billing_hour(at: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
    use chrono::Timelike;
    let local = at.with_timezone(&tz);
    let start = local
        .date_naive()
        .and_hms_opt(local.hour(), 0, 0)
        .unwrap_or_default();
    tz.from_local_datetime(&start)
        .earliest()
        .map_or(at, |d| d.with_timezone(&Utc))
}

/// All price entries, by model, in effective-date order.
#[derive(Debug, Clone)]
pub struct PriceBook {
    by_model: BTreeMap<String, Vec<Price>>,
}

/// The price-book file format (TOML). Unknown fields are errors.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BookFile {
    #[serde(default)]
    currency: Option<String>,
    #[serde(default, rename = "model")]
    models: Vec<EntryFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFile {
    name: String,
    #[serde(deserialize_with = "date")]
    effective_from: NaiveDate,
    input: Decimal,
    #[serde(default)]
    cached_input: Option<Decimal>,
    output: Decimal,
    #[serde(default)]
    reasoning: Option<Decimal>,
}

/// `effective_from` as a TOML date (`2025-09-29`) or a string (`"2025-09-29"`).
fn date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<NaiveDate, D::Error> {
    let text = match toml::Value::deserialize(d)? {
        toml::Value::Datetime(dt) => dt.to_string(),
        toml::Value::String(s) => s,
        other => {
            return Err(serde::de::Error::custom(format!(
                "effective_from {other} is not a date"
            )))
        }
    };
    NaiveDate::parse_from_str(&text, "%Y-%m-%d").map_err(|_| {
        serde::de::Error::custom(format!(
            "effective_from {text:?} is not a date like 2025-09-29"
        ))
    })
}

#[derive(Debug, thiserror::Error)]
#[error("invalid price book{}: {problem}", entry.as_ref().map(|e| format!(" entry {e}")).unwrap_or_default())]
pub struct PriceBookError {
    pub entry: Option<String>,
    pub problem: String,
}

/// The built-in book: every DeepSeek model of the reference (§5), CNY per million tokens. Cached input is
/// billed at 20 % of input (Bailian implicit cache); only deepseek-v3.1 is documented as cache-capable, the
/// others simply never report cached tokens. Free models are priced at 0 and still count as priced.
pub const BUILTIN_BOOK: &str = r#"
currency = "CNY"

[[model]]
name = "deepseek-v3.2-exp"
effective_from = 2025-09-29
input = "2"
cached_input = "0.4"
output = "3"

[[model]]
name = "deepseek-v3.1"
effective_from = 2025-08-21
input = "4"
cached_input = "0.8"
output = "12"

[[model]]
name = "deepseek-r1"
effective_from = 2025-01-20
input = "4"
cached_input = "0.8"
output = "16"

[[model]]
name = "deepseek-r1-0528"
effective_from = 2025-05-28
input = "4"
cached_input = "0.8"
output = "16"

[[model]]
name = "deepseek-v3"
effective_from = 2024-12-26
input = "2"
cached_input = "0.4"
output = "8"

[[model]]
name = "deepseek-r1-distill-qwen-1.5b"
effective_from = 2025-01-20
input = "0"
output = "0"

[[model]]
name = "deepseek-r1-distill-qwen-7b"
effective_from = 2025-01-20
input = "0.5"
cached_input = "0.1"
output = "1"

[[model]]
name = "deepseek-r1-distill-qwen-14b"
effective_from = 2025-01-20
input = "1"
cached_input = "0.2"
output = "3"

[[model]]
name = "deepseek-r1-distill-qwen-32b"
effective_from = 2025-01-20
input = "2"
cached_input = "0.4"
output = "6"

[[model]]
name = "deepseek-r1-distill-llama-8b"
effective_from = 2025-01-20
input = "0"
output = "0"

[[model]]
name = "deepseek-r1-distill-llama-70b"
effective_from = 2025-01-20
input = "0"
output = "0"
"#;

impl PriceBook {
    pub fn builtin() -> PriceBook {
        // The built-in text is a constant checked by tests; failing here is a build defect, not input.
        #[allow(clippy::expect_used)]
        PriceBook::builtin_in(DEFAULT_TIMEZONE).expect("built-in price book is valid")
    }

    /// The built-in book with its dates read in `tz` (a date may not exist at midnight in some zones).
    pub fn builtin_in(tz: Tz) -> Result<PriceBook, PriceBookError> {
        PriceBook::parse(BUILTIN_BOOK, tz)
    }

    /// Parses and validates a book: no unknown fields, no negative price, no two entries of one model on
    /// one date, currency CNY.
    pub fn parse(text: &str, tz: Tz) -> Result<PriceBook, PriceBookError> {
        let file: BookFile = toml::from_str(text).map_err(|e| PriceBookError {
            entry: None,
            problem: e
                .message()
                .lines()
                .next()
                .unwrap_or("parse error")
                .to_owned(),
        })?;
        if let Some(c) = file.currency.as_deref().filter(|c| *c != "CNY") {
            return Err(PriceBookError {
                entry: None,
                problem: format!("currency {c:?}: only CNY is supported"),
            });
        }
        let mut by_model: BTreeMap<String, Vec<Price>> = BTreeMap::new();
        for e in file.models {
            let name = format!("{}@{}", e.name, e.effective_from);
            let fail = |problem: String| PriceBookError {
                entry: Some(name.clone()),
                problem,
            };
            if e.name.trim().is_empty() {
                return Err(fail("empty model name".into()));
            }
            let cached_input = e.cached_input.unwrap_or(e.input);
            let reasoning = e.reasoning.unwrap_or(e.output);
            for (field, v) in [
                ("input", e.input),
                ("cached_input", cached_input),
                ("output", e.output),
                ("reasoning", reasoning),
            ] {
                if v.is_sign_negative() && !v.is_zero() {
                    return Err(fail(format!("{field} price {v} is negative")));
                }
                if v > Decimal::from(MAX_PRICE) {
                    return Err(fail(format!(
                        "{field} price {v} is above {MAX_PRICE} CNY per million tokens"
                    )));
                }
            }
            let starts_at = tz
                .from_local_datetime(&e.effective_from.and_time(chrono::NaiveTime::MIN))
                .earliest()
                .ok_or_else(|| {
                    fail("effective_from does not exist in the billing time zone".into())
                })?
                .with_timezone(&Utc);
            let entries = by_model.entry(e.name.clone()).or_default();
            if entries.iter().any(|p| p.effective_from == e.effective_from) {
                return Err(fail(
                    "two entries for the same model and effective_from date overlap".into(),
                ));
            }
            entries.push(Price {
                model: e.name,
                effective_from: e.effective_from,
                input: e.input.normalize(),
                cached_input: cached_input.normalize(),
                output: e.output.normalize(),
                reasoning: reasoning.normalize(),
                starts_at,
            });
        }
        for entries in by_model.values_mut() {
            entries.sort_by_key(|p| p.effective_from);
        }
        Ok(PriceBook { by_model })
    }

    /// The entry in effect for `model` at `at`, if any.
    pub fn price_at(&self, model: &str, at: DateTime<Utc>) -> Option<&Price> {
        self.by_model
            .get(model)?
            .iter()
            .rev()
            .find(|p| p.starts_at <= at)
    }

    /// Whether the book knows the model at all (it is then a bounded metric label).
    pub fn knows(&self, model: &str) -> bool {
        self.by_model.contains_key(model)
    }

    /// The metric label for a model: itself if the book knows it, else `other`.
    pub fn model_label<'a>(&'a self, model: &str) -> &'a str {
        self.by_model
            .get_key_value(model)
            .map(|(k, _)| k.as_str())
            .unwrap_or("other")
    }

    /// The book as a table, for `deepseek-meter prices`.
    pub fn render_table(&self) -> String {
        let mut out = format!(
            "{:<32} {:<10} {:>8} {:>8} {:>8} {:>9}  (CNY per 1M tokens)\n",
            "model", "from", "input", "cached", "output", "reasoning"
        );
        for p in self.entries() {
            out.push_str(&format!(
                "{:<32} {:<10} {:>8} {:>8} {:>8} {:>9}\n",
                p.model, p.effective_from, p.input, p.cached_input, p.output, p.reasoning
            ));
        }
        out
    }

    /// Every entry, by model then date.
    pub fn entries(&self) -> impl Iterator<Item = &Price> {
        self.by_model.values().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::Tokens;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn mission_example_costs_0_000428() {
        let book = PriceBook::builtin();
        let p = book
            .price_at("deepseek-v3.2-exp", at("2025-11-25T05:00:00Z"))
            .unwrap();
        let t = Tokens {
            input: 4,
            cached: 0,
            output: 140,
            reasoning: 79,
        };
        assert_eq!(p.cost(&t), Decimal::from_str("0.000428").unwrap());
        assert_eq!(p.version(), "deepseek-v3.2-exp@2025-09-29");
    }

    #[test]
    fn billing_hour_is_the_clock_hour_in_the_billing_zone() {
        // 13:59:59.999 UTC is 21:59:59 in Shanghai: the hour starting 21:00 local = 13:00Z.
        let h = billing_hour(at("2026-11-25T13:59:59.999Z"), DEFAULT_TIMEZONE);
        assert_eq!(h, at("2026-11-25T13:00:00Z"));
        // A zone with a half-hour offset: 13:20Z is 18:50 in Kolkata → hour from 18:00 local = 12:30Z.
        let h = billing_hour(at("2026-11-25T13:20:00Z"), chrono_tz::Asia::Kolkata);
        assert_eq!(h, at("2026-11-25T12:30:00Z"));
    }

    #[test]
    fn cached_tokens_use_the_cached_price() {
        let book = PriceBook::builtin();
        let p = book
            .price_at("deepseek-v3.1", at("2025-11-25T05:00:00Z"))
            .unwrap();
        // 3019 input of which 2048 cached, 104 output, no reasoning:
        // 971×4 + 2048×0.8 + 104×12 = 3884 + 1638.4 + 1248 = 6770.4 → 0.0067704
        let t = Tokens {
            input: 3019,
            cached: 2048,
            output: 104,
            reasoning: 0,
        };
        assert_eq!(p.cost(&t), Decimal::from_str("0.0067704").unwrap());
    }

    #[test]
    fn effective_dates_pick_the_entry_in_force_in_the_billing_zone() {
        let text = r#"
[[model]]
name = "m"
effective_from = 2025-01-01
input = 1
output = 2
[[model]]
name = "m"
effective_from = 2025-06-01
input = "1.5"
output = 3
reasoning = 4
"#;
        let book = PriceBook::parse(text, DEFAULT_TIMEZONE).unwrap();
        // 2025-05-31T16:00Z is midnight June 1st in Shanghai.
        assert_eq!(
            book.price_at("m", at("2025-05-31T15:59:59Z"))
                .unwrap()
                .version(),
            "m@2025-01-01"
        );
        assert_eq!(
            book.price_at("m", at("2025-05-31T16:00:00Z"))
                .unwrap()
                .version(),
            "m@2025-06-01"
        );
        assert!(book.price_at("m", at("2024-12-31T00:00:00Z")).is_none());
        assert!(book.price_at("nope", at("2025-06-01T00:00:00Z")).is_none());
        assert_eq!(book.model_label("nope"), "other");
        let p = book.price_at("m", at("2025-07-01T00:00:00Z")).unwrap();
        assert_eq!(p.reasoning, Decimal::from(4));
        assert_eq!(p.cached_input, Decimal::from_str("1.5").unwrap());
    }

    #[test]
    fn invalid_books_name_the_entry() {
        let neg =
            "[[model]]\nname = \"m\"\neffective_from = 2025-01-01\ninput = \"-1\"\noutput = 1\n";
        let e = PriceBook::parse(neg, DEFAULT_TIMEZONE)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "invalid price book entry m@2025-01-01: input price -1 is negative"
        );
        let huge =
            "[[model]]\nname = \"m\"\neffective_from = 2025-01-01\ninput = 1\noutput = \"1000000.01\"\n";
        let e = PriceBook::parse(huge, DEFAULT_TIMEZONE)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "invalid price book entry m@2025-01-01: output price 1000000.01 is above 1000000 CNY per million tokens"
        );
        let unknown = "[[model]]\nname = \"m\"\neffective_from = 2025-01-01\ninput = 1\noutput = 1\nfoo = 1\n";
        let e = PriceBook::parse(unknown, DEFAULT_TIMEZONE)
            .unwrap_err()
            .to_string();
        assert!(e.contains("foo"), "{e}");
        let dup = "[[model]]\nname = \"m\"\neffective_from = 2025-01-01\ninput = 1\noutput = 1\n\
                   [[model]]\nname = \"m\"\neffective_from = 2025-01-01\ninput = 2\noutput = 2\n";
        let e = PriceBook::parse(dup, DEFAULT_TIMEZONE)
            .unwrap_err()
            .to_string();
        assert!(e.contains("m@2025-01-01") && e.contains("overlap"), "{e}");
        let usd = "currency = \"USD\"\n";
        assert!(PriceBook::parse(usd, DEFAULT_TIMEZONE).is_err());
    }

    #[test]
    fn builtin_book_covers_every_reference_model() {
        let book = PriceBook::builtin();
        for m in [
            "deepseek-v3.2-exp",
            "deepseek-v3.1",
            "deepseek-r1",
            "deepseek-r1-0528",
            "deepseek-v3",
            "deepseek-r1-distill-qwen-1.5b",
            "deepseek-r1-distill-qwen-7b",
            "deepseek-r1-distill-qwen-14b",
            "deepseek-r1-distill-qwen-32b",
            "deepseek-r1-distill-llama-8b",
            "deepseek-r1-distill-llama-70b",
        ] {
            assert!(
                book.price_at(m, at("2025-11-25T00:00:00Z")).is_some(),
                "{m}"
            );
        }
    }

    fn tokens() -> impl Strategy<Value = Tokens> {
        (
            0u64..10_000_000,
            0u64..10_000_000,
            0u64..10_000_000,
            0u64..10_000_000,
        )
            .prop_map(|(i, c, o, r)| Tokens::clamped(i, c, o, r).0)
    }

    proptest! {
        #[test]
        fn cost_of_a_sum_is_the_sum_of_costs(a in tokens(), b in tokens(), model in 0usize..11) {
            let book = PriceBook::builtin();
            let p = book.entries().nth(model).unwrap();
            let sum = Tokens {
                input: a.input + b.input,
                cached: a.cached + b.cached,
                output: a.output + b.output,
                reasoning: a.reasoning + b.reasoning,
            };
            prop_assert_eq!(p.cost(&a) + p.cost(&b), p.cost(&sum));
            prop_assert!(!p.cost(&a).is_sign_negative() || p.cost(&a).is_zero());
        }
    }
}
