//! Budgets (issue 12) through the front door: the real app on a clock the test sets, a scripted upstream, a
//! real Postgres. A `block` budget refuses in each protocol's shape and the upstream never sees the call; an
//! `alert` budget never refuses; windows are Beijing calendar windows and reset at their boundary; spent
//! survives a restart and a database outage; thresholds are raised once, across a restart; and 64 concurrent
//! streams never take spent past the limit with worst-case reservation.

use crate::helpers::receiver::WebhookReceiver;
use crate::helpers::*;
use chrono::{DateTime, Utc};
use deepseek_meter::budget::coordinated::Coordination;
use deepseek_meter::budget::tracker::Reservation;
use deepseek_meter::clock::Clock;
use deepseek_meter::config::Settings;
use rust_decimal::Decimal;
use serde_json::Value;
use std::time::Duration;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

const V3_JSON: &str = r#"{"choices":[{"message":{"content":"ok","role":"assistant"},"finish_reason":"stop","index":0}],"usage":{"prompt_tokens":6,"completion_tokens":64,"total_tokens":70},"model":"deepseek-v3","id":"chatcmpl-v3"}"#;
/// 6 × 2 + 64 × 8 per million (deepseek-v3).
const V3_COST: &str = "0.000524";
/// Asks for at most 64 output tokens: the worst case is the body's bytes × 2 + 64 × 8 per million.
const V3_BODY: &str =
    r#"{"model":"deepseek-v3","messages":[{"role":"user","content":"hi"}],"max_tokens":64}"#;

/// A deepseek-v3 stream that bills 6 input and 64 output tokens (with the usage chunk the proxy asks for).
const V3_STREAM: [&str; 4] = [
    "data: {\"choices\":[{\"delta\":{\"content\":\"ok\",\"role\":\"assistant\"},\"finish_reason\":null,\"index\":0}],\"object\":\"chat.completion.chunk\",\"model\":\"deepseek-v3\",\"id\":\"s\"}\n\n",
    "data: {\"choices\":[{\"delta\":{\"content\":\"\"},\"finish_reason\":\"stop\",\"index\":0}],\"object\":\"chat.completion.chunk\",\"model\":\"deepseek-v3\",\"id\":\"s\"}\n\n",
    "data: {\"choices\":[],\"object\":\"chat.completion.chunk\",\"usage\":{\"prompt_tokens\":6,\"completion_tokens\":64,\"total_tokens\":70},\"model\":\"deepseek-v3\",\"id\":\"s\"}\n\n",
    "data: [DONE]\n\n",
];

/// Settings with these `[[budget]]` tables (TOML).
fn with_budgets(toml_text: &str) -> impl FnOnce(&mut Settings) {
    let table: toml::Table = toml::from_str(toml_text).unwrap();
    let budgets = deepseek_meter::budget::parse(table.get("budget")).unwrap();
    move |s: &mut Settings| s.budgets = budgets
}

async fn budgets(t: &LedgerApp) -> Value {
    get_json(&t.http, &t.admin_url("/v1/budgets")).await
}

