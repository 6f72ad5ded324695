//! The price book and the cost of a call. Pure: tokens and a finish time in, CNY out.
//!
//! Money is `rust_decimal::Decimal` end to end (stored as Postgres NUMERIC). Prices are CNY per million
//! tokens; the cost of a call is
//!
//! ```text
//! (uncached_input × input + cached × cached_input + cache_creation × cache_write
//!    + reasoning × reasoning + answer × output) / 1_000_000
//! ```
//!
//! and is exact: dividing a decimal by 10^6 only moves its decimal point, so no rounding happens anywhere
//! in pricing. Sums of costs are therefore exactly the cost of summed tokens (property-tested).
//!
//! An entry applies from its `effective_from` date (midnight in the billing time zone) until the next entry
//! of the same model; a call is priced by the entry in effect when it finished, and its row stores that
//! entry's `price_version` (`model@date`). An entry may have time-of-day periods instead of one set of rates
//! (Bailian's peak 08:00–22:00 and off-peak): periods begin and end on whole hours of the billing time zone,
//! so each billing hour has exactly one, and a call is priced by the period of the hour it finished in (its
//! billing hour); its row stores the period's name (`price_period`) beside the version. A model without an
//! entry is *unpriced*: never billed as zero.
//!
//! The book itself — the file format, the built-in entries (`builtin.toml`), how a `--prices` file adds to
//! or overrides them — is [`book`].

pub mod book;

pub use book::{PriceBookError, BUILTIN_BOOK};

use crate::usage::Tokens;
use chrono::{DateTime, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;

/// The default billing time zone: the platform bills by the hour in China Standard Time.
pub const DEFAULT_TIMEZONE: Tz = chrono_tz::Asia::Shanghai;

/// The highest price a book may set, CNY per million tokens (a typo guard, and with
/// [`crate::usage::Tokens::MAX`] the bound that keeps every cost inside the exact decimal type).
pub const MAX_PRICE: u32 = 1_000_000;

/// The rates of one price, per million tokens, in CNY.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rates {
    /// Input neither read from nor written to the cache.
    pub input: Decimal,
    /// Cache reads.
    pub cached_input: Decimal,
    /// Explicit cache writes (cache creation).
    pub cache_write: Decimal,
    pub output: Decimal,
    /// Chain-of-thought tokens; the platform bills them as output.
    pub reasoning: Decimal,
}

impl Rates {
    /// Cost per token class, in the order and with the names of [`Tokens::by_class`] (the metrics' `type`).
    pub fn cost_by_class(&self, t: &Tokens) -> [(&'static str, Decimal); 5] {
        let million = Decimal::from(1_000_000u32);
        let rates = [
            self.input,
            self.cached_input,
            self.cache_write,
            self.reasoning,
            self.output,
        ];
        let classes = t.by_class();
        std::array::from_fn(|i| {
            let (class, n) = classes[i];
            (class, Decimal::from(n) * rates[i] / million)
        })
    }

    /// The money of the input classes (uncached, cache reads, cache writes): what the platform's bill shows as
    /// `input_token`.
    pub fn input_cost(&self, t: &Tokens) -> Decimal {
        self.cost_by_class(t)[..3].iter().map(|(_, c)| *c).sum()
    }
}

/// A time-of-day period of an entry: its rates apply to the billing hours `from..to` (local hours of the
/// billing time zone; `to` may wrap past midnight).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Period {
    pub name: String,
    pub from: u32,
    pub to: u32,
    pub rates: Rates,
}

impl Period {
    pub fn covers(&self, hour: u32) -> bool {
        if self.from < self.to {
            (self.from..self.to).contains(&hour)
        } else {
            hour >= self.from || hour < self.to
        }
    }
}

/// How an entry prices: one set of rates all day, or by time-of-day periods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Schedule {
    Flat(Rates),
    Periods(Vec<Period>),
}

/// One entry of the book: a model's prices from a date on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub model: String,
    pub effective_from: NaiveDate,
    pub schedule: Schedule,
    /// The announced retirement of the model (calls after it are still priced, and counted).
    pub retires: Option<NaiveDate>,
    /// Where the figures come from.
    pub source: Option<String>,
    /// Fields that are the book's assumptions rather than published figures.
    pub assumed: Vec<String>,
    pub note: Option<String>,
    /// `model@YYYY-MM-DD`, made once (every priced call stores it).
    #[serde(skip)]
    version: String,
    #[serde(skip)]
    starts_at: DateTime<Utc>,
    #[serde(skip)]
    retires_at: Option<DateTime<Utc>>,
}

