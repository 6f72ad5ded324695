//! The budgets' one door on the request path: [`Budgets::admit`] takes a call as the proxy knows it before
//! forwarding, works out its worst case ([`super::limits`]), and decides it against every `block` budget
//! covering it — in Postgres (`--budget-coordination postgres`) when Postgres can answer, else in this
//! sidecar's [`Tracker`] — waiting (a bounded time) for the first read of a window's spent rather than
//! admitting blind. The proxy turns a [`Refused`] into its 429 / 503 / 403 in the caller's shape.

use super::coordinated::{Coordinator, Verdict, ROUND_TRIP_TIMEOUT};
use super::limits::{self, Request};
use super::tracker::{Refusal, Tracker};
use super::Attribution;
use crate::metrics::InstanceMetrics;
use crate::pricing::PriceBook;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// How long an admission waits for the first read of a window's spent (after a start, which may migrate
/// the database first, or when a window begins) before the database counts as not answering and
/// `--budget-when-database-down` decides.
pub const FIRST_READ_BOUND: Duration = Duration::from_secs(10);

/// The settings budgets are built from.
pub struct Options {
    pub budgets: Vec<super::Budget>,
    pub timezone: chrono_tz::Tz,
    pub reservation: super::tracker::Reservation,
    pub when_unknown: super::tracker::WhenUnknown,
    pub unpriced: super::tracker::Unpriced,
    pub prices: PriceBook,
}

/// A call as the budgets see it before it is forwarded.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub call_id: Uuid,
    pub attribution: Attribution<'a>,
    pub request: Request<'a>,
}

/// A refused call: why, and whether its worst case came from the model's maximum output (the client set no
/// output limit: setting one would bound it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub refusal: Refusal,
    pub worst_from_model_maximum: bool,
}

/// The budgets of this sidecar.
pub struct Budgets {
    tracker: Arc<Tracker>,
    coordinator: Option<Arc<Coordinator>>,
    prices: PriceBook,
    metrics: InstanceMetrics,
    first_read: Duration,
}

impl Budgets {
    pub fn new(
        tracker: Arc<Tracker>,
        coordinator: Option<Arc<Coordinator>>,
        prices: PriceBook,
        metrics: InstanceMetrics,
    ) -> Budgets {
        Budgets {
            tracker,
            coordinator,
            prices,
            metrics,
            first_read: FIRST_READ_BOUND,
        }
    }

    /// The budgets of a sidecar: the tracker seeded with what it journaled and has not shipped (so a restart,
    /// even with the database away, keeps what was spent) — or, without a ledger, handed to the database-down
    /// policy for good —, and the coordinator when Postgres decides (`coordinated`: the background and
    /// admission pools, and this sidecar's instance id). Says at startup which budgets can meet unpriced models.
    pub fn start(
        options: Options,
        now: DateTime<Utc>,
        metrics: InstanceMetrics,
        journal: Option<&crate::journal::Journal>,
        coordinated: Option<(sqlx::PgPool, sqlx::PgPool, uuid::Uuid)>,
    ) -> anyhow::Result<Budgets> {
        use anyhow::Context;
        let tracker = Arc::new(Tracker::new(
            options.budgets.clone(),
            options.timezone,
            options.reservation,
            options.when_unknown,
            options.unpriced,
            now,
        ));
        match journal {
            Some(journal) => {
                let seeded = journal
                    .for_each_unshipped(|r| {
                        tracker.settle(
                            r.call_id,
                            &r.attribution(),
                            r.billing_hour,
                            r.cost_total,
                            now,
                        );
                    })
                    .context("reading the journal for budgets")?;
                if seeded > 0 {
                    tracing::info!(
                        records = seeded,
                        "budgets count the journal's unshipped calls"
                    );
                }
            }
            // No database to read spent from: the database-down policy decides every admission.
            None => tracker.unanswered(),
        }
        let coordinator = coordinated.map(|(pool, admission, instance)| {
            Arc::new(Coordinator::new(
                pool,
                admission,
                instance,
                &options.budgets,
                options.timezone,
                options.reservation,
            ))
        });
        let budgets = Budgets::new(tracker, coordinator, options.prices, metrics);
        budgets.warn_unpriced_scopes(options.unpriced);
        Ok(budgets)
    }

    pub fn tracker(&self) -> &Arc<Tracker> {
        &self.tracker
    }

    pub fn coordinator(&self) -> Option<&Arc<Coordinator>> {
        self.coordinator.as_ref()
    }

