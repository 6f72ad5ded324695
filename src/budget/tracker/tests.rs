use super::*;
use crate::budget::{Period, Scope};
use crate::calendar::Granularity;

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
        Unpriced::Refuse,
        now,
    );
    // Never read, and the database has not failed: the call waits for the first read.
    assert_eq!(
        t.admit(Uuid::now_v7(), &CALL, Some(d("0.3")), now),
        Err(Refusal::Pending { budget: "b".into() })
    );
    // The database failed to answer: closed refuses.
    t.refresh_failed();
    assert_eq!(
        t.admit(Uuid::now_v7(), &CALL, Some(d("0.3")), now),
        Err(Refusal::Unknown { budget: "b".into() })
    );
    t.refreshed(now, &[(at("2026-11-24T16:00:00Z"), d("0.2"))], &[], &[]);
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    assert!(t.admit(ids[0], &CALL, Some(d("0.3")), now).is_ok());
    assert!(t.admit(ids[1], &CALL, Some(d("0.3")), now).is_ok());
    // 0.2 + 0.6 reserved + 0.3 > 1: refused, with what it needed and what was left; the budget says
    // `blocking` while the next such call would be refused.
    assert_eq!(
        t.admit(ids[2], &CALL, Some(d("0.3")), now),
        Err(Refusal::Exceeded {
            budget: "b".into(),
            needed: d("0.3"),
            left: d("0.2")
        })
    );
    assert_eq!(t.snapshot(now)[0].state(), "blocking");
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
    t.refreshed(
        now,
        &[(at("2026-11-24T16:00:00Z"), d("0.25"))],
        &[ids[0]],
        &[],
    );
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
        Unpriced::Refuse,
        now,
    );
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    t.settle(a, &CALL, at("2026-11-25T05:00:00Z"), Some(d("1")), now);
    t.settle(b, &CALL, at("2026-11-25T05:00:00Z"), Some(d("2")), now);
    assert_eq!(t.unshipped_ids().0.len(), 2, "each call kept once");
    let spent = |at| t.snapshot(at).iter().map(|s| s.spent).collect::<Vec<_>>();
    assert_eq!(spent(now), vec![d("3"), d("3")]);
    t.refreshed(now, &[], &[a], &[]);
    assert_eq!(spent(now), vec![d("2"), d("2")]);
    // The next hour: the hourly budget no longer counts it, the day still does.
    assert_eq!(spent(at("2026-11-25T06:00:00Z")), vec![d("2"), d("0")]);
    // The next day: nobody counts it, and it is forgotten.
    assert_eq!(spent(at("2026-11-25T16:00:00Z")), vec![d("0"), d("0")]);
    assert!(t.unshipped_ids().0.is_empty());
}

#[test]
fn thresholds_are_crossed_once_per_window() {
    let now = at("2026-11-25T05:10:00Z");
    let t = Tracker::new(
        vec![budget(Period::Hour, "10", Action::Alert)],
        chrono_tz::Asia::Shanghai,
        Reservation::WorstCase,
        WhenUnknown::Open,
        Unpriced::Refuse,
        now,
    );
    let w = at("2026-11-25T05:00:00Z");
    t.refreshed(now, &[(w, d("4"))], &[], &[]);
    assert!(t.take_crossings().is_empty());
    let id = Uuid::now_v7();
    t.settle(id, &CALL, w, Some(d("4.5")), now);
    let crossed: Vec<Decimal> = t.take_crossings().iter().map(|c| c.threshold).collect();
    assert_eq!(crossed, vec![d("0.5"), d("0.8")]);
    // The call reached the ledger: 8.5 in all, nothing new crossed.
    t.refreshed(now, &[(w, d("8.5"))], &[id], &[]);
    assert!(t.take_crossings().is_empty());
    // Another sidecar raised 1.0 already (recorded in Postgres): not again here.
    t.refreshed(now, &[(w, d("12"))], &[], &[("b".into(), w, Decimal::ONE)]);
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
        Unpriced::Refuse,
        now,
    );
    // The database failed to answer, and the policy is open: admitted unchecked.
    t.refresh_failed();
    assert_eq!(
        t.admit(Uuid::now_v7(), &CALL, Some(d("5")), now)
            .unwrap()
            .unchecked,
        vec!["b".to_owned()]
    );
    t.refreshed(now, &[(at("2026-10-31T16:00:00Z"), d("0.99"))], &[], &[]);
    assert!(t.admit(Uuid::now_v7(), &CALL, Some(d("5")), now).is_ok());
    t.refreshed(now, &[(at("2026-10-31T16:00:00Z"), d("1"))], &[], &[]);
    assert!(t.admit(Uuid::now_v7(), &CALL, Some(d("0")), now).is_err());
}

#[test]
fn a_new_window_waits_for_its_first_read_unless_the_database_failed() {
    let now = at("2026-11-25T05:59:00Z");
    let t = Tracker::new(
        vec![budget(Period::Hour, "1", Action::Block)],
        chrono_tz::Asia::Shanghai,
        Reservation::WorstCase,
        WhenUnknown::Open,
        Unpriced::Refuse,
        now,
    );
    t.refreshed(now, &[(at("2026-11-25T05:00:00Z"), d("0"))], &[], &[]);
    assert!(t.admit(Uuid::now_v7(), &CALL, Some(d("0.1")), now).is_ok());
    // 06:00: a new window, never read. The database answered before: wait, do not admit blind.
    let next = at("2026-11-25T06:00:00Z");
    assert_eq!(
        t.admit(Uuid::now_v7(), &CALL, Some(d("0.1")), next),
        Err(Refusal::Pending { budget: "b".into() })
    );
    assert!(!t.known(next));
    // The bound passed without a read: the open policy serves it, unchecked.
    t.unanswered();
    assert_eq!(
        t.admit(Uuid::now_v7(), &CALL, Some(d("0.1")), next)
            .unwrap()
            .unchecked,
        ["b"]
    );
}

