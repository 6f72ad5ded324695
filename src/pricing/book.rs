//! The price book's file format (TOML), the built-in book, and how a `--prices` file adds to it.
//!
//! ```toml
//! currency = "CNY"                      # the only currency
//! default_cached_input_ratio = "0.2"    # cache reads, as a share of input, where an entry gives none
//! default_cache_write_ratio = "1.25"    # cache writes, likewise
//! replace_builtin = false               # true: this file is the whole book
//!
//! [[model]]
//! name = "deepseek-v4-pro"
//! effective_from = 2026-01-01           # midnight in the billing time zone
//! input = "12"                          # CNY per million tokens
//! output = "24"
//! cached_input = "2.4"                  # optional (default: input × the ratio, else input)
//! cache_write = "15"                    # optional (likewise)
//! reasoning = "24"                      # optional (default: output)
//! retires = 2026-10-10                  # optional: the announced retirement
//! source = "…"                          # optional: where the figures come from
//! assumed = ["cache_write"]             # optional: which fields are assumptions
//! note = "…"                            # optional
//!
//! [[model]]                             # time-of-day prices: periods instead of input/output
//! name = "deepseek-v4-flash-0731"
//! effective_from = 2026-08-17
//! [[model.period]]
//! name = "peak"
//! hours = "08-22"                       # local hours of the billing time zone, `from-to`, may wrap
//! input = "3"
//! output = "9"
//! [[model.period]]
//! name = "off-peak"
//! hours = "22-08"
//! input = "1.5"
//! output = "4.5"
//! ```
//!
//! A file given with `--prices` is read over the built-in book: an entry with the same model and date
//! replaces the built-in one, any other is added (a new model, or a new date of a known one), and the file's
//! defaults apply to its own entries (the built-in ratios when it sets none). With `replace_builtin = true`
//! the file is the whole book. Unknown fields, negative or absurd prices, two entries of one model on one
//! date, and periods that do not cover the day exactly once are errors naming the entry.

