//! The ledger against the platform's bill (no I/O): per (billing hour, key ID, workspace, model, token type),
//! tokens exactly and money within the platform's rounding, with a verdict per hour.
//!
//! - **Tokens** are counted exactly on both sides: any difference is a drift.
//! - **Money** is exact in the ledger and rounded to 2 decimals per bill line by the platform (the rounding of
//!   a whole bill is spread back onto its lines, one of them taking the remainder): an hour's money matches
//!   when the two sides are within one cent per bill line of that hour; over the whole period the ledger's
//!   total rounded half-up to 2 decimals must equal the bill's total exactly.
//! - **Next-hour booking.** The platform books a call minutes after it ends, so a call that ends at 13:59
//!   can be billed at 14:00. Before judging, tokens the ledger has in excess in one hour are carried into the
//!   next hour where the bill has the same excess (same key, workspace, model and type): a spill is a match,
//!   not two drifts. Money moves with its tokens.
//! - **Estimated** ledger lines (usage estimated because the upstream never reported it) are shown as such:
//!   the bill is the truth for them.

use super::import::BillLine;
use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;

/// The ledger's side of one line: calls summed per (hour, key, workspace, model, token type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerLine {
    pub hour: DateTime<Utc>,
    /// The console's key ID, else `fingerprint:<12 hex>` (a key with no `[[api_key]]` `key_id`), else empty.
    pub key: String,
    /// `None`: the default workspace.
    pub workspace: Option<String>,
    pub model: String,
    pub token_type: String,
    pub tokens: u64,
    pub yuan: Decimal,
    pub calls: u64,
    pub estimated_calls: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Match,
    /// Differs, but the ledger's usage is estimated there: the bill is the truth.
    Estimated,
    OnlyInLedger,
    OnlyInBill,
    MoneyDrift,
    TokenDrift,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Match => "match",
            Verdict::Estimated => "estimated",
            Verdict::OnlyInLedger => "only_in_ledger",
            Verdict::OnlyInBill => "only_in_bill",
            Verdict::MoneyDrift => "money_drift",
            Verdict::TokenDrift => "token_drift",
        }
    }
}

/// One compared line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    pub hour: DateTime<Utc>,
    pub key_id: String,
    pub workspace: String,
    pub model: String,
    pub token_type: String,
    pub ledger_tokens: u64,
    pub bill_tokens: u64,
    pub ledger_yuan: Decimal,
    pub bill_yuan: Decimal,
    /// Tokens carried into the next hour (positive) or from the previous one (negative) as a next-hour booking.
    pub spilled_tokens: i64,
    pub estimated_calls: u64,
    pub verdict: Verdict,
}

/// One billing hour: its verdict (the worst of its lines), money on both sides, and its lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hour {
    pub hour: DateTime<Utc>,
    pub verdict: Verdict,
    pub ledger_yuan: Decimal,
    pub bill_yuan: Decimal,
    /// Ledger minus bill.
    pub drift_yuan: Decimal,
    pub lines: Vec<Line>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reconciliation {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub hours: Vec<Hour>,
    pub ledger_yuan: Decimal,
    pub bill_yuan: Decimal,
    /// The ledger's total rounded half-up to 2 decimals equals the bill's total.
    pub total_matches: bool,
    /// Ledger minus bill per model, over the period.
    pub drift_by_model: BTreeMap<String, Decimal>,
}

type Key = (String, String, String, String); // key, workspace, model, type

#[derive(Debug, Default, Clone)]
struct Pair {
    ledger_tokens: u64,
    bill_tokens: u64,
    ledger_yuan: Decimal,
    bill_yuan: Decimal,
    in_ledger: bool,
    in_bill: bool,
    bill_lines: u64,
    spilled: i64,
    estimated_calls: u64,
}

