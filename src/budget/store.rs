//! The SQL of budgets: their definitions, spent per window from the counters, which calls the ledger holds,
//! and the threshold alerts (recorded once, delivered through `budget_alerts`).
//!
//! **Spent** in a window is one row of `budget_spent` per budget definition: seeded once per window from the
//! rollups (`budget_windows()`, never the ledger) and moved by the triggers of each ledger insert and each price
//! correction, in their transactions (migrations …007 and …012). So a refresh reads one row per budget, whatever
//! the window's length or the ledger's size, and the counter is the ledger's effective cost exactly.

use super::tracker::Crossing;
use super::Budget;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

/// What one refresh read, in one snapshot.
#[derive(Debug, Default)]
pub struct Refresh {
    /// Per budget: the window counted and the ledger's spent in it.
    pub spent: Vec<(DateTime<Utc>, Decimal)>,
    /// Which of the asked call ids the ledger holds.
    pub in_ledger: Vec<Uuid>,
    /// Thresholds already raised in those windows (by any sidecar): (budget, window start, threshold).
    pub raised: Vec<(String, DateTime<Utc>, Decimal)>,
}

/// Writes the budgets' definitions (`defs[i]` is budget i's; a definition another sidecar wrote is the same by
/// construction).
pub async fn publish(
    pool: &PgPool,
    budgets: &[Budget],
    defs: &[String],
    tz: chrono_tz::Tz,
) -> Result<(), sqlx::Error> {
    for (b, def) in budgets.iter().zip(defs) {
        sqlx::query(
            "INSERT INTO budget_defs (def_id, name, period, timezone, model, project, key_fingerprint, end_user)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(def)
        .bind(&b.name)
        .bind(b.period.as_str())
        .bind(tz.name())
        .bind(&b.scope.model)
        .bind(&b.scope.project)
        .bind(&b.scope.key_fingerprint)
        .bind(&b.scope.end_user)
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Each budget's spent in its window (its counter, created and seeded from the rollups if this is the window's
/// first read), which of `ids` the ledger holds (their billing hours are `oldest` or later), and the alerts
/// already raised — the three in one repeatable-read snapshot.
pub async fn refresh(
    pool: &PgPool,
    budgets: &[Budget],
    defs: &[String],
    windows: &[(DateTime<Utc>, DateTime<Utc>)],
    ids: &[Uuid],
    oldest: Option<DateTime<Utc>>,
) -> Result<Refresh, sqlx::Error> {
    let starts: Vec<DateTime<Utc>> = windows.iter().map(|w| w.0).collect();
    let ends: Vec<DateTime<Utc>> = windows.iter().map(|w| w.1).collect();
    sqlx::query("SELECT budget_windows($1, $2, $3)")
        .bind(defs)
        .bind(&starts)
        .bind(&ends)
        .execute(pool)
        .await?;
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let counters: Vec<(String, DateTime<Utc>, Decimal)> = sqlx::query_as(
        "SELECT s.def_id, s.window_start, s.spent FROM budget_spent s
         JOIN unnest($1::text[], $2::timestamptz[]) AS w(def_id, window_start) USING (def_id, window_start)",
    )
    .bind(defs)
    .bind(&starts)
    .fetch_all(&mut *tx)
    .await?;
    let mut out = Refresh::default();
    for (def, start) in defs.iter().zip(&starts) {
        let spent = counters
            .iter()
            .find(|(d, s, _)| d == def && s == start)
            .map(|c| c.2)
            .ok_or_else(|| sqlx::Error::RowNotFound)?;
        out.spent.push((*start, spent));
    }
    if let (false, Some(oldest)) = (ids.is_empty(), oldest) {
        out.in_ledger = sqlx::query_scalar(
            "SELECT call_id FROM usage_ledger WHERE call_id = ANY($1) AND billing_hour >= $2",
        )
        .bind(ids)
        .bind(oldest)
        .fetch_all(&mut *tx)
        .await?;
    }
    let names: Vec<&str> = budgets.iter().map(|b| b.name.as_str()).collect();
    out.raised = sqlx::query_as(
        "SELECT budget, window_start, threshold FROM budget_alerts
         WHERE budget = ANY($1) AND window_start = ANY($2)",
    )
    .bind(&names)
    .bind(&starts)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(out)
}

/// Counters of windows that ended more than a day ago: no admission or refresh reads them any more.
pub async fn prune(pool: &PgPool, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM budget_spent WHERE window_end < $1")
        .bind(now - chrono::Duration::days(1))
        .execute(pool)
        .await?;
    Ok(())
}

/// The alert of a crossing, as POSTed to `--alert-webhook`.
pub fn payload(c: &Crossing, tz: chrono_tz::Tz) -> serde_json::Value {
    use crate::calendar::{local, money};
    serde_json::json!({
        "budget": c.budget.name,
        "scope": c.budget.scope,
        "period": c.budget.period.as_str(),
        "action": c.budget.action.as_str(),
        "window_start": local(c.window_start, tz),
        "window_end": local(c.window_end, tz),
        "limit_yuan": money(c.budget.limit),
        "spent_yuan": money(c.spent),
        "threshold": money(c.threshold),
    })
}

/// Records a crossing; `true` when this call recorded it (no sidecar had before): the caller raises it.
/// Without a webhook to deliver to, it is recorded as delivered.
pub async fn record(
    pool: &PgPool,
    c: &Crossing,
    payload: &serde_json::Value,
    now: DateTime<Utc>,
    deliver: bool,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO budget_alerts (budget, window_start, threshold, window_end, payload, raised_at,
            next_attempt_at, delivered_at)
         VALUES ($1, $2, $3, $4, $5, $6, $6, CASE WHEN $7 THEN NULL ELSE $6 END)
         ON CONFLICT DO NOTHING",
    )
    .bind(&c.budget.name)
    .bind(c.window_start)
    .bind(c.threshold)
    .bind(c.window_end)
    .bind(payload)
    .bind(now)
    .bind(deliver)
    .execute(pool)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Delivers one due alert through `hook` (taken under `FOR UPDATE SKIP LOCKED`, marked in the same
/// transaction). `None`: nothing due; `Some(Err)`: the POST failed (retried after a backoff).
pub async fn deliver_one(
    pool: &PgPool,
    hook: &crate::webhook::Webhook,
    now: DateTime<Utc>,
) -> Result<Option<Result<(), String>>, sqlx::Error> {
    // Claim (one short transaction), POST with nothing held, record the outcome in a second one.
    let lease =
        now + chrono::Duration::from_std(crate::billing::delivery::LEASE).unwrap_or_default();
    let due: Option<(String, DateTime<Utc>, Decimal, serde_json::Value, i32)> = sqlx::query_as(
        "UPDATE budget_alerts a SET lease_until = $2
         FROM (SELECT budget, window_start, threshold FROM budget_alerts
               WHERE delivered_at IS NULL AND next_attempt_at <= $1 AND (lease_until IS NULL OR lease_until <= $1)
               ORDER BY raised_at LIMIT 1 FOR UPDATE SKIP LOCKED) due
         WHERE a.budget = due.budget AND a.window_start = due.window_start AND a.threshold = due.threshold
         RETURNING a.budget, a.window_start, a.threshold, a.payload, a.attempts",
    )
    .bind(now)
    .bind(lease)
    .fetch_optional(pool)
    .await?;
    let Some((budget, window_start, threshold, payload, attempts)) = due else {
        return Ok(None);
    };
    let key = format!(
        "{budget}/{}/{}",
        window_start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        crate::calendar::money(threshold)
    );
    let headers = [(
        http::HeaderName::from_static("idempotency-key"),
        http::HeaderValue::from_str(&key).unwrap_or(http::HeaderValue::from_static("invalid")),
    )];
    let body = bytes::Bytes::from(payload.to_string());
    let result = hook
        .post_json(body, &headers)
        .await
        .map_err(|e| e.to_string());
    let backoff =
        chrono::Duration::seconds(1i64 << attempts.clamp(0, 8)).min(chrono::Duration::minutes(5));
    sqlx::query(
        "UPDATE budget_alerts SET attempts = attempts + 1, lease_until = NULL,
            delivered_at = CASE WHEN $4 THEN $5 END, next_attempt_at = $6, last_error = $7
         WHERE budget = $1 AND window_start = $2 AND threshold = $3 AND lease_until = $8",
    )
    .bind(&budget)
    .bind(window_start)
    .bind(threshold)
    .bind(result.is_ok())
    .bind(now)
    .bind(now + backoff)
    .bind(result.as_ref().err())
    .bind(lease)
    .execute(pool)
    .await?;
    Ok(Some(result))
}