    /// Admits the call (its worst case reserved in every covering `block` budget) or refuses it.
    pub async fn admit(&self, call: &Call<'_>, now: DateTime<Utc>) -> Result<(), Refused> {
        let a = &call.attribution;
        if !self.tracker.blocks(a) {
            return Ok(());
        }
        let worst = limits::worst_case_cost(&self.prices, &call.request, now);
        let refused = |refusal: Refusal| Refused {
            refusal,
            worst_from_model_maximum: call.request.max_output_tokens.is_none(),
        };
        let deadline = tokio::time::Instant::now() + self.first_read;
        let mut changed = self.tracker.changed();
        loop {
            // Postgres decides a priced call when it can (an unpriced one is this sidecar's policy).
            if let (Some(c), Some(cost)) = (self.coordinator.as_ref().filter(|c| c.ready()), worst)
            {
                let windows = self.tracker.windows(now);
                let asked = c.admit(call.call_id, a, Some(cost), &windows, now);
                match tokio::time::timeout(ROUND_TRIP_TIMEOUT, asked).await {
                    Ok(Ok(Verdict::Admitted)) => {
                        self.tracker.hold(call.call_id, a, worst, now);
                        return Ok(());
                    }
                    Ok(Ok(Verdict::Exceeded(i))) => {
                        let refusal = self.tracker.refused(i, cost, now);
                        self.count_refusal(&refusal);
                        return Err(refused(refusal));
                    }
                    // Postgres cannot answer now: this sidecar's own numbers decide.
                    Ok(Err(e)) => {
                        tracing::debug!(call_id = %call.call_id, error = %e, "budget admission in Postgres failed; deciding locally")
                    }
                    Err(_) => {
                        tracing::debug!(call_id = %call.call_id, "budget admission in Postgres timed out; deciding locally")
                    }
                }
            }
            match self.tracker.admit(call.call_id, a, worst, now) {
                Ok(admission) => {
                    for budget in &admission.unchecked {
                        self.metrics.budget_unchecked(budget);
                        tracing::warn!(call_id = %call.call_id, budget, "budget spent unknown (database did not answer): call served unchecked");
                    }
                    for budget in &admission.unpriced {
                        self.metrics.budget_unpriced_admitted(budget);
                    }
                    return Ok(());
                }
                Err(Refusal::Pending { budget }) => {
                    let wait = tokio::time::timeout_at(deadline, changed.changed()).await;
                    if !matches!(wait, Ok(Ok(()))) {
                        // No first read within the bound (or no refresher at all): the database has not
                        // answered, and the policy decides from now on.
                        tracing::warn!(budget, bound = ?self.first_read, "budget spent not read in time; the database-down policy decides");
                        self.tracker.unanswered();
                    }
                }
                Err(refusal) => {
                    self.count_refusal(&refusal);
                    return Err(refused(refusal));
                }
            }
        }
    }

    fn count_refusal(&self, r: &Refusal) {
        match r {
            Refusal::Exceeded { budget, .. }
            | Refusal::Unknown { budget }
            | Refusal::Unpriced { budget, .. }
            | Refusal::Pending { budget } => self.metrics.budget_rejected(budget),
        }
    }

    /// One line per `block` budget that can meet a model without a price, at startup: what happens to such
    /// calls is a setting (`--budget-unpriced`), never a silent zero.
    pub fn warn_unpriced_scopes(&self, policy: super::tracker::Unpriced) {
        use super::tracker::Unpriced;
        let what = match policy {
            Unpriced::Refuse => "refused (--budget-unpriced refuse)",
            Unpriced::Admit => "served and not counted (--budget-unpriced admit)",
        };
        for b in self.tracker.budgets() {
            if b.action != super::Action::Block {
                continue;
            }
            match &b.scope.model {
                Some(m) if !self.prices.knows(m) => tracing::warn!(
                    budget = %b.name, model = %m,
                    "budget is scoped to a model without a price: its calls are {what}"
                ),
                Some(_) => {}
                None => tracing::info!(
                    budget = %b.name,
                    "budget covers every model: calls to a model without a price are {what}"
                ),
            }
        }
    }
}

/// The worst case as the 429 reports it, to the yuan's fraction the price book gives (exact).
pub fn describe(needed: Decimal, left: Decimal) -> String {
    use crate::calendar::money;
    format!(
        "it could cost up to {} CNY and {} CNY is left",
        money(needed),
        money(left)
    )
}
