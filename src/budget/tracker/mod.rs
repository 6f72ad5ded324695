//! Each budget's current window, in memory, and the decisions made from it: admit or refuse a call, which
//! thresholds have been crossed. No I/O: the refresher (`crate::app`) feeds it the ledger's numbers from
//! [`super::store`], the meter step feeds it every finished call.
//!
//! Per budget and window:
//! - `ledger`: spent in the ledger as of the last refresh (`None` until the first refresh of the window);
//! - the total of this sidecar's finished calls in the window that the last refresh did not find in the
//!   ledger (seeded from the journal at startup, so a restart or a database outage loses none). The calls
//!   themselves are kept once, whatever the number of budgets covering them (a long outage holds up to the
//!   journal's cap of them: about 100 bytes each);
//! - `reserved`: worst-case costs of admitted calls still in flight (`block` budgets only).
//!
//! The admission is one short critical section (a mutex, no await): the check and the reservation happen
//! together, so concurrent calls cannot both take the last room.
//!
//! **Closed until known.** A window whose spent this sidecar has not read yet (after a start, or when a new
//! window begins) admits no call of a `block` budget: the admission answers [`Refusal::Pending`] and the caller
//! waits for the refresh ([`Tracker::changed`]), a bounded time. `--budget-when-database-down` applies only
//! once the database has failed to answer: a failed refresh, a read older than [`LEDGER_STALE`], or a wait
//! past its bound ([`Tracker::unanswered`]). A poisoned lock (a panic elsewhere) follows the same policy, and
//! is counted as unchecked like any call that policy lets through.

mod window;

use window::Window;
pub use window::{window_of, Snapshot};

use super::{Action, Attribution, Budget};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use uuid::Uuid;

/// How a `block` budget admits calls (`--budget-reservation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Reservation {
    /// Reserve each call's worst-case cost before forwarding; refuse when spent + reserved + this call would
    /// pass the limit. Spent never passes the limit.
    WorstCase,
    /// Admit while spent (with what is in flight at its actual cost, unknown) is under the limit. Spent can
    /// pass the limit by what the calls in flight at that moment cost.
    None,
}

/// What a `block` budget does while the ledger's part of spent is unknown (`--budget-when-database-down`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WhenUnknown {
    /// Serve, count the unchecked call, log a warning.
    Open,
    /// Refuse with 503 in the caller's shape.
    Closed,
}

/// The ledger's part of spent is trusted this long after its refresh; past it, it is unknown.
pub const LEDGER_STALE: Duration = Duration::from_secs(30);

/// What a `block` budget does with a call to a model without a price (`--budget-unpriced`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Unpriced {
    /// Refuse it: the budget cannot bound what it costs.
    Refuse,
    /// Serve it, uncounted in spent (it has no cost), and count it in a metric.
    Admit,
}

/// Why a call is not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// This `block` budget has no room for the call: it could cost `needed`, and `left` is what remains.
    Exceeded {
        budget: String,
        needed: Decimal,
        left: Decimal,
    },
    /// This `block` budget's spent is unknown (the database failed to answer) and
    /// `--budget-when-database-down closed`.
    Unknown { budget: String },
    /// The model has no price, so this `block` budget cannot bound the call (`--budget-unpriced refuse`).
    Unpriced { budget: String, model: String },
    /// This `block` budget's spent has not been read yet in its window, and the database has not failed:
    /// wait for the refresh ([`Tracker::changed`]) and ask again.
    Pending { budget: String },
}

/// Whether this sidecar has heard from the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Database {
    /// Not yet (starting: the database may still be migrating). Windows not read yet wait.
    Unheard,
    /// The last refresh succeeded.
    Answered,
    /// The last refresh failed, or an admission waited past its bound: unknown windows follow the policy.
    Failed,
}

/// An admitted call: which budgets hold a reservation for it, which were not checked (spent unknown,
/// `open`), and which admitted it though its model has no price (`--budget-unpriced admit`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    pub reserved_in: Vec<String>,
    pub unchecked: Vec<String>,
    pub unpriced: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
struct Unshipped {
    billing_hour: DateTime<Utc>,
    cost: Decimal,
    /// The budgets (bit i: budget i) whose current window counts it.
    budgets: u64,
}

/// Budgets per config file: each unshipped call keeps its budgets in a 64-bit mask.
pub const MAX_BUDGETS: usize = 64;

#[derive(Debug)]
struct State {
    windows: Vec<Window>,
    unshipped: HashMap<Uuid, Unshipped>,
    database: Database,
}

impl State {
    /// Forgets an unshipped call (it reached the ledger), taking its cost out of its budgets' totals.
    fn forget(&mut self, id: &Uuid) {
        if let Some(u) = self.unshipped.remove(id) {
            for (i, w) in self.windows.iter_mut().enumerate() {
                if u.budgets & (1 << i) != 0 {
                    w.unshipped -= u.cost;
                }
            }
        }
    }
}

