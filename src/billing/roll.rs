//! Rolling the hourly bill (DESIGN §5): each hour's state, and `hourly_model_bill` folded from `hourly_bill`.
//!
//! **The sums are kept where the rows are written.** The shipper's insert adds each batch's sums to
//! `hourly_bill` (and the other rollups) in the same statement as the rows (`crate::ledger::insert`), and
//! `reprice` adds its corrections the same way, so the bill is never behind the ledger and a roll never reads
//! the ledger: its cost per second is the bill rows of the hours that changed (models × projects × keys), not
//! their calls. Each insert also leaves a mark per billing hour (`bill_dirty_hours`); a roll takes the marks
//! (one statement, one snapshot), moves those hours' states, and refolds their per-model rows from
//! `hourly_bill` in a later statement, whose snapshot holds every sum whose mark was taken. A batch committed
//! after the take left its mark in place, so the next roll refolds its hour again.
//!
//! **The audit at close.** When an hour closes, it is recomputed once from the ledger (its calls, with their
//! price corrections: `effective_costs`) and compared with `hourly_bill`: a difference is recorded on the hour
//! (`bill_hours.audit_ok`, `audit_detail`), counted (`deepseek_meter_bill_audit_mismatches_total`) and alerted
//! on — never silently fixed, since a difference means a writer bypassed the insert or a rollup was edited.
//!
//! **One roller at a time** across the sidecars sharing a database: a roll runs inside a transaction that
//! first takes a transaction-scoped advisory lock ([`ROLLER_LOCK`]); a sidecar that cannot take it skips
//! the round (another one is rolling). The transaction makes a roll all-or-nothing: marks deleted by a roll
//! that fails come back with its rollback.
//!
//! **States.** An hour is `open` while it runs (by the app's clock), `provisional` once it has ended, and
//! `closed` once `--billing-grace` has passed since its end and no live sidecar holds unshipped records of it:
//! every sidecar's roller writes a heartbeat each round (`meter_instances`: when, and the billing hour of the
//! oldest record its shipper has read and not yet shipped); a heartbeat older than [`INSTANCE_STALE`] holds
//! nothing. A row that arrives for a closed hour (a journal
//! replayed after an outage) re-rolls it: its `revision` goes up by one and it closes again with a new
//! `closed_at`; nothing changes silently.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::time::Duration;

/// The advisory lock key of the roller (an arbitrary constant: "dsmbill" in ASCII).
pub const ROLLER_LOCK: i64 = 0x0064_736d_6269_6c6c;

/// How often each sidecar tries to roll (and writes its heartbeat).
pub const ROLL_EVERY: Duration = Duration::from_secs(1);

/// A sidecar whose heartbeat is older than this holds no hour open: it is gone, or cut off from the database
/// (its rows then arrive later, as a new revision of their hour).
pub const INSTANCE_STALE: Duration = Duration::from_secs(120);

/// An upsert's update of a per-model bill row: every sum and the hour's state, refolded (never added to).
const RECOMPUTED: &str = "calls = EXCLUDED.calls, unpriced_calls = EXCLUDED.unpriced_calls,
    estimated_calls = EXCLUDED.estimated_calls, input_tokens = EXCLUDED.input_tokens,
    cached_tokens = EXCLUDED.cached_tokens, cache_creation_tokens = EXCLUDED.cache_creation_tokens,
    price_period = EXCLUDED.price_period, reasoning_tokens = EXCLUDED.reasoning_tokens,
    answer_tokens = EXCLUDED.answer_tokens, output_tokens = EXCLUDED.output_tokens,
    cost_total = EXCLUDED.cost_total, adjustment_yuan = EXCLUDED.adjustment_yuan, state = EXCLUDED.state,
    revision = EXCLUDED.revision, closed_at = EXCLUDED.closed_at";

/// What one roll did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rolled {
    /// Another sidecar held the roller lock: nothing was done.
    pub skipped: bool,
    /// Hours refolded.
    pub hours: u64,
    /// Hours that closed in this roll (each audited against the ledger).
    pub closed: u64,
    /// Closed hours whose bill differs from their ledger, with what differs.
    pub mismatched: Vec<(DateTime<Utc>, String)>,
}

/// The hourly bill's writer and reader.
#[derive(Clone)]
pub struct Bill {
    pool: PgPool,
    grace: Duration,
}

impl Bill {
    pub fn new(pool: PgPool, grace: Duration) -> Bill {
        Bill { pool, grace }
    }