/// Waits until every budget's spent is known (the refresher read the ledger) and equals `spent`.
async fn spent_is(t: &LedgerApp, name: &str, spent: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        last = budgets(t).await;
        let b = last["budgets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .unwrap()
            .clone();
        if b["spent_known"] == true && b["spent_yuan"] == spent {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} never reached spent {spent}: {last}");
}

async fn post(t: &LedgerApp, path: &str, body: &str, project: &str) -> reqwest::Response {
    let resp = t
        .http
        .post(t.url(path))
        .bearer_auth("sk-budget-test-0001")
        .header("x-meter-project", project)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    t.saw(&call_id(&resp));
    resp
}

/// Room for two deepseek-v3 calls' worst cases, not three: the third is refused with a 429 in the
/// OpenAI-compatible shape, the fourth (native) in the native shape; both are `rejected` rows and the upstream
/// never saw them. An `alert` budget far exceeded refuses nothing. Another project is not covered.
#[tokio::test]
async fn a_block_budget_refuses_in_each_protocols_shape_and_an_alert_budget_never_does() {
    let up = ScriptedUpstream::start().await;
    up.answer_always(Script::json(200, V3_JSON));
    let clock = Clock::manual(at("2026-11-25T05:00:00Z"));
    let t = LedgerApp::start_at(
        up.upstream(),
        clock.clone(),
        with_budgets(
            r#"
            [[budget]]
            name = "alpha-daily"
            period = "day"
            limit_yuan = "0.0015"
            project = "alpha"
            action = "block"
            [[budget]]
            name = "all-hourly"
            period = "hour"
            limit_yuan = "0.0001"
            action = "alert"
            "#,
        ),
    )
    .await;
    spent_is(&t, "alpha-daily", "0").await;
    for _ in 0..2 {
        let resp = post(&t, COMPAT_PATH, V3_BODY, "alpha").await;
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let resp = post(&t, COMPAT_PATH, V3_BODY, "alpha").await;
    assert_eq!(resp.status(), 429);
    let refused = call_id(&resp);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "BudgetExceeded");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("alpha-daily"));
    let native = r#"{"model":"deepseek-v3","input":{"messages":[{"role":"user","content":"hi"}]},"parameters":{"max_tokens":64}}"#;
    let resp = post(&t, NATIVE_PATH, native, "alpha").await;
    assert_eq!(resp.status(), 429);
    let id = call_id(&resp);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "BudgetExceeded");
    assert_eq!(body["request_id"], id.as_str());
    // The Responses API answers in the OpenAI shape, the Anthropic API in its own.
    let responses = r#"{"model":"deepseek-v3","input":"hi","max_output_tokens":64}"#;
    let resp = post(&t, "/compatible-mode/v1/responses", responses, "alpha").await;
    assert_eq!(resp.status(), 429);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "BudgetExceeded");
    let anthropic =
        r#"{"model":"deepseek-v3","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;
    let resp = post(&t, "/apps/anthropic/v1/messages", anthropic, "alpha").await;
    assert_eq!(resp.status(), 429);
    let id = call_id(&resp);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        (
            &body["type"],
            &body["error"]["type"],
            &body["error"]["code"]
        ),
        (
            &Value::from("error"),
            &Value::from("rate_limit_error"),
            &Value::from("BudgetExceeded")
        )
    );
    assert_eq!(body["request_id"], id.as_str());
    // Another project is not covered by the block budget; the alert budget (long past its limit) refuses
    // nothing.
    let resp = post(&t, COMPAT_PATH, V3_BODY, "beta").await;
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    assert_eq!(
        up.seen.lock().unwrap().len(),
        3,
        "the refused calls never reached the upstream"
    );
    let row = t.row(&refused).await;
    assert_eq!(
        (&row["status"], &row["http_status"], &row["error_code"]),
        (
            &Value::from("rejected"),
            &Value::from(429),
            &Value::from("BudgetExceeded")
        )
    );
    let b = spent_is(&t, "alpha-daily", "0.001048").await;
    assert_eq!(b["window_start"], "2026-11-25T00:00:00+08:00");
    assert_eq!(b["window_end"], "2026-11-26T00:00:00+08:00");
    assert_eq!(b["limit_yuan"], "0.0015");
    assert_eq!(b["reserved_yuan"], "0");
    let alert = spent_is(&t, "all-hourly", "0.001572").await;
    assert_eq!(alert["state"], "alerting");
    assert_eq!(
        alert["thresholds_crossed"],
        serde_json::json!(["0.5", "0.8", "1"])
    );
    let metrics = get_text(&t.http, &t.admin_url("/metrics")).await;
    for line in [
        "deepseek_meter_budget_rejections_total{budget=\"alpha-daily\"} 4",
        "deepseek_meter_budget_limit_yuan{budget=\"alpha-daily\"} 0.0015",
        "deepseek_meter_budget_window_end_timestamp_seconds{budget=\"alpha-daily\"} 1795622400",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
    t.audit(&[]).await;
}

