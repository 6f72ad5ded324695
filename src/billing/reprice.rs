//! `deepseek-meter reprice --from --to --prices FILE`: when the price book was wrong for a period, each call
//! of the period whose cost the corrected book gives differently gets one adjustment in `cost_adjustments`
//! (old and new price version, old and new cost, the delta). The ledger is never touched (its append-only
//! trigger still holds); the roller adds the adjustments into the hourly bill, and every hour that changes is
//! marked for it — a closed hour closes again with its revision bumped, which re-delivers its report.
//!
//! A call's effective cost is its `cost_total` plus the deltas of its earlier adjustments (the view
//! `effective_costs`), so a second run with the same book finds nothing to change. In the same transaction as
//! the adjustments, their deltas are added to the rollups (the hourly bill, spent per end user, usage per key
//! with the input money apart) — the bill, reports, budgets and reconciliation all read the corrected money —
//! and the budget counters move by a trigger. One run is one transaction under an advisory lock: two runs
//! cannot interleave, and a failed run leaves nothing behind.

use crate::pricing::PriceBook;
use crate::usage::Tokens;
use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

/// The advisory lock key of `reprice` ("dsmrepr" in ASCII).
pub const REPRICE_LOCK: i64 = 0x0064_736d_7265_7072;

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Repriced {
    pub run: Uuid,
    /// Calls read in the period.
    pub calls: u64,
    /// Calls adjusted.
    pub adjusted: u64,
    /// Calls the corrected book has no price for (left as they are).
    pub unpriced: u64,
    /// Σ delta, CNY.
    pub delta: Decimal,
    /// Billing hours whose bill changes.
    pub hours: u64,
}

/// One call as the ledger and its earlier adjustments have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    pub finished_at: DateTime<Utc>,
    pub model: String,
    pub tokens: Tokens,
    /// The price version and period in effect (the newest adjustment's, else the ledger's).
    pub version: Option<String>,
    pub period: Option<String>,
    /// The effective cost (`None`: never priced), and its input part.
    pub cost: Option<Decimal>,
    pub cost_input: Option<Decimal>,
}

/// What the corrected book says a call costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correction {
    pub version: String,
    pub period: Option<String>,
    pub cost: Decimal,
    pub cost_input: Decimal,
}

/// One call to adjust: as it was, and as corrected.
struct Adjustment {
    call_id: Uuid,
    project: Option<String>,
    key: Option<String>,
    end_user: Option<String>,
    workspace: Option<String>,
    api_key_id: Option<String>,
    call: Priced,
    new: Correction,
}

impl Adjustment {
    /// The old cost leaving the rollup's unsplit money: a priced call written before `cost_input` existed
    /// (its effective input part unknown) is split from now on.
    fn delta_unsplit(&self) -> Decimal {
        match (self.call.cost, self.call.cost_input) {
            (Some(cost), None) => -cost,
            _ => Decimal::ZERO,
        }
    }
}

/// The correction `book` asks for, if any: the call's price by the book (its entry in force when the call
/// finished, and the period of its billing hour) when that gives another cost. Pure.
pub fn correction(book: &PriceBook, call: &Priced) -> Option<Correction> {
    let price = book.price_at(&call.model, call.finished_at)?;
    let cost = price.cost(&call.tokens);
    (call.cost != Some(cost)).then(|| Correction {
        version: price.version().to_owned(),
        period: price.period.map(str::to_owned),
        cost,
        cost_input: price.rates.input_cost(&call.tokens),
    })
}

