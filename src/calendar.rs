//! Calendar and money as every door writes them: periods (hours, and days and months as calendar windows in
//! the billing time zone), instants read from `--from`/`--to`, instants written with the zone's offset, and money
//! as an exact decimal string. Pure, and below everything that reports, budgets or reconciles.

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;

/// How rows are bucketed in time. Days and months are calendar windows in the billing time zone (a Beijing
/// day starts at 16:00 UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Granularity {
    Hour,
    Day,
    Month,
}

impl Granularity {
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Hour => "hour",
            Granularity::Day => "day",
            Granularity::Month => "month",
        }
    }
}

/// An instant as `--from`/`--to` take it: RFC 3339 with an offset, or a local time in the billing zone
/// written `2026-11-25T13` (an hour), `2026-11-25T13:30[:00]`, `2026-11-25` (midnight) or `2026-11` (the
/// first of the month).
pub fn parse_instant(text: &str, tz: Tz) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M"))
        .or_else(|_| NaiveDateTime::parse_from_str(&format!("{text}:00"), "%Y-%m-%dT%H:%M"))
        .or_else(|_| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d").map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default())
        })
        .or_else(|_| {
            NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d")
                .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default())
        })
        .map_err(|_| {
            format!("{text:?} is not a time like 2026-11-25T13, 2026-11-25 or 2026-11-25T13:00:00+08:00")
        })?;
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| format!("{text:?} does not exist in {tz} (a clock change skips it)"))
}

/// The start of the hour, day or month (in `tz`) that holds `at`.
pub fn start_of(g: Granularity, at: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
    let l = at.with_timezone(&tz).naive_local();
    let naive = match g {
        Granularity::Hour => l.date().and_hms_opt(l.hour(), 0, 0),
        Granularity::Day => l.date().and_hms_opt(0, 0, 0),
        Granularity::Month => {
            NaiveDate::from_ymd_opt(l.year(), l.month(), 1).and_then(|d| d.and_hms_opt(0, 0, 0))
        }
    };
    naive
        .and_then(|n| tz.from_local_datetime(&n).earliest())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(at)
}

/// The start of the period after the one starting at `p`: an hour, or a calendar day or month in `tz` (not
/// 24 h: a clock change makes days of 23 or 25 hours).
pub fn next_period(g: Granularity, p: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
    let local = p.with_timezone(&tz);
    let after = match g {
        Granularity::Hour => Some(local + chrono::Duration::hours(1)),
        Granularity::Day => local.checked_add_days(chrono::Days::new(1)),
        Granularity::Month => local.checked_add_months(chrono::Months::new(1)),
    }
    .map_or(p + chrono::Duration::days(31), |t| t.with_timezone(&Utc));
    start_of(g, after, tz).max(p + chrono::Duration::hours(1))
}

/// An instant in the billing zone, RFC 3339 with the zone's offset (`2026-11-25T23:00:00+08:00`).
pub fn local(at: DateTime<Utc>, tz: Tz) -> String {
    at.with_timezone(&tz)
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

/// Money as written everywhere: a decimal string at full precision, without trailing zeros (`0.000081`).
pub fn money(d: Decimal) -> String {
    d.normalize().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BJ: Tz = chrono_tz::Asia::Shanghai;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn instants_are_read_in_the_billing_zone() {
        assert_eq!(
            parse_instant("2026-11-25T13", BJ).unwrap(),
            at("2026-11-25T05:00:00Z")
        );
        assert_eq!(
            parse_instant("2026-11-25", BJ).unwrap(),
            at("2026-11-24T16:00:00Z")
        );
        assert_eq!(
            parse_instant("2026-11", BJ).unwrap(),
            at("2026-10-31T16:00:00Z")
        );
        assert_eq!(
            parse_instant("2026-11-25T13:30", BJ).unwrap(),
            at("2026-11-25T05:30:00Z")
        );
        assert_eq!(
            parse_instant("2026-11-25T13:00:00+00:00", BJ).unwrap(),
            at("2026-11-25T13:00:00Z")
        );
        let e = parse_instant("yesterday", BJ).unwrap_err();
        assert!(e.contains("2026-11-25T13"), "{e}");
        // 02:30 on 2026-03-08 does not exist in New York.
        let e = parse_instant("2026-03-08T02:30", chrono_tz::America::New_York).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn days_and_months_start_at_midnight_in_the_zone() {
        let t = at("2026-11-30T16:30:00Z"); // 00:30 on 1 December in Beijing
        assert_eq!(
            start_of(Granularity::Day, t, BJ),
            at("2026-11-30T16:00:00Z")
        );
        assert_eq!(
            start_of(Granularity::Month, t, BJ),
            at("2026-11-30T16:00:00Z")
        );
        assert_eq!(
            start_of(Granularity::Hour, t, BJ),
            at("2026-11-30T16:00:00Z")
        );
        let kolkata = chrono_tz::Asia::Kolkata;
        // 22:15 in Kolkata: its hour began at 16:30 UTC.
        assert_eq!(
            start_of(Granularity::Hour, at("2026-11-30T16:45:00Z"), kolkata),
            at("2026-11-30T16:30:00Z")
        );
        assert_eq!(local(t, BJ), "2026-12-01T00:30:00+08:00");
    }
}