/// Day windows are Beijing days: spent at 23:59 is gone at 00:00 (16:00 UTC), when the new day (and hour)
/// starts empty; the month goes on.
#[tokio::test]
async fn a_day_window_resets_at_midnight_in_beijing() {
    let up = ScriptedUpstream::start().await;
    up.answer_always(Script::json(200, V3_JSON));
    let clock = Clock::manual(at("2026-11-25T15:59:00Z"));
    let t = LedgerApp::start_at(
        up.upstream(),
        clock.clone(),
        with_budgets(
            "[[budget]]\nname = \"daily\"\nperiod = \"day\"\nlimit_yuan = 1\naction = \"block\"\n\
             [[budget]]\nname = \"monthly\"\nperiod = \"month\"\nlimit_yuan = 1\naction = \"block\"\n\
             [[budget]]\nname = \"hourly\"\nperiod = \"hour\"\nlimit_yuan = 1\naction = \"alert\"\n",
        ),
    )
    .await;
    spent_is(&t, "daily", "0").await;
    let resp = post(&t, COMPAT_PATH, V3_BODY, "alpha").await;
    resp.bytes().await.unwrap();
    spent_is(&t, "daily", V3_COST).await;
    spent_is(&t, "hourly", V3_COST).await;
    clock.set(at("2026-11-25T16:00:00Z"));
    let h = spent_is(&t, "hourly", "0").await;
    assert_eq!(h["window_start"], "2026-11-26T00:00:00+08:00");
    assert_eq!(h["window_end"], "2026-11-26T01:00:00+08:00");
    let b = spent_is(&t, "daily", "0").await;
    assert_eq!(b["window_start"], "2026-11-26T00:00:00+08:00");
    let m = spent_is(&t, "monthly", V3_COST).await;
    assert_eq!(m["window_start"], "2026-11-01T00:00:00+08:00");
    assert_eq!(m["window_end"], "2026-12-01T00:00:00+08:00");
    t.audit(&[]).await;
}

/// Spent survives a database outage (the calls journaled meanwhile count, and the budget still refuses) and
/// a restart (the journal's unshipped calls and the ledger both count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spent_survives_a_database_outage_and_a_restart() {
    use deepseek_meter::budget::coordinated::Coordination;
    for coordination in [Coordination::Local, Coordination::Postgres] {
        outage_and_restart(coordination).await;
    }
}

/// The outage-and-restart story with budgets decided locally, or in Postgres while it answers (locally while it
/// does not).
async fn outage_and_restart(coordination: deepseek_meter::budget::coordinated::Coordination) {
    let up = ScriptedUpstream::start().await;
    up.answer_always(Script::json(200, V3_JSON));
    let pg = FaultProxy::start(pg_addr()).await;
    let clock = Clock::manual(at("2026-11-25T05:00:00Z"));
    let budget = "[[budget]]\nname = \"daily\"\nperiod = \"day\"\nlimit_yuan = \"0.0015\"\naction = \"block\"\n";
    let db = TestDb::new().await;
    let journal = tempfile::tempdir().unwrap();
    let via_proxy = pg.url_for(&db.url);
    let tweak = |url: String| {
        move |s: &mut Settings| {
            with_budgets(budget)(s);
            s.budget_coordination = coordination;
            s.ledger.as_mut().unwrap().database_url = url;
        }
    };
    let app = sidecar(
        &db,
        journal.path(),
        up.upstream(),
        clock.clone(),
        tweak(via_proxy.clone()),
    )
    .await;
    let t = LedgerApp::adopt(app, db, journal);
    coordination_is(&t, coordination).await;
    let resp = post(&t, COMPAT_PATH, V3_BODY, "alpha").await;
    resp.bytes().await.unwrap();
    flush(&t.app).await; // the first call is in the ledger before the outage
    spent_is(&t, "daily", V3_COST).await;
    pg.set_down(true);
    let resp = post(&t, COMPAT_PATH, V3_BODY, "alpha").await;
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    // The second call is journaled, not shipped: it counts all the same, and the third is refused.
    let b = budgets(&t).await;
    assert_eq!(b["budgets"][0]["spent_yuan"], "0.001048", "{b}");
    let resp = post(&t, COMPAT_PATH, V3_BODY, "alpha").await;
    assert_eq!(resp.status(), 429);
    resp.bytes().await.unwrap();
    // A restart while the database is still away: the journal's unshipped call is counted at once.
    let t = t
        .restart_at(up.upstream(), clock.clone(), tweak(via_proxy.clone()))
        .await;
    let b = budgets(&t).await;
    assert_eq!(
        b["budgets"][0]["spent_yuan"], V3_COST,
        "the journal's part: {b}"
    );
    assert_eq!(
        b["budgets"][0]["spent_known"], false,
        "the ledger's part is unknown: {b}"
    );
    pg.set_down(false);
    spent_is(&t, "daily", "0.001048").await;
    coordination_is(&t, coordination).await;
    let resp = post(&t, COMPAT_PATH, V3_BODY, "alpha").await;
    assert_eq!(resp.status(), 429, "still no room after the restart");
    resp.bytes().await.unwrap();
    t.audit(&[]).await;
}

