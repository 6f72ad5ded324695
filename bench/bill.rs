//! The hourly bill at scale: a ledger of `BENCH_BILL_ROWS` rows (default 10 million) over 30 days, a realistic
//! mix (`common/mix.rs`: 6 models, skewed; 200 keys in 20 projects, skewed; 70 % of calls in Beijing business
//! hours), filled through the sidecar's own insert (which keeps the bill's rollups), then:
//!
//! 1. the first roll of all 720 hours (folded from the rollups; each ended hour closed with its audit, which
//!    reads the hour's rows once);
//! 2. a late row re-opening the busiest closed hour: its fold, a new revision and the hour's audit again (the
//!    roller's per-second round while an hour is open is `bench/scale`'s: it reads no ledger row);
//! 3. reports through `billing::read` + rendering, the way every door runs them: a day by model and by key
//!    (hourly rows), the month by model and by key (daily rows), the month by model as one row per model;
//! 4. shipper throughput (journal → shipper → Postgres, `BENCH_SHIP_ROWS` records a run, default 100,000)
//!    with the roller running every second on the same database vs without, alternating runs.
//!
//! Run: `cargo bench --bench bill` (release; Postgres on 127.0.0.1:5432; the fill takes about 6 minutes);
//! `BENCH_BILL_KEEP=1` keeps the database (`dm_bench_bill`) for the next run, which then skips the fill. Prints
//! a markdown table and writes `bench/results/bill.json`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: fail loudly

#[path = "common/mix.rs"]
mod mix;
use mix::{env, timed};

use chrono::{DateTime, Utc};
use deepseek_meter::billing::format::render;
use deepseek_meter::billing::read;
use deepseek_meter::billing::report::{Format, Group, ReportQuery};
use deepseek_meter::billing::Bill;
use deepseek_meter::calendar::Granularity;
use deepseek_meter::journal::{Durability, Journal, JournalConfig, OnFull};
use deepseek_meter::ledger::{self, Ledger};
use deepseek_meter::metrics::Metrics;
use deepseek_meter::record::CallRecord;
use deepseek_meter::shipper::Shipper;
use deepseek_meter::usage::{CallStatus, Protocol, UsageSource};
use std::time::{Duration, Instant};

const TZ: chrono_tz::Tz = chrono_tz::Asia::Shanghai;
const DB: &str = "dm_bench_bill";
const DAYS: i64 = 30;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// Fills the ledger through the sidecar's own insert (rows and rollups together): `rows` calls over the 30
/// Beijing days from `first_day`, the mix of [`mix::call`].
async fn fill(pool: &sqlx::PgPool, rows: u64, first_day: DateTime<Utc>) {
    deepseek_meter::ledger::partitions::ensure(pool, first_day + chrono::Duration::days(15))
        .await
        .unwrap();
    let rate = mix::ingest(
        pool,
        rows,
        2,
        1,
        move |rng| {
            let day = first_day + chrono::Duration::days((rng.unit() * DAYS as f64) as i64);
            mix::in_day(rng, day)
        },
        true,
    )
    .await;
    eprintln!("filled at {rate:.0} rows/s");
    sqlx::query("VACUUM ANALYZE").execute(pool).await.unwrap();
}

fn record(i: u64, now: DateTime<Utc>) -> CallRecord {
    CallRecord {
        call_id: uuid::Uuid::now_v7(),
        upstream_request_id: None,
        protocol: Protocol::OpenAi,
        model: ["deepseek-v3.2-exp", "deepseek-r1", "deepseek-v3"][(i % 3) as usize].into(),
        stream: true,
        status: CallStatus::Ok,
        http_status: Some(200),
        error_code: None,
        started_at: now - chrono::Duration::milliseconds(900),
        finished_at: now,
        billing_hour: deepseek_meter::pricing::billing_hour(now, TZ),
        ttft_ms: Some(120.0),
        duration_ms: 900.0,
        input_tokens: 1200,
        cached_tokens: 256,
        cache_creation_tokens: 0,
        output_tokens: 640,
        reasoning_tokens: 400,
        answer_tokens: 240,
        usage_source: UsageSource::Reported,
        reasoning_estimated: false,
        priced: true,
        price_version: Some("bench".into()),
        price_period: None,
        cost_total: Some("0.0040144".parse().unwrap()),
        cost_input: None,
        key_fingerprint: Some(format!("{:012x}", i % 200)),
        key_hint: None,
        project: Some(format!("project-{}", i % 20)),
        end_user: None,
        workspace: None,
        api_key_id: None,
    }
}

