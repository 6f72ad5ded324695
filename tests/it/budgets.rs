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
use deepseek_meter::config::{Settings, Upstream};
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
    // It says what the call could cost and what was left (two calls of 0.000524 spent, 0.000452 left of
    // 0.0015); with max_tokens set, no hint to set it.
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("alpha-daily"), "{message}");
    assert!(
        message.contains("CNY and 0.000452 CNY is left"),
        "{message}"
    );
    assert!(message.contains("it could cost up to 0.000"), "{message}");
    assert!(!message.contains("Set max_tokens"), "{message}");
    // Without max_tokens the worst case is the model's maximum output: the 429 says to set it.
    let resp = post(
        &t,
        COMPAT_PATH,
        r#"{"model":"deepseek-v3","messages":[{"role":"user","content":"hi"}]}"#,
        "alpha",
    )
    .await;
    assert_eq!(resp.status(), 429);
    let body: Value = resp.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Set max_tokens to bound what the call may cost"),
        "{message}"
    );
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
        "deepseek_meter_budget_rejections_total{budget=\"alpha-daily\"} 5",
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
    One(Reservation, Coordination),
    /// Two sidecars on one database, 32 streams each.
    Two(Reservation, Coordination),
}

/// When the 64 streams come.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Burst {
    /// Once every sidecar knows the window's spent.
    Settled,
    /// The moment the sidecar has started, on a database it has yet to migrate.
    AtStart,
}

/// What a burst did.
#[derive(Debug)]
struct Outcome {
    admitted: usize,
    spent: Decimal,
    limit: Decimal,
    /// `deepseek_meter_budget_unchecked_calls_total`, summed over the sidecars.
    unchecked: u64,
}

/// 64 concurrent streaming calls against a `block` budget with room for about ten, every admitted call held by
/// the upstream until all 64 have been decided (so they overlap): with worst-case reservation spent never
/// passes the limit — one sidecar, or two coordinating through Postgres; without reservation (the control)
/// every call is admitted and spent passes it many times; two sidecars reserving locally stay within twice it.
/// Prints the figures for the README.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_never_take_spent_past_the_limit_with_worst_case_reservation() {
    use Coordination::{Local, Postgres};
    use Reservation::{None as NoReservation, WorstCase};
    for setup in [
        Setup::One(WorstCase, Local),
        Setup::One(NoReservation, Local),
        Setup::Two(WorstCase, Postgres),
        Setup::Two(WorstCase, Local),
        Setup::Two(NoReservation, Postgres),
    ] {
        let o = sixty_four_streams(setup, Burst::Settled).await;
        println!(
            "RESULT budget concurrency {setup:?}: 64 streams, {} admitted, spent {} of limit {}",
            o.admitted, o.spent, o.limit
        );
        assert_eq!(o.unchecked, 0, "{setup:?}");
        match setup {
            Setup::One(WorstCase, _) | Setup::Two(WorstCase, Postgres) => {
                assert!(o.spent <= o.limit, "{setup:?}: {o:?}");
                assert!(o.admitted >= 5, "{setup:?}: room for about ten, {o:?}");
            }
            // Each sidecar alone keeps to the limit: together, at most twice it.
            Setup::Two(WorstCase, Local) => {
                assert!(o.spent <= o.limit * Decimal::TWO, "{setup:?}: {o:?}")
            }
            // The control: nothing reserved, every overlapping call admitted.
            _ => {
                assert_eq!(o.admitted, 64, "{setup:?}: {o:?}");
                assert!(o.spent > o.limit * Decimal::from(5), "{setup:?}: {o:?}");
            }
        }
    }
}