    /// This sidecar's heartbeat: seen at `now`, holding records from `oldest_unshipped` on (`None`: none).
    pub async fn heartbeat(
        &self,
        instance: uuid::Uuid,
        now: DateTime<Utc>,
        oldest_unshipped: Option<DateTime<Utc>>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO meter_instances (instance_id, last_seen, oldest_unshipped_hour) VALUES ($1, $2, $3)
             ON CONFLICT (instance_id) DO UPDATE SET last_seen = EXCLUDED.last_seen,
                oldest_unshipped_hour = EXCLUDED.oldest_unshipped_hour",
        )
        .bind(instance)
        .bind(now)
        .bind(oldest_unshipped)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One roll at `now` (the app's clock), with `open_hour` the billing hour running at `now`.
    pub async fn roll(
        &self,
        now: DateTime<Utc>,
        open_hour: DateTime<Utc>,
    ) -> Result<Rolled, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(ROLLER_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Ok(Rolled {
                skipped: true,
                ..Rolled::default()
            });
        }
        let hours: Vec<DateTime<Utc>> = sqlx::query_scalar(
            "WITH taken AS (DELETE FROM bill_dirty_hours RETURNING billing_hour)
             SELECT DISTINCT billing_hour FROM taken ORDER BY 1",
        )
        .fetch_all(&mut *tx)
        .await?;
        let grace = chrono::Duration::from_std(self.grace).unwrap_or(chrono::Duration::MAX);
        let stale = chrono::Duration::from_std(INSTANCE_STALE).unwrap_or(chrono::Duration::MAX);
        if !hours.is_empty() {
            // The hours' state rows: new ones start open or provisional; a closed hour is re-opened as
            // provisional with its revision bumped (it closes again below).
            sqlx::query(
                "INSERT INTO bill_hours (billing_hour, state, revision, rolled_at)
                 SELECT h, CASE WHEN h >= $2 THEN 'open' ELSE 'provisional' END, 0, $3 FROM UNNEST($1::timestamptz[]) h
                 ON CONFLICT (billing_hour) DO UPDATE SET
                    revision = bill_hours.revision + (bill_hours.state = 'closed')::int,
                    state = CASE WHEN bill_hours.state = 'closed' THEN 'provisional' ELSE bill_hours.state END,
                    closed_at = NULL,
                    rolled_at = EXCLUDED.rolled_at",
            )
            .bind(&hours)
            .bind(open_hour)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            // The per-model rows of those hours, refolded from the bill's rows (the bill has every committed
            // batch whose mark was taken: see the module doc).
            sqlx::query(&format!(
                "INSERT INTO hourly_model_bill (billing_hour, model, calls, unpriced_calls, estimated_calls,
                    input_tokens, cached_tokens, cache_creation_tokens, price_period, reasoning_tokens,
                    answer_tokens, output_tokens, cost_total, adjustment_yuan, state, revision, closed_at)
                 SELECT b.billing_hour, b.model, sum(b.calls), sum(b.unpriced_calls), sum(b.estimated_calls),
                    sum(b.input_tokens), sum(b.cached_tokens), sum(b.cache_creation_tokens), min(b.price_period),
                    sum(b.reasoning_tokens), sum(b.answer_tokens), sum(b.output_tokens), sum(b.cost_total),
                    sum(b.adjustment_yuan), h.state, h.revision, h.closed_at
                 FROM hourly_bill b JOIN bill_hours h USING (billing_hour)
                 WHERE b.billing_hour = ANY($1)
                 GROUP BY b.billing_hour, b.model, h.state, h.revision, h.closed_at
                 ON CONFLICT (billing_hour, model) DO UPDATE SET {RECOMPUTED}"
            ))
            .bind(&hours)
            .execute(&mut *tx)
            .await?;
        }
        // Ended hours become provisional; provisional hours past their grace close.
        let mut changed: Vec<DateTime<Utc>> = sqlx::query_scalar(
            "UPDATE bill_hours SET state = 'provisional' WHERE state = 'open' AND billing_hour < $1
             RETURNING billing_hour",
        )
        .bind(open_hour)
        .fetch_all(&mut *tx)
        .await?;
        let closed: Vec<DateTime<Utc>> = sqlx::query_scalar(
            "UPDATE bill_hours SET state = 'closed', closed_at = $1
             WHERE state = 'provisional' AND billing_hour + interval '1 hour' + $2 <= $1
               AND NOT EXISTS (SELECT 1 FROM meter_instances i
                               WHERE i.last_seen > $1 - $3 AND i.oldest_unshipped_hour <= bill_hours.billing_hour)
             RETURNING billing_hour",
        )
        .bind(now)
        .bind(grace)
        .bind(stale)
        .fetch_all(&mut *tx)
        .await?;
        changed.extend(&closed);
        changed.extend(&hours);
        if !changed.is_empty() {
            // The bill's rows carry their hour's state.
            for table in ["hourly_bill", "hourly_model_bill"] {
                sqlx::query(&format!(
                    "UPDATE {table} b SET state = h.state, revision = h.revision, closed_at = h.closed_at
                     FROM bill_hours h
                     WHERE b.billing_hour = h.billing_hour AND h.billing_hour = ANY($1)
                       AND (b.state, b.revision, b.closed_at) IS DISTINCT FROM (h.state, h.revision, h.closed_at)"
                ))
                .bind(&changed)
                .execute(&mut *tx)
                .await?;
            }
        }
        let mut mismatched = Vec::new();
        for hour in &closed {
            if let Some(detail) = audit(&mut tx, *hour, now).await? {
                mismatched.push((*hour, detail));
            }
        }
        tx.commit().await?;
        Ok(Rolled {
            skipped: false,
            hours: hours.len() as u64,
            closed: closed.len() as u64,
            mismatched,
        })
    }
}

