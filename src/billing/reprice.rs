//! `deepseek-meter reprice --from --to --prices FILE`: when the price book was wrong for a period, each call
//! of the period whose cost the corrected book gives differently gets one adjustment in `cost_adjustments`
//! (old and new price version, old and new cost, the delta). The ledger is never touched (its append-only
//! trigger still holds); the roller adds the adjustments into the hourly bill, and every hour that changes is
//! marked for it — a closed hour closes again with its revision bumped, which re-delivers its report.
//!
//! A call's effective cost is its `cost_total` plus the deltas of its earlier adjustments, so a second run with
//! the same book finds nothing to change. One run is one transaction under an advisory lock: two runs cannot
//! interleave, and a failed run leaves nothing behind.

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
    /// The price version in effect (the newest adjustment's, else the ledger's).
    pub version: Option<String>,
    /// The effective cost (`None`: never priced).
    pub cost: Option<Decimal>,
}

/// One call to adjust: as it was, and its new version and cost.
struct Adjustment {
    call_id: Uuid,
    project: Option<String>,
    key: Option<String>,
    call: Priced,
    new_version: String,
    new_cost: Decimal,
}

/// The correction `book` asks for, if any: (new version, new cost). Pure.
pub fn correction(book: &PriceBook, call: &Priced) -> Option<(String, Decimal)> {
    let price = book.price_at(&call.model, call.finished_at)?;
    let cost = price.cost(&call.tokens);
    (call.cost != Some(cost)).then(|| (price.version(), cost))
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
    let hours: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT DISTINCT billing_hour FROM usage_ledger WHERE billing_hour >= $1 AND billing_hour < $2 ORDER BY 1",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&mut *tx)
    .await?;
    let total = hours.len() as u64;
    type Row = (
        Uuid,
        DateTime<Utc>,
        String,
        Option<String>,
        Option<String>,
        i64,
        i64,
        i64,
        i64,
        Option<String>,
        Option<Decimal>,
    );
    for (done, hour) in hours.iter().enumerate() {
        // Each call with its effective cost and version (its newest adjustment's, else the ledger's).
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT l.call_id, l.finished_at, l.model, l.project, l.key_fingerprint, l.input_tokens,
                l.cached_tokens, l.output_tokens, l.reasoning_tokens,
                coalesce(a.version, l.price_version),
                CASE WHEN l.cost_total IS NULL AND a.delta IS NULL THEN NULL
                     ELSE coalesce(l.cost_total, 0) + coalesce(a.delta, 0) END
             FROM usage_ledger l
             LEFT JOIN (SELECT call_id, sum(delta) AS delta,
                               (array_agg(new_price_version ORDER BY adjustment_id DESC))[1] AS version
                        FROM cost_adjustments WHERE billing_hour = $1 GROUP BY call_id) a USING (call_id)
             WHERE l.billing_hour = $1",
        )
        .bind(hour)
        .fetch_all(&mut *tx)
        .await?;
        let mut adj: Vec<Adjustment> = Vec::new();
        for (
            call_id,
            finished_at,
            model,
            project,
            key,
            input,
            cached,
            output,
            reasoning,
            version,
            cost,
        ) in rows
        {
            out.calls += 1;
            let count = |n: i64| u64::try_from(n).unwrap_or(0);
            let (tokens, _) =
                Tokens::clamped(count(input), count(cached), count(output), count(reasoning));
            let call = Priced {
                finished_at,
                model,
                tokens,
                version,
                cost,
            };
            if book.price_at(&call.model, call.finished_at).is_none() {
                out.unpriced += 1;
                continue;
            }
            if let Some((new_version, new_cost)) = correction(book, &call) {
                adj.push(Adjustment {
                    call_id,
                    project,
                    key,
                    new_version,
                    new_cost,
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
            out.delta += a.new_cost - a.call.cost.unwrap_or_default();
        }
        sqlx::query(
            "INSERT INTO cost_adjustments (call_id, billing_hour, model, project, key_fingerprint,
                old_price_version, new_price_version, old_cost, new_cost, delta, reprice_run, created_at)
             SELECT c, $2, m, p, k, ov, nv, oc, nc, nc - coalesce(oc, 0), $10, $11
             FROM UNNEST($1::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::numeric[],
                         $9::numeric[]) AS x(c, m, p, k, ov, nv, oc, nc)",
        )
        .bind(adj.iter().map(|a| a.call_id).collect::<Vec<_>>())
        .bind(hour)
        .bind(adj.iter().map(|a| a.call.model.clone()).collect::<Vec<_>>())
        .bind(adj.iter().map(|a| a.project.clone()).collect::<Vec<_>>())
        .bind(adj.iter().map(|a| a.key.clone()).collect::<Vec<_>>())
        .bind(adj.iter().map(|a| a.call.version.clone()).collect::<Vec<_>>())
        .bind(adj.iter().map(|a| a.new_version.clone()).collect::<Vec<_>>())
        .bind(adj.iter().map(|a| a.call.cost).collect::<Vec<_>>())
        .bind(adj.iter().map(|a| a.new_cost).collect::<Vec<_>>())
        .bind(out.run)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO bill_dirty_hours (billing_hour) VALUES ($1)")
            .bind(hour)
            .execute(&mut *tx)
            .await?;
        progress(done as u64 + 1, total);
    }
    tx.commit().await?;
    Ok(out)
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
        let (tokens, _) = Tokens::clamped(1000, 0, 2000, 1500);
        let at: DateTime<Utc> = "2026-11-25T05:00:00Z".parse().unwrap();
        let right = book.price_at("deepseek-r1", at).unwrap().cost(&tokens);
        let mut call = Priced {
            finished_at: at,
            model: "deepseek-r1".into(),
            tokens,
            version: Some("deepseek-r1@2025-01-20".into()),
            cost: Some(right),
        };
        assert_eq!(correction(&book, &call), None);
        call.cost = Some(right * Decimal::TEN);
        let (version, cost) = correction(&book, &call).unwrap();
        assert_eq!(cost, right);
        assert!(version.starts_with("deepseek-r1@"));
        call.cost = None; // unpriced before: priced now
        assert_eq!(correction(&book, &call).map(|c| c.1), Some(right));
        call.model = "deepseek-unknown".into();
        assert_eq!(correction(&book, &call), None);
    }
}
