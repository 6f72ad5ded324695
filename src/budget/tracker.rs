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

use super::{Action, Attribution, Budget};
use crate::billing::report::{start_of, Granularity};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use std::collections::{BTreeSet, HashMap};
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

/// Why a call is not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// This `block` budget has no room for the call.
    Exceeded { budget: String },
    /// This `block` budget's spent is unknown (no refresh for [`LEDGER_STALE`]) and `--budget-when-database-down
    /// closed`.
    Unknown { budget: String },
}

/// An admitted call: which budgets hold a reservation for it, and which were not checked (spent unknown,
/// `open`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    pub reserved_in: Vec<String>,
    pub unchecked: Vec<String>,
}

/// Costs by call, with their running total (an admission reads the total, never sums the calls).
#[derive(Debug, Default)]
struct Tally {
    items: HashMap<Uuid, Decimal>,
    total: Decimal,
}

impl Tally {
    fn insert(&mut self, id: Uuid, cost: Decimal) {
        if let Some(old) = self.items.insert(id, cost) {
            self.total -= old;
        }
        self.total += cost;
    }

    fn remove(&mut self, id: &Uuid) {
        if let Some(cost) = self.items.remove(id) {
            self.total -= cost;
        }
    }
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

#[derive(Debug, Default)]
struct State {
    windows: Vec<Window>,
    unshipped: HashMap<Uuid, Unshipped>,
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

#[derive(Debug)]
struct Window {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    ledger: Option<Decimal>,
    refreshed_at: Option<std::time::Instant>,
    /// Total cost of the unshipped calls this window counts.
    unshipped: Decimal,
    reserved: Tally,
    /// Thresholds (indexes into the budget's) already raised in this window.
    raised: BTreeSet<usize>,
}

impl Window {
    fn new(start: DateTime<Utc>, end: DateTime<Utc>) -> Window {
        Window {
            start,
            end,
            ledger: None,
            refreshed_at: None,
            unshipped: Decimal::ZERO,
            reserved: Tally::default(),
            raised: BTreeSet::new(),
        }
    }

    fn spent(&self) -> Decimal {
        self.ledger.unwrap_or_default() + self.unshipped
    }

    fn reserved(&self) -> Decimal {
        self.reserved.total
    }

    fn known(&self) -> bool {
        self.refreshed_at
            .is_some_and(|t| t.elapsed() <= LEDGER_STALE)
    }
}

/// Every budget's current window.
pub struct Tracker {
    budgets: Vec<Budget>,
    timezone: Tz,
    reservation: Reservation,
    when_unknown: WhenUnknown,
    state: Mutex<State>,
    /// Crossings seen and not yet recorded in Postgres (the refresher takes them; put back on failure).
    crossings: Mutex<Vec<Crossing>>,
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
}

impl Snapshot {
    pub fn remaining(&self) -> Decimal {
        (self.budget.limit - self.spent - self.reserved).max(Decimal::ZERO)
    }

    /// `blocking` (a `block` budget with no room left), `alerting` (a threshold crossed), else `ok`.
    pub fn state(&self) -> &'static str {
        if self.budget.action == Action::Block && self.spent + self.reserved >= self.budget.limit {
            "blocking"
        } else if !self.raised.is_empty() {
            "alerting"
        } else {
            "ok"
        }
    }
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

/// The window of `period` holding `at`: its start and end.
pub fn window_of(g: Granularity, at: DateTime<Utc>, tz: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = start_of(g, at, tz);
    let end = crate::billing::report::next_period(g, start, tz);
    (start, end)
}

impl Tracker {
    pub fn new(
        budgets: Vec<Budget>,
        timezone: Tz,
        reservation: Reservation,
        when_unknown: WhenUnknown,
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
            state: Mutex::new(State {
                windows,
                unshipped: HashMap::new(),
            }),
            crossings: Mutex::new(Vec::new()),
        }
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

