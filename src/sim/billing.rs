//! The simulator plays the platform's billing too: every call it serves is booked, by the hour, into the
//! bill-detail lines the console exports (`GET /sim/bill.csv`, `sim --bill-export FILE`), in the layout
//! `crate::reconcile::import` reads — so a demo or a test reconciles end to end.
//!
//! As the platform does (reference `platform-bill.md`): one line per (hour, Instance ID), the Instance ID
//! `ApiKeyID;WorkspaceID;ModelName;input_token|output_token;Channel`; a call is booked when its bill is
//! written (`booking_delay` after it, so a call near the end of an hour lands in the next one); each line's
//! amount is rounded half-up to 2 decimals, and the rounding of the whole bill is put back on its largest
//! line. Prices are the built-in book's (the platform's table), peak or off-peak by the hour the call ended in
//! (which instant the platform uses is UNCONFIRMED; the simulator takes the same one as the meter). Every input
//! token — cache reads and writes included — is on the `input_token` line, at its own price.
//!
//! The simulator's key ID of a key is the decimal value of the first 8 hex digits of its fingerprint (a
//! real console shows an ID that cannot be derived from the key; map it with `[[api_key]]` `key_id`).

use crate::clock::Clock;
use crate::pricing::PriceBook;
use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// The workspace calls without `X-DashScope-WorkSpace` are booked to.
pub const DEFAULT_WORKSPACE: &str = "llm-simdefault";

type LineKey = (DateTime<Utc>, String, String, String, &'static str);

/// The bill being written.
pub struct PlatformBill {
    clock: Clock,
    booking_delay: Duration,
    prices: PriceBook,
    /// (hour, key ID, workspace, model, token type) → tokens and exact amount.
    lines: Mutex<BTreeMap<LineKey, (u64, Decimal)>>,
}

impl std::fmt::Debug for PlatformBill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformBill")
            .field("booking_delay", &self.booking_delay)
            .finish_non_exhaustive()
    }
}

/// One served call, as the platform bills it.
pub struct Booking<'a> {
    pub authorization: Option<&'a str>,
    pub workspace: Option<&'a str>,
    pub model: &'a str,
    /// Every input token of the call (cache reads and writes included).
    pub tokens: crate::usage::Tokens,
}

/// The simulator's console key ID of an `Authorization` value (`None`: no key, a console call).
pub fn key_id_of(authorization: &str) -> Option<String> {
    let (fingerprint, _) = crate::usage::key_identity(authorization)?;
    u64::from_str_radix(&fingerprint[..8], 16)
        .ok()
        .map(|n| n.to_string())
}

impl PlatformBill {
    pub fn new(clock: Clock, booking_delay: Duration) -> PlatformBill {
        PlatformBill {
            clock,
            booking_delay,
            prices: PriceBook::builtin(),
            lines: Mutex::new(BTreeMap::new()),
        }
    }

    /// Books a call now (its bill written `booking_delay` from now).
    pub fn book(&self, b: &Booking<'_>) {
        let ended = self.clock.now();
        let at = ended + chrono::Duration::from_std(self.booking_delay).unwrap_or_default();
        let tz = crate::pricing::DEFAULT_TIMEZONE;
        let hour = crate::pricing::billing_hour(at, tz);
        let key = b.authorization.and_then(key_id_of).unwrap_or_default();
        let workspace = b.workspace.unwrap_or(DEFAULT_WORKSPACE).to_owned();
        let t = b.tokens.clamp().0;
        let (input_yuan, output_yuan) = match self.prices.price_at(b.model, ended) {
            Some(p) => {
                let input = p.rates.input_cost(&t);
                (input, p.cost(&t) - input)
            }
            None => (Decimal::ZERO, Decimal::ZERO),
        };
        let Ok(mut lines) = self.lines.lock() else {
            return;
        };
        for (ty, tokens, yuan) in [
            ("input_token", t.input, input_yuan),
            ("output_token", t.output, output_yuan),
        ] {
            let e = lines
                .entry((hour, key.clone(), workspace.clone(), b.model.to_owned(), ty))
                .or_default();
            e.0 += tokens;
            e.1 += yuan;
        }
    }