/// Journal → shipper → Postgres for `rows` records finishing now; rows/s. With `roller`, a roll every second
/// meanwhile (as every sidecar's roller does).
async fn ship(l: &Ledger, rows: u64, roller: bool) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let (journal, writer) = Journal::open(JournalConfig {
        dir: dir.path().to_owned(),
        durability: Durability::Batched,
        group_commit: Duration::from_millis(10),
        segment_bytes: 64 << 20,
        max_bytes: 1 << 34,
        on_full: OnFull::Refuse,
    })
    .unwrap();
    let cursor = journal.cursor();
    let mut shipped = cursor.committed();
    let stop = tokio_util::sync::CancellationToken::new();
    let shipper = Shipper::new(
        l.clone(),
        cursor,
        journal.held(),
        Metrics::new().unwrap().instance,
        None,
    );
    let task = tokio::spawn(shipper.run(stop.clone(), stop.clone()));
    let rolls = roller.then(|| {
        let bill = Bill::new(l.pool().clone(), Duration::from_secs(600));
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut n = 0u32;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return n,
                    _ = tick.tick() => {}
                }
                let now = Utc::now();
                bill.roll(now, deepseek_meter::pricing::billing_hour(now, TZ))
                    .await
                    .unwrap();
                n += 1;
            }
        })
    });
    let now = Utc::now();
    let t = Instant::now();
    for i in 0..rows {
        journal.append(record(i, now));
        if i % 1024 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let end = journal.barrier().await.unwrap();
    shipped.wait_for(|s| *s >= end).await.unwrap();
    let rate = rows as f64 / t.elapsed().as_secs_f64();
    stop.cancel();
    journal.close();
    writer.join().await;
    let _ = task.await;
    if let Some(r) = rolls {
        let n = r.await.unwrap();
        eprintln!("  (roller made {n} rolls during the run)");
    }
    rate
}

