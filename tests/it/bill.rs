//! The hourly bill (issue 11, first part: the roll-up and the hour states) through the front door: calls
//! through the real app on a clock the test sets, into a real Postgres; the bill is read back and checked
//! against sums the test computes from the ledger rows itself.

use crate::helpers::captures::*;
use crate::helpers::*;
use chrono::{DateTime, Utc};
use deepseek_meter::app::App;
use deepseek_meter::clock::Clock;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::str::FromStr;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

const V3_JSON: &str = r#"{"choices":[{"message":{"content":"ok","role":"assistant"},"finish_reason":"stop","index":0}],"usage":{"prompt_tokens":6,"completion_tokens":64,"total_tokens":70},"model":"deepseek-v3","id":"chatcmpl-v3"}"#;

/// Rolls until a roll was not skipped (the background roller may hold the lock for a moment).
async fn roll(app: &App) -> deepseek_meter::billing::Rolled {
    for _ in 0..100 {
        let r = app
            .roll_bill()
            .await
            .expect("a ledger")
            .expect("the roll succeeds");
        if !r.skipped {
            return r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the roller lock was never free");
}

/// (hour, model, project, key) → (calls, input, output, cost), as the ledger's rows add up.
type Sums =
    BTreeMap<(DateTime<Utc>, String, Option<String>, Option<String>), (i64, i64, i64, Decimal)>;

/// hour, model, project, key, input, output, cost
type LedgerRow = (
    DateTime<Utc>,
    String,
    Option<String>,
    Option<String>,
    i64,
    i64,
    Option<Decimal>,
);
/// hour, model, project, key, calls, input, output, cost
type BillRow = (
    DateTime<Utc>,
    String,
    Option<String>,
    Option<String>,
    i64,
    i64,
    i64,
    Decimal,
);

async fn ledger_sums(pool: &sqlx::PgPool) -> Sums {
    let rows: Vec<LedgerRow> =
        sqlx::query_as(
            "SELECT billing_hour, model, project, key_fingerprint, input_tokens, output_tokens, cost_total
             FROM usage_ledger",
        )
        .fetch_all(pool)
        .await
        .unwrap();
    let mut sums = Sums::new();
    for (hour, model, project, key, input, output, cost) in rows {
        let e = sums.entry((hour, model, project, key)).or_default();
        e.0 += 1;
        e.1 += input;
        e.2 += output;
        e.3 += cost.unwrap_or_default();
    }
    sums
}

async fn bill_sums(pool: &sqlx::PgPool) -> Sums {
    let rows: Vec<BillRow> =
        sqlx::query_as(
            "SELECT billing_hour, model, project, key_fingerprint, calls, input_tokens, output_tokens, cost_total
             FROM hourly_bill",
        )
        .fetch_all(pool)
        .await
        .unwrap();
    rows.into_iter()
        .map(|(h, m, p, k, c, i, o, cost)| ((h, m, p, k), (c, i, o, cost)))
        .collect()
}

/// (state, revision, closed_at) of an hour's bill rows, which must agree.
async fn hour_state(
    pool: &sqlx::PgPool,
    hour: DateTime<Utc>,
) -> (String, i32, Option<DateTime<Utc>>) {
    let states: Vec<(String, i32, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT DISTINCT state, revision, closed_at FROM hourly_bill WHERE billing_hour = $1",
    )
    .bind(hour)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(states.len(), 1, "one state per hour: {states:?}");
    states.into_iter().next().unwrap()
}

async fn call(t: &LedgerApp, up: &ScriptedUpstream, body: &str, project: &str, key: &str) {
    t.call_as(up, body, "deepseek-r1", key, project).await;
}

/// The bill is the ledger's sums per (hour, model, project, key); a call at 23:59:59.999 Beijing time and one
/// at 00:00:00.000 land in two hours (and two Beijing dates) that share a UTC date; the hour that ended is
/// provisional until the grace passes, then closed; a late row for a closed hour bumps its revision and closes
/// it again.
#[tokio::test]
async fn the_bill_is_the_ledgers_sums_and_hours_close_after_the_grace() {
    let up = ScriptedUpstream::start().await;
    // 2026-11-25 23:59:59.999 in Beijing.
    let clock = Clock::manual(at("2026-11-25T15:59:59.999Z"));
    let t = LedgerApp::start_at(up.upstream(), clock.clone(), |_| {}).await;
    call(&t, &up, COMPAT_R1_JSON, "alpha", "sk-key-one-1111").await;
    call(&t, &up, V3_JSON, "alpha", "sk-key-two-2222").await;
    clock.set(at("2026-11-25T16:00:00.000Z"));
    call(&t, &up, COMPAT_R1_JSON, "alpha", "sk-key-one-1111").await;
    call(&t, &up, COMPAT_R1_JSON, "beta", "sk-key-one-1111").await;
    call(&t, &up, COMPAT_R1_JSON, "beta", "sk-key-one-1111").await;
    flush(&t.app).await;
    roll(&t.app).await;
    let pool = t.db.pool().await;
    let sums = ledger_sums(&pool).await;
    assert_eq!(bill_sums(&pool).await, sums);
    let (h1, h2) = (at("2026-11-25T15:00:00Z"), at("2026-11-25T16:00:00Z"));
    let hours: Vec<_> = sums.keys().map(|k| k.0).collect();
    assert!(hours.contains(&h1) && hours.contains(&h2), "{hours:?}");
    // The r1 rows of beta in the new hour: 2 calls, 2 × 0.012828.
    let beta = sums
        .iter()
        .find(|(k, _)| k.0 == h2 && k.2.as_deref() == Some("beta"))
        .unwrap()
        .1;
    assert_eq!(
        (beta.0, beta.3),
        (2, Decimal::from_str("0.025656").unwrap())
    );
    assert_eq!(hour_state(&pool, h1).await, ("provisional".into(), 0, None));
    assert_eq!(hour_state(&pool, h2).await, ("open".into(), 0, None));

    // 17:09:59 UTC: the 16:00 hour ended 9:59 ago (grace 10 min): provisional; the 15:00 hour closed.
    clock.set(at("2026-11-25T17:09:59Z"));
    roll(&t.app).await;
    assert_eq!(
        hour_state(&pool, h1).await,
        ("closed".into(), 0, Some(at("2026-11-25T17:09:59Z")))
    );
    assert_eq!(hour_state(&pool, h2).await, ("provisional".into(), 0, None));
    clock.set(at("2026-11-25T17:10:00Z"));
    roll(&t.app).await;
    assert_eq!(
        hour_state(&pool, h2).await,
        ("closed".into(), 0, Some(at("2026-11-25T17:10:00Z")))
    );
    let metrics = get_text(&t.http, &t.admin_url("/metrics")).await;
    assert!(
        metrics.contains(&format!(
            "deepseek_meter_bill_last_closed_hour_timestamp_seconds {}",
            h2.timestamp()
        )),
        "{metrics}"
    );

    // A late row for the closed 15:00 hour (a journal replayed after an outage): re-rolled, revision 1,
    // closed again at the new time, and the bill still equals the ledger.
    // The clock moves first: whichever roller sees the row, it sees it at 18:00.
    clock.set(at("2026-11-25T18:00:00Z"));
    let ledger = t.app.state.ledger.clone().expect("a ledger");
    let record = a_record(1);
    let record = deepseek_meter::record::CallRecord {
        billing_hour: h1,
        finished_at: at("2026-11-25T15:30:00Z"),
        started_at: at("2026-11-25T15:29:59Z"),
        ..record
    };
    t.saw(&record.call_id.to_string());
    assert_eq!(ledger.insert(&[record]).await.unwrap(), 1);
    roll(&t.app).await;
    assert_eq!(bill_sums(&pool).await, ledger_sums(&pool).await);
    assert_eq!(
        hour_state(&pool, h1).await,
        ("closed".into(), 1, Some(at("2026-11-25T18:00:00Z")))
    );
    assert_eq!(
        hour_state(&pool, h2).await,
        ("closed".into(), 0, Some(at("2026-11-25T17:10:00Z"))),
        "an hour without new rows is left as it was"
    );
    assert_eq!(
        by_model(&pool, "hourly_model_bill").await,
        by_model(&pool, "hourly_bill").await
    );
    t.audit(&[]).await;
}

/// (hour, model) → calls, tokens, cost, state, revision, closed_at: the per-model rollup, or hourly_bill summed.
async fn by_model(pool: &sqlx::PgPool, table: &str) -> Vec<serde_json::Value> {
    let rows: Vec<(serde_json::Value,)> = sqlx::query_as(&format!(
        "SELECT json_build_array(billing_hour, model, sum(calls), sum(input_tokens), sum(cached_tokens),
            sum(reasoning_tokens), sum(answer_tokens), sum(output_tokens), sum(unpriced_calls),
            sum(estimated_calls), sum(cost_total)::text, min(state), min(revision), min(closed_at))
         FROM {table} GROUP BY billing_hour, model ORDER BY billing_hour, model"
    ))
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(!rows.is_empty());
    rows.into_iter().map(|r| r.0).collect()
}

/// Two sidecars on one database, each with its roller: one exact bill, nothing counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_on_one_database_give_one_exact_bill() {
    let up = ScriptedUpstream::start().await;
    up.answer_always(Script::json(200, COMPAT_R1_JSON));
    let clock = Clock::manual(at("2026-11-25T08:30:00Z"));
    let t = LedgerApp::start_at(up.upstream(), clock.clone(), |_| {}).await;
    let (other, _journal2) = t.beside(up.upstream(), clock.clone(), |_| {}).await;
    let http = test_client();
    for i in 0..40 {
        let addr = if i % 2 == 0 {
            t.app.proxy_addr
        } else {
            other.proxy_addr
        };
        let resp = http
            .post(format!("http://{addr}{COMPAT_PATH}"))
            .bearer_auth("sk-ledger-test-1234")
            .header("x-meter-project", if i % 3 == 0 { "alpha" } else { "beta" })
            .body(r#"{"model":"deepseek-r1","messages":[]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        t.saw(&call_id(&resp));
        resp.bytes().await.unwrap();
        if i == 20 {
            // Both rollers at work while calls still arrive (once the database exists).
            flush(&t.app).await;
            let (a, b) = tokio::join!(t.app.roll_bill(), other.roll_bill());
            let (a, b) = (a.unwrap(), b.unwrap());
            assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
        }
    }
    flush(&t.app).await;
    flush(&other).await;
    roll(&t.app).await;
    roll(&other).await;
    let pool = t.db.pool().await;
    let bill = bill_sums(&pool).await;
    assert_eq!(bill, ledger_sums(&pool).await);
    let calls: i64 = bill.values().map(|v| v.0).sum();
    let cost: Decimal = bill.values().map(|v| v.3).sum();
    assert_eq!(calls, 40);
    assert_eq!(
        cost,
        Decimal::from_str("0.012828").unwrap() * Decimal::from(40)
    );
    other.shutdown().await;
    t.audit(&[]).await;
}

/// A live sidecar that still holds unshipped records of an hour keeps it provisional past the grace; one not
/// seen for two minutes holds nothing. The app's own heartbeat says it holds nothing once caught up.
#[tokio::test]
async fn a_live_sidecar_holding_an_hours_records_keeps_it_from_closing() {
    let up = ScriptedUpstream::start().await;
    let clock = Clock::manual(at("2026-11-25T02:30:00Z"));
    let t = LedgerApp::start_at(up.upstream(), clock.clone(), |_| {}).await;
    call(&t, &up, COMPAT_R1_JSON, "alpha", "sk-key-one-1111").await;
    flush(&t.app).await;
    roll(&t.app).await;
    let pool = t.db.pool().await;
    let hour = at("2026-11-25T02:00:00Z");
    // The app's heartbeat (its roller writes one a second): seen now, holding nothing.
    let mut own: Option<(DateTime<Utc>, Option<DateTime<Utc>>)> = None;
    for _ in 0..100 {
        own = sqlx::query_as("SELECT last_seen, oldest_unshipped_hour FROM meter_instances")
            .fetch_optional(&pool)
            .await
            .unwrap();
        if own.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(own, Some((at("2026-11-25T02:30:00Z"), None)));

    // Another sidecar, alive, still holding records of 02:00 (its shipper is behind).
    let other = uuid::Uuid::now_v7();
    clock.set(at("2026-11-25T03:20:00Z"));
    sqlx::query("INSERT INTO meter_instances VALUES ($1, $2, $3)")
        .bind(other)
        .bind(at("2026-11-25T03:19:59Z"))
        .bind(hour)
        .execute(&pool)
        .await
        .unwrap();
    roll(&t.app).await;
    assert_eq!(
        hour_state(&pool, hour).await,
        ("provisional".into(), 0, None)
    );
    // Not seen for two minutes: it holds nothing, and the hour closes.
    clock.set(at("2026-11-25T03:22:00Z"));
    roll(&t.app).await;
    assert_eq!(
        hour_state(&pool, hour).await,
        ("closed".into(), 0, Some(at("2026-11-25T03:22:00Z")))
    );
    t.audit(&[]).await;
}

/// A real shipper backlog: the ledger refuses this sidecar's inserts for a while (a lock held elsewhere), so a
/// call of 10:00 stays in its journal past the hour and its grace. The sidecar's own heartbeat — written from
/// what its shipper holds — says it holds 10:00, and the hour stays provisional; once the backlog ships, the
/// hour closes with the call in it.
#[tokio::test]
async fn a_shipper_backlog_keeps_the_hour_it_holds_provisional() {
    let up = ScriptedUpstream::start().await;
    let clock = Clock::manual(at("2026-11-25T02:10:00Z")); // 10:10 Beijing
    let t = LedgerApp::start_at(up.upstream(), clock.clone(), |s| {
        s.ledger.as_mut().unwrap().billing_grace = std::time::Duration::from_secs(60);
    })
    .await;
    let hour = at("2026-11-25T02:00:00Z");
    call(&t, &up, COMPAT_R1_JSON, "alpha", "sk-key-one-1111").await;
    flush(&t.app).await;
    roll(&t.app).await;
    let pool = t.db.pool().await;
    // Inserts into the ledger wait behind this lock (reads do not).
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE usage_ledger IN SHARE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    clock.set(at("2026-11-25T02:50:00Z"));
    call(&t, &up, COMPAT_R1_JSON, "alpha", "sk-key-one-1111").await;
    // 11:20: the hour and its grace are over; the second call is still in the journal.
    clock.set(at("2026-11-25T03:20:00Z"));
    roll(&t.app).await;
    let held: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT oldest_unshipped_hour FROM meter_instances")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        held,
        Some(hour),
        "the heartbeat says what the shipper holds"
    );
    assert_eq!(
        hour_state(&pool, hour).await,
        ("provisional".into(), 0, None)
    );
    let billed: i64 =
        sqlx::query_scalar("SELECT sum(calls)::int8 FROM hourly_bill WHERE billing_hour = $1")
            .bind(hour)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(billed, 1, "the second call has not shipped");
    // The lock goes, the backlog ships, and the next round closes the hour with both calls.
    blocker.rollback().await.unwrap();
    flush(&t.app).await;
    roll(&t.app).await;
    assert_eq!(
        hour_state(&pool, hour).await,
        ("closed".into(), 0, Some(at("2026-11-25T03:20:00Z")))
    );
    let billed: i64 =
        sqlx::query_scalar("SELECT sum(calls)::int8 FROM hourly_bill WHERE billing_hour = $1")
            .bind(hour)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(billed, 2);
    t.audit(&[]).await;
}

/// What holds an hour open is counted per record, from its append until it is shipped: a record not yet read
/// by any shipper holds its hour; shipping one record of an hour releases it only when no other record of
/// that hour is left (the shipper releases each record once, after its insert); after a restart, exactly the
/// records past the checkpoint hold their hours again.
#[tokio::test]
async fn the_journal_holds_each_unshipped_records_hour_until_it_is_shipped() {
    use deepseek_meter::journal::{Durability, Journal, JournalConfig, OnFull};
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        dir: dir.path().to_path_buf(),
        durability: Durability::Strict,
        group_commit: std::time::Duration::from_millis(1),
        segment_bytes: 64 << 20,
        max_bytes: 1 << 30,
        on_full: OnFull::Refuse,
    };
    let at_hour = |i: usize, h: &str| deepseek_meter::record::CallRecord {
        billing_hour: at(h),
        ..a_record(i)
    };
    let (ten, eleven) = (at("2026-11-25T02:00:00Z"), at("2026-11-25T03:00:00Z"));
    let (journal, writer) = Journal::open(config.clone()).unwrap();
    let held = journal.held();
    assert_eq!(held.oldest(), None);
    let records = [
        at_hour(1, "2026-11-25T02:00:00Z"),
        at_hour(2, "2026-11-25T02:00:00Z"),
        at_hour(3, "2026-11-25T03:00:00Z"),
    ];
    for r in &records {
        journal.append(r.clone()).unwrap().await.unwrap();
    }
    assert_eq!(held.oldest(), Some(ten));
    held.shipped(&records[..1]);
    assert_eq!(
        held.oldest(),
        Some(ten),
        "the other record of 10:00 is unshipped"
    );
    held.shipped(&records[1..2]);
    assert_eq!(held.oldest(), Some(eleven));
    // The first two are read and committed (as the shipper does once they are in the ledger); the third is
    // not. After a restart only the third holds its hour.
    let mut cursor = journal.cursor();
    let batch = cursor.next_batch(2).await.unwrap();
    assert_eq!(
        batch.iter().map(|r| r.call_id).collect::<Vec<_>>(),
        [records[0].call_id, records[1].call_id]
    );
    cursor.commit().await;
    drop((journal, cursor));
    writer.join().await;
    let (journal, writer) = Journal::open(config.clone()).unwrap();
    assert_eq!(journal.held().oldest(), Some(eleven));
    drop(journal);
    writer.join().await;
    // With everything committed, a restart holds nothing.
    let (journal, writer) = Journal::open(config.clone()).unwrap();
    let mut cursor = journal.cursor();
    assert_eq!(cursor.next_batch(10).await.unwrap().len(), 1);
    cursor.commit().await;
    drop((journal, cursor));
    writer.join().await;
    let (journal, writer) = Journal::open(config).unwrap();
    assert_eq!(journal.held().oldest(), None);
    drop(journal);
    writer.join().await;
}

