//! The hourly cost report: what a report asks for ([`ReportQuery`]), what it holds ([`Report`]), and its
//! four renderings (JSON, CSV, table, and — in [`super::html`] — a self-contained HTML page). Pure: the rows
//! come from `super::read` (SQL), and every door (`deepseek-meter report`, `GET /v1/bill/hourly`, the files
//! and webhook of `super::delivery`) renders them through `super::format`, so the formats cannot drift apart.
//!
//! Invariants the property test holds us to: every rendering of a report carries the same rows and the same
//! total; the total is the exact sum of the rows (money in `Decimal`, never a float); money is written at full
//! precision as a decimal string; periods are written in the billing time zone with its offset.

use crate::calendar::{local, money, parse_instant, start_of, Granularity};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde_json::{json, Map, Value};
use std::fmt::Write as _;

/// A grouping column (`--by model,project,key,period`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Group {
    Model,
    Project,
    Key,
    /// The time-of-day period of the price (`peak`, `off-peak`; empty for a price that has none).
    Period,
}

impl Group {
    /// The column's name in every format (and in `hourly_bill`).
    pub fn column(self) -> &'static str {
        match self {
            Group::Model => "model",
            Group::Project => "project",
            Group::Key => "key_fingerprint",
            Group::Period => "price_period",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Csv,
    Json,
    Html,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Table => "text/plain; charset=utf-8",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Json => "application/json",
            Format::Html => "text/html; charset=utf-8",
        }
    }
}

/// A billing hour's state (DESIGN §5), ordered from least to most final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HourState {
    Open,
    Provisional,
    Closed,
}

impl HourState {
    pub fn as_str(self) -> &'static str {
        match self {
            HourState::Open => "open",
            HourState::Provisional => "provisional",
            HourState::Closed => "closed",
        }
    }

    /// From `super::read`'s rank (0 open, 1 provisional, 2 closed).
    pub fn from_rank(rank: i32) -> HourState {
        match rank {
            0 => HourState::Open,
            1 => HourState::Provisional,
            _ => HourState::Closed,
        }
    }
}

/// What a report covers: the billing hours that start in `[from, to)`, bucketed by `granularity` in
/// `timezone`, grouped by `by` (in this order, without repeats).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportQuery {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub by: Vec<Group>,
    pub granularity: Granularity,
    pub timezone: Tz,
}

/// A query that cannot be run, said in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(pub String);

impl ReportQuery {
    /// From the texts of `--from`, `--to`, `--by`, `--granularity` (or the route's parameters). `now` gives
    /// the defaults: from the start of today in `timezone` to the end of the running hour.
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        by: Option<&str>,
        granularity: Option<&str>,
        timezone: Tz,
        now: DateTime<Utc>,
    ) -> Result<ReportQuery, QueryError> {
        let from = match from.filter(|s| !s.is_empty()) {
            Some(s) => parse_instant(s, timezone).map_err(|e| QueryError(format!("from: {e}")))?,
            None => start_of(Granularity::Day, now, timezone),
        };
        let to = match to.filter(|s| !s.is_empty()) {
            Some(s) => parse_instant(s, timezone).map_err(|e| QueryError(format!("to: {e}")))?,
            // The end of the running hour: the open hour is in, and the window reads as whole hours.
            None => start_of(Granularity::Hour, now, timezone) + chrono::Duration::hours(1),
        };
        if to <= from {
            return Err(QueryError(format!(
                "to ({}) must be after from ({})",
                local(to, timezone),
                local(from, timezone)
            )));
        }
        let by = parse_by(by.unwrap_or(""))?;
        let granularity = match granularity.filter(|s| !s.is_empty()) {
            None => Granularity::Hour,
            Some(g) => <Granularity as clap::ValueEnum>::from_str(g, true).map_err(|_| {
                QueryError(format!("granularity: {g:?} is not one of hour, day, month"))
            })?,
        };
        Ok(ReportQuery {
            from,
            to,
            by,
            granularity,
            timezone,
        })
    }

    /// The report of one closed hour, as delivered: every grouping, hourly.
    pub fn for_hour(hour: DateTime<Utc>, timezone: Tz) -> ReportQuery {
        ReportQuery {
            from: hour,
            to: hour + chrono::Duration::hours(1),
            by: vec![Group::Model, Group::Project, Group::Key],
            granularity: Granularity::Hour,
            timezone,
        }
    }

    pub fn groups(&self, g: Group) -> bool {
        self.by.contains(&g)
    }
}