/// A sidecar hit by 64 streams the moment it has started, its first read of the budgets held back until all
/// have arrived, admits nothing before it knows the window's spent, in both coordination modes: no call is
/// decided while the read is held (and `/readyz` says not ready), then spent stays within the limit and no
/// call is served unchecked. The control, without reservation, overshoots under the same load. (Checked
/// against the behaviour before: with the wait for the first read removed, all 64 were admitted unchecked.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_hit_at_once_after_its_start_stays_within_the_limit() {
    use Coordination::{Local, Postgres};
    use Reservation::{None as NoReservation, WorstCase};
    for setup in [
        Setup::One(WorstCase, Local),
        Setup::One(WorstCase, Postgres),
        Setup::One(NoReservation, Local),
    ] {
        let o = sixty_four_streams(setup, Burst::AtStart).await;
        println!(
            "RESULT budget at start {setup:?}: 64 streams, {} admitted ({} unchecked), spent {} of limit {}",
            o.admitted, o.unchecked, o.spent, o.limit
        );
        assert_eq!(o.unchecked, 0, "{setup:?}: {o:?}");
        if let Setup::One(WorstCase, _) = setup {
            assert!(o.spent <= o.limit, "{setup:?}: {o:?}");
            assert!(o.admitted >= 5, "{setup:?}: room for about ten, {o:?}");
        } else {
            assert!(o.spent > o.limit * Decimal::from(5), "{setup:?}: {o:?}");
        }
    }
}