impl Entry {
    /// `model@YYYY-MM-DD`, stored on each priced row.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The price of a call that finished at local hour `hour` of the billing time zone.
    pub fn at_hour(&self, hour: u32) -> Option<Price<'_>> {
        let (period, rates) = match &self.schedule {
            Schedule::Flat(r) => (None, r),
            Schedule::Periods(ps) => {
                let p = ps.iter().find(|p| p.covers(hour))?;
                (Some(p.name.as_str()), &p.rates)
            }
        };
        Some(Price {
            entry: self,
            period,
            rates,
        })
    }

    /// Every price of the entry: the flat one, or one per period.
    pub fn prices(&self) -> Vec<Price<'_>> {
        match &self.schedule {
            Schedule::Flat(rates) => vec![Price {
                entry: self,
                period: None,
                rates,
            }],
            Schedule::Periods(ps) => ps
                .iter()
                .map(|p| Price {
                    entry: self,
                    period: Some(&p.name),
                    rates: &p.rates,
                })
                .collect(),
        }
    }

    pub fn is_assumed(&self, field: &str) -> bool {
        self.assumed.iter().any(|a| a == field)
    }
}

/// The price of one call: an entry, and the period whose rates apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price<'a> {
    pub entry: &'a Entry,
    /// `None` for a flat entry.
    pub period: Option<&'a str>,
    pub rates: &'a Rates,
}

impl Price<'_> {
    /// `model@YYYY-MM-DD`, stored on each priced row.
    pub fn version(&self) -> &str {
        self.entry.version()
    }

    /// Cost of one call's tokens in CNY (exact).
    pub fn cost(&self, t: &Tokens) -> Decimal {
        self.cost_by_class(t).iter().map(|(_, c)| *c).sum()
    }

    pub fn cost_by_class(&self, t: &Tokens) -> [(&'static str, Decimal); 5] {
        self.rates.cost_by_class(t)
    }
}

/// Start of the clock hour, in `tz`, that contains `at`: the billing hour of a call that finished at `at`.
pub fn billing_hour(at: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
    let local = at.with_timezone(&tz);
    let start = local
        .date_naive()
        .and_hms_opt(local.hour(), 0, 0)
        .unwrap_or_default();
    tz.from_local_datetime(&start)
        .earliest()
        .map_or(at, |d| d.with_timezone(&Utc))
}

/// All price entries, by model, in effective-date order, read in one billing time zone.
#[derive(Debug, Clone)]
pub struct PriceBook {
    by_model: BTreeMap<String, Vec<Entry>>,
    timezone: Tz,
}

impl PriceBook {
    /// The entry in effect for `model` at `at`, if any.
    pub fn entry_at(&self, model: &str, at: DateTime<Utc>) -> Option<&Entry> {
        self.by_model
            .get(model)?
            .iter()
            .rev()
            .find(|e| e.starts_at <= at)
    }

    /// The price of a call to `model` that finished at `at` (its entry, and its billing hour's period).
    pub fn price_at(&self, model: &str, at: DateTime<Utc>) -> Option<Price<'_>> {
        let hour = at.with_timezone(&self.timezone).hour();
        self.entry_at(model, at)?.at_hour(hour)
    }

    /// The price a row was priced with, by its stored version and period (`None`: not in this book).
    pub fn price_of(&self, version: &str, period: Option<&str>) -> Option<Price<'_>> {
        let (model, _) = version.rsplit_once('@')?;
        let entry = self
            .by_model
            .get(model)?
            .iter()
            .find(|e| e.version() == version)?;
        entry.prices().into_iter().find(|p| p.period == period)
    }

    /// Whether a call to `model` at `at` is past the model's announced retirement (as its newest entry says:
    /// a later entry without `retires` lifts it).
    pub fn retired(&self, model: &str, at: DateTime<Utc>) -> bool {
        self.by_model
            .get(model)
            .and_then(|es| es.last())
            .and_then(|e| e.retires_at)
            .is_some_and(|r| r <= at)
    }

    /// The models with an announced retirement (their metric series start at 0, so the first call after it
    /// shows as an increase).
    pub fn retiring(&self) -> impl Iterator<Item = &str> {
        self.by_model
            .iter()
            .filter(|(_, es)| es.last().is_some_and(|e| e.retires.is_some()))
            .map(|(m, _)| m.as_str())
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

    /// Every entry, by model then date.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.by_model.values().flatten()
    }

    /// The models of the book, in order.
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.by_model.keys().map(String::as_str)
    }

    pub fn timezone(&self) -> Tz {
        self.timezone
    }
}

#[cfg(test)]
mod tests;