/// Compares the hours `[from, to)`. `ledger` and `bill` may hold the hour after `to` (a booking spilled past
/// the end is then matched); lines outside `[from, to]` are ignored. `default_workspace`: the ID of the
/// workspace calls without `X-DashScope-WorkSpace` ran in; unknown (`None`), workspaces are left out of the
/// join.
pub fn compare(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    ledger: &[LedgerLine],
    bill: &[BillLine],
    default_workspace: Option<&str>,
) -> Reconciliation {
    let last = to; // the hour after the period, for spills only
    let ws = |w: Option<&str>| match default_workspace {
        Some(d) => w.unwrap_or(d).to_owned(),
        None => "*".to_owned(),
    };
    let mut groups: BTreeMap<Key, BTreeMap<DateTime<Utc>, Pair>> = BTreeMap::new();
    for l in ledger.iter().filter(|l| l.hour >= from && l.hour <= last) {
        let key = (
            l.key.clone(),
            ws(l.workspace.as_deref()),
            l.model.clone(),
            l.token_type.clone(),
        );
        let p = groups.entry(key).or_default().entry(l.hour).or_default();
        p.ledger_tokens += l.tokens;
        p.ledger_yuan += l.yuan;
        p.in_ledger |= l.tokens > 0 || !l.yuan.is_zero();
        p.estimated_calls += l.estimated_calls;
    }
    for b in bill.iter().filter(|b| b.hour >= from && b.hour <= last) {
        let key = (
            b.key_id.clone().unwrap_or_default(),
            ws(Some(&b.workspace)),
            b.model.clone(),
            b.token_type.clone(),
        );
        let p = groups.entry(key).or_default().entry(b.hour).or_default();
        p.bill_tokens += b.tokens;
        p.bill_yuan += b.amount;
        p.in_bill = true;
        p.bill_lines += 1;
    }
    for hours in groups.values_mut() {
        carry_spills(hours);
    }
    let mut by_hour: BTreeMap<DateTime<Utc>, Vec<(Line, u64)>> = BTreeMap::new();
    for ((key, workspace, model, token_type), hours) in groups {
        for (hour, p) in hours.into_iter().filter(|(h, _)| *h < to) {
            let verdict = if p.ledger_tokens == p.bill_tokens
                && (p.in_bill == p.in_ledger || p.spilled != 0)
            {
                Verdict::Match // money is judged per hour below
            } else if !p.in_bill && p.spilled == 0 {
                Verdict::OnlyInLedger
            } else if !p.in_ledger && p.spilled == 0 {
                Verdict::OnlyInBill
            } else {
                Verdict::TokenDrift
            };
            let line = Line {
                hour,
                key_id: key.clone(),
                workspace: workspace.clone(),
                model: model.clone(),
                token_type: token_type.clone(),
                ledger_tokens: p.ledger_tokens,
                bill_tokens: p.bill_tokens,
                ledger_yuan: p.ledger_yuan,
                bill_yuan: p.bill_yuan,
                spilled_tokens: p.spilled,
                estimated_calls: p.estimated_calls,
                verdict,
            };
            by_hour.entry(hour).or_default().push((line, p.bill_lines));
        }
    }
    let cent = Decimal::new(1, 2);
    let mut hours = Vec::new();
    let mut drift_by_model: BTreeMap<String, Decimal> = BTreeMap::new();
    let (mut ledger_total, mut bill_total) = (Decimal::ZERO, Decimal::ZERO);
    for (hour, lines) in by_hour {
        let bill_lines: u64 = lines.iter().map(|(_, n)| n).sum();
        let mut lines: Vec<Line> = lines.into_iter().map(|(l, _)| l).collect();
        let ledger_yuan: Decimal = lines.iter().map(|l| l.ledger_yuan).sum();
        let bill_yuan: Decimal = lines.iter().map(|l| l.bill_yuan).sum();
        let drift = ledger_yuan - bill_yuan;
        if drift.abs() > cent * Decimal::from(bill_lines.max(1)) {
            for l in lines.iter_mut().filter(|l| l.verdict == Verdict::Match) {
                if (l.ledger_yuan - l.bill_yuan).abs() > cent {
                    l.verdict = Verdict::MoneyDrift;
                }
            }
        }
        for l in lines.iter_mut() {
            if l.estimated_calls > 0
                && matches!(l.verdict, Verdict::TokenDrift | Verdict::MoneyDrift)
            {
                l.verdict = Verdict::Estimated;
            }
            *drift_by_model.entry(l.model.clone()).or_default() += l.ledger_yuan - l.bill_yuan;
        }
        let verdict = lines
            .iter()
            .map(|l| l.verdict)
            .max()
            .unwrap_or(Verdict::Match);
        ledger_total += ledger_yuan;
        bill_total += bill_yuan;
        hours.push(Hour {
            hour,
            verdict,
            ledger_yuan,
            bill_yuan,
            drift_yuan: drift,
            lines,
        });
    }
    let rounded = ledger_total
        .round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
    Reconciliation {
        from,
        to,
        hours,
        ledger_yuan: ledger_total,
        bill_yuan: bill_total,
        total_matches: rounded == bill_total,
        drift_by_model,
    }
}