/// `deepseek_meter_budget_unchecked_calls_total` on a sidecar, summed over budgets.
async fn unchecked_calls(http: &reqwest::Client, admin: std::net::SocketAddr) -> u64 {
    let text = get_text(http, &format!("http://{admin}/metrics")).await;
    text.lines()
        .filter(|l| l.starts_with("deepseek_meter_budget_unchecked_calls_total"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

/// Runs the 64 streams of `setup` as `burst` says.
async fn sixty_four_streams(setup: Setup, burst: Burst) -> Outcome {
    let up = ScriptedUpstream::start().await;
    // Every admitted call gets its head and first event at once, the rest only once the test opens the gate.
    up.answer_always(Script {
        gated: true,
        ..Script::sse(V3_STREAM.iter().map(|e| e.as_bytes().to_vec()).collect())
    });
    let clock = Clock::manual(at("2026-11-25T05:00:00Z"));
    // A deepseek-v3 stream of 6 + 64 tokens (0.000524) asked with max_tokens 64: its worst case is
    // (body bytes × 2 + 64 × 8) per million, about 0.00072. Room for about ten.
    let limit = "0.0055";
    let (reservation, coordination) = match setup {
        Setup::One(r, c) | Setup::Two(r, c) => (r, c),
    };
    let tweak = move |s: &mut Settings| {
        with_budgets(&format!(
            "[[budget]]\nname = \"tight\"\nperiod = \"day\"\nlimit_yuan = \"{limit}\"\naction = \"block\"\n"
        ))(s);
        s.budget_reservation = reservation;
        s.budget_coordination = coordination;
    };
    // At start: the database is there (nothing to migrate) but the sidecar's first read of the budgets is
    // held back — a lock on `budget_defs`, which the first read writes — until every call has arrived.
    let (t, mut first_read_held) = match burst {
        Burst::Settled => (
            LedgerApp::start_at(up.upstream(), clock.clone(), tweak).await,
            None,
        ),
        Burst::AtStart => {
            let db = TestDb::new().await;
            deepseek_meter::ledger::Ledger::create_and_migrate(&db.url)
                .await
                .unwrap();
            let mut lock = db.pool().await.begin().await.unwrap();
            sqlx::query("LOCK TABLE budget_defs IN ACCESS EXCLUSIVE MODE")
                .execute(&mut *lock)
                .await
                .unwrap();
            let journal = tempfile::tempdir().unwrap();
            let app = sidecar(&db, journal.path(), up.upstream(), clock.clone(), tweak).await;
            (LedgerApp::adopt(app, db, journal), Some(lock))
        }
    };
    let other = match setup {
        Setup::One(..) => None,
        Setup::Two(..) => Some(t.beside(up.upstream(), clock.clone(), tweak).await),
    };
    let mut urls = vec![t.url(COMPAT_PATH)];
    if let Some((app, _)) = &other {
        urls.push(format!("http://{}{}", app.proxy_addr, COMPAT_PATH));
    }
    if burst == Burst::Settled {
        spent_is(&t, "tight", "0").await;
        let mut admins = vec![t.admin_url("/v1/budgets")];
        if let Some((app, _)) = &other {
            admins.push(format!("http://{}/v1/budgets", app.admin_addr));
        }
        let want = if coordination == Coordination::Postgres {
            "postgres"
        } else {
            "local"
        };
        for url in admins {
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
    }
    let body = r#"{"model":"deepseek-v3","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":64}"#;
    // Every call decided (a 429, or a 200 whose stream the upstream holds) before any admitted one can end.
    let calls: Vec<_> = (0..64)
        .map(|i| {
            let (http, url) = (t.http.clone(), urls[i % urls.len()].clone());
            tokio::spawn(async move {
                http.post(url)
                    .bearer_auth("sk-budget-test-0001")
                    .header("x-meter-project", "alpha")
                    .body(body)
                    .timeout(Duration::from_secs(60))
                    .send()
                    .await
                    .unwrap()
            })
        })
        .collect();
    if let Some(lock) = first_read_held.take() {
        // Before the first read: not one call is decided, the sidecar says it is not ready and the window's
        // spent unknown.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            calls.iter().all(|c| !c.is_finished()),
            "a call was decided before the first read"
        );
        let ready = t.http.get(t.admin_url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 503);
        let ready: Value = ready.json().await.unwrap();
        assert_eq!(ready["budgets_known"], false, "{ready}");
        assert_eq!(budgets(&t).await["budgets"][0]["spent_known"], false);
        lock.commit().await.unwrap();
    }
    let mut decided = Vec::new();
    for c in calls {
        let resp = c.await.unwrap();
        t.saw(&call_id(&resp));
        decided.push(resp);
    }
    let statuses: Vec<u16> = decided.iter().map(|r| r.status().as_u16()).collect();
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(
        admitted + statuses.iter().filter(|s| **s == 429).count(),
        64,
        "{statuses:?}"
    );
    // Every admitted call reached the upstream, and none has ended (its stream is held).
    assert_eq!(up.seen.lock().unwrap().len(), admitted, "{statuses:?}");
    if (reservation, coordination) == (Reservation::WorstCase, Coordination::Postgres) {
        // Postgres decided them: each admitted call holds its reservation there.
        let reserved: i64 =
            sqlx::query_scalar("SELECT count(DISTINCT call_id) FROM budget_reservations")
                .fetch_one(&t.db.pool().await)
                .await
                .unwrap();
        assert_eq!(reserved as usize, admitted, "{setup:?}");
    }
    up.gate.add_permits(64 * V3_STREAM.len());
    for resp in decided {
        resp.bytes().await.unwrap();
    }
    let mut unchecked = unchecked_calls(&t.http, t.app.admin_addr).await;
    if let Some((app, journal)) = other {
        unchecked += unchecked_calls(&t.http, app.admin_addr).await;
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
    Outcome {
        admitted,
        spent,
        limit: d(limit),
        unchecked,
    }
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

/// A call through the simulator with this key, project, end user and model; read to its end.
async fn sim_call(t: &LedgerApp, key: &str, project: &str, user: &str, model: &str) {
    let resp = t
        .http
        .post(t.url(COMPAT_PATH))
        .bearer_auth(key)
        .header("x-meter-project", project)
        .header("x-meter-user", user)
        .body(format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"count me for {project} {user}"}}]}}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    t.saw(&call_id(&resp));
    resp.bytes().await.unwrap();
}

/// Each scope's effective spent in the day window, computed here from the ledger's rows and their price
/// corrections (not through the schema's view or rollups).
async fn spent_by_scope(pool: &sqlx::PgPool, from: &str) -> Vec<(String, Decimal)> {
    sqlx::query_as(
        "WITH calls AS (
            SELECT l.model, l.key_fingerprint, l.end_user, l.project,
                coalesce(l.cost_total, 0) + coalesce((SELECT sum(a.delta) FROM cost_adjustments a
                                                      WHERE a.call_id = l.call_id), 0) AS cost
            FROM usage_ledger l WHERE l.billing_hour >= $1::timestamptz)
         SELECT s.name, coalesce(sum(c.cost), 0) FROM (VALUES
            ('by-model', 'model', 'deepseek-r1'), ('by-key', 'key', $2), ('by-user', 'user', 'bob'),
            ('by-project', 'project', 'alpha')) s(name, dim, val)
         LEFT JOIN calls c ON CASE s.dim WHEN 'model' THEN c.model WHEN 'key' THEN c.key_fingerprint
                                         WHEN 'user' THEN c.end_user ELSE c.project END = s.val
         GROUP BY s.name ORDER BY s.name",
    )
    .bind(from)
    .bind(fingerprint(KEY_A))
    .fetch_all(pool)
    .await
    .unwrap()
}

