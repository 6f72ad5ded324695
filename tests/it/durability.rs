//! The durability promise (DESIGN §10) against the real binary and real Postgres:
//! SIGKILL under load loses nothing outside the group-commit window (nothing at all with
//! `--durability strict`); SIGTERM with open streams gives every stream its row; `migrate` creates the
//! database.

use crate::helpers::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::bin::{Bin, BIN};

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

/// Runs `rounds` rounds of load, each ended by SIGKILL at an arbitrary moment and followed by a restart on
/// the same journal; finally drains with SIGTERM. Returns (completed calls, the missing ones with how long
/// before their round's kill they completed).
async fn kill_under_load(strict: bool, rounds: usize) -> (usize, Vec<(String, Duration)>) {
    let db = TestDb::new().await;
    let journal = tempfile::tempdir().unwrap();
    let jdir = journal.path().to_str().unwrap().to_owned();
    let extra: &[&str] = if strict {
        &["--durability", "strict"]
    } else {
        &[]
    };
    let http = test_client();
    let mut all: Vec<(String, Instant, Instant)> = Vec::new(); // (call id, completed, its round's kill)
    for round in 0..rounds {
        let (mut child, proxy) = spawn(&serve_args(&db, &jdir, "sim", extra), "proxy_addr");
        let completed: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
        let (count_tx, mut count) = tokio::sync::watch::channel(0usize);
        let count_tx = Arc::new(count_tx);
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
                    let body = format!(r#"{{"model":"deepseek-r1","messages":[{{"role":"user","content":"r{round} w{w} i{i}"}}],"stream":{stream}}}"#);
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
        tokio::time::timeout(Duration::from_secs(30), count.wait_for(|n| *n >= target))
            .await
            .expect("the load runs")
            .unwrap();
        // The moment of the signal, taken before it is sent (not after the process is reaped).
        let killed_at = Instant::now();
        child.kill(); // SIGKILL
        for w in workers {
            let _ = w.await;
        }
        let completed = completed.lock().unwrap().clone();
        let last = completed.iter().map(|(_, at)| *at).max().unwrap();
        assert!(
            killed_at.saturating_duration_since(last) < Duration::from_millis(250),
            "round {round}: the kill hit a running load (last call completed {:?} before it)",
            killed_at.saturating_duration_since(last)
        );
        all.extend(completed.into_iter().map(|(id, at)| (id, at, killed_at)));
    }

    // Restart on the same journal: it replays what was not shipped; SIGTERM drains and ships.
    let (mut child, _) = spawn(&serve_args(&db, &jdir, "sim", extra), "proxy_addr");
    assert!(child.sigterm().success());
    assert_no_dead_letters(journal.path());
    let stored = db.call_ids().await;
    let missing = all
        .iter()
        .filter(|(id, _, _)| !stored.contains(id))
        .map(|(id, at, killed_at)| (id.clone(), killed_at.saturating_duration_since(*at)))
        .collect();
    (all.len(), missing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_outside_the_group_commit_window() {
    let rounds = scale(2, 50);
    let (calls, missing) = kill_under_load(false, rounds).await;
    let worst = missing.iter().map(|(_, d)| *d).max().unwrap_or_default();
    println!(
        "RESULT SIGKILL x{rounds} (batched): completed={calls} lost={} worst_lost_completed_before_kill_ms={}",
        missing.len(),
        worst.as_millis()
    );
    // The writer writes what arrived at most its 1 ms linger later (plus its wait for a CPU); only the last
    // group-commit window (10 ms) may be lost.
    for (id, before_kill) in &missing {
        assert!(
            *before_kill < Duration::from_millis(10),
            "{id} completed {before_kill:?} before the kill and is missing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_with_strict_durability_loses_nothing() {
    let rounds = scale(2, 50);
    let (calls, missing) = kill_under_load(true, rounds).await;
    println!(
        "RESULT SIGKILL x{rounds} (strict): completed={calls} lost={}",
        missing.len()
    );
    assert!(missing.is_empty(), "strict durability lost {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_open_streams_finishes_or_cuts_each_at_the_deadline_and_records_all() {
    let streams = scale(100, 500);
    let db = TestDb::new().await;
    let journal = tempfile::tempdir().unwrap();
    let jdir = journal.path().to_str().unwrap().to_owned();
    // A slow upstream: pieces 15 ms apart. Short streams (2 × 40 pieces ≈ 1.2 s) finish within the 4 s drain
    // deadline; long ones (2 × 1000 ≈ 30 s) are cut at it.
    let (mut sim, sim_addr) = spawn(
        &[
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--chunk-interval-ms",
            "15",
        ],
        "addr",
    );
    let upstream = format!("http://{sim_addr}");
    let (mut child, proxy) = spawn(
        &serve_args(&db, &jdir, &upstream, &["--drain-timeout-ms", "4000"]),
        "proxy_addr",
    );
    let http = test_client();
    let mut open = Vec::new();
    // Long streams first, so every short one is still running at the SIGTERM.
    for i in 0..streams {
        let long = i < streams / 2;
        let resp = http
            .post(format!("http://{proxy}{COMPAT_PATH}"))
            .header("x-sim-chunks", if long { "1000" } else { "40" })
            .body(format!(r#"{{"model":"deepseek-r1","messages":[{{"role":"user","content":"{i}"}}],"stream":true}}"#))
            .send()
            .await
            .unwrap();
        let id = call_id(&resp);
        open.push((
            id,
            long,
            tokio::spawn(async move {
                let mut resp = resp;
                let mut body = Vec::new();
                while let Ok(Some(chunk)) = resp.chunk().await {
                    body.extend_from_slice(&chunk);
                }
                body.ends_with(b"data: [DONE]\n\n")
            }),
        ));
    }
    let sigterm_at = Instant::now();
    let status = tokio::task::spawn_blocking(move || child.sigterm())
        .await
        .unwrap();
    let exited_after = sigterm_at.elapsed();
    assert!(status.success(), "exit 0");
    let mut ids = std::collections::HashSet::new();
    let (mut finished, mut cut) = (0, 0);
    for (id, long, done) in open {
        let complete = done.await.unwrap();
        assert_eq!(
            complete, !long,
            "{id}: short streams finish, long ones are cut at the deadline"
        );
        if complete {
            finished += 1
        } else {
            cut += 1
        }
        ids.insert(id);
    }
    let pool = db.pool().await;
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT call_id::text, status FROM usage_ledger")
            .fetch_all(&pool)
            .await
            .unwrap();
    // Every stream has exactly one row, shipped before exit.
    db.audit(&ids, journal.path()).await;
    for (_, status) in &rows {
        assert!(status == "ok" || status == "client_aborted", "{status}");
    }
    let aborted = rows.iter().filter(|(_, s)| s == "client_aborted").count();
    assert_eq!(aborted, cut, "each cut stream is recorded as cut");
    println!(
        "RESULT SIGTERM with {streams} open streams: finished={finished} cut_at_deadline={cut} rows={} exit_after_ms={}",
        rows.len(),
        exited_after.as_millis()
    );
    sim.sigterm();
}

#[tokio::test]
async fn migrate_creates_the_database_and_is_idempotent() {
    let db = TestDb::new().await;
    for _ in 0..2 {
        let out = crate::helpers::bin::output_of(tokio::process::Command::new(BIN).args([
            "migrate",
            "--database-url",
            &db.url,
        ]))
        .await;
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
