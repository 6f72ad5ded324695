//! The ledger at scale (issue 24), on real Postgres: monthly partitions created ahead across a month boundary
//! on the drivable clock, a late row into an old partition, retention dropping exactly the months past it, the
//! close-time audit catching an injected difference, a roller whose work per round does not grow with the open
//! hour's calls (it reads no ledger row until the hour closes), and the migration of an unpartitioned ledger
//! written by the build before.

use crate::helpers::*;
use deepseek_meter::billing::Bill;
use deepseek_meter::clock::Clock;
use deepseek_meter::config::Upstream;
use deepseek_meter::ledger::{partitions, Ledger};
use deepseek_meter::record::CallRecord;
use rust_decimal::Decimal;
use std::time::Duration;

fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
    s.parse().unwrap()
}

/// A record finishing at `finished` (billed in its hour), with a project of its own.
fn record_at(i: usize, finished: &str) -> CallRecord {
    let finished = at(finished);
    CallRecord {
        started_at: finished - chrono::Duration::seconds(1),
        finished_at: finished,
        billing_hour: deepseek_meter::pricing::billing_hour(
            finished,
            deepseek_meter::pricing::DEFAULT_TIMEZONE,
        ),
        ..a_record(i)
    }
}

async fn partitions_of(pool: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'usage_ledger'::regclass ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Waits (bounded) until `pred` holds for the ledger's partitions.
async fn wait_partitions(
    pool: &sqlx::PgPool,
    what: &str,
    pred: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let mut last = Vec::new();
    for _ in 0..100 {
        last = partitions_of(pool).await;
        if pred(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: {last:?}");
}

#[tokio::test]
async fn partitions_are_created_ahead_across_a_month_boundary_and_late_rows_find_theirs() {
    // 2099-03-31 23:30 UTC: the roller's first round creates February to May.
    let clock = Clock::manual(at("2099-03-31T23:30:00Z"));
    let t = LedgerApp::start_at(Upstream::Sim, clock.clone(), |_| {}).await;
    assert_eq!(
        t.call(COMPAT_PATH, r#"{"model":"deepseek-v3","messages":[]}"#, &[])
            .await
            .0,
        400
    );
    flush(&t.app).await; // migrated
    let pool = t.db.pool().await;
    let has = |names: &[String], p: &str| names.iter().any(|n| n == p);
    let names = wait_partitions(&pool, "created ahead", |n| has(n, "usage_ledger_p209905")).await;
    for month in ["209902", "209903", "209904", "209905"] {
        assert!(
            has(&names, &format!("usage_ledger_p{month}")),
            "{month}: {names:?}"
        );
    }
    assert!(!has(&names, "usage_ledger_p209906"));
    // An hour later it is April: the next upkeep adds June.
    clock.set(at("2099-04-01T00:30:00Z"));
    wait_partitions(&pool, "one more month ahead", |n| {
        has(n, "usage_ledger_p209906")
    })
    .await;
    // Calls land in their month's partition; a late one (a journal replayed after an outage) in its old month.
    let ledger = Ledger::connect_lazy(&t.db.url).unwrap();
    let now = record_at(1, "2099-04-01T00:30:00Z");
    let late = record_at(2, "2099-02-14T08:00:00Z");
    assert_eq!(
        ledger.insert(&[now.clone(), late.clone()]).await.unwrap(),
        2
    );
    let home = |id: uuid::Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT tableoid::regclass::text FROM usage_ledger WHERE call_id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(home(now.call_id).await, "usage_ledger_p209904");
    assert_eq!(home(late.call_id).await, "usage_ledger_p209902");
    // On a new database the (empty) table of the build before covers nothing of this month: a call made now
    // lands in this month's own partition.
    let today = chrono::Utc::now();
    let current = record_at(5, &today.to_rfc3339());
    assert_eq!(
        ledger.insert(std::slice::from_ref(&current)).await.unwrap(),
        1
    );
    assert_eq!(
        home(current.call_id).await,
        format!("usage_ledger_p{}", current.billing_hour.format("%Y%m"))
    );
    // A row for a month that has no partition is kept, not refused.
    let stray = record_at(3, "2199-01-01T00:00:00Z");
    assert_eq!(
        ledger.insert(std::slice::from_ref(&stray)).await.unwrap(),
        1
    );
    assert_eq!(home(stray.call_id).await, "usage_ledger_default");
    // Inserting again changes nothing (the key is the call and its billing hour).
    assert_eq!(
        ledger
            .insert(&[now.clone(), late.clone(), stray.clone()])
            .await
            .unwrap(),
        0
    );
    // When that month's partition is created, the stray row moves into it (copied, not edited); the default
    // partition keeps the rest, and every other row stays where it was.
    let other = record_at(4, "2299-06-01T00:00:00Z");
    assert_eq!(
        ledger.insert(std::slice::from_ref(&other)).await.unwrap(),
        1
    );
    let created = partitions::ensure(&pool, at("2199-01-15T00:00:00Z"))
        .await
        .unwrap();
    assert!(
        created.contains(&"usage_ledger_p219901".to_owned()),
        "{created:?}"
    );
    assert_eq!(home(stray.call_id).await, "usage_ledger_p219901");
    assert_eq!(home(other.call_id).await, "usage_ledger_default");
    assert_eq!(home(now.call_id).await, "usage_ledger_p209904");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_ledger")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        rows, 6,
        "the refused call at the start, now, late, current, stray, other"
    );
    assert_eq!(ledger.insert(&[stray, other]).await.unwrap(), 0);
}

#[tokio::test]
async fn retention_drops_exactly_the_months_past_it() {
    let db = TestDb::new().await;
    let ledger = Ledger::create_and_migrate(&db.url).await.unwrap();
    let pool = db.pool().await;
    // Months from 2099-01 to 2099-06 (far from the day the test runs, which decides what the migrated table
    // covers), each with a call.
    for (i, month) in [
        "2099-01", "2099-02", "2099-03", "2099-04", "2099-05", "2099-06",
    ]
    .iter()
    .enumerate()
    {
        partitions::ensure(&pool, at(&format!("{month}-15T00:00:00Z")))
            .await
            .unwrap();
        ledger
            .insert(&[record_at(i, &format!("{month}-10T04:00:00Z"))])
            .await
            .unwrap();
    }
    let before = partitions_of(&pool).await;
    // Keep 60 days from 2099-06-15: every month that ended before 2099-04-16 goes — January to March, and every
    // partition before them (the months created at migration) —; April stays (it ended on 2099-05-01), and so
    // does the default partition.
    let dropped = partitions::retire(&pool, at("2099-04-16T00:00:00Z"))
        .await
        .unwrap();
    let after = partitions_of(&pool).await;
    let mut gone: Vec<String> = before
        .iter()
        .filter(|p| !after.contains(p))
        .cloned()
        .collect();
    gone.sort();
    let mut expected: Vec<String> = before
        .iter()
        .filter(|p| *p != "usage_ledger_default" && p.as_str() < "usage_ledger_p209904")
        .cloned()
        .collect();
    expected.sort();
    assert_eq!(gone, expected, "before {before:?}, after {after:?}");
    // January to March, and the months created when the database was migrated (today's, before 2099).
    for month in [
        "usage_ledger_p209901",
        "usage_ledger_p209902",
        "usage_ledger_p209903",
    ] {
        assert!(gone.contains(&month.to_owned()), "{month}: {gone:?}");
    }
    assert!(gone.len() > 3, "the months of today went too: {gone:?}");
    assert_eq!(dropped.len(), gone.len());
    for kept in [
        "usage_ledger_p209904",
        "usage_ledger_p209905",
        "usage_ledger_p209906",
        "usage_ledger_default",
    ] {
        assert!(after.contains(&kept.to_owned()), "{kept}: {after:?}");
    }
    let months: Vec<String> =
        sqlx::query_scalar("SELECT to_char(billing_hour, 'YYYY-MM') FROM usage_ledger ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(months, ["2099-04", "2099-05", "2099-06"]);
    // The bill keeps the sums of the months dropped.
    let billed: i64 = sqlx::query_scalar("SELECT sum(calls)::int8 FROM hourly_bill")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(billed, 6);
    // Idempotent.
    assert!(partitions::retire(&pool, at("2099-04-16T00:00:00Z"))
        .await
        .unwrap()
        .is_empty());
}

/// The roller's reads of the ledger, as Postgres counts them (the roller on a connection of its own, its
/// statistics flushed before they are read).
async fn ledger_tuples_read(pool: &sqlx::PgPool) -> i64 {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("SELECT 1").execute(pool).await.unwrap();
    sqlx::query_scalar(
        "SELECT coalesce(sum(seq_tup_read + coalesce(idx_tup_fetch, 0)), 0)::int8 FROM pg_stat_user_tables
         WHERE relname LIKE 'usage_ledger%'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_roller_reads_no_ledger_row_while_an_hour_is_open_and_each_row_once_when_it_closes() {
    let db = TestDb::new().await;
    Ledger::create_and_migrate(&db.url).await.unwrap();
    // Every statement on one connection, whose statistics are flushed before each count: Postgres's per-table
    // counts are then this connection's alone.
    let one = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    let insert = |records: Vec<CallRecord>| {
        let one = one.clone();
        async move {
            deepseek_meter::ledger::insert::insert(&one, &records)
                .await
                .unwrap()
        }
    };
    // A quiet hour, 10:00 UTC (18:00 Beijing): 3 calls; a busy one, 11:00: 6,000 calls.
    insert(
        (0..3)
            .map(|i| record_at(i, "2026-11-25T10:10:00Z"))
            .collect(),
    )
    .await;
    for chunk in 0..3 {
        insert(
            (0..2_000)
                .map(|i| record_at(chunk * 2_000 + i % 20, "2026-11-25T11:10:00Z"))
                .collect(),
        )
        .await;
    }
    let bill = Bill::new(one.clone(), Duration::from_secs(0));
    // Rounds while an hour is open, each with a call arriving meanwhile: the bill is folded from what the
    // inserts kept, not one ledger row is read — in the quiet hour and in the busy one alike.
    let open_rounds = |now: &'static str, open: &'static str, call_at: &'static str| {
        let (bill, one) = (&bill, &one);
        async move {
            let before = ledger_tuples_read(one).await;
            for _ in 0..3 {
                insert(vec![record_at(7, call_at)]).await;
                bill.roll(at(now), at(open)).await.unwrap();
            }
            ledger_tuples_read(one).await - before
        }
    };
    let quiet = open_rounds(
        "2026-11-25T10:30:00Z",
        "2026-11-25T10:00:00Z",
        "2026-11-25T10:20:00Z",
    )
    .await;
    assert_eq!(quiet, 0, "rolls of the quiet open hour read the ledger");
    // The rounds did their work: the per-model bill of the open hour holds the calls made meanwhile.
    let folded = |hour: &'static str| {
        let one = one.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT coalesce(sum(calls), 0)::int8 FROM hourly_model_bill WHERE billing_hour = $1::timestamptz",
            )
            .bind(hour)
            .fetch_one(&one)
            .await
            .unwrap()
        }
    };
    assert_eq!(folded("2026-11-25T10:00:00Z").await, 3 + 3);
    // 10:00 closes (grace 0, no sidecar holding it): audited once, its 6 rows read (an index may fetch a row
    // more than once, never the busy hour's).
    let before = ledger_tuples_read(&one).await;
    let rolled = bill
        .roll(at("2026-11-25T11:00:00Z"), at("2026-11-25T11:00:00Z"))
        .await
        .unwrap();
    assert_eq!(rolled.closed, 1);
    let closing = ledger_tuples_read(&one).await - before;
    assert!(
        (6..=18).contains(&closing),
        "closing the quiet hour read {closing} tuples for its 6 calls"
    );
    let busy = open_rounds(
        "2026-11-25T11:30:00Z",
        "2026-11-25T11:00:00Z",
        "2026-11-25T11:20:00Z",
    )
    .await;
    assert_eq!(busy, 0, "rolls of the busy open hour read the ledger");
    assert_eq!(folded("2026-11-25T11:00:00Z").await, 6_000 + 3);
    // 11:00 closes: its 6,003 rows read once by the audit.
    let before = ledger_tuples_read(&one).await;
    let rolled = bill
        .roll(at("2026-11-25T13:00:00Z"), at("2026-11-25T13:00:00Z"))
        .await
        .unwrap();
    assert_eq!(rolled.closed, 1);
    assert!(rolled.mismatched.is_empty(), "{:?}", rolled.mismatched);
    let closing = ledger_tuples_read(&one).await - before;
    assert!(
        (6_003..=3 * 6_003).contains(&closing),
        "the audit read {closing} tuples for 6,003 calls"
    );
    let ok: Vec<bool> = sqlx::query_scalar("SELECT audit_ok FROM bill_hours ORDER BY billing_hour")
        .fetch_all(&one)
        .await
        .unwrap();
    assert_eq!(ok, [true, true]);
}

#[tokio::test]
async fn the_close_time_audit_names_a_bill_that_differs_from_its_ledger() {
    let clock = Clock::manual(at("2026-11-25T10:30:00Z"));
    let t = LedgerApp::start_at(Upstream::Sim, clock.clone(), |s| {
        s.ledger.as_mut().unwrap().billing_grace = Duration::from_secs(60);
    })
    .await;
    let body = r#"{"model":"deepseek-v4-flash","messages":[{"role":"user","content":"hi"}]}"#;
    for _ in 0..3 {
        assert_eq!(t.call(COMPAT_PATH, body, &[]).await.0, 200);
    }
    flush(&t.app).await;
    t.app.roll_bill().await.unwrap().unwrap();
    // Someone edits the bill behind the insert's back.
    let pool = t.db.pool().await;
    sqlx::query("UPDATE hourly_bill SET cost_total = cost_total + 1")
        .execute(&pool)
        .await
        .unwrap();
    // 11:05: the hour and its grace are over; whichever round closes it (this one, or the sidecar's own
    // roller, which runs every second on the same clock) audits it.
    clock.set(at("2026-11-25T11:05:00Z"));
    t.app.roll_bill().await.unwrap().unwrap();
    let mut audit: (Option<bool>, Option<String>) = (None, None);
    for _ in 0..100 {
        audit = sqlx::query_as("SELECT audit_ok, audit_detail FROM bill_hours")
            .fetch_one(&pool)
            .await
            .unwrap();
        if audit.0.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, detail) = audit;
    assert_eq!(ok, Some(false));
    assert!(detail.unwrap().contains("deepseek-v4-flash"));
    // Counted (the alert DeepseekMeterBillAuditMismatch reads it) once.
    let metrics = get_text(&t.http, &t.admin_url("/metrics")).await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "deepseek_meter_bill_audit_mismatches_total 1"),
        "{metrics}"
    );
    // Recorded, never fixed: the bill still says what it said.
    let cost: Decimal = sqlx::query_scalar("SELECT cost_total FROM hourly_bill")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(cost > Decimal::ONE);
    t.audit(&[]).await;
}