/// Every budget's current window.
pub struct Tracker {
    budgets: Vec<Budget>,
    timezone: Tz,
    reservation: Reservation,
    when_unknown: WhenUnknown,
    unpriced: Unpriced,
    state: Mutex<State>,
    /// Crossings seen and not yet recorded in Postgres (the refresher takes them; put back on failure).
    crossings: Mutex<Vec<Crossing>>,
    /// Bumped by every refresh, failed or not: what a pending admission waits on.
    changed: tokio::sync::watch::Sender<u64>,
}

/// A threshold crossed for the first time in a window (by this sidecar's count): to be recorded and raised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crossing {
    pub budget: Budget,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub threshold: Decimal,
    pub spent: Decimal,
}

impl Tracker {
    pub fn new(
        budgets: Vec<Budget>,
        timezone: Tz,
        reservation: Reservation,
        when_unknown: WhenUnknown,
        unpriced: Unpriced,
        now: DateTime<Utc>,
    ) -> Tracker {
        let windows = budgets
            .iter()
            .map(|b| {
                let (s, e) = window_of(b.period.granularity(), now, timezone);
                Window::new(s, e)
            })
            .collect();
        Tracker {
            budgets,
            timezone,
            reservation,
            when_unknown,
            unpriced,
            state: Mutex::new(State {
                windows,
                unshipped: HashMap::new(),
                database: Database::Unheard,
            }),
            crossings: Mutex::new(Vec::new()),
            changed: tokio::sync::watch::channel(0).0,
        }
    }

