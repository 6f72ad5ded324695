//! A reconciliation as a table (a terminal), JSON or CSV (pure). Times in the billing zone with its offset,
//! money as exact decimals.

use super::compare::{Reconciliation, Verdict};
use crate::billing::report::Format;
use crate::calendar::{local, money};
use chrono_tz::Tz;
use std::collections::BTreeMap;

/// `r` in `format` (HTML is not offered: a table, JSON or CSV).
pub fn render(r: &Reconciliation, format: Format, tz: Tz) -> String {
    match format {
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&json(r, tz)).unwrap_or_default();
            s.push('\n');
            s
        }
        Format::Csv => csv(r, tz),
        Format::Table | Format::Html => table(r, tz),
    }
}

/// How many hours got each verdict.
pub fn verdict_counts(r: &Reconciliation) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for h in &r.hours {
        *counts.entry(h.verdict.as_str()).or_default() += 1;
    }
    counts
}

fn json(r: &Reconciliation, tz: Tz) -> serde_json::Value {
    let hours: Vec<_> = r
        .hours
        .iter()
        .map(|h| {
            let lines: Vec<_> = h
                .lines
                .iter()
                .map(|l| {
                    serde_json::json!({
                        "key_id": l.key_id,
                        "workspace": l.workspace,
                        "model": l.model,
                        "token_type": l.token_type,
                        "verdict": l.verdict.as_str(),
                        "ledger_tokens": l.ledger_tokens,
                        "bill_tokens": l.bill_tokens,
                        "ledger_yuan": money(l.ledger_yuan),
                        "bill_yuan": money(l.bill_yuan),
                        "spilled_tokens": l.spilled_tokens,
                        "estimated_calls": l.estimated_calls,
                    })
                })
                .collect();
            serde_json::json!({
                "hour": local(h.hour, tz),
                "verdict": h.verdict.as_str(),
                "ledger_yuan": money(h.ledger_yuan),
                "bill_yuan": money(h.bill_yuan),
                "drift_yuan": money(h.drift_yuan),
                "lines": lines,
            })
        })
        .collect();
    serde_json::json!({
        "from": local(r.from, tz),
        "to": local(r.to, tz),
        "verdicts": verdict_counts(r),
        "ledger_yuan": money(r.ledger_yuan),
        "bill_yuan": money(r.bill_yuan),
        "total_matches": r.total_matches,
        "drift_by_model": r.drift_by_model.iter().map(|(m, d)| (m.clone(), money(*d))).collect::<BTreeMap<_, _>>(),
        "hours": hours,
    })
}

/// One CSV row per compared line (with its hour's verdict), then nothing else: a spreadsheet's input.
fn csv(r: &Reconciliation, tz: Tz) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record([
        "hour",
        "hour_verdict",
        "key_id",
        "workspace",
        "model",
        "token_type",
        "verdict",
        "ledger_tokens",
        "bill_tokens",
        "ledger_yuan",
        "bill_yuan",
        "spilled_tokens",
        "estimated_calls",
    ]);
    for h in &r.hours {
        for l in &h.lines {
            let _ = w.write_record([
                local(h.hour, tz),
                h.verdict.as_str().to_owned(),
                l.key_id.clone(),
                l.workspace.clone(),
                l.model.clone(),
                l.token_type.clone(),
                l.verdict.as_str().to_owned(),
                l.ledger_tokens.to_string(),
                l.bill_tokens.to_string(),
                money(l.ledger_yuan),
                money(l.bill_yuan),
                l.spilled_tokens.to_string(),
                l.estimated_calls.to_string(),
            ]);
        }
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

/// Hours, then the lines that are not a match, then the totals.
fn table(r: &Reconciliation, tz: Tz) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<26} {:<15} {:>14} {:>14} {:>14}\n",
        "hour", "verdict", "ledger_yuan", "bill_yuan", "drift_yuan"
    ));
    for h in &r.hours {
        out.push_str(&format!(
            "{:<26} {:<15} {:>14} {:>14} {:>14}\n",
            local(h.hour, tz),
            h.verdict.as_str(),
            money(h.ledger_yuan),
            money(h.bill_yuan),
            money(h.drift_yuan)
        ));
    }
    let odd: Vec<_> = r
        .hours
        .iter()
        .flat_map(|h| h.lines.iter())
        .filter(|l| l.verdict != Verdict::Match || l.spilled_tokens != 0)
        .collect();
    if !odd.is_empty() {
        out.push_str("\nlines that differ (or were booked in the next hour):\n");
        for l in odd {
            out.push_str(&format!(
                "  {} key {} ws {} {} {}: {} — tokens {} vs {}, yuan {} vs {}{}{}\n",
                local(l.hour, tz),
                if l.key_id.is_empty() {
                    "(none)"
                } else {
                    &l.key_id
                },
                l.workspace,
                l.model,
                l.token_type,
                l.verdict.as_str(),
                l.ledger_tokens,
                l.bill_tokens,
                money(l.ledger_yuan),
                money(l.bill_yuan),
                if l.spilled_tokens > 0 {
                    format!(", {} tokens booked in the next hour", l.spilled_tokens)
                } else if l.spilled_tokens < 0 {
                    format!(", {} tokens from the hour before", -l.spilled_tokens)
                } else {
                    String::new()
                },
                if l.estimated_calls > 0 {
                    format!(", {} estimated calls", l.estimated_calls)
                } else {
                    String::new()
                }
            ));
        }
    }
    let counts: Vec<String> = verdict_counts(r)
        .iter()
        .map(|(v, n)| format!("{v} {n}"))
        .collect();
    out.push_str(&format!(
        "\n{} hours: {}; ledger {} vs bill {} ({})\n",
        r.hours.len(),
        counts.join(", "),
        money(r.ledger_yuan),
        money(r.bill_yuan),
        if r.total_matches {
            "the total matches to the cent"
        } else {
            "the totals differ"
        }
    ));
    out
}
