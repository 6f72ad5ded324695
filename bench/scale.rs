//! The ledger at scale (DESIGN §12: a billion rows a month on one Postgres). A ledger of `SCALE_ROWS` calls
//! (default 100 million) over the 30 days before the current hour, with the mix of `bench/bill` (6 models,
//! 200 keys in 20 projects, 50 end users, 70 % of calls in Beijing business hours), plus `SCALE_BUSY` calls
//! (default 1.4 million: a busy hour at a billion a month) in the open hour. All of it goes in through the
//! sidecar's own insert (`ledger::insert`: rows and rollups in one statement), so the fill is itself an
//! ingest measurement. Then:
//!
//! 1. ingest rows/s into the open hour with the roller and five budgets' refreshes running vs without them
//!    (alternating runs; the budgets' counters are moved by the insert trigger only when budgets exist);
//! 2. the roller's cost per round while the busy hour is open vs while a quiet hour is (and the ledger rows
//!    Postgres says it read: none);
//! 3. a report of the month by model, a budget refresh (five budgets), the database part of a `/metrics` scrape;
//! 4. retention dropping last month's partition;
//! 5. the disk per row and what a billion rows a month takes.
//!
//! Run: `cargo bench --bench scale` (release; Postgres on 127.0.0.1:5432; about 40 min and 40 GB at the default
//! size — `SCALE_ROWS=10000000` for a quick look). `SCALE_KEEP=1` keeps the database (`dm_bench_scale`) and a
//! rerun skips the fill (the retention step then finds last month already gone). Prints a markdown table and
//! writes `bench/results/scale.json`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: fail loudly

#[path = "common/mix.rs"]
mod mix;

use mix::{call, env, in_day, ingest, timed, Rng};

use chrono::{DateTime, Datelike, Duration as Span, Timelike, Utc};
use deepseek_meter::billing::read;
use deepseek_meter::billing::report::{Group, ReportQuery};
use deepseek_meter::billing::Bill;
use deepseek_meter::budget::{self, store, Budget};
use deepseek_meter::calendar::Granularity;
use deepseek_meter::ledger::{insert::insert, partitions, Ledger};
use deepseek_meter::record::CallRecord;
use sqlx::PgPool;
use std::time::{Duration, Instant};

const TZ: chrono_tz::Tz = chrono_tz::Asia::Shanghai;
const DB: &str = "dm_bench_scale";
const DAYS: i64 = 30;