#[tokio::main]
async fn main() {
    let rows = env("BENCH_BILL_ROWS", 10_000_000);
    let ship_rows = env("BENCH_SHIP_ROWS", 100_000);
    let keep = std::env::var_os("BENCH_BILL_KEEP").is_some();
    let url = format!("postgres://postgres@127.0.0.1:5432/{DB}");
    ledger::create_database_if_missing(&url).await.unwrap();
    let l = Ledger::connect_lazy(&url).unwrap();
    l.migrate().await.unwrap();
    let pool = l.pool().clone();
    // The 30 Beijing days of November 2026.
    let first_day = at("2026-10-31T16:00:00Z");
    let month = (first_day, first_day + chrono::Duration::days(DAYS));
    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_ledger WHERE billing_hour < $1")
        .bind(month.1)
        .fetch_one(&pool)
        .await
        .unwrap();
    let t = Instant::now();
    if have < rows as i64 - DAYS {
        fill(&pool, rows, first_day).await;
    }
    let fill_secs = t.elapsed().as_secs_f64();
    let ledger_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM usage_ledger WHERE billing_hour < $1")
            .bind(month.1)
            .fetch_one(&pool)
            .await
            .unwrap();

    // 1. The first roll of every hour.
    let bill = Bill::new(pool.clone(), Duration::from_secs(600));
    let now = Utc::now();
    let open = deepseek_meter::pricing::billing_hour(now, TZ);
    sqlx::query("INSERT INTO bill_dirty_hours SELECT DISTINCT billing_hour FROM hourly_bill WHERE billing_hour < $1")
        .bind(month.1)
        .execute(&pool)
        .await
        .unwrap();
    let t = Instant::now();
    let first = bill.roll(now, open).await.unwrap();
    let first_roll_secs = t.elapsed().as_secs_f64();
    sqlx::query("ANALYZE hourly_bill")
        .execute(&pool)
        .await
        .unwrap();
    let bill_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM hourly_bill WHERE billing_hour < $1")
            .bind(month.1)
            .fetch_one(&pool)
            .await
            .unwrap();

    // 2. One busy hour, again.
    let (busy, busy_calls): (DateTime<Utc>, i64) = sqlx::query_as(
        "SELECT billing_hour, sum(calls)::bigint FROM hourly_bill GROUP BY 1 ORDER BY 2 DESC LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let (roll_med, roll_min, _) = timed(5, || async {
        sqlx::query("INSERT INTO bill_dirty_hours VALUES ($1)")
            .bind(busy)
            .execute(&pool)
            .await
            .unwrap();
        let r = bill.roll(now, open).await.unwrap();
        assert_eq!(r.hours, 1);
    })
    .await;

    // 3. Reports, read and rendered as JSON.
    let day_start = deepseek_meter::calendar::start_of(Granularity::Day, busy, TZ);
    let cases = [
        (
            "a day, hourly, by model",
            (day_start, day_start + chrono::Duration::days(1)),
            Granularity::Hour,
            vec![Group::Model],
        ),
        (
            "a day, hourly, by key",
            (day_start, day_start + chrono::Duration::days(1)),
            Granularity::Hour,
            vec![Group::Key],
        ),
        (
            "the month, daily, by model",
            month,
            Granularity::Day,
            vec![Group::Model],
        ),
        (
            "the month, daily, by key",
            month,
            Granularity::Day,
            vec![Group::Key],
        ),
        (
            "the month by model (one row per model)",
            month,
            Granularity::Month,
            vec![Group::Model],
        ),
        (
            "the month by key (one row per key)",
            month,
            Granularity::Month,
            vec![Group::Key],
        ),
    ];
    let mut report_rows = Vec::new();
    for (name, (from, to), granularity, by) in cases {
        let q = ReportQuery {
            from,
            to,
            by,
            granularity,
            timezone: TZ,
        };
        let n = read::report(&pool, &q).await.unwrap().rows.len();
        let (med, min, _) = timed(7, || async {
            let r = read::report(&pool, &q).await.unwrap();
            std::hint::black_box(render(&r, Format::Json, &[]));
        })
        .await;
        report_rows.push((name, n, med, min));
    }

    // 4. Shipper with and without the roller, alternating.
    let mut off = Vec::new();
    let mut on = Vec::new();
    for _ in 0..3 {
        off.push(ship(&l, ship_rows, false).await);
        on.push(ship(&l, ship_rows, true).await);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (off_med, on_med) = (median(&mut off), median(&mut on));

    pool.close().await;
    if !keep {
        let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
            .await
            .unwrap();
        sqlx::query(&format!("DROP DATABASE \"{DB}\" WITH (FORCE)"))
            .execute(&admin)
            .await
            .unwrap();
    }

    println!("ledger: {ledger_rows} rows over {DAYS} days (fill {fill_secs:.0} s); hourly_bill: {bill_rows} rows");
    println!();
    println!("| step | result |");
    println!("| --- | ---: |");
    println!(
        "| first roll of all {} hours | {first_roll_secs:.1} s |",
        first.hours
    );
    println!("| a late row re-opens the busiest closed hour ({busy_calls} calls): fold, revision, audit | {roll_med:.0} ms (min {roll_min:.0}) |");
    for (name, n, med, min) in &report_rows {
        println!("| report: {name}, {n} rows, read + JSON | {med:.1} ms (min {min:.1}) |");
    }
    println!(
        "| shipper, roller off → on (median of 3 runs of {ship_rows}) | {off_med:.0} → {on_med:.0} rows/s ({:.2}×) |",
        on_med / off_med
    );
    let json = serde_json::json!({
        "ledger_rows": ledger_rows, "bill_rows": bill_rows, "fill_s": fill_secs,
        "first_roll_hours": first.hours, "first_roll_s": first_roll_secs,
        "busy_hour_calls": busy_calls, "busy_hour_roll_ms": roll_med,
        "reports": report_rows.iter().map(|(name, n, med, min)| serde_json::json!({"report": name, "rows": n, "median_ms": med, "min_ms": min})).collect::<Vec<_>>(),
        "ship_roller_off_rows_per_s": off, "ship_roller_on_rows_per_s": on,
        "machine": format!("{} cores", std::thread::available_parallelism().map_or(0, |n| n.get())),
    });
    std::fs::create_dir_all("bench/results").unwrap();
    std::fs::write(
        "bench/results/bill.json",
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
}
