//! A budget's window as the tracker keeps it (what the ledger said, this sidecar's unshipped calls and
//! reservations, thresholds raised, the last refusal), and the snapshot `/v1/budgets` and the gauges read.

use super::super::{Action, Budget};
use crate::calendar::{start_of, Granularity};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use std::collections::{BTreeSet, HashMap};
use uuid::Uuid;

use super::{Reservation, LEDGER_STALE};

/// Costs by call, with their running total (an admission reads the total, never sums the calls).
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) items: HashMap<Uuid, Decimal>,
    pub(super) total: Decimal,
}

impl Tally {
    pub(super) fn insert(&mut self, id: Uuid, cost: Decimal) {
        if let Some(old) = self.items.insert(id, cost) {
            self.total -= old;
        }
        self.total += cost;
    }

    pub(super) fn remove(&mut self, id: &Uuid) {
        if let Some(cost) = self.items.remove(id) {
            self.total -= cost;
        }
    }
}

#[derive(Debug)]
pub(super) struct Window {
    pub(super) start: DateTime<Utc>,
    pub(super) end: DateTime<Utc>,
    pub(super) ledger: Option<Decimal>,
    /// When (by the sidecar's clock) the read that set `ledger` started.
    pub(super) refreshed_at: Option<DateTime<Utc>>,
    /// Total cost of the unshipped calls this window counts.
    pub(super) unshipped: Decimal,
    pub(super) reserved: Tally,
    /// Thresholds (indexes into the budget's) already raised in this window.
    pub(super) raised: BTreeSet<usize>,
    /// The worst case of the last call this budget refused in this window: while it would still be refused,
    /// the budget is `blocking`.
    pub(super) refused: Option<Decimal>,
    /// The budget is scoped to one model, which has no price, and refused a call to it in this window: it
    /// refuses every call it covers (`--budget-unpriced refuse`).
    pub(super) refuses_unpriced: bool,
}

impl Window {
    pub(super) fn new(start: DateTime<Utc>, end: DateTime<Utc>) -> Window {
        Window {
            start,
            end,
            ledger: None,
            refreshed_at: None,
            unshipped: Decimal::ZERO,
            reserved: Tally::default(),
            raised: BTreeSet::new(),
            refused: None,
            refuses_unpriced: false,
        }
    }

    pub(super) fn spent(&self) -> Decimal {
        self.ledger.unwrap_or_default() + self.unshipped
    }

    pub(super) fn reserved(&self) -> Decimal {
        self.reserved.total
    }

    /// Read within the last [`LEDGER_STALE`] (by the sidecar's clock).
    pub(super) fn known(&self, now: DateTime<Utc>) -> bool {
        let stale = chrono::Duration::from_std(LEDGER_STALE).unwrap_or(chrono::Duration::MAX);
        self.refreshed_at.is_some_and(|t| now - t <= stale)
    }

    /// Room for a call costing at most `cost` (by `reservation`).
    pub(super) fn has_room(&self, limit: Decimal, cost: Decimal, reservation: Reservation) -> bool {
        match reservation {
            Reservation::WorstCase => self.spent() + self.reserved() + cost <= limit,
            Reservation::None => self.spent() < limit,
        }
    }
}

/// A budget's state as `/v1/budgets` and the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub budget: Budget,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    /// `None`: the ledger's part is unknown (never refreshed in this window, or stale).
    pub ledger_known: bool,
    pub spent: Decimal,
    pub reserved: Decimal,
    pub raised: Vec<Decimal>,
    /// The worst case of the last call refused in this window.
    pub refused: Option<Decimal>,
    /// Scoped to a model without a price, and refusing its calls.
    pub refuses_unpriced: bool,
}

impl Snapshot {
    pub fn remaining(&self) -> Decimal {
        (self.budget.limit - self.spent - self.reserved).max(Decimal::ZERO)
    }

    /// `blocking` whenever the budget would refuse the next call like the last one it refused (or has no room
    /// at all), `alerting` (a threshold crossed), else `ok`.
    pub fn state(&self) -> &'static str {
        let used = self.spent + self.reserved;
        let would_refuse = used >= self.budget.limit
            || self.refuses_unpriced
            || self
                .refused
                .is_some_and(|need| used + need > self.budget.limit);
        if self.budget.action == Action::Block && would_refuse {
            "blocking"
        } else if !self.raised.is_empty() {
            "alerting"
        } else {
            "ok"
        }
    }
}

/// The window of `period` holding `at`: its start and end.
pub fn window_of(g: Granularity, at: DateTime<Utc>, tz: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = start_of(g, at, tz);
    let end = crate::calendar::next_period(g, start, tz);
    (start, end)
}