/// Reprices `[from, to)` (billing hours) with `book`. `progress` hears each hour done (hours done, hours).
pub async fn reprice(
    pool: &PgPool,
    book: &PriceBook,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Repriced, sqlx::Error> {
    let mut out = Repriced {
        run: Uuid::now_v7(),
        ..Repriced::default()
    };
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(REPRICE_LOCK)
        .execute(&mut *tx)
        .await?;
    // The hours with calls, from the bill's hour list (never the ledger).
    let hours: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT billing_hour FROM bill_hours WHERE billing_hour >= $1 AND billing_hour < $2 ORDER BY 1",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&mut *tx)
    .await?;
    let total = hours.len() as u64;
    for (done, hour) in hours.iter().enumerate() {
        // Each call with its effective cost and price (its newest adjustment's, else the ledger's).
        let rows: Vec<CallRow> = sqlx::query_as(
            "SELECT l.call_id, l.finished_at, l.model, l.project, l.key_fingerprint, l.end_user, l.workspace,
                l.api_key_id, l.input_tokens,
                l.cached_tokens, l.cache_creation_tokens, l.output_tokens, l.reasoning_tokens,
                CASE WHEN a.call_id IS NULL THEN l.price_version ELSE a.version END AS version,
                CASE WHEN a.call_id IS NULL THEN l.price_period ELSE a.period END AS period,
                CASE WHEN l.cost_total IS NULL AND a.delta IS NULL THEN NULL
                     ELSE coalesce(l.cost_total, 0) + coalesce(a.delta, 0) END AS cost,
                CASE WHEN l.cost_input IS NULL AND a.delta_input IS NULL THEN NULL
                     ELSE coalesce(l.cost_input, 0) + coalesce(a.delta_input, 0) END AS cost_input
             FROM usage_ledger l
             LEFT JOIN (SELECT call_id, sum(delta) AS delta, sum(delta_input) AS delta_input,
                               (array_agg(new_price_version ORDER BY adjustment_id DESC))[1] AS version,
                               (array_agg(new_price_period ORDER BY adjustment_id DESC))[1] AS period
                        FROM cost_adjustments WHERE billing_hour = $1 GROUP BY call_id) a USING (call_id)
             WHERE l.billing_hour = $1",
        )
        .bind(hour)
        .fetch_all(&mut *tx)
        .await?;
        let mut adj: Vec<Adjustment> = Vec::new();
        for row in rows {
            out.calls += 1;
            let call = row.priced();
            if book.price_at(&call.model, call.finished_at).is_none() {
                out.unpriced += 1;
                continue;
            }
            if let Some(new) = correction(book, &call) {
                adj.push(Adjustment {
                    call_id: row.call_id,
                    project: row.project,
                    key: row.key_fingerprint,
                    end_user: row.end_user,
                    workspace: row.workspace,
                    api_key_id: row.api_key_id,
                    new,
                    call,
                });
            }
        }
        if adj.is_empty() {
            progress(done as u64 + 1, total);
            continue;
        }
        out.hours += 1;
        for a in &adj {
            out.adjusted += 1;
            out.delta += a.new.cost - a.call.cost.unwrap_or_default();
        }
        sqlx::query(
            "INSERT INTO cost_adjustments (call_id, billing_hour, model, project, key_fingerprint,
                old_price_version, new_price_version, old_price_period, new_price_period, old_cost, new_cost,
                delta, delta_input, reprice_run, created_at, end_user, workspace, api_key_id, delta_unsplit)
             SELECT c, $2, m, p, k, ov, nv, op, np, oc, nc, nc - coalesce(oc, 0), ni - coalesce(oi, 0), $14, $15,
                    u, w, a, du
             FROM UNNEST($1::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                         $9::text[], $10::numeric[], $11::numeric[], $12::numeric[], $13::numeric[],
                         $16::text[], $17::text[], $18::text[], $19::numeric[])
                  AS x(c, m, p, k, ov, nv, op, np, oc, nc, oi, ni, u, w, a, du)",
        )
        .bind(adj.iter().map(|a| a.call_id).collect::<Vec<_>>())
        .bind(hour)
        .bind(adj.iter().map(|a| a.call.model.clone()).collect::<Vec<_>>())
        .bind(adj.iter().map(|a| a.project.clone()).collect::<Vec<_>>())
        .bind(adj.iter().map(|a| a.key.clone()).collect::<Vec<_>>())
        .bind(adj.iter().map(|a| a.call.version.clone()).collect::<Vec<_>>())
        .bind(adj.iter().map(|a| a.new.version.clone()).collect::<Vec<_>>())
        .bind(adj.iter().map(|a| a.call.period.clone()).collect::<Vec<_>>())
        .bind(adj.iter().map(|a| a.new.period.clone()).collect::<Vec<_>>())
        .bind(adj.iter().map(|a| a.call.cost).collect::<Vec<_>>())
        .bind(adj.iter().map(|a| a.new.cost).collect::<Vec<_>>())
        .bind(adj.iter().map(|a| a.call.cost_input).collect::<Vec<_>>())
        .bind(adj.iter().map(|a| a.new.cost_input).collect::<Vec<_>>())
        .bind(out.run)
        .bind(now)
        .bind(adj.iter().map(|a| a.end_user.clone()).collect::<Vec<_>>())
        .bind(adj.iter().map(|a| a.workspace.clone()).collect::<Vec<_>>())
        .bind(adj.iter().map(|a| a.api_key_id.clone()).collect::<Vec<_>>())
        .bind(adj.iter().map(Adjustment::delta_unsplit).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        add_to_rollups(&mut tx, *hour, out.run).await?;
        sqlx::query("INSERT INTO bill_dirty_hours (billing_hour) VALUES ($1)")
            .bind(hour)
            .execute(&mut *tx)
            .await?;
        progress(done as u64 + 1, total);
    }
    tx.commit().await?;
    Ok(out)
}

/// Adds one run's corrections of one hour to the rollups, their rows locked first in the order the ledger
/// insert locks them (so a concurrent insert cannot deadlock with the run).
async fn add_to_rollups(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    hour: DateTime<Utc>,
    run: Uuid,
) -> Result<(), sqlx::Error> {
    for sql in [
        "SELECT 1 FROM hourly_bill WHERE billing_hour = $1 ORDER BY model, project, key_fingerprint FOR UPDATE",
        "UPDATE hourly_bill b SET cost_total = b.cost_total + d.delta, adjustment_yuan = b.adjustment_yuan + d.delta
         FROM (SELECT model, project, key_fingerprint, sum(delta) AS delta FROM cost_adjustments
               WHERE billing_hour = $1 AND reprice_run = $2 GROUP BY 1, 2, 3) d
         WHERE b.billing_hour = $1 AND b.model = d.model AND b.project IS NOT DISTINCT FROM d.project
           AND b.key_fingerprint IS NOT DISTINCT FROM d.key_fingerprint",
        "SELECT 1 FROM hourly_end_user_cost WHERE billing_hour = $1
         ORDER BY end_user, model, project, key_fingerprint FOR UPDATE",
        "UPDATE hourly_end_user_cost u SET cost = u.cost + d.delta
         FROM (SELECT end_user, model, project, key_fingerprint, sum(delta) AS delta FROM cost_adjustments
               WHERE billing_hour = $1 AND reprice_run = $2 AND end_user IS NOT NULL GROUP BY 1, 2, 3, 4) d
         WHERE u.billing_hour = $1 AND u.end_user = d.end_user AND u.model = d.model
           AND u.project IS NOT DISTINCT FROM d.project AND u.key_fingerprint IS NOT DISTINCT FROM d.key_fingerprint",
        "SELECT 1 FROM hourly_key_usage WHERE billing_hour = $1
         ORDER BY api_key_id, key_fingerprint, workspace, model FOR UPDATE",
        "UPDATE hourly_key_usage k SET cost = k.cost + d.delta, cost_input = k.cost_input + d.delta_input,
             unsplit_cost = k.unsplit_cost + d.delta_unsplit
         FROM (SELECT api_key_id, key_fingerprint, workspace, model, sum(delta) AS delta,
                      coalesce(sum(delta_input), 0) AS delta_input, sum(delta_unsplit) AS delta_unsplit
               FROM cost_adjustments WHERE billing_hour = $1 AND reprice_run = $2 GROUP BY 1, 2, 3, 4) d
         WHERE k.billing_hour = $1 AND k.api_key_id IS NOT DISTINCT FROM d.api_key_id
           AND k.key_fingerprint IS NOT DISTINCT FROM d.key_fingerprint
           AND k.workspace IS NOT DISTINCT FROM d.workspace AND k.model = d.model",
    ] {
        sqlx::query(sql).bind(hour).bind(run).execute(&mut **tx).await?;
    }
    Ok(())
}

/// A call of the period as `reprice` reads it.
#[derive(sqlx::FromRow)]
struct CallRow {
    call_id: Uuid,
    finished_at: DateTime<Utc>,
    model: String,
    project: Option<String>,
    key_fingerprint: Option<String>,
    end_user: Option<String>,
    workspace: Option<String>,
    api_key_id: Option<String>,
    input_tokens: i64,
    cached_tokens: i64,
    cache_creation_tokens: i64,
    output_tokens: i64,
    reasoning_tokens: i64,
    version: Option<String>,
    period: Option<String>,
    cost: Option<Decimal>,
    cost_input: Option<Decimal>,
}

impl CallRow {
    fn priced(&self) -> Priced {
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let tokens = Tokens {
            input: count(self.input_tokens),
            cached: count(self.cached_tokens),
            cache_creation: count(self.cache_creation_tokens),
            output: count(self.output_tokens),
            reasoning: count(self.reasoning_tokens),
        };
        Priced {
            finished_at: self.finished_at,
            model: self.model.clone(),
            tokens: tokens.clamp().0,
            version: self.version.clone(),
            period: self.period.clone(),
            cost: self.cost,
            cost_input: self.cost_input,
        }
    }
}

/// `[from, to)` must be whole billing hours in order (the hours a report names).
pub fn check_period(from: DateTime<Utc>, to: DateTime<Utc>) -> Result<(), String> {
    if from >= to {
        return Err("--to must be after --from".into());
    }
    if to - from > Duration::days(366) {
        return Err("a period of at most a year".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_corrected_only_when_the_book_gives_another_cost() {
        let book = PriceBook::builtin();
        let tokens = Tokens {
            input: 1000,
            output: 2000,
            reasoning: 1500,
            ..Tokens::default()
        };
        let at: DateTime<Utc> = "2026-11-25T05:00:00Z".parse().unwrap();
        let right = book.price_at("deepseek-r1", at).unwrap().cost(&tokens);
        let mut call = Priced {
            finished_at: at,
            model: "deepseek-r1".into(),
            tokens,
            version: Some("deepseek-r1@2025-01-20".into()),
            period: None,
            cost: Some(right),
            cost_input: None,
        };
        assert_eq!(correction(&book, &call), None);
        call.cost = Some(right * Decimal::TEN);
        let c = correction(&book, &call).unwrap();
        assert_eq!(c.cost, right);
        // 1000 input at 4 CNY per million.
        assert_eq!(c.cost_input, "0.004".parse::<Decimal>().unwrap());
        assert!(c.version.starts_with("deepseek-r1@"));
        call.cost = None; // unpriced before: priced now
        assert_eq!(correction(&book, &call).map(|c| c.cost), Some(right));
        call.model = "deepseek-unknown".into();
        assert_eq!(correction(&book, &call), None);
    }

    #[test]
    fn a_correction_carries_the_period_of_the_calls_billing_hour() {
        let book = PriceBook::builtin();
        let call = Priced {
            // 07:30 Beijing: off-peak.
            finished_at: "2026-11-24T23:30:00Z".parse().unwrap(),
            model: "deepseek-v4-flash-0731".into(),
            tokens: Tokens {
                input: 1_000_000,
                ..Tokens::default()
            },
            version: Some("deepseek-v4-flash-0731@2026-08-17".into()),
            period: Some("peak".into()),
            cost: Some(Decimal::from(3)),
            cost_input: Some(Decimal::from(3)),
        };
        let c = correction(&book, &call).unwrap();
        assert_eq!(c.period.as_deref(), Some("off-peak"));
        assert_eq!(
            (c.cost, c.cost_input),
            ("1.5".parse().unwrap(), "1.5".parse().unwrap())
        );
    }
}
