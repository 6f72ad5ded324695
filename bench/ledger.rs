//! Ledger throughput: how many call records per second reach Postgres.
//!
//! 1. `insert`: `Ledger::insert` alone, batches of `shipper::BATCH`, one connection.
//! 2. `journal → ledger`: records appended to a real journal (batched durability, fsync every 10 ms) by
//!    4 producer tasks, shipped by the real shipper; the clock stops when the last record is in Postgres.
//!
//! 1b. `unnest` vs `copy` vs `binary`: the same rows and rollups through the shipper's UNNEST insert and through
//!    COPY (CSV, and binary) into a temporary table, at batches of 120 (the shipper's at ~6,000 calls/s), 1,000
//!    and 5,000, with the Postgres backends' CPU per row.
//!
//! 3. `proxy path`: p50/p99 latency of non-streaming calls through the real sidecar (ledger on, simulator
//!    upstream), first with the ledger idle, then while its shipper ingests `BENCH_ROWS` journaled records.
//!
//! Run: `cargo bench --bench ledger` (release build; needs Postgres on 127.0.0.1:5432). `BENCH_ROWS` sets the
//! record count (default 200000). Prints a markdown table and writes `bench/results/ledger.json`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: fail loudly

use chrono::Utc;
use deepseek_meter::journal::{Durability, Journal, JournalConfig, OnFull};
use deepseek_meter::ledger::{self, Ledger};
use deepseek_meter::metrics::Metrics;
use deepseek_meter::record::CallRecord;
use deepseek_meter::shipper::{self, Shipper};
use deepseek_meter::usage::{CallStatus, Protocol, UsageSource};
use std::time::{Duration, Instant};

fn record(i: u64) -> CallRecord {
    let now = Utc::now();
    CallRecord {
        call_id: uuid::Uuid::now_v7(),
        upstream_request_id: Some(uuid::Uuid::now_v7().to_string()),
        protocol: if i.is_multiple_of(2) {
            Protocol::OpenAi
        } else {
            Protocol::DashScope
        },
        model: "deepseek-v3.2-exp".into(),
        stream: true,
        status: CallStatus::Ok,
        http_status: Some(200),
        error_code: None,
        started_at: now - chrono::Duration::milliseconds(900),
        finished_at: now,
        billing_hour: deepseek_meter::pricing::billing_hour(
            now,
            deepseek_meter::pricing::DEFAULT_TIMEZONE,
        ),
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
        price_version: Some("deepseek-v3.2-exp@2025-09-29".into()),
        price_period: None,
        cost_total: Some("0.0040144".parse().unwrap()),
        cost_input: None,
        key_fingerprint: Some("0123456789ab".into()),
        key_hint: Some("sk-…abcd".into()),
        project: Some(format!("project-{}", i % 10)),
        end_user: Some(format!("user-{}", i % 1000)),
        workspace: None,
        api_key_id: None,
    }
}

/// CPU seconds (user + system) of each Postgres backend connected to `db`, by pid.
async fn backend_cpu(pool: &sqlx::PgPool, db: &str) -> std::collections::HashMap<i32, f64> {
    let pids: Vec<i32> = sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = $1")
        .bind(db)
        .fetch_all(pool)
        .await
        .unwrap();
    pids.into_iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map_or("", |(_, rest)| rest)
                .split_whitespace()
                .collect();
            let ticks = |i: usize| {
                fields
                    .get(i)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            (pid, (ticks(11) + ticks(12)) / 100.0)
        })
        .collect()
}

fn cpu_delta(
    before: &std::collections::HashMap<i32, f64>,
    after: &std::collections::HashMap<i32, f64>,
) -> f64 {
    after
        .iter()
        .map(|(pid, t)| t - before.get(pid).copied().unwrap_or(0.0))
        .sum()
}