#[tokio::test]
async fn an_unpartitioned_ledger_of_the_build_before_is_migrated_in_place() {
    let db = TestDb::new().await;
    deepseek_meter::ledger::create_database_if_missing(&db.url)
        .await
        .unwrap();
    let pool = db.pool().await;
    // The schema of the build before (migrations up to …011), with calls in it: a priced one with a project and
    // an end user, an old one priced before cost_input existed, and an unpriced one.
    let old = tempfile::tempdir().unwrap();
    let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for f in std::fs::read_dir(&migrations).unwrap() {
        let f = f.unwrap().path();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if name.as_str() < "20261205000012" {
            std::fs::copy(&f, old.path().join(&name)).unwrap();
        }
    }
    sqlx::migrate::Migrator::new(old.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    for (cost, input_cost, user) in [
        (Some("0.004"), Some("0.001"), Some("alice")),
        (Some("0.002"), None, None),
        (None, None, Some("bob")),
    ] {
        sqlx::query(
            "INSERT INTO usage_ledger (call_id, protocol, model, stream, status, started_at, finished_at,
                billing_hour, input_tokens, cached_tokens, output_tokens, reasoning_tokens, answer_tokens,
                usage_source, priced, price_version, cost_total, cost_input, project, end_user, duration_ms,
                key_fingerprint)
             VALUES ($1, 'openai', 'deepseek-v3', false, 'ok', '2026-11-25T10:00:00Z', '2026-11-25T10:00:01Z',
                '2026-11-25T10:00:00Z', 1000, 0, 10, 0, 10, 'reported', $2, $3, $4::numeric, $5::numeric,
                'team', $6, 1000, '0123456789ab')",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(cost.is_some())
        .bind(cost.map(|_| "deepseek-v3@2024-12-26"))
        .bind(cost)
        .bind(input_cost)
        .bind(user)
        .execute(&pool)
        .await
        .unwrap();
    }
    // The migration: the table becomes the ledger's first partition, rows untouched; rollups are backfilled.
    Ledger::create_and_migrate(&db.url).await.unwrap();
    let parts = partitions_of(&pool).await;
    assert!(
        parts.contains(&"usage_ledger_legacy".to_owned()),
        "{parts:?}"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_ledger")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 3);
    let alice: Decimal =
        sqlx::query_scalar("SELECT cost FROM hourly_end_user_cost WHERE end_user = 'alice'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(alice, "0.004".parse::<Decimal>().unwrap());
    let (cost, input, unsplit): (Decimal, Decimal, Decimal) =
        sqlx::query_as("SELECT cost, cost_input, unsplit_cost FROM hourly_key_usage")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (cost, input, unsplit),
        (
            "0.006".parse().unwrap(),
            "0.001".parse().unwrap(),
            "0.002".parse().unwrap()
        )
    );
    // The migrated ledger takes new rows, its append-only rule holds, and a replay changes nothing.
    let ledger = Ledger::connect_lazy(&db.url).unwrap();
    let r = record_at(9, "2026-11-25T10:30:00Z");
    assert_eq!(ledger.insert(std::slice::from_ref(&r)).await.unwrap(), 1);
    assert_eq!(ledger.insert(&[r]).await.unwrap(), 0);
    let err = sqlx::query("UPDATE usage_ledger SET model = 'x'")
        .execute(&pool)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("append-only"), "{err}");
}

/// `--ledger-retention` through the sidecar: its parser refuses less than a month (one line, exit 2), and a
/// sidecar started with `60d` on a clock at 2099-06-15 drops, at its first upkeep, exactly the months that ended
/// more than 60 days before — and keeps the calls of the months after.
#[tokio::test]
async fn the_sidecar_applies_its_retention_setting_at_its_first_upkeep() {
    let (code, _, err) = crate::helpers::bin::run_bin(&[
        "serve",
        "--ledger-retention",
        "7d",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .await;
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--ledger-retention") && err.contains("shorter than a month"),
        "{err}"
    );
    let db = TestDb::new().await;
    let ledger = Ledger::create_and_migrate(&db.url).await.unwrap();
    let pool = db.pool().await;
    for (i, month) in [
        "2099-01", "2099-02", "2099-03", "2099-04", "2099-05", "2099-06",
    ]
    .iter()
    .enumerate()
    {
        partitions::ensure(&pool, at(&format!("{month}-15T00:00:00Z")))
            .await
            .unwrap();
        ledger
            .insert(&[record_at(i, &format!("{month}-10T04:00:00Z"))])
            .await
            .unwrap();
    }
    let journal = tempfile::tempdir().unwrap();
    let app = sidecar(
        &db,
        journal.path(),
        Upstream::Sim,
        Clock::manual(at("2099-06-15T00:00:00Z")),
        |s| s.ledger.as_mut().unwrap().retention = Some(chrono::Duration::days(60)),
    )
    .await;
    // 60 days before 2099-06-15 is 2099-04-16: January to March ended before it; April did not.
    let left = wait_partitions(&pool, "retention applied", |p| {
        !p.iter()
            .any(|n| n.as_str() < "usage_ledger_p209904" && n != "usage_ledger_default")
    })
    .await;
    assert!(
        left.contains(&"usage_ledger_p209904".to_owned()),
        "{left:?}"
    );
    let months: Vec<String> =
        sqlx::query_scalar("SELECT to_char(billing_hour, 'YYYY-MM') FROM usage_ledger ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(months, ["2099-04", "2099-05", "2099-06"]);
    app.shutdown().await;
}

/// Nothing that runs every second, or on every scrape, reads the ledger: with 6,000 calls in the open hour,
/// budgets of every scope refreshing (an end-user budget among them), the roller rolling, `/metrics` scraped,
/// `/v1/budgets` and `GET /v1/reconcile` read, and a call made — Postgres counts no ledger row read (the
/// budgets read their counters, the gauges and reconciliation the rollups).
#[tokio::test]
async fn nothing_that_runs_every_second_reads_the_ledger() {
    let clock = Clock::manual(at("2026-11-25T10:30:00Z"));
    let budgets = "[[budget]]\nname = \"day\"\nperiod = \"day\"\nlimit_yuan = 1000\naction = \"block\"\n\
        [[budget]]\nname = \"user\"\nperiod = \"month\"\nlimit_yuan = 1000\nend_user = \"bob\"\naction = \"alert\"\n\
        [[budget]]\nname = \"model\"\nperiod = \"hour\"\nlimit_yuan = 1000\nmodel = \"deepseek-v3.2-exp\"\naction = \"block\"\n";
    let table: toml::Table = toml::from_str(budgets).unwrap();
    let parsed = deepseek_meter::budget::parse(table.get("budget")).unwrap();
    let t = LedgerApp::start_at(Upstream::Sim, clock.clone(), move |s| s.budgets = parsed).await;
    flush(&t.app).await;
    let pool = t.db.pool().await;
    // 6,000 calls of the open hour, written as another sidecar would.
    let ledger = Ledger::connect_lazy(&t.db.url).unwrap();
    for chunk in 0..3 {
        let batch: Vec<CallRecord> = (0..2_000)
            .map(|i| CallRecord {
                end_user: Some(if i % 2 == 0 { "bob" } else { "eve" }.to_owned()),
                ..record_at(chunk * 2_000 + i, "2026-11-25T10:10:00Z")
            })
            .collect();
        for r in &batch {
            t.saw(&r.call_id.to_string());
        }
        ledger.insert(&batch).await.unwrap();
    }
    // Wait until the budgets have read the counters the inserts moved.
    let mut seen = serde_json::Value::Null;
    for _ in 0..200 {
        seen = get_json(&t.http, &t.admin_url("/v1/budgets")).await;
        if seen["budgets"][0]["spent_known"] == true && seen["budgets"][0]["spent_yuan"] != "0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(seen["budgets"][0]["spent_yuan"], "0", "{seen}");
    let before = ledger_tuples_read(&pool).await;
    // Three seconds of the sidecar's own rounds (refresher, roller, deliverer), plus the doors people read.
    for _ in 0..3 {
        get_text(&t.http, &t.admin_url("/metrics")).await;
        get_json(&t.http, &t.admin_url("/v1/budgets")).await;
        get_json(
            &t.http,
            &t.admin_url("/v1/reconcile?from=2026-11-25T18&to=2026-11-25T19"),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(1_000)).await;
    }
    let body = r#"{"model":"deepseek-v3.2-exp","messages":[{"role":"user","content":"hi"}],"max_tokens":16}"#;
    assert_eq!(
        t.call(COMPAT_PATH, body, &[("x-meter-user", "bob")])
            .await
            .0,
        200
    );
    flush(&t.app).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await; // the refresh that finds the call in the ledger
    let read = ledger_tuples_read(&pool).await - before;
    assert!(
        read <= 2,
        "{read} ledger rows read by what runs every second"
    );
    // And the open hour's gauge counts them all (from the bill).
    let metrics = get_text(&t.http, &t.admin_url("/metrics")).await;
    assert!(
        metrics
            .lines()
            .any(|l| l
                .starts_with("deepseek_meter_billing_hour_cost_yuan{model=\"deepseek-v3.2-exp\"}")),
        "{metrics}"
    );
    t.audit(&[]).await;
}