use super::{Entry, Period, PriceBook, Rates, Schedule, MAX_PRICE};
use chrono::{NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The built-in book: every DeepSeek model of the reference, with its sources and assumptions.
pub const BUILTIN_BOOK: &str = include_str!("builtin.toml");

/// Fields an entry may list in `assumed`.
const FIELDS: [&str; 8] = [
    "effective_from",
    "input",
    "cached_input",
    "cache_write",
    "output",
    "reasoning",
    "periods",
    "retires",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BookFile {
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    default_cached_input_ratio: Option<Decimal>,
    #[serde(default)]
    default_cache_write_ratio: Option<Decimal>,
    #[serde(default)]
    replace_builtin: bool,
    #[serde(default, rename = "model")]
    models: Vec<EntryFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFile {
    name: String,
    #[serde(deserialize_with = "date")]
    effective_from: NaiveDate,
    #[serde(default)]
    input: Option<Decimal>,
    #[serde(default)]
    cached_input: Option<Decimal>,
    #[serde(default)]
    cache_write: Option<Decimal>,
    #[serde(default)]
    output: Option<Decimal>,
    #[serde(default)]
    reasoning: Option<Decimal>,
    #[serde(default, rename = "period")]
    periods: Vec<PeriodFile>,
    #[serde(default, deserialize_with = "optional_date")]
    retires: Option<NaiveDate>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    assumed: Vec<String>,
    #[serde(default)]
    note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeriodFile {
    name: String,
    hours: String,
    #[serde(default)]
    input: Option<Decimal>,
    #[serde(default)]
    cached_input: Option<Decimal>,
    #[serde(default)]
    cache_write: Option<Decimal>,
    #[serde(default)]
    output: Option<Decimal>,
    #[serde(default)]
    reasoning: Option<Decimal>,
}

/// The five rates as a file gives them (entry or period; absent: a default applies, or an error).
struct RatesFile {
    input: Option<Decimal>,
    cached_input: Option<Decimal>,
    cache_write: Option<Decimal>,
    output: Option<Decimal>,
    reasoning: Option<Decimal>,
}

/// The rates fields of an entry or a period (the two file types share them; `serde(flatten)` would lose
/// `deny_unknown_fields`).
macro_rules! rates_file {
    ($x:expr) => {
        RatesFile {
            input: $x.input,
            cached_input: $x.cached_input,
            cache_write: $x.cache_write,
            output: $x.output,
            reasoning: $x.reasoning,
        }
    };
}

/// `effective_from` as a TOML date (`2025-09-29`) or a string (`"2025-09-29"`).
fn date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<NaiveDate, D::Error> {
    let text = match toml::Value::deserialize(d)? {
        toml::Value::Datetime(dt) => dt.to_string(),
        toml::Value::String(s) => s,
        other => {
            return Err(serde::de::Error::custom(format!(
                "date {other} is not a date"
            )))
        }
    };
    NaiveDate::parse_from_str(&text, "%Y-%m-%d").map_err(|_| {
        serde::de::Error::custom(format!("date {text:?} is not a date like 2025-09-29"))
    })
}

fn optional_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<NaiveDate>, D::Error> {
    date(d).map(Some)
}

#[derive(Debug, thiserror::Error)]
#[error("invalid price book{}: {problem}", entry.as_ref().map(|e| format!(" entry {e}")).unwrap_or_default())]
pub struct PriceBookError {
    pub entry: Option<String>,
    pub problem: String,
}

/// The ratios that fill in cache prices an entry leaves out.
#[derive(Debug, Clone, Copy, Default)]
struct Defaults {
    cached_input: Option<Decimal>,
    cache_write: Option<Decimal>,
}

impl PriceBook {
    pub fn builtin() -> PriceBook {
        // The built-in text is a constant checked by tests; failing here is a build defect, not input.
        #[allow(clippy::expect_used)]
        PriceBook::builtin_in(super::DEFAULT_TIMEZONE).expect("built-in price book is valid")
    }

    /// The built-in book with its dates read in `tz` (a date may not exist at midnight in some zones).
    pub fn builtin_in(tz: Tz) -> Result<PriceBook, PriceBookError> {
        PriceBook::parse(BUILTIN_BOOK, tz)
    }

    /// A book file on its own (no built-in entries), validated.
    pub fn parse(text: &str, tz: Tz) -> Result<PriceBook, PriceBookError> {
        let file = read(text)?;
        let defaults = Defaults {
            cached_input: file.default_cached_input_ratio,
            cache_write: file.default_cache_write_ratio,
        };
        let mut book = PriceBook {
            by_model: BTreeMap::new(),
            timezone: tz,
        };
        book.add(file.models, defaults)?;
        Ok(book)
    }

    /// A `--prices` file over the built-in book (see the module doc), validated.
    pub fn with_file(text: &str, tz: Tz) -> Result<PriceBook, PriceBookError> {
        let file = read(text)?;
        if file.replace_builtin {
            return PriceBook::parse(text, tz);
        }
        let builtin = read(BUILTIN_BOOK)?;
        let defaults = Defaults {
            cached_input: file
                .default_cached_input_ratio
                .or(builtin.default_cached_input_ratio),
            cache_write: file
                .default_cache_write_ratio
                .or(builtin.default_cache_write_ratio),
        };
        let mut book = PriceBook::builtin_in(tz)?;
        book.add(file.models, defaults)?;
        Ok(book)
    }

    /// Adds a file's entries: an entry of the same model and date as one already there replaces it.
    fn add(&mut self, files: Vec<EntryFile>, defaults: Defaults) -> Result<(), PriceBookError> {
        let mut seen = std::collections::HashSet::new();
        for e in files {
            let name = format!("{}@{}", e.name, e.effective_from);
            if !seen.insert(name.clone()) {
                return Err(PriceBookError {
                    entry: Some(name),
                    problem: "two entries for the same model and effective_from date overlap"
                        .into(),
                });
            }
            let entry = entry(e, defaults, self.timezone).map_err(|problem| PriceBookError {
                entry: Some(name),
                problem,
            })?;
            let entries = self.by_model.entry(entry.model.clone()).or_default();
            // Only a later file can meet an entry of its model and date (one file's are distinct).
            match entries
                .iter_mut()
                .find(|x| x.effective_from == entry.effective_from)
            {
                Some(existing) => *existing = entry,
                None => entries.push(entry),
            }
        }
        for entries in self.by_model.values_mut() {
            entries.sort_by_key(|e| e.effective_from);
        }
        Ok(())
    }

    /// The book as a table, for `deepseek-meter prices`: one line per price (an entry with periods has one per
    /// period), assumptions marked `*`, then each entry's source and note.
    pub fn render_table(&self) -> String {
        let mut out = format!(
            "{:<34} {:<10} {:<9} {:>8} {:>8} {:>8} {:>8} {:>9} {:<10}  (CNY per 1M tokens)\n",
            "model",
            "from",
            "period",
            "input",
            "cached",
            "c.write",
            "output",
            "reasoning",
            "retires"
        );
        for e in self.entries() {
            let mark = |field: &str, v: &Decimal| {
                format!("{v}{}", if e.is_assumed(field) { "*" } else { "" })
            };
            for p in e.prices() {
                let r = p.rates;
                let line = format!(
                    "{:<34} {:<11} {:<9} {:>8} {:>8} {:>8} {:>8} {:>9} {:<10}",
                    e.model,
                    format!(
                        "{}{}",
                        e.effective_from,
                        if e.is_assumed("effective_from") {
                            "*"
                        } else {
                            ""
                        }
                    ),
                    p.period.unwrap_or("all day"),
                    mark("input", &r.input),
                    mark("cached_input", &r.cached_input),
                    mark("cache_write", &r.cache_write),
                    mark("output", &r.output),
                    mark("reasoning", &r.reasoning),
                    e.retires.map(|d| d.to_string()).unwrap_or_default(),
                );
                out.push_str(line.trim_end());
                out.push('\n');
            }
        }
        out.push_str(
            "\n* an assumption, not a published figure: override it with a --prices file\n\n",
        );
        for e in self.entries() {
            let source = e.source.as_deref().unwrap_or("--prices file");
            out.push_str(&format!("{}: {source}", e.version()));
            if let Some(note) = &e.note {
                out.push_str(&format!("; {note}"));
            }
            out.push('\n');
        }
        out
    }
}

fn read(text: &str) -> Result<BookFile, PriceBookError> {
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
    for (name, ratio) in [
        (
            "default_cached_input_ratio",
            file.default_cached_input_ratio,
        ),
        ("default_cache_write_ratio", file.default_cache_write_ratio),
    ] {
        if let Some(r) = ratio.filter(|r| r.is_sign_negative() || *r > Decimal::from(100)) {
            return Err(PriceBookError {
                entry: None,
                problem: format!("{name} {r} is not a ratio between 0 and 100"),
            });
        }
    }
    Ok(file)
}

/// One entry of a file, validated, with its defaults filled in.
fn entry(e: EntryFile, defaults: Defaults, tz: Tz) -> Result<Entry, String> {
    if e.name.trim().is_empty() {
        return Err("empty model name".into());
    }
    if let Some(unknown) = e.assumed.iter().find(|a| !FIELDS.contains(&a.as_str())) {
        return Err(format!(
            "assumed names {unknown:?}, which is not one of {}",
            FIELDS.join(", ")
        ));
    }
    let schedule = if e.periods.is_empty() {
        Schedule::Flat(rates(&rates_file!(e), defaults, "")?)
    } else {
        let r = rates_file!(e);
        if [
            r.input,
            r.cached_input,
            r.cache_write,
            r.output,
            r.reasoning,
        ]
        .iter()
        .any(Option::is_some)
        {
            return Err("give prices either on the entry or in its periods, not both".into());
        }
        Schedule::Periods(periods(&e.periods, defaults)?)
    };
    let midnight = |d: NaiveDate, what: &str| {
        tz.from_local_datetime(&d.and_time(chrono::NaiveTime::MIN))
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(|| format!("{what} does not exist in the billing time zone"))
    };
    Ok(Entry {
        starts_at: midnight(e.effective_from, "effective_from")?,
        retires_at: e.retires.map(|d| midnight(d, "retires")).transpose()?,
        version: format!("{}@{}", e.name, e.effective_from),
        model: e.name,
        effective_from: e.effective_from,
        schedule,
        retires: e.retires,
        source: e.source,
        assumed: e.assumed,
        note: e.note,
    })
}

/// The rates of an entry or a period (`what`: `""`, or ` period NAME` for the error), defaults filled in.
fn rates(r: &RatesFile, defaults: Defaults, what: &str) -> Result<Rates, String> {
    let (Some(input), Some(output)) = (r.input, r.output) else {
        return Err(format!("missing input or output price{what}"));
    };
    let share = |ratio: Option<Decimal>| ratio.map_or(input, |k| input * k);
    let rates = Rates {
        input,
        cached_input: r
            .cached_input
            .unwrap_or_else(|| share(defaults.cached_input)),
        cache_write: r.cache_write.unwrap_or_else(|| share(defaults.cache_write)),
        output,
        reasoning: r.reasoning.unwrap_or(output),
    };
    for (field, v) in [
        ("input", rates.input),
        ("cached_input", rates.cached_input),
        ("cache_write", rates.cache_write),
        ("output", rates.output),
        ("reasoning", rates.reasoning),
    ] {
        if v.is_sign_negative() && !v.is_zero() {
            return Err(format!("{field} price {v} is negative{what}"));
        }
        if v > Decimal::from(MAX_PRICE) {
            return Err(format!(
                "{field} price {v} is above {MAX_PRICE} CNY per million tokens{what}"
            ));
        }
    }
    Ok(Rates {
        input: rates.input.normalize(),
        cached_input: rates.cached_input.normalize(),
        cache_write: rates.cache_write.normalize(),
        output: rates.output.normalize(),
        reasoning: rates.reasoning.normalize(),
    })
}

/// An entry's periods: named, on whole hours, covering every hour of the day exactly once.
fn periods(files: &[PeriodFile], defaults: Defaults) -> Result<Vec<Period>, String> {
    let mut out: Vec<Period> = Vec::with_capacity(files.len());
    for p in files {
        let what = format!(" (period {:?})", p.name);
        if p.name.trim().is_empty() {
            return Err("a period without a name".into());
        }
        if out.iter().any(|o| o.name == p.name) {
            return Err(format!("two periods named {:?}", p.name));
        }
        let (from, to) = hours(&p.hours)
            .ok_or_else(|| format!("hours {:?} is not like \"08-22\"{what}", p.hours))?;
        out.push(Period {
            name: p.name.clone(),
            from,
            to,
            rates: rates(&rates_file!(p), defaults, &what)?,
        });
    }
    for hour in 0..24 {
        let covering: Vec<&str> = out
            .iter()
            .filter(|p| p.covers(hour))
            .map(|p| p.name.as_str())
            .collect();
        match covering.len() {
            1 => {}
            0 => return Err(format!("no period covers {hour:02}:00")),
            _ => return Err(format!("periods {covering:?} overlap at {hour:02}:00")),
        }
    }
    Ok(out)
}

/// `"08-22"` → (8, 22): whole hours, from 0–23, to 1–24 (or earlier than `from`: past midnight).
fn hours(text: &str) -> Option<(u32, u32)> {
    let (a, b) = text.split_once('-')?;
    let (from, to) = (a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?);
    (from < 24 && to <= 24 && from != to % 24).then_some((from, to % 24))
}