/// The close-time audit of one hour: its bill rows against its calls (with their price corrections),
/// recorded on the hour. Returns what differs (`None`: they agree).
async fn audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    hour: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Option<String>, sqlx::Error> {
    let differ: Vec<(String, String)> = sqlx::query_as(
        "WITH ledger AS (
            SELECT l.model, l.project, l.key_fingerprint, count(*) AS calls,
                count(*) FILTER (WHERE NOT l.priced) AS unpriced,
                sum(l.input_tokens) AS input, sum(l.cached_tokens) AS cached,
                sum(l.cache_creation_tokens) AS writes, sum(l.reasoning_tokens) AS reasoning,
                sum(l.answer_tokens) AS answer, coalesce(sum(e.cost), 0) AS cost
            FROM usage_ledger l JOIN effective_costs e USING (call_id, billing_hour)
            WHERE l.billing_hour = $1
            GROUP BY 1, 2, 3
         ), bill AS (
            SELECT model, project, key_fingerprint, calls, unpriced_calls AS unpriced, input_tokens AS input,
                cached_tokens AS cached, cache_creation_tokens AS writes, reasoning_tokens AS reasoning,
                answer_tokens AS answer, cost_total AS cost
            FROM hourly_bill WHERE billing_hour = $1
         )
         SELECT coalesce(l.model, b.model),
            format('%s/%s: ledger %s calls %s CNY, bill %s calls %s CNY', coalesce(l.project, b.project, '-'),
                   coalesce(l.key_fingerprint, b.key_fingerprint, '-'), coalesce(l.calls, 0),
                   coalesce(l.cost, 0), coalesce(b.calls, 0), coalesce(b.cost, 0))
         FROM ledger l FULL JOIN bill b
           ON l.model = b.model AND l.project IS NOT DISTINCT FROM b.project
          AND l.key_fingerprint IS NOT DISTINCT FROM b.key_fingerprint
         WHERE (l.calls, l.unpriced, l.input, l.cached, l.writes, l.reasoning, l.answer, l.cost)
               IS DISTINCT FROM (b.calls, b.unpriced, b.input, b.cached, b.writes, b.reasoning, b.answer, b.cost)
         ORDER BY 1, 2",
    )
    .bind(hour)
    .fetch_all(&mut **tx)
    .await?;
    let detail = (!differ.is_empty()).then(|| {
        differ
            .iter()
            .map(|(model, d)| format!("{model} {d}"))
            .collect::<Vec<_>>()
            .join("; ")
    });
    sqlx::query(
        "UPDATE bill_hours SET audited_at = $2, audit_ok = $3, audit_detail = $4 WHERE billing_hour = $1",
    )
    .bind(hour)
    .bind(now)
    .bind(detail.is_none())
    .bind(&detail)
    .execute(&mut **tx)
    .await?;
    Ok(detail)
}

/// Cost of one billing hour so far by model, over every sidecar on the database (the bill is kept by the
/// inserts: it is as current as the ledger).
pub async fn hour_cost_by_model(
    pool: &PgPool,
    billing_hour: DateTime<Utc>,
) -> Result<Vec<(String, rust_decimal::Decimal)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT model, sum(cost_total) FROM hourly_bill
         WHERE billing_hour = $1 AND calls > unpriced_calls GROUP BY model",
    )
    .bind(billing_hour)
    .fetch_all(pool)
    .await
}

/// Start of the newest closed hour, if any.
pub async fn last_closed_hour(pool: &PgPool) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar("SELECT max(billing_hour) FROM bill_hours WHERE state = 'closed'")
        .fetch_one(pool)
        .await
}
