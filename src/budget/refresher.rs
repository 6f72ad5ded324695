//! The budgets' worker: every second, read each budget's spent (and which of this sidecar's calls reached the
//! ledger), record the thresholds crossed (once across sidecars: the one that records a crossing raises it —
//! a `warn` line and the metric), and deliver due alerts to `--alert-webhook`. It starts once the ledger's
//! schema is ready (a first start migrates it): until its first read, admissions of `block` budgets wait
//! (`super::gate`); a failed read tells the tracker, and `--budget-when-database-down` decides from then on.
//! Postgres away: the tracker keeps counting this sidecar's calls; crossings wait.

use super::coordinated::Coordinator;
use super::store;
use super::tracker::Tracker;
use crate::clock::Clock;
use crate::ledger::Ledger;
use crate::metrics::InstanceMetrics;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often each sidecar reads its budgets' spent.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// What the refresher needs.
pub struct Refresher {
    pub tracker: Arc<Tracker>,
    pub coordinator: Option<Arc<Coordinator>>,
    pub ledger: Ledger,
    pub clock: Clock,
    pub timezone: chrono_tz::Tz,
    pub metrics: InstanceMetrics,
    pub alert_webhook: Option<http::Uri>,
    /// A sidecar not seen for this long holds no reservation (`crate::billing::INSTANCE_STALE`).
    pub instance_stale: Duration,
}

impl Refresher {
    /// Every budget's definition id (what decides which calls its counter counts).
    fn defs(&self) -> Vec<String> {
        self.tracker
            .budgets()
            .iter()
            .map(|b| super::coordinated::def_id(b, self.timezone))
            .collect()
    }

    /// Runs until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = self.ledger.wait_migrated() => {}
        }
        let defs = self.defs();
        let mut published = false;
        let hook = self
            .alert_webhook
            .clone()
            .and_then(|u| crate::webhook::Webhook::new(u).ok());
        let mut tick = tokio::time::interval(REFRESH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !published {
                match store::publish(
                    self.ledger.pool(),
                    self.tracker.budgets(),
                    &defs,
                    self.timezone,
                )
                .await
                {
                    Ok(()) => {
                        published = true;
                        if let Some(c) = &self.coordinator {
                            c.set_ready();
                        }
                    }
                    Err(e) => {
                        self.tracker.refresh_failed();
                        tracing::debug!(error = %e, "budget definitions not written; retrying next round");
                        continue;
                    }
                }
            }
            self.round(&defs, hook.as_ref(), &stop).await;
        }
    }

    /// One round: upkeep of the counters and reservations, the read, the crossings, the alert deliveries.
    pub async fn round(
        &self,
        defs: &[String],
        hook: Option<&crate::webhook::Webhook>,
        stop: &CancellationToken,
    ) {
        let pool = self.ledger.pool();
        let now = self.clock.now();
        let windows = self.tracker.windows(now);
        let (ids, oldest) = self.tracker.unshipped_ids();
        let stale = chrono::Duration::from_std(self.instance_stale).unwrap_or_default();
        let upkeep = async {
            if let Some(c) = &self.coordinator {
                c.sweep(now, stale).await?;
            }
            store::prune(pool, now).await
        };
        if let Err(e) = upkeep.await {
            tracing::debug!(error = %e, "budget counters' upkeep failed; retrying next round");
        }
        match store::refresh(pool, self.tracker.budgets(), defs, &windows, &ids, oldest).await {
            Ok(r) => self
                .tracker
                .refreshed(now, &r.spent, &r.in_ledger, &r.raised),
            Err(e) => {
                self.tracker.refresh_failed();
                tracing::debug!(error = %e, "budget refresh failed; retrying next round");
            }
        }
        let mut unrecorded = Vec::new();
        for c in self.tracker.take_crossings() {
            let payload = store::payload(&c, self.timezone);
            match store::record(pool, &c, &payload, now, hook.is_some()).await {
                Ok(true) => {
                    self.metrics.budget_alert_raised(&c.budget.name);
                    tracing::warn!(budget = %c.budget.name, threshold = %c.threshold, spent = %c.spent,
                        limit = %c.budget.limit, "budget threshold crossed");
                }
                Ok(false) => {}
                Err(_) => unrecorded.push(c),
            }
        }
        self.tracker.requeue(unrecorded);
        if let Some(hook) = hook {
            while !stop.is_cancelled() {
                match store::deliver_one(pool, hook, self.clock.now()).await {
                    Ok(Some(Ok(()))) => {}
                    Ok(Some(Err(error))) => {
                        tracing::warn!(%error, "budget alert delivery failed; retrying with backoff");
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
