//! Rolling the hourly bill (DESIGN §5): `hourly_bill`, rolled up from `usage_ledger` in SQL by recomputing
//! whole hours, and each hour's state.
//!
//! **No committed row is missed.** The shipper inserts a batch and, in the same statement, one mark per
//! billing hour that got a new row (`bill_dirty_hours`, see `Ledger::insert`): a row and its mark commit
//! together. A roll deletes the marks it sees (one statement, one snapshot) and then recomputes those hours
//! from the ledger in a later statement, whose snapshot holds every row whose mark was deleted. A row committed
//! after the delete left its mark in place, so the next roll recomputes its hour again. Recomputing is an
//! idempotent upsert of whole-hour sums (the ledger is append-only: a group never disappears), never a delta.
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

/// An upsert's update of a bill row: every sum and the hour's state, recomputed (never added to).
const RECOMPUTED: &str = "calls = EXCLUDED.calls, unpriced_calls = EXCLUDED.unpriced_calls,
    estimated_calls = EXCLUDED.estimated_calls, input_tokens = EXCLUDED.input_tokens,
    cached_tokens = EXCLUDED.cached_tokens, cache_creation_tokens = EXCLUDED.cache_creation_tokens,
    price_period = EXCLUDED.price_period, reasoning_tokens = EXCLUDED.reasoning_tokens,
    answer_tokens = EXCLUDED.answer_tokens, output_tokens = EXCLUDED.output_tokens,
    cost_total = EXCLUDED.cost_total, adjustment_yuan = EXCLUDED.adjustment_yuan, state = EXCLUDED.state,
    revision = EXCLUDED.revision, closed_at = EXCLUDED.closed_at";

/// What one roll did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rolled {
    /// Another sidecar held the roller lock: nothing was done.
    pub skipped: bool,
    /// Hours recomputed.
    pub hours: u64,
    /// Hours that closed in this roll.
    pub closed: u64,
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
            // Cost = the ledger's cost_total + the price corrections of the group's calls (`reprice`).
            sqlx::query(&format!(
                "INSERT INTO hourly_bill (billing_hour, model, project, key_fingerprint, calls, unpriced_calls,
                    estimated_calls, input_tokens, cached_tokens, cache_creation_tokens, price_period,
                    reasoning_tokens, answer_tokens, output_tokens, cost_total, adjustment_yuan, state, revision,
                    closed_at)
                 SELECT g.billing_hour, g.model, g.project, g.key_fingerprint, g.calls, g.unpriced, g.estimated,
                    g.input, g.cached, g.cache_creation, g.period, g.reasoning, g.answer, g.output,
                    g.cost + coalesce(a.delta, 0), coalesce(a.delta, 0), h.state, h.revision, h.closed_at
                 FROM (SELECT l.billing_hour, l.model, l.project, l.key_fingerprint, count(*) AS calls,
                          count(*) FILTER (WHERE NOT l.priced) AS unpriced,
                          count(*) FILTER (WHERE l.usage_source = 'estimated') AS estimated,
                          sum(l.input_tokens) AS input, sum(l.cached_tokens) AS cached,
                          sum(l.cache_creation_tokens) AS cache_creation, min(l.price_period) AS period,
                          sum(l.reasoning_tokens) AS reasoning, sum(l.answer_tokens) AS answer,
                          sum(l.output_tokens) AS output, coalesce(sum(l.cost_total), 0) AS cost
                       FROM usage_ledger l WHERE l.billing_hour = ANY($1)
                       GROUP BY l.billing_hour, l.model, l.project, l.key_fingerprint) g
                 JOIN bill_hours h USING (billing_hour)
                 LEFT JOIN (SELECT billing_hour, model, project, key_fingerprint, sum(delta) AS delta
                            FROM cost_adjustments WHERE billing_hour = ANY($1)
                            GROUP BY billing_hour, model, project, key_fingerprint) a
                   ON a.billing_hour = g.billing_hour AND a.model = g.model
                  AND a.project IS NOT DISTINCT FROM g.project AND a.key_fingerprint IS NOT DISTINCT FROM g.key_fingerprint
                 ON CONFLICT (billing_hour, model, project, key_fingerprint) DO UPDATE SET {RECOMPUTED}"
            ))
            .bind(&hours)
            .execute(&mut *tx)
            .await?;
            // The same hours by model (for reports that group by model only), from the rows just written.
            sqlx::query(&format!(
                "INSERT INTO hourly_model_bill (billing_hour, model, calls, unpriced_calls, estimated_calls,
                    input_tokens, cached_tokens, cache_creation_tokens, price_period, reasoning_tokens,
                    answer_tokens, output_tokens, cost_total, adjustment_yuan, state, revision, closed_at)
                 SELECT billing_hour, model, sum(calls), sum(unpriced_calls), sum(estimated_calls),
                    sum(input_tokens), sum(cached_tokens), sum(cache_creation_tokens), min(price_period),
                    sum(reasoning_tokens), sum(answer_tokens),
                    sum(output_tokens), sum(cost_total), sum(adjustment_yuan), min(state), min(revision),
                    min(closed_at)
                 FROM hourly_bill WHERE billing_hour = ANY($1)
                 GROUP BY billing_hour, model
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
        if !changed.is_empty() {
            // The bill's rows carry their hour's state.
            for table in ["hourly_bill", "hourly_model_bill"] {
                sqlx::query(&format!(
                    "UPDATE {table} b SET state = h.state, revision = h.revision, closed_at = h.closed_at
                     FROM bill_hours h
                     WHERE b.billing_hour = h.billing_hour AND h.billing_hour = ANY($1)"
                ))
                .bind(&changed)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(Rolled {
            skipped: false,
            hours: hours.len() as u64,
            closed: closed.len() as u64,
        })
    }
}

/// Start of the newest closed hour, if any.
pub async fn last_closed_hour(pool: &PgPool) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar("SELECT max(billing_hour) FROM bill_hours WHERE state = 'closed'")
        .fetch_one(pool)
        .await
}