/// Carries, hour by hour, the ledger's excess tokens into the next hour where the bill has the same excess
/// (the platform booked those calls an hour later), money moving with its tokens.
fn carry_spills(hours: &mut BTreeMap<DateTime<Utc>, Pair>) {
    let keys: Vec<DateTime<Utc>> = hours.keys().copied().collect();
    for w in keys.windows(2) {
        let (h, next) = (w[0], w[1]);
        if next - h != Duration::hours(1) {
            continue;
        }
        let (excess, room) = {
            let a = &hours[&h];
            let b = &hours[&next];
            (
                a.ledger_tokens.saturating_sub(a.bill_tokens),
                b.bill_tokens.saturating_sub(b.ledger_tokens),
            )
        };
        let carried = excess.min(room);
        if carried == 0 {
            continue;
        }
        let Some(a) = hours.get_mut(&h) else { continue };
        let yuan = a.ledger_yuan * Decimal::from(carried) / Decimal::from(a.ledger_tokens);
        a.ledger_tokens -= carried;
        a.ledger_yuan -= yuan;
        a.spilled += carried as i64;
        let Some(b) = hours.get_mut(&next) else {
            continue;
        };
        b.ledger_tokens += carried;
        b.ledger_yuan += yuan;
        b.in_ledger = true;
        b.spilled -= carried as i64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn ledger(hour: &str, key: &str, tokens: u64, yuan: &str) -> LedgerLine {
        LedgerLine {
            hour: h(hour),
            key: key.into(),
            workspace: None,
            model: "deepseek-r1".into(),
            token_type: "output_token".into(),
            tokens,
            yuan: d(yuan),
            calls: 1,
            estimated_calls: 0,
        }
    }

    fn bill(hour: &str, key: &str, tokens: u64, amount: &str) -> BillLine {
        BillLine {
            hour: h(hour),
            key_id: Some(key.into()).filter(|k: &String| !k.is_empty()),
            workspace: "llm-a".into(),
            model: "deepseek-r1".into(),
            token_type: "output_token".into(),
            channel: "app".into(),
            tokens,
            amount: d(amount),
        }
    }

    const H5: &str = "2026-11-25T05:00:00Z";
    const H6: &str = "2026-11-25T06:00:00Z";
    const H7: &str = "2026-11-25T07:00:00Z";

    fn run(l: &[LedgerLine], b: &[BillLine]) -> Reconciliation {
        compare(h(H5), h(H7), l, b, None)
    }

    #[test]
    fn each_kind_of_difference_gets_its_verdict() {
        // Rounded per line within a cent: a match.
        let r = run(
            &[ledger(H5, "1", 1000, "0.016")],
            &[bill(H5, "1", 1000, "0.02")],
        );
        assert_eq!(r.hours[0].verdict, Verdict::Match);
        assert!(r.total_matches);
        // A row the ledger lost: tokens differ.
        let r = run(
            &[ledger(H5, "1", 1000, "0.016")],
            &[bill(H5, "1", 2000, "0.03")],
        );
        assert_eq!(r.hours[0].verdict, Verdict::TokenDrift);
        assert_eq!(r.hours[0].drift_yuan, d("-0.014"));
        // A wrong price: tokens agree, money does not.
        let r = run(
            &[ledger(H5, "1", 1000, "0.160")],
            &[bill(H5, "1", 1000, "0.02")],
        );
        assert_eq!(r.hours[0].verdict, Verdict::MoneyDrift);
        assert_eq!(r.drift_by_model["deepseek-r1"], d("0.140"));
        assert!(!r.total_matches);
        // Traffic that bypassed the sidecar (another key) and a console call (no key).
        let r = run(
            &[ledger(H5, "1", 1000, "0.016")],
            &[
                bill(H5, "1", 1000, "0.02"),
                bill(H5, "2", 500, "0.01"),
                bill(H5, "", 9, "0.00"),
            ],
        );
        assert_eq!(r.hours[0].verdict, Verdict::OnlyInBill);
        let kinds: Vec<_> = r.hours[0]
            .lines
            .iter()
            .map(|l| (l.key_id.as_str(), l.verdict))
            .collect();
        assert_eq!(
            kinds,
            [
                ("", Verdict::OnlyInBill),
                ("1", Verdict::Match),
                ("2", Verdict::OnlyInBill)
            ]
        );
        // A line the bill does not have.
        let r = run(&[ledger(H5, "1", 1000, "0.016")], &[]);
        assert_eq!(r.hours[0].verdict, Verdict::OnlyInLedger);
    }

    #[test]
    fn a_call_booked_in_the_next_hour_is_a_match_not_two_drifts() {
        let l = [
            ledger(H5, "1", 3000, "0.048"),
            ledger(H6, "1", 1000, "0.016"),
        ];
        let b = [bill(H5, "1", 2000, "0.03"), bill(H6, "1", 2000, "0.03")];
        let r = run(&l, &b);
        assert_eq!(
            r.hours.iter().map(|h| h.verdict).collect::<Vec<_>>(),
            [Verdict::Match, Verdict::Match]
        );
        assert_eq!(r.hours[0].lines[0].spilled_tokens, 1000);
        assert_eq!(r.hours[1].lines[0].spilled_tokens, -1000);
        assert_eq!(r.hours[0].ledger_yuan, d("0.032"));
        // Booked past the period's end: the hour after `to` is read for it.
        let l = [ledger(H6, "1", 1000, "0.016")];
        let b = [bill(H7, "1", 1000, "0.02")];
        let r = run(&l, &b);
        assert_eq!(r.hours.len(), 1);
        assert_eq!(r.hours[0].verdict, Verdict::Match);
        // A deficit is never carried backwards: the bill cannot book a call before it happened.
        let r = run(
            &[ledger(H6, "1", 1000, "0.016")],
            &[bill(H5, "1", 1000, "0.02")],
        );
        assert_eq!(
            r.hours.iter().map(|h| h.verdict).collect::<Vec<_>>(),
            [Verdict::OnlyInBill, Verdict::OnlyInLedger]
        );
    }

    #[test]
    fn estimated_lines_say_so() {
        let mut l = ledger(H5, "1", 1200, "0.019");
        l.estimated_calls = 1;
        let r = run(&[l], &[bill(H5, "1", 1000, "0.02")]);
        assert_eq!(r.hours[0].verdict, Verdict::Estimated);
    }

    #[test]
    fn workspaces_join_only_when_the_default_one_is_known() {
        let mut other = ledger(H5, "1", 1000, "0.016");
        other.workspace = Some("llm-b".into());
        let b = [bill(H5, "1", 1000, "0.02")];
        assert_eq!(run(&[other.clone()], &b).hours[0].verdict, Verdict::Match);
        let r = compare(h(H5), h(H7), &[other], &b, Some("llm-a"));
        assert_eq!(r.hours[0].verdict, Verdict::OnlyInBill);
        let r = compare(
            h(H5),
            h(H7),
            &[ledger(H5, "1", 1000, "0.016")],
            &b,
            Some("llm-a"),
        );
        assert_eq!(r.hours[0].verdict, Verdict::Match);
    }
}