    /// The export: English headers, or the Chinese ones.
    pub fn csv(&self, chinese: bool) -> String {
        let lines: Vec<(LineKey, (u64, Decimal))> = match self.lines.lock() {
            Ok(l) => l.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            Err(_) => Vec::new(),
        };
        let amounts = rounded(&lines.iter().map(|(_, v)| v.1).collect::<Vec<_>>());
        let mut w = csv::Writer::from_writer(Vec::new());
        let headers: [&str; 9] = if chinese {
            [
                "使用开始时间",
                "使用结束时间",
                "产品Code",
                "产品",
                "实例ID",
                "用量",
                "用量单位",
                "应付金额",
                "币种",
            ]
        } else {
            [
                "UsageStartTime",
                "UsageEndTime",
                "ProductCode",
                "ProductName",
                "InstanceID",
                "Usage",
                "UsageUnit",
                "PretaxAmount",
                "Currency",
            ]
        };
        let _ = w.write_record(headers);
        let tz = crate::pricing::DEFAULT_TIMEZONE;
        let fmt = |t: DateTime<Utc>| t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string();
        for (((hour, key, ws, model, ty), (tokens, _)), amount) in lines.iter().zip(amounts) {
            let _ = w.write_record([
                fmt(*hour),
                fmt(*hour + chrono::Duration::hours(1)),
                "sfm".to_owned(),
                "Model Studio Foundation Model Inference".to_owned(),
                format!("{key};{ws};{model};{ty};api"),
                tokens.to_string(),
                "tokens".to_owned(),
                format!("{amount:.2}"),
                "CNY".to_owned(),
            ]);
        }
        String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
    }
}

/// Each amount rounded half-up to 2 decimals, the rounding of their sum put back on the largest, so the
/// lines add up to the rounded total (the platform puts it on a line chosen at random).
pub fn rounded(exact: &[Decimal]) -> Vec<Decimal> {
    let round = |d: Decimal| d.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    let mut out: Vec<Decimal> = exact.iter().map(|d| round(*d)).collect();
    let remainder = round(exact.iter().sum()) - out.iter().sum::<Decimal>();
    if let Some(i) = (0..exact.len()).max_by_key(|i| exact[*i]) {
        out[i] += remainder;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_add_up_to_the_rounded_total() {
        let exact: Vec<Decimal> = ["0.004", "0.004", "0.004", "1.234"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let r = rounded(&exact);
        assert_eq!(
            r.iter().sum::<Decimal>(),
            "1.25".parse::<Decimal>().unwrap()
        );
        assert_eq!(r[..3], [Decimal::ZERO, Decimal::ZERO, Decimal::ZERO]);
        assert_eq!(r[3], "1.25".parse::<Decimal>().unwrap());
    }

    #[test]
    fn a_call_near_the_end_of_an_hour_is_booked_in_the_next() {
        let clock = Clock::manual("2026-11-25T05:57:00Z".parse().unwrap());
        let bill = PlatformBill::new(clock, Duration::from_secs(300));
        bill.book(&Booking {
            authorization: Some("Bearer sk-test-0001"),
            workspace: None,
            model: "deepseek-r1",
            tokens: crate::usage::Tokens {
                input: 10,
                output: 50,
                reasoning: 20,
                ..Default::default()
            },
        });
        let csv = bill.csv(false);
        assert!(
            csv.contains("2026-11-25 14:00:00,2026-11-25 15:00:00"),
            "{csv}"
        );
        let parsed = crate::reconcile::import::read(
            csv.as_bytes(),
            &Default::default(),
            crate::pricing::DEFAULT_TIMEZONE,
        )
        .unwrap();
        assert_eq!(parsed.lines.len(), 2);
        assert_eq!(parsed.lines[1].tokens, 50);
        assert_eq!(parsed.lines[0].key_id, key_id_of("Bearer sk-test-0001"));
        assert_eq!(parsed.lines[0].workspace, DEFAULT_WORKSPACE);
        let zh = bill.csv(true);
        let parsed_zh = crate::reconcile::import::read(
            zh.as_bytes(),
            &Default::default(),
            crate::pricing::DEFAULT_TIMEZONE,
        )
        .unwrap();
        assert_eq!(parsed.lines, parsed_zh.lines);
    }
}