/// Waits until `/v1/budgets` says budgets are decided by `coordination` (Postgres once it has the definitions).
async fn coordination_is(
    t: &LedgerApp,
    coordination: deepseek_meter::budget::coordinated::Coordination,
) {
    use deepseek_meter::budget::coordinated::Coordination;
    let want = match coordination {
        Coordination::Local => "local",
        Coordination::Postgres => "postgres",
    };
    let mut seen = Value::Null;
    for _ in 0..200 {
        seen = budgets(t).await;
        if seen["coordination"] == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("coordination never {want}: {seen}");
}

/// Each threshold crossing is POSTed once, with the budget, scope, window, limit, spent and threshold; a
/// restart raises none again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_threshold_is_alerted_once_across_a_restart() {
    let up = ScriptedUpstream::start().await;
    up.answer_always(Script::json(200, V3_JSON));
    let (receiver, base) = WebhookReceiver::start().await;
    let url = format!("{base}/alerts");
    let clock = Clock::manual(at("2026-11-25T05:10:00Z"));
    let tweak = |url: String| {
        move |s: &mut Settings| {
            with_budgets(
                "[[budget]]\nname = \"alpha-hourly\"\nperiod = \"hour\"\nlimit_yuan = \"0.001\"\n\
                 project = \"alpha\"\naction = \"alert\"\nthresholds = [0.5, 1.0]\n",
            )(s);
            s.alert_webhook = Some(url.parse().unwrap());
        }
    };
    let t = LedgerApp::start_at(up.upstream(), clock.clone(), tweak(url.clone())).await;
    spent_is(&t, "alpha-hourly", "0").await;
    let resp = post(&t, COMPAT_PATH, V3_BODY, "alpha").await; // 0.000524: past 50 %
    resp.bytes().await.unwrap();
    let first = receiver.wait_for(1).await;
    assert_eq!(first, vec!["alpha-hourly/2026-11-25T05:00:00Z/0.5"]);
    assert_eq!(
        receiver.body_of(&first[0]),
        serde_json::json!({"budget": "alpha-hourly", "scope": {"project": "alpha"}, "period": "hour",
            "action": "alert", "window_start": "2026-11-25T13:00:00+08:00",
            "window_end": "2026-11-25T14:00:00+08:00", "limit_yuan": "0.001", "spent_yuan": "0.000524",
            "threshold": "0.5"})
    );
    let t = t
        .restart_at(up.upstream(), clock.clone(), tweak(url.clone()))
        .await;
    spent_is(&t, "alpha-hourly", V3_COST).await;
    // Two refresher rounds later, still one: not raised again after the restart.
    assert_eq!(receiver.settled().await.len(), 1);
    let resp = post(&t, COMPAT_PATH, V3_BODY, "alpha").await; // 0.001048: past 100 %
    resp.bytes().await.unwrap();
    assert_eq!(
        receiver.wait_for(2).await,
        vec![
            "alpha-hourly/2026-11-25T05:00:00Z/0.5",
            "alpha-hourly/2026-11-25T05:00:00Z/1"
        ]
    );
    t.audit(&[]).await;
}

/// A key pinned to project alpha (`[[api_key]]`) is attributed to alpha whatever its `X-Meter-Project` says,
/// its users kept under `alpha:`, and alpha's `block` budget still refuses it once full.
#[tokio::test]
async fn a_pinned_key_cannot_leave_its_projects_budget_by_a_header() {
    let up = ScriptedUpstream::start().await;
    up.answer_always(Script::json(200, V3_JSON));
    let clock = Clock::manual(at("2026-11-25T05:00:00Z"));
    let fp = deepseek_meter::usage::key_identity("Bearer sk-budget-test-0001")
        .unwrap()
        .0;
    let t = LedgerApp::start_at(up.upstream(), clock, move |s| {
        // Room for two calls' worst case (0.000682 each) after one actual cost, not three.
        with_budgets(
            "[[budget]]\nname = \"alpha-daily\"\nperiod = \"day\"\nlimit_yuan = \"0.0016\"\nproject = \"alpha\"\naction = \"block\"\n",
        )(s);
        let table: toml::Table = toml::from_str(&format!(
            "[[api_key]]\nfingerprint = \"{fp}\"\nproject = \"alpha\"\nuser_prefix = \"alpha:\"\n"
        ))
        .unwrap();
        s.api_keys = deepseek_meter::keys::parse(table.get("api_key")).unwrap();
    })
    .await;
    spent_is(&t, "alpha-daily", "0").await;
    let mut statuses = Vec::new();
    for project in ["beta", "gamma", "beta", ""] {
        let mut req = t
            .http
            .post(t.url(COMPAT_PATH))
            .bearer_auth("sk-budget-test-0001")
            .header("x-meter-user", "bob")
            .body(V3_BODY);
        if !project.is_empty() {
            req = req.header("x-meter-project", project);
        }
        let resp = req.send().await.unwrap();
        t.saw(&call_id(&resp));
        statuses.push(resp.status().as_u16());
        resp.bytes().await.unwrap();
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
    flush(&t.app).await;
    let pool = t.db.pool().await;
    let attributed: Vec<(Option<String>, Option<String>, String)> = sqlx::query_as(
        "SELECT DISTINCT project, end_user, status FROM usage_ledger ORDER BY status",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        attributed,
        [
            (Some("alpha".into()), Some("alpha:bob".into()), "ok".into()),
            (
                Some("alpha".into()),
                Some("alpha:bob".into()),
                "rejected".into()
            )
        ]
    );
    assert_eq!(
        up.seen.lock().unwrap().len(),
        2,
        "the refused calls never reached the upstream"
    );
    t.audit(&[]).await;
}

/// How the concurrency runs place their budget.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Setup {
    /// One sidecar.
    One(Reservation),
    /// Two sidecars on one database, 32 streams each.
    Two(Reservation, Coordination),
}

