//! The roller: every [`super::ROLL_EVERY`], this sidecar's heartbeat, then one roll of the hourly bill
//! (skipped when another sidecar holds the roller lock; retried next round when Postgres is away). Hourly, and
//! at its first round, the ledger's partitions ahead and, with `--ledger-retention`, the drop of the months
//! past it (`crate::ledger::partitions`). When stopped, one last round.

use super::roll::{Bill, Rolled};
use crate::clock::Clock;
use crate::metrics::InstanceMetrics;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// What the roller needs.
pub struct Roller {
    pub bill: Bill,
    pub pool: PgPool,
    pub instance: uuid::Uuid,
    pub clock: Clock,
    pub timezone: chrono_tz::Tz,
    /// The hours of this sidecar's unshipped records (it holds the oldest open).
    pub held: std::sync::Arc<crate::journal::Held>,
    pub metrics: InstanceMetrics,
    /// `--ledger-retention`: partitions whose months all ended longer ago than this are dropped.
    pub retention: Option<chrono::Duration>,
}

impl Roller {
    /// Runs until `stop`, then one last round.
    pub async fn run(self: std::sync::Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(super::ROLL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut upkept: Option<DateTime<Utc>> = None;
        loop {
            let last = tokio::select! {
                _ = stop.cancelled() => true,
                _ = tick.tick() => false,
            };
            let now = self.clock.now();
            let due = upkept.is_none_or(|t| now - t >= chrono::Duration::hours(1) || now < t);
            if due && self.upkeep(now).await {
                upkept = Some(now);
            }
            match self.round().await {
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "hourly bill roll failed; retrying next round")
                }
            }
            if last {
                return;
            }
        }
    }

    /// One round: the heartbeat, then a roll, and what the roll found that people must hear.
    pub async fn round(&self) -> Result<Rolled, sqlx::Error> {
        let now = self.clock.now();
        let oldest = self.held.oldest();
        self.bill.heartbeat(self.instance, now, oldest).await?;
        let open_hour = crate::pricing::billing_hour(now, self.timezone);
        let rolled = self.bill.roll(now, open_hour).await?;
        self.report(&rolled);
        Ok(rolled)
    }

    /// What a roll found that people must hear: hours whose bill differs from their ledger.
    fn report(&self, r: &Rolled) {
        for (hour, detail) in &r.mismatched {
            self.metrics.bill_audit_mismatch();
            tracing::error!(%hour, %detail, "the hourly bill differs from the ledger at close (not corrected: find the writer that bypassed the insert)");
        }
    }

    /// Partitions ahead, and retention. Returns whether it got through (else it is tried next round).
    async fn upkeep(&self, now: DateTime<Utc>) -> bool {
        match crate::ledger::partitions::ensure(&self.pool, now).await {
            Ok(created) if !created.is_empty() => {
                tracing::info!(?created, "ledger partitions created ahead")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "ledger partitions not created; retrying next round");
                return false;
            }
        }
        if let Some(keep) = self.retention {
            if let Err(e) = crate::ledger::partitions::retire(&self.pool, now - keep).await {
                tracing::warn!(error = %e, "ledger retention failed; retrying in an hour");
            }
        }
        true
    }
}
