//! The ledger's partitions: one per calendar month (UTC), created ahead, and retention by dropping whole ones.
//!
//! `usage_ledger` is partitioned by `billing_hour` (migration …012): the ledger of a month is one table, so a
//! month is read (a report's hours, the close-time audit's hour, `reprice`'s hours) and dropped (retention) as
//! one, and nothing ever deletes rows. The table a migrated database had becomes its first partition (up to the
//! month after its newest row); a `DEFAULT` partition keeps any row whose month has none (after an outage longer
//! than the months created ahead, or a row older than a retention that dropped its month) rather than refusing
//! it.
//!
//! Partitions belong to the ledger's owner, and the sidecar may run as an insert-only role: it creates and drops
//! them through two SQL functions that run as their owner and do only that (`ledger_partitions_ahead`,
//! `ledger_retire`). Every sidecar's roller calls [`ensure`] (the current month, one before and [`AHEAD`] after,
//! by the app's clock) and, with `--ledger-retention`, [`retire`]. Both are idempotent and cheap when there is
//! nothing to do (a catalog lookup per month).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// Months created ahead of the current one.
pub const AHEAD: i32 = 2;

/// Creates the partitions of the month of `now`, the one before it and [`AHEAD`] after it, that do not exist
/// (or are not covered by the first one). Returns the partitions created.
pub async fn ensure(pool: &PgPool, now: DateTime<Utc>) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT ledger_partitions_ahead($1, $2)")
        .bind(now)
        .bind(AHEAD)
        .fetch_one(pool)
        .await
}

/// Drops every partition whose months all ended before `cutoff` (the default partition never). Returns the
/// partitions dropped. Their calls are gone from the ledger; the bill and the rollups keep their sums.
pub async fn retire(pool: &PgPool, cutoff: DateTime<Utc>) -> Result<Vec<String>, sqlx::Error> {
    let dropped: Vec<String> = sqlx::query_scalar("SELECT ledger_retire($1)")
        .bind(cutoff)
        .fetch_one(pool)
        .await?;
    for table in &dropped {
        tracing::info!(partition = %table, "ledger partition dropped (--ledger-retention)");
    }
    Ok(dropped)
}