const KEY_A: &str = "sk-scope-test-000a";
const KEY_B: &str = "sk-scope-test-000b";

fn fingerprint(key: &str) -> String {
    deepseek_meter::usage::key_identity(&format!("Bearer {key}"))
        .unwrap()
        .0
}

/// Budgets of every scope — model, key fingerprint, end user, project — counted in Postgres: a sidecar started
/// after a morning of calls finds each window's spent (its counter seeded from the rollups: closed hours and
/// the running one), its own calls move the counters through the ledger's insert trigger, and a price
/// correction (`reprice`) moves them through the corrections' trigger. Every figure equals the effective cost
/// of the calls in scope, computed from the ledger, and `/v1/budgets` says the same as the counters.
#[tokio::test]
async fn every_scope_is_counted_by_the_triggers_and_seeded_from_the_rollups() {
    let clock = Clock::manual(at("2026-11-25T01:10:00Z")); // 09:10 Beijing
    let t = LedgerApp::start_at(Upstream::Sim, clock.clone(), |_| {}).await;
    let calls = [
        (KEY_A, "alpha", "bob", "deepseek-v3"),
        (KEY_B, "beta", "alice", "deepseek-r1"),
        (KEY_A, "beta", "bob", "deepseek-r1"),
        (KEY_B, "alpha", "carol", "deepseek-v3"),
    ];
    for (i, (key, project, user, model)) in calls.iter().enumerate() {
        // 09:10, 10:10, 11:10 and 12:10: three closed hours and the running one by the time budgets start.
        clock.set(at("2026-11-25T01:10:00Z") + chrono::Duration::hours(i as i64));
        sim_call(&t, key, project, user, model).await;
    }
    flush(&t.app).await;
    t.app.roll_bill().await.unwrap().unwrap();
    let tweak = with_budgets(&format!(
        "[[budget]]\nname = \"by-model\"\nperiod = \"day\"\nlimit_yuan = 100\nmodel = \"deepseek-r1\"\naction = \"alert\"\n\
         [[budget]]\nname = \"by-key\"\nperiod = \"day\"\nlimit_yuan = 100\nkey_fingerprint = \"{}\"\naction = \"alert\"\n\
         [[budget]]\nname = \"by-user\"\nperiod = \"day\"\nlimit_yuan = 100\nend_user = \"bob\"\naction = \"block\"\n\
         [[budget]]\nname = \"by-project\"\nperiod = \"day\"\nlimit_yuan = 100\nproject = \"alpha\"\naction = \"block\"\n",
        fingerprint(KEY_A)
    ));
    let t = t.restart_at(Upstream::Sim, clock.clone(), tweak).await;
    let pool = t.db.pool().await;
    let day = "2026-11-24T16:00:00Z";
    // What /v1/budgets says, once every budget is known and its spent is `want`'s.
    let agree = |want: Vec<(String, Decimal)>| {
        let t = &t;
        async move {
            let mut last = Value::Null;
            for _ in 0..200 {
                last = budgets(t).await;
                let seen: Vec<(String, Decimal)> = {
                    let mut v: Vec<(String, Decimal)> = last["budgets"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|b| b["spent_known"] == true)
                        .map(|b| {
                            (
                                b["name"].as_str().unwrap().to_owned(),
                                d(b["spent_yuan"].as_str().unwrap()),
                            )
                        })
                        .collect();
                    v.sort();
                    v
                };
                if seen == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("/v1/budgets never said {want:?}: {last}");
        }
    };
    let counters = || async {
        let rows: Vec<(String, Decimal)> = sqlx::query_as(
            "SELECT d.name, s.spent FROM budget_spent s JOIN budget_defs d USING (def_id)
             WHERE s.window_start = '2026-11-24T16:00:00Z' ORDER BY d.name",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        rows
    };
    let seeded = spent_by_scope(&pool, day).await;
    assert!(seeded.iter().all(|(_, s)| *s > Decimal::ZERO), "{seeded:?}");
    agree(seeded.clone()).await;
    assert_eq!(counters().await, seeded, "seeded from the rollups");
    // Calls through this sidecar: the insert trigger moves each scope's counter.
    clock.set(at("2026-11-25T04:30:00Z"));
    sim_call(&t, KEY_A, "alpha", "bob", "deepseek-r1").await;
    sim_call(&t, KEY_B, "gamma", "dave", "deepseek-v3").await; // in no scope
    flush(&t.app).await;
    let moved = spent_by_scope(&pool, day).await;
    assert!(
        moved.iter().zip(&seeded).all(|(m, s)| m.1 > s.1),
        "{moved:?} {seeded:?}"
    );
    agree(moved.clone()).await;
    assert_eq!(counters().await, moved, "moved by the insert trigger");
    // A price correction (deepseek-r1's output ten times dearer): the corrections' trigger moves them again.
    let book = deepseek_meter::pricing::BUILTIN_BOOK.replace(
        "name = \"deepseek-r1\"\neffective_from = 2025-01-20\ninput = \"4\"\ncached_input = \"0.8\"\noutput = \"16\"",
        "name = \"deepseek-r1\"\neffective_from = 2025-01-20\ninput = \"4\"\ncached_input = \"0.8\"\noutput = \"160\"",
    );
    assert_ne!(
        book,
        deepseek_meter::pricing::BUILTIN_BOOK,
        "the r1 entry is as the test expects"
    );
    let dir = tempfile::tempdir().unwrap();
    let prices = dir.path().join("prices.toml");
    std::fs::write(&prices, book).unwrap();
    let (code, _, err) = crate::helpers::bin::run_bin(&[
        "reprice",
        "--from",
        "2026-11-25T09",
        "--to",
        "2026-11-25T13",
        "--prices",
        prices.to_str().unwrap(),
        "--database-url",
        &t.db.url,
    ])
    .await;
    assert_eq!(code, Some(0), "{err}");
    let corrected = spent_by_scope(&pool, day).await;
    assert!(corrected[1].1 > moved[1].1, "by-model moved: {corrected:?}");
    agree(corrected.clone()).await;
    assert_eq!(
        counters().await,
        corrected,
        "moved by the corrections' trigger"
    );
    // Budgets defined after the correction: their counters are seeded from the rollups, which reprice kept
    // (the bill for the model scope, the end users' rollup for the end-user scope).
    let want = |name: &str| corrected.iter().find(|(n, _)| n == name).unwrap().1;
    let late = vec![
        ("late-model".to_owned(), want("by-model")),
        ("late-user".to_owned(), want("by-user")),
    ];
    let t = t
        .restart_at(Upstream::Sim, clock.clone(), |s: &mut Settings| {
            with_budgets(
                "[[budget]]\nname = \"late-model\"\nperiod = \"day\"\nlimit_yuan = 100\nmodel = \"deepseek-r1\"\naction = \"alert\"\n\
                 [[budget]]\nname = \"late-user\"\nperiod = \"day\"\nlimit_yuan = 100\nend_user = \"bob\"\naction = \"alert\"\n",
            )(s)
        })
        .await;
    let mut seen = Vec::new();
    for _ in 0..200 {
        let b = budgets(&t).await;
        seen = b["budgets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["spent_known"] == true)
            .map(|b| {
                (
                    b["name"].as_str().unwrap().to_owned(),
                    d(b["spent_yuan"].as_str().unwrap()),
                )
            })
            .collect::<Vec<_>>();
        seen.sort();
        if seen == late {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, late);
    t.audit(&[]).await;
}

/// `deepseek_meter_<name>{budget="<budget>"}` on a sidecar's /metrics (0 when absent).
async fn budget_metric(http: &reqwest::Client, admin: &str, name: &str, budget: &str) -> u64 {
    let text = get_text(http, &format!("http://{admin}/metrics")).await;
    let prefix = format!("deepseek_meter_{name}{{budget=\"{budget}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.parse::<f64>().unwrap() as u64)
}

/// The real binary, as a new user would run it: a `block` budget scoped to a model the price book does not
/// know (and one covering every model), decided in Postgres (`--budget-coordination postgres`). Startup says
/// which budgets can meet unpriced models; a call to the unpriced model is refused with a 403
/// `BudgetUnpricedModel` (never counted as free), the budget says `blocking`, priced calls go on and are
/// counted in Postgres. Restarted with `--budget-unpriced admit`, the unpriced call is served and counted.
#[tokio::test]
async fn a_block_budget_on_a_model_without_a_price_refuses_it_and_says_so_at_startup() {
    use crate::helpers::bin::{Bin, SERVE_ON_SIM};
    let db = TestDb::new().await;
    let journal = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("meter.toml");
    std::fs::write(
        &config,
        "[[budget]]\nname = \"v9-cap\"\nperiod = \"day\"\nlimit_yuan = \"0.001\"\nmodel = \"deepseek-v9-preview\"\naction = \"block\"\n\
         [[budget]]\nname = \"all-daily\"\nperiod = \"day\"\nlimit_yuan = 1\naction = \"block\"\n",
    )
    .unwrap();
    let journal_dir = journal.path().display().to_string();
    let config = config.display().to_string();
    let start = |extra: &[&str]| {
        let args: Vec<&str> = ["--config", config.as_str()]
            .into_iter()
            .chain(SERVE_ON_SIM)
            .chain(["--database-url", &db.url, "--journal-dir", &journal_dir])
            .chain(["--budget-coordination", "postgres"])
            .chain(extra.iter().copied())
            .collect();
        Bin::start(&args, &[], &["proxy_addr", "admin_addr"])
    };
    let http = test_client();
    let call = |proxy: String, model: &'static str| {
        let http = http.clone();
        async move {
            let resp = http
                .post(format!("http://{proxy}{COMPAT_PATH}"))
                .bearer_auth("sk-unpriced-test-0001")
                .body(format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"max_tokens":16}}"#))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let budgets_of = |admin: String| {
        let http = http.clone();
        async move {
            let mut last = Value::Null;
            for _ in 0..200 {
                last = get_json(&http, &format!("http://{admin}/v1/budgets")).await;
                if last["coordination"] == "postgres"
                    && last["budgets"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|b| b["spent_known"] == true)
                {
                    return last;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("budgets never known in Postgres: {last}");
        }
    };
    let mut bin = start(&[]);
    let (proxy, admin) = (bin.addrs[0].clone(), bin.addrs[1].clone());
    budgets_of(admin.clone()).await;
    // One warning line naming the budget and its model; one info line for the budget over every model.
    let lines: Vec<Value> = bin
        .log()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let said = |level: &str, budget: &str, text: &str| {
        lines.iter().any(|l| {
            l["level"] == level
                && l["budget"] == budget
                && l["message"].as_str().unwrap_or("").contains(text)
        })
    };
    assert!(
        said("WARN", "v9-cap", "budget is scoped to a model without a price: its calls are refused (--budget-unpriced refuse)"),
        "{lines:?}"
    );
    assert!(
        said(
            "INFO",
            "all-daily",
            "budget covers every model: calls to a model without a price are refused"
        ),
        "{lines:?}"
    );
    let (status, body) = call(proxy.clone(), "deepseek-v9-preview").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "BudgetUnpricedModel", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deepseek-v9-preview"),
        "{body}"
    );
    let (status, body) = call(proxy.clone(), "deepseek-v3").await;
    assert_eq!(status, 200, "{body}");
    let b = budgets_of(admin.clone()).await;
    let of = |name: &str| {
        b["budgets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(of("v9-cap")["state"], "blocking", "{b}");
    assert_eq!(of("all-daily")["state"], "ok", "{b}");
    assert_eq!(
        budget_metric(&http, &admin, "budget_rejections_total", "v9-cap").await,
        1
    );
    assert!(bin.sigterm().success());
    // Decided in Postgres: the priced call's reservation went with its row, and the counter is its cost.
    let pool = db.pool().await;
    let (counted, reserved, cost): (Decimal, Decimal, Decimal) = sqlx::query_as(
        "SELECT s.spent, s.reserved, (SELECT sum(cost_total) FROM usage_ledger WHERE priced)
         FROM budget_spent s JOIN budget_defs d USING (def_id) WHERE d.name = 'all-daily'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((counted, reserved), (cost, Decimal::ZERO));
    let statuses: Vec<(String, String, bool)> =
        sqlx::query_as("SELECT model, status, priced FROM usage_ledger ORDER BY started_at")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        statuses,
        [
            ("deepseek-v9-preview".into(), "rejected".into(), false),
            ("deepseek-v3".into(), "ok".into(), true)
        ]
    );

    // Admitted by setting: served, counted in both budgets that cover it, and said so at startup.
    let mut bin = start(&["--budget-unpriced", "admit"]);
    let (proxy, admin) = (bin.addrs[0].clone(), bin.addrs[1].clone());
    budgets_of(admin.clone()).await;
    assert!(bin.log().iter().any(|l| l.contains("\"v9-cap\"")
        && l.contains("its calls are served and not counted (--budget-unpriced admit)")));
    let (status, body) = call(proxy, "deepseek-v9-preview").await;
    assert_eq!(status, 200, "{body}");
    for budget in ["v9-cap", "all-daily"] {
        assert_eq!(
            budget_metric(&http, &admin, "budget_unpriced_admitted_total", budget).await,
            1,
            "{budget}"
        );
    }
    // Its row is kept unpriced (no cost, never a zero), and the budgets' spent did not move.
    let v9 = budgets_of(admin.clone()).await;
    let cap = v9["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "v9-cap")
        .unwrap()
        .clone();
    assert_eq!(cap["spent_yuan"], "0", "{v9}");
    assert!(bin.sigterm().success());
    let served: Vec<(String, bool, Option<Decimal>)> = sqlx::query_as(
        "SELECT status, priced, cost_total FROM usage_ledger WHERE model = 'deepseek-v9-preview' ORDER BY started_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        served,
        [("rejected".into(), false, None), ("ok".into(), false, None)]
    );
}

/// The 30 s a budget's last read stays trusted, on the sidecar's own (drivable) clock, and `closed` through the
/// front door: with the database away, a call 29 s after the last read is decided on it; 31 s after, the
/// spent is unknown and `--budget-when-database-down closed` refuses with 503 `BudgetUnavailable` in the
/// caller's protocol's shape (nothing reaches the upstream); once the database answers, calls are decided
/// again.
#[tokio::test]
async fn a_stale_read_follows_the_database_down_policy_and_closed_refuses_with_503() {
    use deepseek_meter::budget::tracker::WhenUnknown;
    let up = ScriptedUpstream::start().await;
    up.answer_always(Script::json(200, V3_JSON));
    let pg = FaultProxy::start(pg_addr()).await;
    let t0 = at("2026-11-25T05:00:00Z");
    let clock = Clock::manual(t0);
    let db = TestDb::new().await;
    let journal = tempfile::tempdir().unwrap();
    let via_proxy = pg.url_for(&db.url);
    let app = sidecar(&db, journal.path(), up.upstream(), clock.clone(), |s| {
        with_budgets(
            "[[budget]]\nname = \"daily\"\nperiod = \"day\"\nlimit_yuan = 1\naction = \"block\"\n",
        )(s);
        s.budget_when_database_down = WhenUnknown::Closed;
        s.ledger.as_mut().unwrap().database_url = via_proxy;
    })
    .await;
    let t = LedgerApp::adopt(app, db, journal);
    spent_is(&t, "daily", "0").await;
    assert_eq!(post(&t, COMPAT_PATH, V3_BODY, "alpha").await.status(), 200);
    flush(&t.app).await;
    spent_is(&t, "daily", V3_COST).await;
    pg.set_down(true);
    // Let the refresher find the database away (its reads fail from now on).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    clock.set(t0 + chrono::Duration::seconds(29));
    let resp = post(&t, COMPAT_PATH, V3_BODY, "alpha").await;
    assert_eq!(
        resp.status(),
        200,
        "29 s after the last read: still trusted"
    );
    resp.bytes().await.unwrap();
    clock.set(t0 + chrono::Duration::seconds(31));
    assert_eq!(budgets(&t).await["budgets"][0]["spent_known"], false);
    let seen = up.seen.lock().unwrap().len();
    let resp = post(&t, COMPAT_PATH, V3_BODY, "alpha").await;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "BudgetUnavailable", "{body}");
    let resp = post(
        &t,
        NATIVE_PATH,
        r#"{"model":"deepseek-v3","input":{"messages":[]}}"#,
        "alpha",
    )
    .await;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["code"], "BudgetUnavailable",
        "the native shape: {body}"
    );
    assert_eq!(
        up.seen.lock().unwrap().len(),
        seen,
        "refused calls never reach the upstream"
    );
    assert_eq!(
        budget_metric(
            &t.http,
            &t.app.admin_addr.to_string(),
            "budget_rejections_total",
            "daily"
        )
        .await,
        2
    );
    pg.set_down(false);
    spent_is(&t, "daily", "0.001048").await;
    let resp = post(&t, COMPAT_PATH, V3_BODY, "alpha").await;
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    t.audit(&[]).await;
}

/// The README's budget refusal, as a new user would try it: its config file (the `printf` line), the real
/// binary on the simulator, its `curl` body — and the answer is the one the README shows.
#[tokio::test]
async fn the_readmes_budget_refusal_is_what_the_binary_answers() {
    use crate::helpers::bin::{Bin, SERVE_ON_SIM};
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = &readme[readme
        .find("printf '[[budget]]")
        .expect("the README's budget example")..];
    let block = &block[..block.find("```").unwrap()];
    let config_text = block[8..block.find("' > demo.toml").unwrap()].replace("\\n", "\n");
    let body = &block[block.find("-d '").unwrap() + 4..];
    let body = &body[..body.find('\'').unwrap()];
    let shown: String = block
        .lines()
        // A continued comment line starts with a space: the space between the two lines' words.
        .filter_map(|l| l.strip_prefix("# "))
        .collect::<Vec<_>>()
        .join("");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("demo.toml");
    std::fs::write(&config, config_text).unwrap();
    let db = TestDb::new().await;
    let journal = dir.path().join("journal");
    let args: Vec<&str> = ["--config", config.to_str().unwrap()]
        .into_iter()
        .chain(SERVE_ON_SIM)
        .chain([
            "--database-url",
            &db.url,
            "--journal-dir",
            journal.to_str().unwrap(),
        ])
        .collect();
    let mut bin = Bin::start(&args, &[], &["proxy_addr"]);
    let resp = test_client()
        .post(format!("http://{}{COMPAT_PATH}", bin.addrs[0]))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let answer: Value = resp.json().await.unwrap();
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        shown.contains(message),
        "the README shows {shown:?}; the binary answers {message:?}"
    );
    assert!(shown.contains("\"code\":\"BudgetExceeded\""), "{shown}");
    assert!(bin.sigterm().success());
}