/// `model,project,key` → the groups, in that order, without repeats.
pub fn parse_by(text: &str) -> Result<Vec<Group>, QueryError> {
    let mut by = Vec::new();
    for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let g = <Group as clap::ValueEnum>::from_str(word, true).map_err(|_| {
            QueryError(format!(
                "by: {word:?} is not one of model, project, key, period"
            ))
        })?;
        if !by.contains(&g) {
            by.push(g);
        }
    }
    Ok(by)
}

/// The sums a row (and the total) carries. Tokens and calls are exact integers, money an exact decimal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sums {
    pub calls: i64,
    /// Calls of models the price book does not know: counted, not in `cost_total` (never billed as 0).
    pub unpriced_calls: i64,
    /// Calls whose usage the sidecar estimated (the platform's bill is the truth for them).
    pub estimated_calls: i64,
    pub input_tokens: i64,
    pub cached_tokens: i64,
    pub cache_creation_tokens: i64,
    pub reasoning_tokens: i64,
    pub answer_tokens: i64,
    pub output_tokens: i64,
    /// CNY, exact, price corrections included (`reprice`).
    pub cost_total: Decimal,
    /// The part of `cost_total` that is price corrections (0 without any).
    pub adjustment_yuan: Decimal,
}

impl Sums {
    /// The money of these calls: `None` when every one of them is unpriced (there is no cost to show, and
    /// never a zero); otherwise the priced calls' cost, the unpriced ones counted apart beside it.
    pub fn cost(&self) -> Option<Decimal> {
        (self.calls == 0 || self.unpriced_calls < self.calls).then_some(self.cost_total)
    }

    pub fn add(&mut self, o: &Sums) {
        self.calls += o.calls;
        self.unpriced_calls += o.unpriced_calls;
        self.estimated_calls += o.estimated_calls;
        self.input_tokens += o.input_tokens;
        self.cached_tokens += o.cached_tokens;
        self.cache_creation_tokens += o.cache_creation_tokens;
        self.reasoning_tokens += o.reasoning_tokens;
        self.answer_tokens += o.answer_tokens;
        self.output_tokens += o.output_tokens;
        self.cost_total += o.cost_total;
        self.adjustment_yuan += o.adjustment_yuan;
    }

    /// The numeric columns in their order (after the grouping columns), as written.
    fn cells(&self) -> [String; 11] {
        [
            self.calls.to_string(),
            self.unpriced_calls.to_string(),
            self.estimated_calls.to_string(),
            self.input_tokens.to_string(),
            self.cached_tokens.to_string(),
            self.cache_creation_tokens.to_string(),
            self.reasoning_tokens.to_string(),
            self.answer_tokens.to_string(),
            self.output_tokens.to_string(),
            self.cost().map(money).unwrap_or_default(),
            money(self.adjustment_yuan),
        ]
    }
}

/// The numeric columns' names, in order.
const SUM_COLUMNS: [&str; 11] = [
    "calls",
    "unpriced_calls",
    "estimated_calls",
    "input_tokens",
    "cached_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
    "answer_tokens",
    "output_tokens",
    "cost_total",
    "adjustment_yuan",
];

/// One row: a period (its start) and, for each grouping column asked for, its value (`None`: the calls had
/// none — no `X-Meter-Project`, no key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRow {
    pub period: DateTime<Utc>,
    /// Aligned with [`ReportQuery::by`].
    pub groups: Vec<Option<String>>,
    pub sums: Sums,
    /// The least final state of the period's hours.
    pub state: HourState,
    /// The highest revision among the period's hours (0: none was ever re-rolled).
    pub revision: i32,
}

