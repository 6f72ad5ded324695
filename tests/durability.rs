//! The durability promise (DESIGN §10) against the real binary and real Postgres:
//! SIGKILL under load loses nothing outside the group-commit window (nothing at all with
//! `--durability strict`); SIGTERM with open streams gives every stream its row; `migrate` creates the
//! database.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::bin::{Bin, BIN};

/// Starts the binary; returns it and the address it logged for `field` (`proxy_addr`, `addr`).
fn spawn(args: &[&str], field: &str) -> (Bin, String) {
    let bin = Bin::start(args, &[], &[field]);
    let addr = bin.addrs[0].clone();
    (bin, addr)
}

fn serve_args<'a>(
    db: &'a TestDb,
    journal: &'a str,
    upstream: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut a = vec![
        "serve",
        "--upstream",
        upstream,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--database-url",
        &db.url,
        "--journal-dir",
        journal,
    ];
    a.extend_from_slice(extra);
    a
}

/// Runs load until SIGKILL, restarts, drains with SIGTERM; returns (completed calls, missing, of which
/// completed within `window` before the kill).
async fn kill_under_load(strict: bool) -> (usize, Vec<(String, Duration)>) {
    let db = TestDb::new().await;
    let journal = tempfile::tempdir().unwrap();
    let jdir = journal.path().to_str().unwrap().to_owned();
    let extra: &[&str] = if strict {
        &["--durability", "strict"]
    } else {
        &[]
    };
    let (mut child, proxy) = spawn(&serve_args(&db, &jdir, "sim", extra), "proxy_addr");

    let completed: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let (count_tx, mut count) = tokio::sync::watch::channel(0usize);
    let count_tx = Arc::new(count_tx);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut workers = Vec::new();
    for w in 0..4 {
        let (http, proxy, completed, count_tx) = (
            http.clone(),
            proxy.clone(),
            completed.clone(),
            count_tx.clone(),
        );
        workers.push(tokio::spawn(async move {
            for i in 0.. {
                let stream = (w + i) % 2 == 0;
                let body = format!(r#"{{"model":"deepseek-r1","messages":[{{"role":"user","content":"w{w} i{i}"}}],"stream":{stream}}}"#);
                let Ok(resp) = http.post(format!("http://{proxy}{COMPAT_PATH}")).body(body).send().await else { return };
                let id = call_id(&resp);
                if resp.bytes().await.is_err() {
                    return;
                }
                completed.lock().unwrap().push((id, Instant::now()));
                count_tx.send_modify(|n| *n += 1);
            }
        }));
    }
    // Let load build, then kill at an arbitrary moment: after 40–119 completed calls.
    let target = 40 + (uuid::Uuid::now_v7().as_u128() % 80) as usize;
    count.wait_for(|n| *n >= target).await.unwrap();
    child.kill(); // SIGKILL
    let killed_at = Instant::now();
    for w in workers {
        let _ = w.await;
    }
    let completed = completed.lock().unwrap().clone();
    assert!(
        completed.len() >= target,
        "load ran ({} calls)",
        completed.len()
    );

    // Restart on the same journal: it replays what was not shipped; SIGTERM drains and ships.
    let (mut child, _) = spawn(&serve_args(&db, &jdir, "sim", extra), "proxy_addr");
    assert!(child.sigterm().success());
    let stored = db.audit().await;
    let missing = completed
        .iter()
        .filter(|(id, _)| !stored.contains(id))
        .map(|(id, at)| (id.clone(), killed_at.saturating_duration_since(*at)))
        .collect();
    (completed.len(), missing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_outside_the_group_commit_window() {
    let (calls, missing) = kill_under_load(false).await;
    println!(
        "batched: {calls} completed calls, {} missing",
        missing.len()
    );
    // The writer writes each batch as it arrives; only the last group-commit window (10 ms) may be lost.
    for (id, before_kill) in &missing {
        assert!(
            *before_kill < Duration::from_millis(50),
            "{id} completed {before_kill:?} before the kill and is missing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_with_strict_durability_loses_nothing() {
    let (calls, missing) = kill_under_load(true).await;
    println!("strict: {calls} completed calls, {} missing", missing.len());
    assert!(missing.is_empty(), "strict durability lost {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_open_streams_lets_them_finish_and_records_each() {
    let db = TestDb::new().await;
    let journal = tempfile::tempdir().unwrap();
    let jdir = journal.path().to_str().unwrap().to_owned();
    // A slow upstream: 2 × 30 pieces, 15 ms apart ≈ 0.9 s per stream.
    let (mut sim, sim_addr) = spawn(
        &[
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--chunk-interval-ms",
            "15",
            "--chunks",
            "30",
        ],
        "addr",
    );
    let upstream = format!("http://{sim_addr}");
    let (mut child, proxy) = spawn(&serve_args(&db, &jdir, &upstream, &[]), "proxy_addr");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut streams = Vec::new();
    for i in 0..20 {
        let resp = http
            .post(format!("http://{proxy}{COMPAT_PATH}"))
            .body(format!(r#"{{"model":"deepseek-r1","messages":[{{"role":"user","content":"{i}"}}],"stream":true}}"#))
            .send()
            .await
            .unwrap();
        streams.push(tokio::spawn(async move { resp.text().await.unwrap() }));
    }
    let status = tokio::task::spawn_blocking(move || child.sigterm())
        .await
        .unwrap();
    for s in streams {
        assert!(
            s.await.unwrap().ends_with("data: [DONE]\n\n"),
            "each stream finished"
        );
    }
    assert!(status.success(), "exit 0");
    let pool = db.pool().await;
    let ok: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM usage_ledger WHERE status = 'ok' AND usage_source = 'reported'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(ok, 20, "every stream has its row, shipped before exit");
    sim.sigterm();
}

#[tokio::test]
async fn migrate_creates_the_database_and_is_idempotent() {
    let db = TestDb::new().await;
    for _ in 0..2 {
        let out = Command::new(BIN)
            .args(["migrate", "--database-url", &db.url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pool = db.pool().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_ledger")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
}