/// 64 concurrent streaming calls against a `block` budget with room for about ten, in each setup: with
/// worst-case reservation spent never passes the limit — one sidecar, or two coordinating through Postgres;
/// without reservation, or with two sidecars reserving locally, it passes it by what was in flight. Prints the
/// figures for the README.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_never_take_spent_past_the_limit_with_worst_case_reservation() {
    use Coordination::{Local, Postgres};
    use Reservation::{None as NoReservation, WorstCase};
    for setup in [
        Setup::One(WorstCase),
        Setup::One(NoReservation),
        Setup::Two(WorstCase, Postgres),
        Setup::Two(WorstCase, Local),
        Setup::Two(NoReservation, Postgres),
    ] {
        let (admitted, spent, limit) = sixty_four_streams(setup).await;
        println!(
            "RESULT budget concurrency {setup:?}: 64 streams, {admitted} admitted, spent {spent} of limit {limit}"
        );
        if matches!(
            setup,
            Setup::One(WorstCase) | Setup::Two(WorstCase, Postgres)
        ) {
            assert!(spent <= limit, "{setup:?}: spent {spent} > limit {limit}");
            assert!(
                admitted >= 5,
                "{setup:?}: room for about ten, {admitted} admitted"
            );
        }
        if setup == Setup::Two(WorstCase, Local) {
            // Each sidecar alone keeps to the limit: together, at most twice it.
            assert!(spent <= limit * Decimal::TWO, "{setup:?}: spent {spent}");
        }
    }
}