    /// Admits or refuses a call covered by `a` whose worst case is `worst` (`None`: unpriced, reserves
    /// nothing). On admission the worst case is reserved in every covering `block` budget.
    pub fn admit(
        &self,
        call_id: Uuid,
        a: &Attribution<'_>,
        worst: Option<Decimal>,
        now: DateTime<Utc>,
    ) -> Result<Admission, Refusal> {
        let Ok(mut state) = self.state.lock() else {
            return Ok(Admission::default());
        };
        self.roll(&mut state, now);
        let windows = &mut state.windows;
        let cost = worst.unwrap_or_default();
        let mut admission = Admission::default();
        for (b, w) in self.budgets.iter().zip(windows.iter()) {
            if b.action != Action::Block || !b.scope.covers(a) {
                continue;
            }
            if !w.known() {
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
            let room = match self.reservation {
                Reservation::WorstCase => w.spent() + w.reserved() + cost <= b.limit,
                Reservation::None => w.spent() < b.limit,
            };
            if !room {
                return Err(Refusal::Exceeded {
                    budget: b.name.clone(),
                });
            }
        }
        admission.reserved_in = self.reserve(windows, call_id, a, cost, &admission.unchecked);
        Ok(admission)
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
            unchecked: Vec::new(),
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
    pub fn unshipped_ids(&self) -> Vec<Uuid> {
        let Ok(state) = self.state.lock() else {
            return Vec::new();
        };
        state.unshipped.keys().copied().collect()
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
        spent: &[(DateTime<Utc>, Decimal)],
        in_ledger: &[Uuid],
        already_raised: &[(String, DateTime<Utc>, Decimal)],
    ) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        for id in in_ledger {
            state.forget(id);
        }
        let now = std::time::Instant::now();
        for ((b, w), (start, ledger)) in
            self.budgets.iter().zip(state.windows.iter_mut()).zip(spent)
        {
            if *start == w.start {
                w.ledger = Some(*ledger);
                w.refreshed_at = Some(now);
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
                ledger_known: w.known(),
                spent: w.spent(),
                reserved: w.reserved(),
                raised: w.raised.iter().map(|i| b.thresholds[*i]).collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{Period, Scope};

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn budget(period: Period, limit: &str, action: Action) -> Budget {
        Budget {
            name: "b".into(),
            period,
            limit: d(limit),
            scope: Scope::default(),
            action,
            thresholds: crate::budget::default_thresholds(),
        }
    }

    const CALL: Attribution<'static> = Attribution {
        project: None,
        model: "deepseek-v3",
        key_fingerprint: None,
        end_user: None,
    };

    #[test]
    fn windows_are_calendar_windows_in_beijing() {
        let bj = chrono_tz::Asia::Shanghai;
        let t = at("2026-11-30T15:59:59Z"); // 23:59:59 on 30 November in Beijing
        assert_eq!(
            window_of(Granularity::Day, t, bj),
            (at("2026-11-29T16:00:00Z"), at("2026-11-30T16:00:00Z"))
        );
        assert_eq!(
            window_of(Granularity::Month, t, bj),
            (at("2026-10-31T16:00:00Z"), at("2026-11-30T16:00:00Z"))
        );
        assert_eq!(
            window_of(Granularity::Hour, t, bj),
            (at("2026-11-30T15:00:00Z"), at("2026-11-30T16:00:00Z"))
        );
    }

    #[test]
    fn worst_case_reservation_never_admits_past_the_limit() {
        let now = at("2026-11-25T05:00:00Z");
        let t = Tracker::new(
            vec![budget(Period::Day, "1", Action::Block)],
            chrono_tz::Asia::Shanghai,
            Reservation::WorstCase,
            WhenUnknown::Closed,
            now,
        );
        // Unknown until refreshed: closed refuses.
        assert_eq!(
            t.admit(Uuid::now_v7(), &CALL, Some(d("0.3")), now),
            Err(Refusal::Unknown { budget: "b".into() })
        );
        t.refreshed(&[(at("2026-11-24T16:00:00Z"), d("0.2"))], &[], &[]);
        let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
        assert!(t.admit(ids[0], &CALL, Some(d("0.3")), now).is_ok());
        assert!(t.admit(ids[1], &CALL, Some(d("0.3")), now).is_ok());
        // 0.2 + 0.6 reserved + 0.3 > 1.
        assert!(t.admit(ids[2], &CALL, Some(d("0.3")), now).is_err());
        // The first costs 0.05 in the end: room again.
        t.settle(
            ids[0],
            &CALL,
            at("2026-11-25T05:00:00Z"),
            Some(d("0.05")),
            now,
        );
        assert!(t.admit(ids[3], &CALL, Some(d("0.3")), now).is_ok());
        let s = &t.snapshot(now)[0];
        assert_eq!((s.spent, s.reserved), (d("0.25"), d("0.6")));
        // The refresh finds the first call in the ledger: counted there, not twice.
        t.refreshed(&[(at("2026-11-24T16:00:00Z"), d("0.25"))], &[ids[0]], &[]);
        assert_eq!(t.snapshot(now)[0].spent, d("0.25"));
        // The next day starts empty (and unknown until its first refresh).
        let tomorrow = at("2026-11-25T16:00:00Z");
        let s = &t.snapshot(tomorrow)[0];
        assert_eq!(
            (s.spent, s.window_start, s.ledger_known),
            (d("0"), tomorrow, false)
        );
        assert_eq!(
            s.reserved,
            d("0.6"),
            "calls in flight keep their reservations"
        );
    }

    #[test]
    fn an_unshipped_call_counts_in_every_budget_covering_it_until_the_ledger_has_it() {
        let now = at("2026-11-25T05:30:00Z");
        let mut hourly = budget(Period::Hour, "10", Action::Alert);
        hourly.name = "hourly".into();
        let t = Tracker::new(
            vec![budget(Period::Day, "10", Action::Alert), hourly],
            chrono_tz::Asia::Shanghai,
            Reservation::WorstCase,
            WhenUnknown::Open,
            now,
        );
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        t.settle(a, &CALL, at("2026-11-25T05:00:00Z"), Some(d("1")), now);
        t.settle(b, &CALL, at("2026-11-25T05:00:00Z"), Some(d("2")), now);
        assert_eq!(t.unshipped_ids().len(), 2, "each call kept once");
        let spent = |at| t.snapshot(at).iter().map(|s| s.spent).collect::<Vec<_>>();
        assert_eq!(spent(now), vec![d("3"), d("3")]);
        t.refreshed(&[], &[a], &[]);
        assert_eq!(spent(now), vec![d("2"), d("2")]);
        // The next hour: the hourly budget no longer counts it, the day still does.
        assert_eq!(spent(at("2026-11-25T06:00:00Z")), vec![d("2"), d("0")]);
        // The next day: nobody counts it, and it is forgotten.
        assert_eq!(spent(at("2026-11-25T16:00:00Z")), vec![d("0"), d("0")]);
        assert!(t.unshipped_ids().is_empty());
    }

    #[test]
    fn thresholds_are_crossed_once_per_window() {
        let now = at("2026-11-25T05:10:00Z");
        let t = Tracker::new(
            vec![budget(Period::Hour, "10", Action::Alert)],
            chrono_tz::Asia::Shanghai,
            Reservation::WorstCase,
            WhenUnknown::Open,
            now,
        );
        let w = at("2026-11-25T05:00:00Z");
        t.refreshed(&[(w, d("4"))], &[], &[]);
        assert!(t.take_crossings().is_empty());
        let id = Uuid::now_v7();
        t.settle(id, &CALL, w, Some(d("4.5")), now);
        let crossed: Vec<Decimal> = t.take_crossings().iter().map(|c| c.threshold).collect();
        assert_eq!(crossed, vec![d("0.5"), d("0.8")]);
        // The call reached the ledger: 8.5 in all, nothing new crossed.
        t.refreshed(&[(w, d("8.5"))], &[id], &[]);
        assert!(t.take_crossings().is_empty());
        // Another sidecar raised 1.0 already (recorded in Postgres): not again here.
        t.refreshed(&[(w, d("12"))], &[], &[("b".into(), w, Decimal::ONE)]);
        assert!(t.take_crossings().is_empty());
        // An alert budget never refuses.
        assert!(t.admit(Uuid::now_v7(), &CALL, Some(d("100")), now).is_ok());
    }

    #[test]
    fn without_reservation_calls_are_admitted_while_spent_is_under_the_limit() {
        let now = at("2026-11-25T05:00:00Z");
        let t = Tracker::new(
            vec![budget(Period::Month, "1", Action::Block)],
            chrono_tz::Asia::Shanghai,
            Reservation::None,
            WhenUnknown::Open,
            now,
        );
        // Unknown and open: admitted unchecked.
        assert_eq!(
            t.admit(Uuid::now_v7(), &CALL, Some(d("5")), now)
                .unwrap()
                .unchecked,
            vec!["b".to_owned()]
        );
        t.refreshed(&[(at("2026-10-31T16:00:00Z"), d("0.99"))], &[], &[]);
        assert!(t.admit(Uuid::now_v7(), &CALL, Some(d("5")), now).is_ok());
        t.refreshed(&[(at("2026-10-31T16:00:00Z"), d("1"))], &[], &[]);
        assert!(t.admit(Uuid::now_v7(), &CALL, Some(d("0")), now).is_err());
    }
}
