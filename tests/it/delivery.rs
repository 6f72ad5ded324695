//! Delivery of closed hours' reports (issue 11): to `--report-dir` and `--report-webhook`, once per (hour,
//! revision) and destination, across a restart and across two sidecars; again at each new revision; retried
//! with backoff after a failure, which is counted and shown in `/readyz`. A webhook receiver runs in the test.

use crate::helpers::captures::*;
use crate::helpers::receiver::WebhookReceiver;
use crate::helpers::*;
use crate::reports::roll_until_done;
use chrono::{DateTime, Utc};
use deepseek_meter::clock::Clock;
use deepseek_meter::config::Settings;
use std::path::Path;
use std::time::Duration;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// The test's receiver: its report webhook URL carries a secret, which must never be stored.
async fn receiver() -> (WebhookReceiver, String) {
    let (r, base) = WebhookReceiver::start().await;
    (r, format!("{base}/hooks/bill?token=receiver-secret"))
}

fn with_reports(dir: &Path, webhook: &str) -> impl FnOnce(&mut Settings) {
    let (dir, webhook) = (dir.to_owned(), webhook.to_owned());
    move |s: &mut Settings| {
        let l = s.ledger.as_mut().unwrap();
        l.report_dir = Some(dir);
        l.report_webhook = Some(webhook.parse().unwrap());
    }
}