#[tokio::main]
async fn main() {
    let rows: u64 = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let db = format!("dm_bench_{}", uuid::Uuid::now_v7().simple());
    let url = format!("postgres://postgres@127.0.0.1:5432/{db}");
    ledger::create_database_if_missing(&url).await.unwrap();
    let l = Ledger::connect_lazy(&url).unwrap();
    l.migrate().await.unwrap();
    // BENCH_LEDGER_BUDGETS: what the budget trigger on usage_ledger has to do (migration …000007).
    // `idle` (default): no coordinated budget, the trigger only looks; `three`: three coordinated month budgets
    // whose counters every insert updates; `drop`: no trigger at all (the build before it).
    let budgets = std::env::var("BENCH_LEDGER_BUDGETS").unwrap_or_else(|_| "idle".into());
    for sql in match budgets.as_str() {
        "drop" => vec!["DROP TRIGGER usage_ledger_budget_charge ON usage_ledger"],
        "three" => vec![
            "INSERT INTO budget_defs (def_id, name, period, timezone, model, project)
             VALUES ('all', 'all', 'month', 'Asia/Shanghai', NULL, NULL),
                    ('v32', 'v32', 'month', 'Asia/Shanghai', 'deepseek-v3.2-exp', NULL),
                    ('p1', 'p1', 'month', 'Asia/Shanghai', NULL, 'project-1')",
            "INSERT INTO budget_spent (def_id, window_start, window_end, spent)
             SELECT d.def_id, m AT TIME ZONE 'Asia/Shanghai', (m + interval '1 month') AT TIME ZONE 'Asia/Shanghai', 0
             FROM budget_defs d, generate_series(timestamp '2025-12-01', timestamp '2027-01-01', interval '1 month') m",
        ],
        _ => vec![],
    } {
        sqlx::query(sql).execute(l.pool()).await.unwrap();
    }
    eprintln!("budget trigger: {budgets}");

    // 1. Insert alone.
    let records: Vec<CallRecord> = (0..rows).map(record).collect();
    let t = Instant::now();
    for chunk in records.chunks(shipper::BATCH) {
        l.insert(chunk).await.unwrap();
    }
    let insert_secs = t.elapsed().as_secs_f64();
    drop(records);

    // 1b. The ways rows can reach Postgres (issue 25): UNNEST of one array per column (what the shipper does) vs
    // COPY (CSV, binary) into a temporary table and the same INSERT … SELECT, each at three batch sizes, with the
    // Postgres backends' own CPU per row (their utime + stime from /proc; Postgres runs on this machine).
    let mut ways = Vec::new();
    for round in 0..2u64 {
        for (way, batch) in [
            ("unnest", 120),
            ("copy", 120),
            ("binary", 120),
            ("unnest", 1000),
            ("copy", 1000),
            ("binary", 1000),
            ("unnest", 5000),
            ("copy", 5000),
            ("binary", 5000),
        ] {
            let records: Vec<CallRecord> = (0..rows).map(|i| record(i + round)).collect();
            let before = backend_cpu(l.pool(), &db).await;
            let t = Instant::now();
            for chunk in records.chunks(batch) {
                let n = match way {
                    "copy" => deepseek_meter::ledger::insert::copy_insert(l.pool(), chunk).await,
                    "binary" => {
                        deepseek_meter::ledger::insert::copy_binary_insert(l.pool(), chunk).await
                    }
                    _ => deepseek_meter::ledger::insert::insert(l.pool(), chunk).await,
                };
                assert_eq!(n.unwrap(), chunk.len() as u64);
            }
            let secs = t.elapsed().as_secs_f64();
            let cpu = cpu_delta(&before, &backend_cpu(l.pool(), &db).await);
            eprintln!(
                "{way} batch {batch} round {}: {:.0} rows/s, backend CPU {:.1} µs/row",
                round + 1,
                rows as f64 / secs,
                cpu * 1e6 / rows as f64
            );
            ways.push((
                way,
                batch,
                round,
                rows as f64 / secs,
                cpu * 1e6 / rows as f64,
            ));
        }
    }

    // 2. Journal → shipper → Postgres.
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        dir: dir.path().to_owned(),
        durability: Durability::Batched,
        group_commit: Duration::from_millis(10),
        segment_bytes: 64 << 20,
        max_bytes: 1 << 34,
        on_full: OnFull::Refuse,
    };
    let (journal, writer) = Journal::open(config).unwrap();
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
    let t = Instant::now();
    let producers: Vec<_> = (0..4u64)
        .map(|p| {
            let j = journal.clone();
            tokio::spawn(async move {
                for i in (p..rows).step_by(4) {
                    j.append(record(i));
                    if i % 1024 == p {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for p in producers {
        p.await.unwrap();
    }
    let append_secs = t.elapsed().as_secs_f64();
    let end = journal.barrier().await.unwrap();
    shipped.wait_for(|s| *s >= end).await.unwrap();
    let e2e_secs = t.elapsed().as_secs_f64();
    stop.cancel();
    journal.close();
    writer.join().await;
    let _ = task.await;

    // 3. The proxy path, idle ledger vs ingesting ledger.
    let jdir = tempfile::tempdir().unwrap();
    let mut settings = deepseek_meter::config::Settings::for_tests();
    settings.ledger = Some(deepseek_meter::config::LedgerSettings {
        database_url: url.clone(),
        journal: JournalConfig {
            dir: jdir.path().to_owned(),
            ..journal.config().clone()
        },
        migrate: false,
        ship_deadline: Duration::from_secs(30),
        billing_grace: Duration::from_secs(600),
        report_dir: None,
        report_webhook: None,
        retention: None,
    });
    let app = deepseek_meter::app::App::start(settings).await.unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let target = format!(
        "http://{}/compatible-mode/v1/chat/completions",
        app.proxy_addr
    );
    let calls = 2_000;
    let measure = |http: reqwest::Client, target: String| async move {
        let mut lat = Vec::with_capacity(calls);
        for _ in 0..calls {
            let t = Instant::now();
            let r = http
                .post(&target)
                .body(r#"{"model":"deepseek-v3","messages":[{"role":"user","content":"hi"}]}"#)
                .send()
                .await
                .unwrap();
            r.bytes().await.unwrap();
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (lat[lat.len() / 2], lat[lat.len() * 99 / 100])
    };
    let (idle_p50, idle_p99) = measure(http.clone(), target.clone()).await;
    // 3b. The proxy's tail while rows reach Postgres each way (issue 25): batches of 120 every 20 ms, the
    // shipper's cadence at ~6,000 calls/s, into the same Postgres on the same cores.
    let mut tails = Vec::new();
    let mut beside = 0u64;
    for way in ["unnest", "copy", "binary"] {
        let stop = tokio_util::sync::CancellationToken::new();
        let inserter = {
            let (pool, stop) = (l.pool().clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                while !stop.is_cancelled() {
                    tick.tick().await;
                    let batch: Vec<CallRecord> = (0..120).map(|i| record(n + i)).collect();
                    let done = match way {
                        "copy" => deepseek_meter::ledger::insert::copy_insert(&pool, &batch).await,
                        "binary" => {
                            deepseek_meter::ledger::insert::copy_binary_insert(&pool, &batch).await
                        }
                        _ => deepseek_meter::ledger::insert::insert(&pool, &batch).await,
                    };
                    n += done.unwrap();
                }
                n
            })
        };
        let (p50, p99) = measure(http.clone(), target.clone()).await;
        stop.cancel();
        beside += inserter.await.unwrap();
        eprintln!("proxy beside {way} inserts: p50 {p50:.0} µs, p99 {p99:.0} µs");
        tails.push((way, p50, p99));
    }
    // A backlog, as after a database outage: journaled first, then shipped while calls flow.
    let app_journal = app.state.journal.clone().unwrap();
    for i in 0..rows {
        app_journal.append(record(i));
    }
    app_journal.barrier().await.unwrap();
    let pending = || app_journal.backlog().pending_records;
    let pending_before = pending();
    let (busy_p50, busy_p99) = measure(http.clone(), target.clone()).await;
    let pending_after = pending();
    app.flush_ledger().await;
    app.shutdown().await;

    let pool = l.pool().clone();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_ledger")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        n as u64,
        3 * rows + (2 + tails.len() as u64) * calls as u64 + ways.len() as u64 * rows + beside,
        "every record landed once"
    );
    pool.close().await;
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE \"{db}\" WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();

    let insert_rate = rows as f64 / insert_secs;
    let append_rate = rows as f64 / append_secs;
    let e2e_rate = rows as f64 / e2e_secs;
    println!("| stage | rows | seconds | rows/s |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| Ledger::insert (UNNEST, {} per batch) | {rows} | {insert_secs:.2} | {insert_rate:.0} |",
        shipper::BATCH
    );
    println!("| journal append (4 producers) | {rows} | {append_secs:.2} | {append_rate:.0} |");
    println!(
        "| journal → shipper → Postgres, end to end | {rows} | {e2e_secs:.2} | {e2e_rate:.0} |"
    );
    println!();
    println!("| rows into Postgres, {rows} a run (2 rounds) | batch | rows/s | Postgres backend CPU per row (µs) |");
    println!("| --- | ---: | ---: | ---: |");
    for (way, batch, round, rate, cpu) in &ways {
        let way = match *way {
            "copy" => "COPY (csv) into a temporary table + INSERT … SELECT",
            "binary" => "COPY (binary) into a temporary table + INSERT … SELECT",
            _ => "INSERT … SELECT FROM UNNEST",
        };
        println!(
            "| {way}, round {} | {batch} | {rate:.0} | {cpu:.1} |",
            round + 1
        );
    }
    println!();
    println!("| proxy path (non-streaming, sequential, {calls} calls each) | p50 µs | p99 µs |");
    println!("| --- | ---: | ---: |");
    println!("| ledger idle | {idle_p50:.0} | {idle_p99:.0} |");
    for (way, p50, p99) in &tails {
        println!("| 120 rows every 20 ms inserted beside, {way} | {p50:.0} | {p99:.0} |");
    }
    println!("| ledger shipping a backlog ({pending_before} → {pending_after} records pending during the run) | {busy_p50:.0} | {busy_p99:.0} |");
    let json = serde_json::json!({
        "proxy_idle_p50_us": idle_p50, "proxy_idle_p99_us": idle_p99,
        "proxy_ingesting_p50_us": busy_p50, "proxy_ingesting_p99_us": busy_p99,
        "proxy_beside_inserts": tails.iter().map(|(w, p50, p99)| serde_json::json!({"way": w, "p50_us": p50, "p99_us": p99})).collect::<Vec<_>>(),
        "rows": rows, "insert_rows_per_s": insert_rate, "append_rows_per_s": append_rate,
        "end_to_end_rows_per_s": e2e_rate,
        "ways": ways.iter().map(|(w, b, r, rate, cpu)| serde_json::json!({"way": w, "batch": b, "round": r, "rows_per_s": rate, "backend_cpu_us_per_row": cpu})).collect::<Vec<_>>(),
        "machine": format!("{} cores", std::thread::available_parallelism().map_or(0, |n| n.get())),
    });
    std::fs::create_dir_all("bench/results").unwrap();
    std::fs::write(
        "bench/results/ledger.json",
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
}