/// Calls admitted, spent in the ledger, and the limit.
async fn sixty_four_streams(setup: Setup) -> (usize, Decimal, Decimal) {
    let up = ScriptedUpstream::start().await;
    up.answer_always(Script::sse(
        V3_STREAM.iter().map(|e| e.as_bytes().to_vec()).collect(),
    ));
    let clock = Clock::manual(at("2026-11-25T05:00:00Z"));
    // A deepseek-v3 stream of 6 + 64 tokens (0.000524) asked with max_tokens 64: its worst case is
    // (body bytes × 2 + 64 × 8) per million, about 0.00072. Room for about ten.
    let limit = "0.0055";
    let (reservation, coordination) = match setup {
        Setup::One(r) => (r, Coordination::Local),
        Setup::Two(r, c) => (r, c),
    };
    let tweak = move |s: &mut Settings| {
        with_budgets(&format!(
            "[[budget]]\nname = \"tight\"\nperiod = \"day\"\nlimit_yuan = \"{limit}\"\naction = \"block\"\n"
        ))(s);
        s.budget_reservation = reservation;
        s.budget_coordination = coordination;
    };
    let t = LedgerApp::start_at(up.upstream(), clock.clone(), tweak).await;
    let other = match setup {
        Setup::One(_) => None,
        Setup::Two(..) => Some(t.beside(up.upstream(), clock.clone(), tweak).await),
    };
    spent_is(&t, "tight", "0").await;
    let mut urls = vec![t.url(COMPAT_PATH)];
    if let Some((app, _)) = &other {
        let admin = format!("http://{}/v1/budgets", app.admin_addr);
        let want = if coordination == Coordination::Postgres {
            "postgres"
        } else {
            "local"
        };
        for url in [t.admin_url("/v1/budgets"), admin] {
            let mut seen = Value::Null;
            for _ in 0..200 {
                seen = get_json(&t.http, &url).await;
                if seen["coordination"] == want && seen["budgets"][0]["spent_known"] == true {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(seen["coordination"], want, "{seen}");
        }
        urls.push(format!("http://{}{}", app.proxy_addr, COMPAT_PATH));
    }
    let body = r#"{"model":"deepseek-v3","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":64}"#;
    let calls = (0..64).map(|i| {
        let (t, url) = (&t, urls[i % urls.len()].clone());
        async move {
            let resp = t
                .http
                .post(url)
                .bearer_auth("sk-budget-test-0001")
                .header("x-meter-project", "alpha")
                .body(body)
                .send()
                .await
                .unwrap();
            t.saw(&call_id(&resp));
            let status = resp.status().as_u16();
            resp.bytes().await.unwrap();
            status
        }
    });
    let statuses = futures_util::future::join_all(calls).await;
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(
        admitted + statuses.iter().filter(|s| **s == 429).count(),
        64,
        "{statuses:?}"
    );
    if let Some((app, journal)) = other {
        flush(&app).await;
        app.shutdown().await;
        drop(journal);
    }
    flush(&t.app).await;
    let pool = t.db.pool().await;
    let spent: Decimal =
        sqlx::query_scalar("SELECT coalesce(sum(cost_total), 0) FROM usage_ledger")
            .fetch_one(&pool)
            .await
            .unwrap();
    if coordination == Coordination::Postgres {
        // Every reservation went with its call's ledger row (and off the counter's running sum); the counter
        // is the ledger's total.
        let (left, reserved, counted): (i64, Decimal, Decimal) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM budget_reservations), (SELECT sum(reserved) FROM budget_spent),
                (SELECT sum(spent) FROM budget_spent)",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            (left, reserved, counted),
            (0, Decimal::ZERO, spent),
            "{setup:?}"
        );
    }
    t.audit(&[]).await;
    (admitted, spent, d(limit))
}

/// A reservation left by a sidecar that died mid-call (no heartbeat, reserved long ago) holds room until the
/// sweep releases it: the row goes and the counter's running sum with it, so the room comes back.
#[tokio::test]
async fn a_dead_sidecars_reservation_is_released_and_its_room_comes_back() {
    use deepseek_meter::budget::coordinated::Coordination;
    let up = ScriptedUpstream::start().await;
    up.answer_always(Script::json(200, V3_JSON));
    let clock = Clock::manual(at("2026-11-25T05:00:00Z"));
    let t = LedgerApp::start_at(up.upstream(), clock, |s| {
        with_budgets(
            "[[budget]]\nname = \"daily\"\nperiod = \"day\"\nlimit_yuan = \"0.01\"\naction = \"block\"\n",
        )(s);
        s.budget_coordination = Coordination::Postgres;
    })
    .await;
    coordination_is(&t, Coordination::Postgres).await;
    let resp = post(&t, COMPAT_PATH, V3_BODY, "alpha").await;
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    flush(&t.app).await;
    let pool = t.db.pool().await;
    // The dead sidecar's call: reserved an hour ago, by an instance that never sent a heartbeat.
    sqlx::query(
        "WITH orphan AS (
           INSERT INTO budget_reservations (call_id, def_id, window_start, amount, instance_id, reserved_at)
           SELECT gen_random_uuid(), def_id, window_start, 0.009, gen_random_uuid(), '2026-11-25T04:00:00Z'
           FROM budget_spent RETURNING def_id, window_start, amount)
         UPDATE budget_spent s SET reserved = s.reserved + o.amount FROM orphan o
         WHERE s.def_id = o.def_id AND s.window_start = o.window_start",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut state = (0i64, Decimal::ONE);
    for _ in 0..100 {
        state = sqlx::query_as(
            "SELECT (SELECT count(*) FROM budget_reservations), (SELECT sum(reserved) FROM budget_spent)",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if state == (0, Decimal::ZERO) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        state,
        (0, Decimal::ZERO),
        "the orphan and its room are released"
    );
    let resp = post(&t, COMPAT_PATH, V3_BODY, "alpha").await;
    assert_eq!(resp.status(), 200, "the room is back");
    resp.bytes().await.unwrap();
    t.audit(&[]).await;
}
