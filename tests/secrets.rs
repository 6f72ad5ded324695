//! Keys never leave the door: a canary API key sent through every kind of call, error and fault, and a
//! second canary injected from `DASHSCOPE_API_KEY`, are searched for in the logs (every level), the ledger,
//! the journal files, `/metrics` and `/v1/calls`. Zero hits.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

const BIN: &str = env!("CARGO_BIN_EXE_deepseek-meter");
const CANARY: &str = "sk-canary-7f3a9c1e5b2d4e6f";
const INJECTED: &str = "sk-injected-canary-0a1b2c3d";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_key_appears_nowhere() {
    let db = TestDb::new().await;
    let journal = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "--log-format",
            "json",
            "serve",
            "--upstream",
            "sim",
            "--listen",
            "127.0.0.1:0",
        ])
        .args([
            "--admin-listen",
            "127.0.0.1:0",
            "--database-url",
            &db.url,
            "--idle-timeout-ms",
            "300",
        ])
        .args([
            "--max-body-bytes",
            "4096",
            "--journal-dir",
            journal.path().to_str().unwrap(),
        ])
        .env("METER_LOG", "trace")
        .env("DASHSCOPE_API_KEY", INJECTED)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log: Arc<Mutex<String>> = Arc::default();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (proxy, admin) = loop {
        let line = lines.next().unwrap().unwrap();
        log.lock().unwrap().push_str(&line);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if let (Some(p), Some(a)) = (v["proxy_addr"].as_str(), v["admin_addr"].as_str()) {
            break (p.to_owned(), a.to_owned());
        }
    };
    let reader = {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                log.lock().unwrap().push_str(&line);
            }
        })
    };

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let compat = |stream: bool, usage: bool| {
        let mut v = serde_json::json!({"model": "deepseek-v3.2-exp", "messages": [{"role": "user", "content": "hi"}],
                                       "stream": stream, "enable_thinking": true});
        if usage {
            v["stream_options"] = serde_json::json!({"include_usage": true});
        }
        v.to_string()
    };
    let native = r#"{"model":"deepseek-r1","input":{"messages":[{"role":"user","content":"hi"}]},"parameters":{"incremental_output":true}}"#;
    let mut ids = Vec::new();
    type Call<'a> = (String, String, Vec<(&'a str, &'a str)>);
    let mut calls: Vec<Call> = vec![
        (COMPAT_PATH.into(), compat(false, false), vec![]),
        (COMPAT_PATH.into(), compat(true, false), vec![]),
        (COMPAT_PATH.into(), compat(true, true), vec![]),
        (
            NATIVE_PATH.into(),
            native.into(),
            vec![("x-dashscope-sse", "enable")],
        ),
        (NATIVE_PATH.into(), native.into(), vec![]),
        (COMPAT_PATH.into(), "{broken json".into(), vec![]),
        (
            COMPAT_PATH.into(),
            format!("{{\"model\":\"{}\"}}", "x".repeat(5000)),
            vec![],
        ),
        ("/admin/keys".into(), "{}".into(), vec![]),
        ("/compatible-mode/v1/models".into(), String::new(), vec![]),
    ];
    for fault in [
        "401",
        "429",
        "500",
        "sse-error",
        "moderation",
        "reset",
        "stall",
        "garbage",
    ] {
        calls.push((
            COMPAT_PATH.into(),
            compat(true, false),
            vec![("x-sim-fault", fault)],
        ));
        calls.push((
            NATIVE_PATH.into(),
            native.into(),
            vec![("x-sim-fault", fault), ("x-dashscope-sse", "enable")],
        ));
    }
    for (i, (path, body, headers)) in calls.iter().enumerate() {
        // Every other call relies on the injected key instead of sending one.
        let mut rb = http
            .post(format!("http://{proxy}{path}"))
            .body(body.clone());
        if i % 2 == 0 {
            rb = rb.bearer_auth(CANARY);
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let resp = rb.send().await.unwrap();
        ids.push(call_id(&resp));
        let _ = resp.bytes().await;
    }
    let mut exposed = get_text(&http, &format!("http://{admin}/metrics")).await;
    exposed.push_str(&get_text(&http, &format!("http://{admin}/readyz")).await);

    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(child.wait().unwrap().success());
    reader.join().unwrap();

    // The ledger (through the admin API of a second instance would need it running; read it directly).
    let pool = db.pool().await;
    let rows: Vec<String> = sqlx::query_scalar("SELECT row_to_json(l)::text FROM usage_ledger l")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(
        rows.len() >= 20,
        "the calls were recorded ({} rows)",
        rows.len()
    );
    let mut journal_bytes = Vec::new();
    for e in std::fs::read_dir(journal.path()).unwrap() {
        journal_bytes.extend(std::fs::read(e.unwrap().path()).unwrap_or_default());
    }
    let log = log.lock().unwrap().clone();
    assert!(
        log.len() > 10_000,
        "trace logging ran ({} bytes)",
        log.len()
    );
    for secret in [CANARY, INJECTED, &CANARY[3..], &INJECTED[3..]] {
        assert!(!log.contains(secret), "key in the log");
        assert!(
            !rows.iter().any(|r| r.contains(secret)),
            "key in the ledger"
        );
        assert!(
            !String::from_utf8_lossy(&journal_bytes).contains(secret),
            "key in the journal"
        );
        assert!(!exposed.contains(secret), "key in metrics or readiness");
    }
    // The fingerprints are there instead.
    assert!(
        rows.iter().any(|r| r.contains("sk-…4e6f")) && rows.iter().any(|r| r.contains("sk-…2c3d"))
    );
}