/// The other side of the hold: a sidecar cut off from the database cannot say what it holds, and after two
/// minutes it is taken for gone. Another sidecar then closes the hour without the cut-off one's journaled call
/// (revision 0); when the database comes back the call ships late, and the hour is re-opened and closed again
/// as revision 1 with the call in it — late, never lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_cut_off_past_the_hour_reopens_it_with_its_calls() {
    let up = ScriptedUpstream::start().await;
    let pg = FaultProxy::start(pg_addr()).await;
    let clock = Clock::manual(at("2026-11-25T02:10:00Z")); // 10:10 Beijing
    let db = TestDb::new().await;
    let journal = tempfile::tempdir().unwrap();
    let grace = |s: &mut deepseek_meter::config::Settings| {
        s.ledger.as_mut().unwrap().billing_grace = std::time::Duration::from_secs(60)
    };
    let via_proxy = pg.url_for(&db.url);
    let cut_off = sidecar(&db, journal.path(), up.upstream(), clock.clone(), |s| {
        grace(s);
        s.ledger.as_mut().unwrap().database_url = via_proxy;
    })
    .await;
    let t = LedgerApp::adopt(cut_off, db, journal);
    let (other, _other_journal) = t.beside(up.upstream(), clock.clone(), grace).await;
    let hour = at("2026-11-25T02:00:00Z");
    call(&t, &up, COMPAT_R1_JSON, "alpha", "sk-key-one-1111").await;
    flush(&t.app).await;
    pg.set_down(true);
    clock.set(at("2026-11-25T02:59:30Z"));
    call(&t, &up, COMPAT_R1_JSON, "alpha", "sk-key-one-1111").await;
    // 11:05: the cut-off sidecar was last seen at 10:10; the other closes 10:00 with what the ledger has.
    clock.set(at("2026-11-25T03:05:00Z"));
    roll(&other).await;
    let pool = t.db.pool().await;
    let calls = || async {
        let n: i64 =
            sqlx::query_scalar("SELECT sum(calls)::int8 FROM hourly_bill WHERE billing_hour = $1")
                .bind(hour)
                .fetch_one(&pool)
                .await
                .unwrap();
        n
    };
    assert_eq!(
        hour_state(&pool, hour).await,
        ("closed".into(), 0, Some(at("2026-11-25T03:05:00Z")))
    );
    assert_eq!(calls().await, 1);
    // The database is back: the journaled call ships, the hour re-opens and closes again as revision 1.
    pg.set_down(false);
    flush(&t.app).await;
    clock.set(at("2026-11-25T03:07:00Z"));
    roll(&other).await;
    roll(&other).await;
    assert_eq!(
        hour_state(&pool, hour).await,
        ("closed".into(), 1, Some(at("2026-11-25T03:07:00Z")))
    );
    assert_eq!(calls().await, 2);
    other.shutdown().await;
    t.audit(&[]).await;
}