/// Waits until the sidecars' destinations are recorded (their deliverers' first round).
async fn registered(pool: &sqlx::PgPool) {
    for _ in 0..200 {
        let n: Option<i64> = sqlx::query_scalar("SELECT count(*) FROM report_destinations")
            .fetch_one(pool)
            .await
            .ok();
        if n == Some(2) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the destinations were never recorded");
}

async fn call(t: &LedgerApp, up: &ScriptedUpstream) {
    t.call_as(
        up,
        COMPAT_R1_JSON,
        "deepseek-r1",
        "sk-delivery-test-0001",
        "alpha",
    )
    .await;
}

/// A late row for the 23:00 Beijing hour (a journal replayed after an outage).
async fn late_row(t: &LedgerApp, i: usize) {
    let record = deepseek_meter::record::CallRecord {
        billing_hour: at("2026-11-25T15:00:00Z"),
        finished_at: at("2026-11-25T15:45:00Z"),
        started_at: at("2026-11-25T15:44:59Z"),
        ..a_record(i)
    };
    t.saw(&record.call_id.to_string());
    let ledger = t.app.state.ledger.clone().unwrap();
    assert_eq!(ledger.insert(&[record]).await.unwrap(), 1);
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The ledger's cost of the 23:00 Beijing hour.
async fn hour_cost(pool: &sqlx::PgPool) -> String {
    let cost: rust_decimal::Decimal = sqlx::query_scalar(
        "SELECT sum(cost_total) FROM usage_ledger WHERE billing_hour = '2026-11-25T15:00:00Z'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    deepseek_meter::calendar::money(cost)
}

/// A receiver, a report directory, and a sidecar delivering to both on a clock at 23:30 Beijing time.
struct Setup {
    receiver: WebhookReceiver,
    url: String,
    reports: tempfile::TempDir,
    up: ScriptedUpstream,
    clock: Clock,
    t: LedgerApp,
}

impl Setup {
    async fn start() -> Setup {
        let (receiver, url) = receiver().await;
        let reports = tempfile::tempdir().unwrap();
        let up = ScriptedUpstream::start().await;
        let clock = Clock::manual(at("2026-11-25T15:30:00Z"));
        let t = LedgerApp::start_at(
            up.upstream(),
            clock.clone(),
            with_reports(reports.path(), &url),
        )
        .await;
        Setup {
            receiver,
            url,
            reports,
            up,
            clock,
            t,
        }
    }
}

/// An hour closes: its report is written to the directory (JSON and CSV) and POSTed once with the key
/// `<hour>/r0`; a restart repeats nothing; a late row makes revision 1, delivered again under a new key; a
/// receiver that fails is retried after the backoff, the failure counted and shown in `/readyz`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_closed_hour_and_revision_is_delivered_once_across_a_restart() {
    let Setup {
        receiver,
        url,
        reports,
        up,
        clock,
        t,
    } = Setup::start().await;
    call(&t, &up).await;
    flush(&t.app).await;
    let pool = t.db.pool().await;
    registered(&pool).await;
    roll_until_done(&t.app).await;
    // 00:09:59 in Beijing: the 23:00 hour is provisional; nothing is delivered.
    clock.set(at("2026-11-25T16:09:59Z"));
    roll_until_done(&t.app).await;
    assert!(receiver.settled().await.is_empty());
    // 00:10: it closes, and is delivered.
    clock.set(at("2026-11-25T16:10:00Z"));
    roll_until_done(&t.app).await;
    let r0 = "2026-11-25T23:00:00+08:00/r0";
    assert_eq!(receiver.wait_for(1).await, vec![r0]);
    let body = receiver.body_of(r0);
    assert_eq!(body["from"], "2026-11-25T23:00:00+08:00");
    assert_eq!(body["to"], "2026-11-26T00:00:00+08:00");
    assert_eq!(
        body["by"],
        serde_json::json!(["model", "project", "key_fingerprint"])
    );
    assert_eq!(body["rows"][0]["state"], "closed");
    assert_eq!(body["rows"][0]["revision"], 0);
    assert_eq!(body["total"]["cost_total"], hour_cost(&pool).await);
    assert_eq!(
        files(reports.path()),
        vec![
            "bill-2026-11-25T23+0800-r0.csv",
            "bill-2026-11-25T23+0800-r0.json"
        ]
    );
    let on_disk: serde_json::Value = serde_json::from_slice(
        &std::fs::read(reports.path().join("bill-2026-11-25T23+0800-r0.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(on_disk, body, "the file and the POST carry the same report");

    // A restart: nothing is delivered twice.
    let t = t
        .restart_at(
            up.upstream(),
            clock.clone(),
            with_reports(reports.path(), &url),
        )
        .await;
    assert!(t.app.deliver_reports().await.unwrap().is_empty());
    assert_eq!(receiver.settled().await, vec![r0]);

    // A late row: revision 1, delivered under its own key, with the new total.
    clock.set(at("2026-11-25T16:20:00Z"));
    late_row(&t, 1).await;
    roll_until_done(&t.app).await;
    let r1 = "2026-11-25T23:00:00+08:00/r1";
    assert_eq!(receiver.wait_for(2).await, vec![r0, r1]);
    assert_eq!(
        receiver.body_of(r1)["total"]["cost_total"],
        hour_cost(&pool).await
    );
    assert_ne!(receiver.body_of(r1)["total"], receiver.body_of(r0)["total"]);
    assert_eq!(files(reports.path()).len(), 4);

    // The receiver fails once: counted, shown, and retried after the backoff (1 s on the app's clock).
    receiver.answers.lock().unwrap().push_back(500);
    clock.set(at("2026-11-25T16:30:00Z"));
    late_row(&t, 2).await;
    roll_until_done(&t.app).await;
    let mut failed = false;
    for _ in 0..200 {
        let metrics = get_text(&t.http, &t.admin_url("/metrics")).await;
        if metrics.contains("deepseek_meter_report_delivery_failures_total{target=\"webhook\"} 1") {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failed, "the failure is counted");
    let mut ready = serde_json::Value::Null;
    for _ in 0..100 {
        ready = get_json(&t.http, &t.admin_url("/readyz")).await;
        if ready["report_deliveries"]["pending"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready["report_deliveries"]["pending"], 1, "{ready}");
    assert_eq!(ready["report_deliveries"]["failing"], 1, "{ready}");
    assert_eq!(
        ready["report_deliveries"]["last_error"], "the receiver answered HTTP 500",
        "{ready}"
    );
    assert!(
        !ready.to_string().contains("receiver-secret"),
        "the webhook URL is never shown"
    );
    assert_eq!(
        files(reports.path()).len(),
        6,
        "the directory got revision 2 anyway"
    );
    // Not before the backoff.
    assert!(t.app.deliver_reports().await.unwrap().is_empty());
    clock.advance(chrono::Duration::seconds(1));
    let r2 = "2026-11-25T23:00:00+08:00/r2";
    assert_eq!(receiver.wait_for(3).await, vec![r0, r1, r2]);
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM bill_deliveries WHERE destination LIKE '%receiver-secret%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stored, 0);
    t.audit(&[]).await;
}

/// Two sidecars on one database, both delivering to the same webhook and directory: each (hour, revision)
/// arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_deliver_each_hour_once() {
    let Setup {
        receiver,
        url,
        reports,
        up,
        clock,
        t,
    } = Setup::start().await;
    let (other, _journal2) = t
        .beside(
            up.upstream(),
            clock.clone(),
            with_reports(reports.path(), &url),
        )
        .await;
    call(&t, &up).await;
    flush(&t.app).await;
    let pool = t.db.pool().await;
    registered(&pool).await;
    roll_until_done(&t.app).await;
    clock.set(at("2026-11-25T16:10:00Z"));
    // Both sidecars roll and deliver at once, besides their background rounds.
    let (a, b) = tokio::join!(t.app.roll_bill(), other.roll_bill());
    assert!(a.unwrap().is_ok() && b.unwrap().is_ok());
    let (a, b) = tokio::join!(t.app.deliver_reports(), other.deliver_reports());
    a.unwrap();
    b.unwrap();
    assert_eq!(
        receiver.wait_for(1).await,
        vec!["2026-11-25T23:00:00+08:00/r0"]
    );
    assert_eq!(receiver.got.lock().unwrap().len(), 1, "one POST in all");
    let rows: Vec<(i32, String, Option<String>)> = sqlx::query_as(
        "SELECT revision, destination, outcome FROM bill_deliveries ORDER BY destination",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2, "one per destination: {rows:?}");
    assert!(
        rows.iter()
            .all(|r| r.0 == 0 && r.2.as_deref() == Some("delivered")),
        "{rows:?}"
    );
    other.shutdown().await;
    t.audit(&[]).await;
}

/// `libfaketime` (Debian's `faketime`, installed by `.ci/run`): the real binary runs on a clock that starts at
/// the given UTC time and then ticks in real time (timers keep the real monotonic clock). `TZ=UTC`: libfaketime
/// reads the start time in the process's zone, which must not be the machine's.
fn fake_clock(start: &str) -> [(&'static str, String); 4] {
    [
        ("TZ", "UTC".to_owned()),
        (
            "LD_PRELOAD",
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1".to_owned(),
        ),
        ("FAKETIME", format!("@{start}")),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
    ]
}

/// The real binary at 23:59:52 Beijing time: a call, the hour ends, its grace (1 s) passes, and the webhook gets
/// its report once; SIGTERM and a restart repeat nothing; a late row for the hour makes revision 1, delivered
/// under its own key by the restarted binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_binary_delivers_each_closed_hour_once_across_a_restart() {
    use crate::helpers::bin::{Bin, SERVE_ON_SIM};
    assert!(
        Path::new(&fake_clock("")[1].1).exists(),
        "libfaketime is installed (apt-get install faketime; .ci/run does)"
    );
    let (receiver, url) = receiver().await;
    let db = TestDb::new().await;
    let journal = tempfile::tempdir().unwrap();
    let journal_dir = journal.path().display().to_string();
    let args: Vec<&str> = SERVE_ON_SIM
        .iter()
        .copied()
        .chain([
            "--database-url",
            &db.url,
            "--journal-dir",
            &journal_dir,
            "--billing-grace",
            "1s",
            "--report-webhook",
            &url,
        ])
        .collect();
    let start = |at: &str| {
        let clock = fake_clock(at);
        let env: Vec<(&str, &str)> = clock.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Bin::start(&args, &env, &["proxy_addr"])
    };
    let mut bin = start("2026-11-25 15:59:52");
    let http = test_client();
    let resp = http
        .post(format!("http://{}{COMPAT_PATH}", bin.addrs[0]))
        .body(r#"{"model":"deepseek-v3","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = call_id(&resp);
    resp.bytes().await.unwrap();
    let r0 = "2026-11-25T23:00:00+08:00/r0";
    assert_eq!(receiver.wait_for(1).await, vec![r0], "{:?}", bin.log());
    assert_eq!(receiver.body_of(r0)["rows"][0]["state"], "closed");
    assert!(bin.sigterm().success());

    let mut bin = start("2026-11-25 16:00:30");
    assert_eq!(receiver.settled().await, vec![r0], "nothing repeated");
    let pool = db.pool().await;
    let ledger = deepseek_meter::ledger::Ledger::connect_lazy(&db.url).unwrap();
    let late = deepseek_meter::record::CallRecord {
        billing_hour: at("2026-11-25T15:00:00Z"),
        finished_at: at("2026-11-25T15:45:00Z"),
        started_at: at("2026-11-25T15:44:59Z"),
        ..a_record(1)
    };
    let late_id = late.call_id.to_string();
    assert_eq!(ledger.insert(&[late]).await.unwrap(), 1);
    let r1 = "2026-11-25T23:00:00+08:00/r1";
    assert_eq!(receiver.wait_for(2).await, vec![r0, r1], "{:?}", bin.log());
    assert_eq!(receiver.body_of(r1)["rows"][0]["revision"], 1);
    assert_eq!(receiver.body_of(r1)["total"]["calls"], 2);
    assert!(bin.sigterm().success());
    // A restart on a migrated database logs no Postgres notice (`relation … already exists, skipping`).
    let log = bin.log();
    assert!(!log.iter().any(|l| l.contains("already exists")), "{log:?}");
    db.audit(&[id, late_id].into_iter().collect(), journal.path())
        .await;
    pool.close().await;
}

/// The webhook outbox rows: (revision, outcome) of the 23:00 hour, for the webhook destination.
async fn webhook_rows(pool: &sqlx::PgPool) -> Vec<(i32, Option<String>)> {
    sqlx::query_as(
        "SELECT revision, outcome FROM bill_deliveries WHERE destination LIKE 'webhook:%' ORDER BY revision",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Waits (bounded) until the webhook outbox rows are `want`.
async fn webhook_rows_are(pool: &sqlx::PgPool, want: &[(i32, Option<&str>)]) {
    let want: Vec<(i32, Option<String>)> = want
        .iter()
        .map(|(r, o)| (*r, o.map(str::to_owned)))
        .collect();
    let mut last = Vec::new();
    for _ in 0..200 {
        last = webhook_rows(pool).await;
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("webhook deliveries {last:?}, not {want:?}");
}

/// A revision the receiver refused, then superseded by a re-roll before its retry, is never delivered: its
/// row is marked `superseded` and only the new revision reaches the receiver (the content of revision 1 never
/// goes out under revision 0's key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_superseded_before_its_retry_is_never_delivered() {
    let Setup {
        receiver,
        up,
        clock,
        t,
        ..
    } = Setup::start().await;
    call(&t, &up).await;
    flush(&t.app).await;
    let pool = t.db.pool().await;
    registered(&pool).await;
    receiver.answers.lock().unwrap().push_back(500);
    clock.set(at("2026-11-25T16:10:00Z"));
    roll_until_done(&t.app).await;
    // r0's first attempt fails; its retry is due 1 s later on the app's clock, which the test holds still.
    for _ in 0..200 {
        if receiver.got.lock().unwrap().len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(receiver.got.lock().unwrap()[0].1, 500);
    webhook_rows_are(&pool, &[(0, None)]).await;
    // A late row re-rolls the hour: revision 1.
    late_row(&t, 1).await;
    roll_until_done(&t.app).await;
    clock.advance(chrono::Duration::seconds(2));
    webhook_rows_are(&pool, &[(0, Some("superseded")), (1, Some("delivered"))]).await;
    let r1 = "2026-11-25T23:00:00+08:00/r1";
    assert_eq!(receiver.settled().await, vec![r1]);
    assert_eq!(
        receiver.got.lock().unwrap().len(),
        2,
        "one failed POST of r0, one of r1"
    );
    t.audit(&[]).await;
}

/// An hour closed by another sidecar while this one was down is delivered when it is back; a destination it
/// is given only then (the report directory) gets no history — nothing closed before it was configured —
/// but every closing from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closings_made_while_a_sidecar_was_down_are_delivered_and_a_new_destination_gets_no_history(
) {
    let (receiver, url) = receiver().await;
    let reports = tempfile::tempdir().unwrap();
    let up = ScriptedUpstream::start().await;
    let clock = Clock::manual(at("2026-11-25T15:30:00Z"));
    let webhook_only = |url: String| {
        move |s: &mut Settings| {
            s.ledger.as_mut().unwrap().report_webhook = Some(url.parse().unwrap())
        }
    };
    let t = LedgerApp::start_at(up.upstream(), clock.clone(), webhook_only(url.clone())).await;
    call(&t, &up).await;
    flush(&t.app).await;
    let pool = t.db.pool().await;
    let mut n = 0i64;
    for _ in 0..200 {
        n = sqlx::query_scalar("SELECT count(*) FROM report_destinations")
            .fetch_one(&pool)
            .await
            .unwrap();
        if n == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(n, 1, "the webhook destination is recorded");
    let stopped = t.stop().await;
    // Another sidecar, with no destination, closes the hour meanwhile.
    let other_journal = tempfile::tempdir().unwrap();
    let other = sidecar(
        &stopped.db,
        other_journal.path(),
        up.upstream(),
        clock.clone(),
        |_| {},
    )
    .await;
    clock.set(at("2026-11-25T16:10:00Z"));
    roll_until_done(&other).await;
    let state: String = sqlx::query_scalar("SELECT state FROM bill_hours")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "closed");
    assert!(
        receiver.settled().await.is_empty(),
        "nobody delivers to the webhook while its sidecar is down"
    );
    // Back, with the report directory added.
    clock.set(at("2026-11-25T16:20:00Z"));
    let t = stopped
        .start_at(
            up.upstream(),
            clock.clone(),
            with_reports(reports.path(), &url),
        )
        .await;
    let r0 = "2026-11-25T23:00:00+08:00/r0";
    assert_eq!(
        receiver.wait_for(1).await,
        vec![r0],
        "the closing made while it was down"
    );
    assert!(
        files(reports.path()).is_empty(),
        "the new destination gets no history"
    );
    // A closing after the directory was added goes to both.
    late_row(&t, 1).await;
    roll_until_done(&t.app).await;
    let r1 = "2026-11-25T23:00:00+08:00/r1";
    assert_eq!(receiver.wait_for(2).await, vec![r0, r1]);
    for _ in 0..200 {
        if files(reports.path()).len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        files(reports.path()),
        vec![
            "bill-2026-11-25T23+0800-r1.csv",
            "bill-2026-11-25T23+0800-r1.json"
        ]
    );
    other.shutdown().await;
    t.audit(&[]).await;
}

/// A receiver that accepts the POST and never answers: while the delivery hangs (sampled for two seconds), the
/// sidecar holds no transaction open and no lock on the outbox — the row was claimed (its lease set) and committed before the
/// send. Another sidecar's claim skips the leased row rather than waiting on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_holds_no_transaction_or_lock() {
    // Accepts, reads the request, and says nothing until the test ends.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_url = format!("http://{}/hooks/bill", listener.local_addr().unwrap());
    let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            let _ = got_tx.send(());
            held.push(s);
        }
    });
    let up = ScriptedUpstream::start().await;
    let clock = Clock::manual(at("2026-11-25T15:30:00Z"));
    let t = LedgerApp::start_at(up.upstream(), clock.clone(), {
        let url = hang_url.clone();
        move |s: &mut Settings| {
            s.ledger.as_mut().unwrap().report_webhook = Some(url.parse().unwrap())
        }
    })
    .await;
    call(&t, &up).await;
    flush(&t.app).await;
    let pool = t.db.pool().await;
    clock.set(at("2026-11-25T16:10:00Z"));
    roll_until_done(&t.app).await;
    tokio::time::timeout(Duration::from_secs(10), got_rx.recv())
        .await
        .expect("the deliverer POSTs within 10 s")
        .unwrap();
    // The POST hangs. Sampled over two seconds (the roller's rounds come and go meanwhile, each a short
    // transaction): no transaction of the sidecar's began before the POST arrived, and the outbox has no lock.
    let posted_at: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let db_name = t.db.name.clone();
    for _ in 0..10 {
        let open: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT state, query FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()
               AND xact_start < $2",
        )
        .bind(&db_name)
        .bind(posted_at)
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(
            open.is_empty(),
            "a transaction open across the POST: {open:?}"
        );
        let locks: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
             WHERE c.relname = 'bill_deliveries' AND l.pid <> pg_backend_pid()",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(locks, 0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (leased, outcome): (Option<DateTime<Utc>>, Option<String>) =
        sqlx::query_as("SELECT lease_until, outcome FROM bill_deliveries")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        leased,
        Some(at("2026-11-25T16:11:00Z")),
        "claimed for the lease (60 s)"
    );
    assert_eq!(outcome, None);
    // Another sidecar with the same destination finds nothing to claim (and does not wait on the row).
    let other_journal = tempfile::tempdir().unwrap();
    let other = sidecar(&t.db, other_journal.path(), up.upstream(), clock.clone(), {
        let url = hang_url.clone();
        move |s: &mut Settings| {
            s.ledger.as_mut().unwrap().report_webhook = Some(url.parse().unwrap())
        }
    })
    .await;
    let made = tokio::time::timeout(Duration::from_secs(5), other.deliver_reports())
        .await
        .expect("a claim never waits on a leased row")
        .unwrap();
    assert!(made.is_empty(), "{made:?}");
    other.shutdown().await;
    t.audit(&[]).await;
}