    /// Fires at each refresh (failed or not): what an admission answered [`Refusal::Pending`] waits on.
    pub fn changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Whether every `block` budget's current window has been read (for `/readyz`).
    pub fn known(&self, now: DateTime<Utc>) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        self.roll(&mut state, now);
        self.budgets
            .iter()
            .zip(&state.windows)
            .all(|(b, w)| b.action != Action::Block || w.known(now))
    }

    /// A refresh failed: windows not read since follow `--budget-when-database-down`.
    pub fn refresh_failed(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.database = Database::Failed;
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// An admission waited its bound for a window's first read: the database has failed to answer (until the
    /// next refresh that succeeds).
    pub fn unanswered(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.database = Database::Failed;
        }
    }

    /// The database-down policy's answer for the covering `block` budgets (also when the state cannot be read).
    fn policy(&self, a: &Attribution<'_>) -> Result<Admission, Refusal> {
        let mut admission = Admission::default();
        for b in self.covering(a) {
            match self.when_unknown {
                WhenUnknown::Open => admission.unchecked.push(b.name.clone()),
                WhenUnknown::Closed => {
                    return Err(Refusal::Unknown {
                        budget: b.name.clone(),
                    })
                }
            }
        }
        Ok(admission)
    }

    fn covering<'a>(&'a self, a: &'a Attribution<'_>) -> impl Iterator<Item = &'a Budget> + 'a {
        self.budgets
            .iter()
            .filter(move |b| b.action == Action::Block && b.scope.covers(a))
    }

    pub fn budgets(&self) -> &[Budget] {
        &self.budgets
    }

    pub fn is_empty(&self) -> bool {
        self.budgets.is_empty()
    }

    /// Whether any `block` budget covers the call (only then is a worst case worth computing).
    pub fn blocks(&self, a: &Attribution<'_>) -> bool {
        self.budgets
            .iter()
            .any(|b| b.action == Action::Block && b.scope.covers(a))
    }

    /// Moves every window to the one holding `now` (a new window starts with its ledger part unknown; calls
    /// in flight keep their reservations; unshipped calls of the new window keep counting).
    fn roll(&self, state: &mut State, now: DateTime<Utc>) {
        let mut rolled = false;
        for (i, b) in self.budgets.iter().enumerate() {
            let w = &mut state.windows[i];
            if now < w.end && now >= w.start {
                continue;
            }
            rolled = true;
            let (s, e) = window_of(b.period.granularity(), now, self.timezone);
            let mut next = Window::new(s, e);
            next.reserved = std::mem::take(&mut w.reserved);
            for u in state.unshipped.values_mut() {
                if u.budgets & (1 << i) != 0 {
                    if u.billing_hour >= s && u.billing_hour < e {
                        next.unshipped += u.cost;
                    } else {
                        u.budgets &= !(1 << i);
                    }
                }
            }
            state.windows[i] = next;
        }
        // Only when a window moved: this walks every unshipped call, and `roll` runs on every call (before,
        // it ran each time and cost 15 % of the sidecar's CPU under load with five budgets).
        if rolled {
            state.unshipped.retain(|_, u| u.budgets != 0);
        }
    }

    /// Admits or refuses a call covered by `a` whose worst case is `worst` (`None`: the model has no price).
    /// On admission the worst case is reserved in every covering `block` budget.
    pub fn admit(
        &self,
        call_id: Uuid,
        a: &Attribution<'_>,
        worst: Option<Decimal>,
        now: DateTime<Utc>,
    ) -> Result<Admission, Refusal> {
        let Ok(mut state) = self.state.lock() else {
            // A panic elsewhere poisoned the lock: the policy decides, and the call is counted if served.
            return self.policy(a);
        };
        self.roll(&mut state, now);
        let database = state.database;
        let windows = &mut state.windows;
        let mut admission = Admission::default();
        for (b, w) in self.budgets.iter().zip(windows.iter_mut()) {
            if b.action != Action::Block || !b.scope.covers(a) {
                continue;
            }
            let Some(cost) = worst else {
                match self.unpriced {
                    Unpriced::Refuse => {
                        w.refuses_unpriced |= b.scope.model.is_some();
                        return Err(Refusal::Unpriced {
                            budget: b.name.clone(),
                            model: a.model.to_owned(),
                        });
                    }
                    Unpriced::Admit => {
                        admission.unpriced.push(b.name.clone());
                        continue;
                    }
                }
            };
            if !w.known(now) {
                // Never read in this window and the database has not failed: wait for the read.
                if w.ledger.is_none() && database != Database::Failed {
                    return Err(Refusal::Pending {
                        budget: b.name.clone(),
                    });
                }
                match self.when_unknown {
                    WhenUnknown::Open => {
                        admission.unchecked.push(b.name.clone());
                        continue;
                    }
                    WhenUnknown::Closed => {
                        return Err(Refusal::Unknown {
                            budget: b.name.clone(),
                        })
                    }
                }
            }
            if !w.has_room(b.limit, cost, self.reservation) {
                w.refused = Some(cost);
                return Err(Refusal::Exceeded {
                    budget: b.name.clone(),
                    needed: cost,
                    left: (b.limit - w.spent() - w.reserved()).max(Decimal::ZERO),
                });
            }
        }
        let skip: Vec<String> = admission
            .unchecked
            .iter()
            .chain(&admission.unpriced)
            .cloned()
            .collect();
        admission.reserved_in = self.reserve(windows, call_id, a, worst.unwrap_or_default(), &skip);
        Ok(admission)
    }

    /// A budget's refusal as Postgres decided it (`--budget-coordination postgres`), in this sidecar's view:
    /// what the call needed and what this sidecar sees left.
    pub fn refused(&self, index: usize, needed: Decimal, now: DateTime<Utc>) -> Refusal {
        let b = &self.budgets[index];
        let left = match self.state.lock() {
            Ok(mut state) => {
                self.roll(&mut state, now);
                let w = &mut state.windows[index];
                w.refused = Some(needed);
                (b.limit - w.spent() - w.reserved()).max(Decimal::ZERO)
            }
            Err(_) => Decimal::ZERO,
        };
        Refusal::Exceeded {
            budget: b.name.clone(),
            needed,
            left,
        }
    }

    /// A call Postgres admitted (`--budget-coordination postgres`): its worst case is held in this
    /// sidecar's view of every covering `block` budget, as a local admission would hold it.
    pub fn hold(
        &self,
        call_id: Uuid,
        a: &Attribution<'_>,
        worst: Option<Decimal>,
        now: DateTime<Utc>,
    ) -> Admission {
        let Ok(mut state) = self.state.lock() else {
            return Admission::default();
        };
        self.roll(&mut state, now);
        let cost = worst.unwrap_or_default();
        Admission {
            reserved_in: self.reserve(&mut state.windows, call_id, a, cost, &[]),
            ..Admission::default()
        }
    }

    /// Reserves `cost` for the call in every covering `block` budget but `except` (worst-case mode only);
    /// returns their names.
    fn reserve(
        &self,
        windows: &mut [Window],
        call_id: Uuid,
        a: &Attribution<'_>,
        cost: Decimal,
        except: &[String],
    ) -> Vec<String> {
        let mut reserved_in = Vec::new();
        if self.reservation == Reservation::WorstCase {
            for (b, w) in self.budgets.iter().zip(windows.iter_mut()) {
                if b.action == Action::Block && b.scope.covers(a) && !except.contains(&b.name) {
                    w.reserved.insert(call_id, cost);
                    reserved_in.push(b.name.clone());
                }
            }
        }
        reserved_in
    }

    /// A finished call (or one replayed from the journal at startup): its reservations go, its actual cost
    /// counts in every covering budget whose window holds its billing hour. Thresholds it crosses are queued
    /// ([`Tracker::take_crossings`]).
    pub fn settle(
        &self,
        call_id: Uuid,
        a: &Attribution<'_>,
        billing_hour: DateTime<Utc>,
        cost: Option<Decimal>,
        now: DateTime<Utc>,
    ) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        self.roll(&mut state, now);
        state.forget(&call_id);
        let mut budgets = 0u64;
        let cost = cost.filter(|c| !c.is_zero());
        for (i, (b, w)) in self
            .budgets
            .iter()
            .zip(state.windows.iter_mut())
            .enumerate()
        {
            w.reserved.remove(&call_id);
            if let Some(cost) = cost {
                if b.scope.covers(a) && billing_hour >= w.start && billing_hour < w.end {
                    w.unshipped += cost;
                    budgets |= 1 << i;
                }
            }
        }
        if let (Some(cost), true) = (cost, budgets != 0) {
            state.unshipped.insert(
                call_id,
                Unshipped {
                    billing_hour,
                    cost,
                    budgets,
                },
            );
        }
        self.cross(&mut state.windows);
    }

    /// The unshipped call ids of every window, for the refresh to look up in the ledger.
    /// The unshipped calls' ids, and the oldest billing hour among them.
    pub fn unshipped_ids(&self) -> (Vec<Uuid>, Option<DateTime<Utc>>) {
        let Ok(state) = self.state.lock() else {
            return (Vec::new(), None);
        };
        let oldest = state.unshipped.values().map(|u| u.billing_hour).min();
        (state.unshipped.keys().copied().collect(), oldest)
    }

    /// The windows a refresh should count, per budget: (start, end).
    pub fn windows(&self, now: DateTime<Utc>) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        let Ok(mut state) = self.state.lock() else {
            return Vec::new();
        };
        self.roll(&mut state, now);
        state.windows.iter().map(|w| (w.start, w.end)).collect()
    }

    /// A refresh's result, read in one snapshot: each budget's spent in the ledger for the window it was
    /// counted for, which of the unshipped calls the ledger holds (they are counted there now), and the
    /// thresholds some sidecar already raised. Thresholds newly crossed are queued.
    pub fn refreshed(
        &self,
        read_at: DateTime<Utc>,
        spent: &[(DateTime<Utc>, Decimal)],
        in_ledger: &[Uuid],
        already_raised: &[(String, DateTime<Utc>, Decimal)],
    ) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.database = Database::Answered;
        for id in in_ledger {
            state.forget(id);
        }
        for ((b, w), (start, ledger)) in
            self.budgets.iter().zip(state.windows.iter_mut()).zip(spent)
        {
            if *start == w.start {
                w.ledger = Some(*ledger);
                w.refreshed_at = Some(read_at);
            }
            for (name, window_start, threshold) in already_raised {
                if *name == b.name && *window_start == w.start {
                    if let Some(i) = b.thresholds.iter().position(|t| t == threshold) {
                        w.raised.insert(i);
                    }
                }
            }
        }
        self.cross(&mut state.windows);
        drop(state);
        self.changed.send_modify(|n| *n += 1);
    }

    /// The crossings queued so far (to record and raise); [`Tracker::requeue`] those that could not be.
    pub fn take_crossings(&self) -> Vec<Crossing> {
        self.crossings
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }

    pub fn requeue(&self, crossings: Vec<Crossing>) {
        if let Ok(mut c) = self.crossings.lock() {
            c.extend(crossings);
        }
    }

    /// Queues the thresholds newly crossed by spent (not counting reservations), marking them raised.
    fn cross(&self, windows: &mut [Window]) {
        let mut out = Vec::new();
        for (b, w) in self.budgets.iter().zip(windows.iter_mut()) {
            if w.ledger.is_none() {
                continue; // the ledger's part is unknown: a crossing could be a false alarm or late
            }
            let spent = w.spent();
            for (i, t) in b.thresholds.iter().enumerate() {
                if spent >= b.limit * t && w.raised.insert(i) {
                    out.push(Crossing {
                        budget: b.clone(),
                        window_start: w.start,
                        window_end: w.end,
                        threshold: *t,
                        spent,
                    });
                }
            }
        }
        if !out.is_empty() {
            self.requeue(out);
        }
    }

    pub fn snapshot(&self, now: DateTime<Utc>) -> Vec<Snapshot> {
        let Ok(mut state) = self.state.lock() else {
            return Vec::new();
        };
        self.roll(&mut state, now);
        self.budgets
            .iter()
            .zip(state.windows.iter())
            .map(|(b, w)| Snapshot {
                budget: b.clone(),
                window_start: w.start,
                window_end: w.end,
                ledger_known: w.known(now),
                spent: w.spent(),
                reserved: w.reserved(),
                raised: w.raised.iter().map(|i| b.thresholds[*i]).collect(),
                refused: w.refused,
                refuses_unpriced: w.refuses_unpriced,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
