//! The SQL of budgets: spent per window from the bill and the ledger, which calls the ledger holds, and the
//! threshold alerts (recorded once, delivered through `budget_alerts`).
//!
//! Spent in a window is read from `hourly_bill` for the hours up to the one before the running hour (the
//! roller keeps those within a second of the ledger) and from `usage_ledger` for the last two hours, so a
//! month's refresh reads a month of bill rows and two hours of calls, never the month's calls. A budget scoped
//! to an `end_user` (which the bill does not carry) reads the ledger for its whole window.

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

/// Reads, in one repeatable-read snapshot, each budget's spent in its window, which of `ids` the ledger
/// holds, and the alerts already raised.
pub async fn refresh(
    pool: &PgPool,
    budgets: &[Budget],
    windows: &[(DateTime<Utc>, DateTime<Utc>)],
    open_hour: DateTime<Utc>,
    ids: &[Uuid],
) -> Result<Refresh, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let mut out = Refresh::default();
    for (b, (start, end)) in budgets.iter().zip(windows) {
        let cut = if b.scope.end_user.is_some() {
            *start
        } else {
            (open_hour - chrono::Duration::hours(1)).clamp(*start, *end)
        };
        let spent: Decimal = sqlx::query_scalar(
            "SELECT
               (SELECT coalesce(sum(cost_total), 0) FROM hourly_bill
                WHERE billing_hour >= $1 AND billing_hour < $2
                  AND ($4::text IS NULL OR model = $4) AND ($5::text IS NULL OR project = $5)
                  AND ($6::text IS NULL OR key_fingerprint = $6))
             + (SELECT coalesce(sum(cost_total), 0) FROM usage_ledger
                WHERE billing_hour >= $2 AND billing_hour < $3
                  AND ($4::text IS NULL OR model = $4) AND ($5::text IS NULL OR project = $5)
                  AND ($6::text IS NULL OR key_fingerprint = $6) AND ($7::text IS NULL OR end_user = $7))",
        )
        .bind(start)
        .bind(cut)
        .bind(end)
        .bind(&b.scope.model)
        .bind(&b.scope.project)
        .bind(&b.scope.key_fingerprint)
        .bind(&b.scope.end_user)
        .fetch_one(&mut *tx)
        .await?;
        out.spent.push((*start, spent));
    }
    if !ids.is_empty() {
        out.in_ledger =
            sqlx::query_scalar("SELECT call_id FROM usage_ledger WHERE call_id = ANY($1)")
                .bind(ids)
                .fetch_all(&mut *tx)
                .await?;
    }
    let names: Vec<&str> = budgets.iter().map(|b| b.name.as_str()).collect();
    let starts: Vec<DateTime<Utc>> = windows.iter().map(|w| w.0).collect();
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

/// The alert of a crossing, as POSTed to `--alert-webhook`.
pub fn payload(c: &Crossing, tz: chrono_tz::Tz) -> serde_json::Value {
    use crate::billing::report::{local, money};
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
    let mut tx = pool.begin().await?;
    let due: Option<(String, DateTime<Utc>, Decimal, serde_json::Value, i32)> = sqlx::query_as(
        "SELECT budget, window_start, threshold, payload, attempts FROM budget_alerts
         WHERE delivered_at IS NULL AND next_attempt_at <= $1
         ORDER BY raised_at LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((budget, window_start, threshold, payload, attempts)) = due else {
        return Ok(None);
    };
    let key = format!(
        "{budget}/{}/{}",
        window_start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        crate::billing::report::money(threshold)
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
        "UPDATE budget_alerts SET attempts = attempts + 1,
            delivered_at = CASE WHEN $4 THEN $5 END, next_attempt_at = $6, last_error = $7
         WHERE budget = $1 AND window_start = $2 AND threshold = $3",
    )
    .bind(&budget)
    .bind(window_start)
    .bind(threshold)
    .bind(result.is_ok())
    .bind(now)
    .bind(now + backoff)
    .bind(result.as_ref().err())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(result))
}