/// A report: its query, its rows (ordered by period, then grouping columns), and their total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub query: ReportQuery,
    pub rows: Vec<ReportRow>,
    pub total: Sums,
    /// The least final state among the rows (`closed` when there are none: nothing can still change them).
    pub state: HourState,
}

impl Report {
    pub fn new(query: ReportQuery, rows: Vec<ReportRow>) -> Report {
        let mut total = Sums::default();
        for r in &rows {
            total.add(&r.sums);
        }
        let state = rows
            .iter()
            .map(|r| r.state)
            .min()
            .unwrap_or(HourState::Closed);
        Report {
            query,
            rows,
            total,
            state,
        }
    }

    /// The columns of CSV, the table and the HTML table, in order.
    pub fn columns(&self) -> Vec<&'static str> {
        let mut c = vec!["billing_hour"];
        c.extend(self.query.by.iter().map(|g| g.column()));
        c.extend(SUM_COLUMNS);
        c.extend(["state", "revision"]);
        c
    }

    /// Each row's cells as written (period in the zone with its offset), then the total's (first cell
    /// `total`, grouping cells and revision empty).
    pub fn cells(&self) -> (Vec<Vec<String>>, Vec<String>) {
        let tz = self.query.timezone;
        let rows = self
            .rows
            .iter()
            .map(|r| {
                let mut c = vec![local(r.period, tz)];
                c.extend(r.groups.iter().map(|g| g.clone().unwrap_or_default()));
                c.extend(r.sums.cells());
                c.push(r.state.as_str().to_owned());
                c.push(r.revision.to_string());
                c
            })
            .collect();
        let mut total = vec!["total".to_owned()];
        total.extend(self.query.by.iter().map(|_| String::new()));
        total.extend(self.total.cells());
        total.push(self.state.as_str().to_owned());
        total.push(String::new());
        (rows, total)
    }

    /// DESIGN §6: `{"from","to","timezone","granularity","by","rows","total","unpriced_calls","estimated_calls"}`.
    pub fn to_json(&self) -> Value {
        let tz = self.query.timezone;
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("billing_hour".into(), local(r.period, tz).into());
                for (g, v) in self.query.by.iter().zip(&r.groups) {
                    o.insert(
                        g.column().into(),
                        v.clone().map_or(Value::Null, Value::String),
                    );
                }
                sums_json(&r.sums, &mut o);
                o.insert("state".into(), r.state.as_str().into());
                o.insert("revision".into(), r.revision.into());
                Value::Object(o)
            })
            .collect();
        let mut total = Map::new();
        sums_json(&self.total, &mut total);
        total.insert("state".into(), self.state.as_str().into());
        json!({
            "from": local(self.query.from, tz),
            "to": local(self.query.to, tz),
            "timezone": tz.name(),
            "granularity": self.query.granularity.as_str(),
            "by": self.query.by.iter().map(|g| g.column()).collect::<Vec<_>>(),
            "rows": rows,
            "total": total,
            "unpriced_calls": self.total.unpriced_calls,
            "estimated_calls": self.total.estimated_calls,
        })
    }

    /// The same columns as the table, one row per line, the total last (RFC 4180 quoting).
    pub fn to_csv(&self) -> String {
        let mut w = csv::Writer::from_writer(Vec::new());
        let (rows, total) = self.cells();
        // Writing into a Vec cannot fail.
        let _ = w.write_record(self.columns());
        for r in rows.iter().chain(std::iter::once(&total)) {
            let _ = w.write_record(r);
        }
        let bytes = w.into_inner().unwrap_or_default();
        String::from_utf8(bytes).unwrap_or_default()
    }

    /// Aligned columns for a terminal: text to the left, numbers to the right, a rule above the total.
    pub fn to_table(&self) -> String {
        let columns = self.columns();
        let (rows, total) = self.cells();
        let numeric = |name: &str| SUM_COLUMNS.contains(&name) || name == "revision";
        let mut width: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
        for r in rows.iter().chain(std::iter::once(&total)) {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
                if i > 0 {
                    s.push_str("  ");
                }
                let pad = w - c.chars().count();
                if numeric(columns[i]) {
                    s.extend(std::iter::repeat_n(' ', pad));
                    s.push_str(c);
                } else {
                    s.push_str(c);
                    s.extend(std::iter::repeat_n(' ', pad));
                }
            }
            s.truncate(s.trim_end().len());
            s.push('\n');
            s
        };
        let header: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        let mut out = line(&header);
        for r in &rows {
            out.push_str(&line(r));
        }
        let rule: usize = width.iter().sum::<usize>() + 2 * width.len().saturating_sub(1);
        let _ = writeln!(out, "{}", "-".repeat(rule));
        out.push_str(&line(&total));
        out
    }
}