/// Ledger rows Postgres has read from any partition (sequential and index), its statistics flushed first.
async fn ledger_rows_read(pool: &PgPool) -> i64 {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    sqlx::query_scalar(
        "SELECT coalesce(sum(seq_tup_read + coalesce(idx_tup_fetch, 0)), 0)::int8 FROM pg_stat_user_tables
         WHERE relname LIKE 'usage_ledger%'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

fn budgets() -> Vec<Budget> {
    let text = r#"
        [[budget]]
        name = "all-hourly"
        period = "hour"
        limit_yuan = 100000000
        action = "block"
        [[budget]]
        name = "project-daily"
        period = "day"
        limit_yuan = 100000000
        project = "project-1"
        action = "block"
        [[budget]]
        name = "r1-monthly"
        period = "month"
        limit_yuan = 100000000
        model = "deepseek-r1"
        action = "block"
        [[budget]]
        name = "user-daily"
        period = "day"
        limit_yuan = 100000000
        end_user = "user-4"
        action = "alert"
        [[budget]]
        name = "all-monthly"
        period = "month"
        limit_yuan = 100000000
        action = "alert"
    "#;
    let table: toml::Table = toml::from_str(text).unwrap();
    budget::parse(table.get("budget")).unwrap()
}

/// What a sidecar with these budgets does against the database each second: its counters read.
async fn refresh(pool: &PgPool, budgets: &[Budget], defs: &[String]) {
    let now = Utc::now();
    let windows: Vec<_> = budgets
        .iter()
        .map(|b| budget::tracker::window_of(b.period.granularity(), now, TZ))
        .collect();
    store::refresh(pool, budgets, defs, &windows, &[], None)
        .await
        .unwrap();
}

#[tokio::main]
async fn main() {
    let rows = env("SCALE_ROWS", 100_000_000);
    let busy_rows = env("SCALE_BUSY", 1_400_000);
    let ingest_rows = env("SCALE_INGEST_ROWS", 300_000);
    let keep = std::env::var_os("SCALE_KEEP").is_some();
    let url = format!("postgres://postgres@127.0.0.1:5432/{DB}");
    let l = Ledger::create_and_migrate(&url).await.unwrap();
    let pool = l.pool().clone();
    let now = Utc::now();
    let open = deepseek_meter::pricing::billing_hour(now, TZ);
    partitions::ensure(&pool, now).await.unwrap();

    // The fill: 30 Beijing days before today, then the busy open hour.
    let today = deepseek_meter::calendar::start_of(Granularity::Day, now, TZ);
    let first_day = today - Span::days(DAYS);
    let have: i64 = sqlx::query_scalar("SELECT coalesce(sum(calls), 0)::int8 FROM hourly_bill")
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut fill_rate = None;
    if have < (rows + busy_rows) as i64 {
        eprintln!("filling {rows} rows over {DAYS} days, then {busy_rows} in the open hour");
        let t = Instant::now();
        let rate = ingest(
            &pool,
            rows,
            2,
            1,
            move |rng| {
                let day = first_day + Span::days((rng.unit() * DAYS as f64) as i64);
                in_day(rng, day)
            },
            true,
        )
        .await;
        let open_start = open;
        let minutes = (now - open).num_seconds().max(60);
        ingest(
            &pool,
            busy_rows,
            2,
            2,
            move |rng| open_start + Span::seconds((rng.unit() * minutes as f64) as i64),
            false,
        )
        .await;
        eprintln!("filled in {:.0} s", t.elapsed().as_secs_f64());
        fill_rate = Some(rate);
        sqlx::query("VACUUM ANALYZE").execute(&pool).await.unwrap();
    }
    let ledger_rows: i64 = sqlx::query_scalar("SELECT sum(calls)::int8 FROM hourly_bill")
        .fetch_one(&pool)
        .await
        .unwrap();
    let busy_calls: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(calls), 0)::int8 FROM hourly_bill WHERE billing_hour = $1",
    )
    .bind(open)
    .fetch_one(&pool)
    .await
    .unwrap();

    // Sizes: every partition and the rollups.
    let sizes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT c.relname::text, pg_total_relation_size(c.oid) FROM pg_class c
         WHERE c.relkind = 'r' AND (c.relname LIKE 'usage_ledger%' OR c.relname IN
             ('hourly_bill', 'hourly_model_bill', 'hourly_end_user_cost', 'hourly_key_usage'))
         ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let ledger_bytes: i64 = sizes
        .iter()
        .filter(|(n, _)| n.starts_with("usage_ledger"))
        .map(|(_, b)| b)
        .sum();
    let rollup_bytes: i64 = sizes
        .iter()
        .filter(|(n, _)| !n.starts_with("usage_ledger"))
        .map(|(_, b)| b)
        .sum();
    let bytes_per_row = ledger_bytes as f64 / ledger_rows.max(1) as f64;

    // The first roll after the fill: every filled hour is folded, and each ended hour closes with its audit
    // (once per hour in a sidecar's life; here all 720 at once).
    let bill = Bill::new(pool.clone(), Duration::from_secs(600));
    let t = Instant::now();
    let first = bill.roll(Utc::now(), open).await.unwrap();
    let first_roll_s = t.elapsed().as_secs_f64();
    eprintln!(
        "first roll: {} hours folded, {} closed (audited) in {first_roll_s:.0} s",
        first.hours, first.closed
    );

    // 1. Ingest into the open hour: roller and budgets off vs on, alternating.
    let budgets = budgets();
    let defs: Vec<String> = budgets
        .iter()
        .map(|b| budget::coordinated::def_id(b, TZ))
        .collect();
    let mut off = Vec::new();
    let mut on = Vec::new();
    for run in 0..3u64 {
        sqlx::query("TRUNCATE budget_defs CASCADE")
            .execute(&pool)
            .await
            .unwrap();
        off.push(ingest(&pool, ingest_rows, 2, 10 + run, move |_| Utc::now(), false).await);
        store::publish(&pool, &budgets, &defs, TZ).await.unwrap();
        refresh(&pool, &budgets, &defs).await; // the windows' counters, seeded
        let stop = tokio_util::sync::CancellationToken::new();
        let background = {
            let (pool, stop, budgets, defs) =
                (pool.clone(), stop.clone(), budgets.clone(), defs.clone());
            tokio::spawn(async move {
                let bill = Bill::new(pool.clone(), Duration::from_secs(600));
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let now = Utc::now();
                    bill.roll(now, deepseek_meter::pricing::billing_hour(now, TZ))
                        .await
                        .unwrap();
                    refresh(&pool, &budgets, &defs).await;
                }
            })
        };
        on.push(ingest(&pool, ingest_rows, 2, 20 + run, move |_| Utc::now(), false).await);
        stop.cancel();
        background.await.unwrap();
        eprintln!(
            "ingest run {}: off {:.0}, on {:.0} rows/s",
            run + 1,
            off[run as usize],
            on[run as usize]
        );
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (off_med, on_med) = (median(&off), median(&on));

    // 2. The roller's round while the busy hour is open, with a trickle of calls (what every sidecar's roller
    // does each second), vs while a quiet hour is open (one far ahead, a few calls) — measured after the busy
    // hour has closed and been audited (timed apart: the one read of its rows in its life).
    let round = |hour: DateTime<Utc>| {
        let (pool, bill) = (pool.clone(), &bill);
        async move {
            let mut rng = Rng(7);
            let trickle: Vec<CallRecord> = (0..4)
                .map(|_| call(&mut rng, hour + Span::minutes(30)))
                .collect();
            insert(&pool, &trickle).await.unwrap();
            bill.roll(hour + Span::minutes(30), hour).await.unwrap()
        }
    };
    let before = ledger_rows_read(&pool).await;
    let (busy_med, _, busy_max) = timed(20, || async {
        round(open).await;
    })
    .await;
    let busy_read = ledger_rows_read(&pool).await - before;
    let quiet_hour = open + Span::days(20);
    let t = Instant::now();
    let closing = round(quiet_hour).await;
    let audit_s = t.elapsed().as_secs_f64();
    assert_eq!(closing.closed, 1, "the busy hour closes");
    let before = ledger_rows_read(&pool).await;
    let (quiet_med, _, quiet_max) = timed(20, || async {
        round(quiet_hour).await;
    })
    .await;
    let quiet_read = ledger_rows_read(&pool).await - before;

    // 3. A month's report by model; a budget refresh; the database part of a scrape.
    let month = ReportQuery {
        from: first_day,
        to: today,
        by: vec![Group::Model],
        granularity: Granularity::Month,
        timezone: TZ,
    };
    let (report_med, _, report_max) = timed(7, || async {
        std::hint::black_box(read::report(&pool, &month).await.unwrap());
    })
    .await;
    let by_day_key = ReportQuery {
        granularity: Granularity::Day,
        by: vec![Group::Key],
        ..month.clone()
    };
    let (daily_med, _, _) = timed(5, || async {
        std::hint::black_box(read::report(&pool, &by_day_key).await.unwrap());
    })
    .await;
    store::publish(&pool, &budgets, &defs, TZ).await.unwrap();
    let (refresh_med, _, refresh_max) = timed(20, || refresh(&pool, &budgets, &defs)).await;
    let (scrape_med, _, scrape_max) = timed(20, || async {
        deepseek_meter::billing::roll::hour_cost_by_model(&pool, open)
            .await
            .unwrap();
        deepseek_meter::billing::roll::last_closed_hour(&pool)
            .await
            .unwrap();
    })
    .await;

    // 4. Retention: everything before this UTC month goes (last month's partition and any before it).
    let this_month = now
        .with_day0(0)
        .and_then(|t| t.with_hour(0))
        .and_then(|t| t.with_minute(0))
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .unwrap();
    let kept_before: i64 =
        sqlx::query_scalar("SELECT count(*) FROM usage_ledger WHERE billing_hour < $1")
            .bind(this_month)
            .fetch_one(&pool)
            .await
            .unwrap();
    let t = Instant::now();
    let dropped = partitions::retire(&pool, this_month).await.unwrap();
    let retire_ms = t.elapsed().as_secs_f64() * 1e3;

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

    let gb = |b: f64| b / 1e9;
    let billion_bytes = bytes_per_row * 1e9;
    println!(
        "ledger: {ledger_rows} rows ({busy_calls} in the open hour); {:.1} GB of ledger ({bytes_per_row:.0} bytes a row with its indexes), {:.2} GB of rollups",
        gb(ledger_bytes as f64),
        gb(rollup_bytes as f64)
    );
    println!();
    println!("| step | result |");
    println!("| --- | ---: |");
    if let Some(rate) = fill_rate {
        println!(
            "| fill through the sidecar's insert (2 writers, rollups kept) | {rate:.0} rows/s |"
        );
    }
    println!(
        "| ingest into the open hour, roller + 5 budgets off → on (median of 3 × {ingest_rows}) | {off_med:.0} → {on_med:.0} rows/s ({:.2}×) |",
        on_med / off_med
    );
    println!(
        "| roller round, busy open hour ({busy_calls} calls) | {busy_med:.1} ms (max {busy_max:.1}); ledger rows read: {busy_read} |"
    );
    println!(
        "| roller round, quiet open hour | {quiet_med:.1} ms (max {quiet_max:.1}); ledger rows read: {quiet_read} |"
    );
    println!("| the busy hour's close with its audit (its rows read once) | {audit_s:.1} s |");
    println!(
        "| first roll after the fill: {} hours folded, {} closed and audited | {first_roll_s:.0} s |",
        first.hours, first.closed
    );
    println!("| report: the month by model | {report_med:.1} ms (max {report_max:.1}) |");
    println!("| report: the month, daily, by key | {daily_med:.1} ms |");
    println!("| budget refresh, 5 budgets | {refresh_med:.2} ms (max {refresh_max:.2}) |");
    println!("| `/metrics` scrape, database part | {scrape_med:.2} ms (max {scrape_max:.2}) |");
    println!(
        "| retention: drop {} ({kept_before} rows) | {retire_ms:.0} ms |",
        dropped.join(", ")
    );
    println!(
        "| a billion rows a month | {:.0} GB of ledger a month; 1 partition a month; 386 rows/s on average |",
        gb(billion_bytes)
    );
    let json = serde_json::json!({
        "ledger_rows": ledger_rows, "busy_hour_calls": busy_calls,
        "ledger_bytes": ledger_bytes, "rollup_bytes": rollup_bytes, "bytes_per_row": bytes_per_row,
        "sizes": sizes, "fill_rows_per_s": fill_rate,
        "ingest_off_rows_per_s": off, "ingest_on_rows_per_s": on,
        "roll_busy_ms": [busy_med, busy_max], "roll_busy_ledger_rows_read": busy_read,
        "roll_quiet_ms": [quiet_med, quiet_max], "roll_quiet_ledger_rows_read": quiet_read,
        "busy_hour_close_audit_s": audit_s, "first_roll_hours": first.hours, "first_roll_closed": first.closed,
        "first_roll_s": first_roll_s,
        "report_month_by_model_ms": [report_med, report_max], "report_month_daily_by_key_ms": daily_med,
        "budget_refresh_ms": [refresh_med, refresh_max], "scrape_db_ms": [scrape_med, scrape_max],
        "retention_dropped": dropped, "retention_rows": kept_before, "retention_ms": retire_ms,
        "machine": format!("{} cores", std::thread::available_parallelism().map_or(0, |n| n.get())),
    });
    std::fs::create_dir_all("bench/results").unwrap();
    std::fs::write(
        "bench/results/scale.json",
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
}