#[test]
fn a_call_to_a_model_without_a_price_is_refused_or_admitted_as_set() {
    let now = at("2026-11-25T05:00:00Z");
    for (policy, refused) in [(Unpriced::Refuse, true), (Unpriced::Admit, false)] {
        let t = Tracker::new(
            vec![budget(Period::Day, "1", Action::Block)],
            chrono_tz::Asia::Shanghai,
            Reservation::WorstCase,
            WhenUnknown::Open,
            policy,
            now,
        );
        t.refreshed(now, &[(at("2026-11-24T16:00:00Z"), d("0"))], &[], &[]);
        let r = t.admit(Uuid::now_v7(), &CALL, None, now);
        if refused {
            assert_eq!(
                r,
                Err(Refusal::Unpriced {
                    budget: "b".into(),
                    model: CALL.model.into()
                })
            );
        } else {
            let a = r.unwrap();
            assert_eq!((a.unpriced, a.reserved_in), (vec!["b".to_owned()], vec![]));
        }
        // A budget covering every model still admits priced calls: not `blocking` for one unpriced refusal.
        assert_eq!(t.snapshot(now)[0].state(), "ok");
    }
    // Scoped to the unpriced model itself, it refuses every call it covers: `blocking`.
    let mut scoped = budget(Period::Day, "1", Action::Block);
    scoped.scope.model = Some(CALL.model.into());
    let t = Tracker::new(
        vec![scoped],
        chrono_tz::Asia::Shanghai,
        Reservation::WorstCase,
        WhenUnknown::Open,
        Unpriced::Refuse,
        now,
    );
    t.refreshed(now, &[(at("2026-11-24T16:00:00Z"), d("0"))], &[], &[]);
    assert!(t.admit(Uuid::now_v7(), &CALL, None, now).is_err());
    assert_eq!(t.snapshot(now)[0].state(), "blocking");
}

#[test]
fn a_read_older_than_thirty_seconds_by_the_sidecars_clock_is_unknown() {
    let now = at("2026-11-25T05:00:00Z");
    let later = |secs: i64| now + chrono::Duration::seconds(secs);
    for policy in [WhenUnknown::Open, WhenUnknown::Closed] {
        let t = Tracker::new(
            vec![budget(Period::Day, "1", Action::Block)],
            chrono_tz::Asia::Shanghai,
            Reservation::WorstCase,
            policy,
            Unpriced::Refuse,
            now,
        );
        t.refreshed(now, &[(at("2026-11-24T16:00:00Z"), d("0"))], &[], &[]);
        // 30 s after the read (by the clock the tracker is given, not the machine's): still trusted.
        let a = t
            .admit(Uuid::now_v7(), &CALL, Some(d("0.1")), later(30))
            .unwrap();
        assert!(a.unchecked.is_empty());
        assert!(t.known(later(30)) && t.snapshot(later(30))[0].ledger_known);
        // 31 s: stale; the database-down policy decides.
        assert!(!t.known(later(31)) && !t.snapshot(later(31))[0].ledger_known);
        let r = t.admit(Uuid::now_v7(), &CALL, Some(d("0.1")), later(31));
        match policy {
            WhenUnknown::Open => assert_eq!(r.unwrap().unchecked, ["b"]),
            WhenUnknown::Closed => assert_eq!(r, Err(Refusal::Unknown { budget: "b".into() })),
        }
        // A new read makes it known again.
        t.refreshed(later(31), &[(at("2026-11-24T16:00:00Z"), d("0"))], &[], &[]);
        assert!(t.known(later(61)) && !t.known(later(62)));
    }
}

#[test]
fn an_unpriced_call_is_refused_at_once_even_before_the_first_read() {
    let now = at("2026-11-25T05:00:00Z");
    let t = Tracker::new(
        vec![budget(Period::Day, "1", Action::Block)],
        chrono_tz::Asia::Shanghai,
        Reservation::WorstCase,
        WhenUnknown::Open,
        Unpriced::Refuse,
        now,
    );
    // Nothing the read could say would let it through: no waiting for it.
    assert_eq!(
        t.admit(Uuid::now_v7(), &CALL, None, now),
        Err(Refusal::Unpriced {
            budget: "b".into(),
            model: CALL.model.into()
        })
    );
}

#[test]
fn a_poisoned_lock_follows_the_database_down_policy() {
    for (policy, open) in [(WhenUnknown::Open, true), (WhenUnknown::Closed, false)] {
        let now = at("2026-11-25T05:00:00Z");
        let t = Tracker::new(
            vec![budget(Period::Day, "1", Action::Block)],
            chrono_tz::Asia::Shanghai,
            Reservation::WorstCase,
            policy,
            Unpriced::Refuse,
            now,
        );
        t.refreshed(now, &[(at("2026-11-24T16:00:00Z"), d("0"))], &[], &[]);
        // A panic while the state is held poisons it.
        let poisoned = std::thread::scope(|s| {
            s.spawn(|| {
                let _held = t.state.lock().unwrap();
                panic!("poison the tracker's state");
            })
            .join()
        });
        assert!(poisoned.is_err() && t.state.is_poisoned());
        let r = t.admit(Uuid::now_v7(), &CALL, Some(d("0.1")), now);
        if open {
            // Served, and named unchecked (the gate counts it and logs it).
            assert_eq!(r.unwrap().unchecked, ["b"]);
        } else {
            assert_eq!(r, Err(Refusal::Unknown { budget: "b".into() }));
        }
        assert!(
            !t.known(now),
            "a poisoned tracker never says the budgets are known"
        );
    }
}