fn sums_json(s: &Sums, o: &mut Map<String, Value>) {
    o.insert("calls".into(), s.calls.into());
    o.insert("unpriced_calls".into(), s.unpriced_calls.into());
    o.insert("estimated_calls".into(), s.estimated_calls.into());
    o.insert("input_tokens".into(), s.input_tokens.into());
    o.insert("cached_tokens".into(), s.cached_tokens.into());
    o.insert(
        "cache_creation_tokens".into(),
        s.cache_creation_tokens.into(),
    );
    o.insert("reasoning_tokens".into(), s.reasoning_tokens.into());
    o.insert("answer_tokens".into(), s.answer_tokens.into());
    o.insert("output_tokens".into(), s.output_tokens.into());
    o.insert(
        "cost_total".into(),
        s.cost().map_or(Value::Null, |c| money(c).into()),
    );
    o.insert("adjustment_yuan".into(), money(s.adjustment_yuan).into());
}

#[cfg(test)]
mod tests {
    use super::*;

    const BJ: Tz = chrono_tz::Asia::Shanghai;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_query_names_what_is_wrong_with_it() {
        let now = at("2026-11-25T05:10:00Z");
        let q =
            ReportQuery::parse(None, None, Some("key, model,key"), Some("DAY"), BJ, now).unwrap();
        assert_eq!(q.from, at("2026-11-24T16:00:00Z"));
        assert_eq!(q.to, at("2026-11-25T06:00:00Z"));
        assert_eq!(q.by, vec![Group::Key, Group::Model]);
        assert_eq!(q.granularity, Granularity::Day);
        let e = ReportQuery::parse(None, None, Some("team"), None, BJ, now).unwrap_err();
        assert_eq!(
            e.0,
            "by: \"team\" is not one of model, project, key, period"
        );
        let e = ReportQuery::parse(None, None, None, Some("week"), BJ, now).unwrap_err();
        assert_eq!(e.0, "granularity: \"week\" is not one of hour, day, month");
        let e = ReportQuery::parse(
            Some("2026-11-25T14"),
            Some("2026-11-25T13"),
            None,
            None,
            BJ,
            now,
        )
        .unwrap_err();
        assert!(
            e.0.starts_with("to (2026-11-25T13:00:00+08:00) must be after"),
            "{}",
            e.0
        );
    }

    fn sample() -> Report {
        let q = ReportQuery {
            from: at("2026-11-25T15:00:00Z"),
            to: at("2026-11-25T17:00:00Z"),
            by: vec![Group::Model, Group::Project],
            granularity: Granularity::Hour,
            timezone: BJ,
        };
        let sums = |calls, cost: &str| Sums {
            calls,
            unpriced_calls: 0,
            estimated_calls: 1,
            input_tokens: 10 * calls,
            cached_tokens: 0,
            cache_creation_tokens: calls,
            reasoning_tokens: 5,
            answer_tokens: 7,
            output_tokens: 12,
            cost_total: cost.parse().unwrap(),
            adjustment_yuan: Decimal::ZERO,
        };
        Report::new(
            q,
            vec![
                ReportRow {
                    period: at("2026-11-25T15:00:00Z"),
                    groups: vec![
                        Some("deepseek-r1".into()),
                        Some("a, \"quoted\" team".into()),
                    ],
                    sums: sums(2, "0.025656"),
                    state: HourState::Closed,
                    revision: 1,
                },
                ReportRow {
                    period: at("2026-11-25T16:00:00Z"),
                    groups: vec![Some("deepseek-v3".into()), None],
                    sums: sums(1, "0.000081000"),
                    state: HourState::Provisional,
                    revision: 0,
                },
            ],
        )
    }

    #[test]
    fn json_has_money_as_strings_hours_with_offsets_and_the_total() {
        let j = sample().to_json();
        assert_eq!(j["from"], "2026-11-25T23:00:00+08:00");
        assert_eq!(j["timezone"], "Asia/Shanghai");
        assert_eq!(j["rows"][1]["billing_hour"], "2026-11-26T00:00:00+08:00");
        assert_eq!(j["rows"][1]["cost_total"], "0.000081");
        assert_eq!(j["rows"][1]["project"], Value::Null);
        assert_eq!(j["rows"][0]["revision"], 1);
        assert_eq!(j["total"]["cost_total"], "0.025737");
        assert_eq!(j["total"]["calls"], 3);
        assert_eq!(j["total"]["state"], "provisional");
        assert_eq!(j["estimated_calls"], 2);
        assert!(j["rows"][0].get("key_fingerprint").is_none());
    }

    #[test]
    fn an_unpriced_row_has_no_cost_in_any_format_and_its_count_beside_it() {
        let mut r = sample();
        r.rows[1].sums.unpriced_calls = r.rows[1].sums.calls;
        let r = Report::new(r.query.clone(), r.rows.clone());
        let j = r.to_json();
        assert_eq!(j["rows"][1]["cost_total"], Value::Null);
        assert_eq!(j["rows"][1]["unpriced_calls"], 1);
        // The total still has the priced calls' cost, the unpriced one counted beside it.
        assert_eq!(j["total"]["cost_total"], "0.025737");
        assert_eq!(j["total"]["unpriced_calls"], 1);
        let csv = r.to_csv();
        let line = csv.lines().nth(2).unwrap();
        assert!(line.contains(",1,1,"), "{line}");
        assert!(line.contains(",,0,provisional,0"), "empty cost: {line}");
        assert!(!r.to_table().lines().nth(2).unwrap().contains("0.000081"));
    }

    #[test]
    fn csv_quotes_what_needs_it_and_ends_with_the_total() {
        let csv = sample().to_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "billing_hour,model,project,calls,unpriced_calls,estimated_calls,input_tokens,cached_tokens,\
             cache_creation_tokens,reasoning_tokens,answer_tokens,output_tokens,cost_total,adjustment_yuan,state,\
             revision"
        );
        assert_eq!(
            lines[1],
            "2026-11-25T23:00:00+08:00,deepseek-r1,\"a, \"\"quoted\"\" team\",2,0,1,20,0,2,5,7,12,0.025656,0,closed,1"
        );
        assert_eq!(
            lines[3],
            "total,,,3,0,2,30,0,3,10,14,24,0.025737,0,provisional,"
        );
    }

    #[test]
    fn the_table_aligns_numbers_right() {
        let t = sample().to_table();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        // Every cost ends in the same column.
        let cost_end = |l: &str| {
            let i = l.find("0.0").unwrap();
            i + l[i..].find(' ').unwrap()
        };
        assert_eq!(cost_end(lines[1]), cost_end(lines[2]), "{t}");
        assert_eq!(cost_end(lines[1]), cost_end(lines[4]), "{t}");
        assert!(lines[3].chars().all(|c| c == '-'), "{t}");
        assert!(lines[4].starts_with("total "), "{t}");
    }
}
