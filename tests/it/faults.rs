//! The fault suite (issue 4): the durability promise of DESIGN §10 under faults and hostile input, each
//! scenario ending with a ledger audit — every call a client saw has exactly one row, and no other rows.
//!
//! CI runs the short versions. `METER_SOAK=1` (see `bench/soak.sh`) runs the same code at soak scale: a
//! 60 s Postgres outage, thousands of slow clients. Each scenario prints one `RESULT` line with its figures.

use crate::helpers::*;
use deepseek_meter::config::Upstream;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

async fn ready(http: &reqwest::Client, admin: std::net::SocketAddr) -> Value {
    get_json(http, &format!("http://{admin}/readyz")).await
}

/// A call body: both protocols, streaming and not, varied by `i`.
fn varied_call(i: usize) -> (&'static str, String, Vec<(&'static str, &'static str)>) {
    let stream = i.is_multiple_of(2);
    if i.is_multiple_of(3) {
        let body = format!(
            r#"{{"model":"deepseek-r1","input":{{"messages":[{{"role":"user","content":"n{i}"}}]}},"parameters":{{"incremental_output":true}}}}"#
        );
        let headers = if stream {
            vec![("x-dashscope-sse", "enable")]
        } else {
            vec![]
        };
        (NATIVE_PATH, body, headers)
    } else {
        let body = format!(
            r#"{{"model":"deepseek-v3.2-exp","messages":[{{"role":"user","content":"c{i}"}}],"stream":{stream},"enable_thinking":true}}"#
        );
        (COMPAT_PATH, body, vec![])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_under_steady_load_loses_and_duplicates_nothing() {
    let outage = Duration::from_secs(scale(3, 60) as u64);
    let db = TestDb::new().await;
    let pg = FaultProxy::start(pg_addr()).await;
    let journal = tempfile::tempdir().unwrap();
    let app = LedgerApp::start_on(&db, journal.path(), Upstream::Sim, |s| {
        s.ledger.as_mut().unwrap().database_url = pg.url_for(&db.url);
    })
    .await;
    let http = test_client();

    // Steady load: 4 clients, back to back, both protocols, streaming and not.
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let client_errors = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (http, seen, errors, stop) = (
            http.clone(),
            seen.clone(),
            client_errors.clone(),
            stop.clone(),
        );
        let proxy = app.proxy_addr;
        workers.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let (path, body, headers) = varied_call(i);
                i += 4;
                let mut rb = http.post(format!("http://{proxy}{path}")).body(body);
                for (k, v) in headers {
                    rb = rb.header(k, v);
                }
                let resp = rb.send().await.unwrap();
                let id = call_id(&resp);
                let ok = resp.status() == 200;
                if resp.bytes().await.is_err() || !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                seen.lock().unwrap().insert(id);
            }
        }));
    }
    let calls_now = || seen.lock().unwrap().len();
    // Waits until `n` more calls have completed (the load is running), or fails.
    let more_calls = |n: usize| {
        let target = calls_now() + n;
        let seen = seen.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while seen.lock().unwrap().len() < target {
                assert!(Instant::now() < deadline, "the load stalled");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };

    more_calls(50).await; // load has built up
    pg.set_down(true);
    let before_outage = calls_now();
    tokio::time::sleep(outage).await;
    let during = calls_now() - before_outage;
    let r = ready(&http, app.admin_addr).await;
    assert_eq!(
        r["accepting_calls"], true,
        "a database outage keeps serving: {r}"
    );
    assert_eq!(r["database_reachable"], false, "{r}");
    let backlog = r["journal_pending_records"].as_u64().unwrap();
    assert!(
        backlog > 0,
        "calls during the outage wait in the journal: {r}"
    );

    // Back up: the drain time is until everything journaled so far is in Postgres, load still running.
    pg.set_down(false);
    let back = Instant::now();
    tokio::time::timeout(Duration::from_secs(60), app.flush_ledger())
        .await
        .expect("backlog drains after the database returns");
    let drain = back.elapsed();
    more_calls(50).await; // and goes on after the drain
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(30), app.flush_ledger())
        .await
        .expect("flush");

    let ids = seen.lock().unwrap().clone();
    let statuses = db.audit(&ids, journal.path()).await;
    assert!(statuses.values().all(|s| s == "ok"), "every row ok");
    assert_eq!(
        client_errors.load(Ordering::Relaxed),
        0,
        "zero client errors"
    );
    let metrics = get_text(&http, &format!("http://{}/metrics", app.admin_addr)).await;
    assert!(
        metrics.contains("deepseek_meter_ledger_pending_records 0"),
        "the backlog gauge is back to zero: {metrics}"
    );
    println!(
        "RESULT postgres outage {}s: calls={} (during outage {during}) rows={} lost=0 duplicated=0 backlog={backlog} drain_ms={}",
        outage.as_secs(),
        ids.len(),
        statuses.len(),
        drain.as_millis()
    );
    app.shutdown().await;
}

/// Fills a filesystem: writes zeros into `path` until the disk says no.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 4096];
    while f.write_all(&block).and_then(|_| f.sync_all()).is_ok() {}
}

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = crate::helpers::bin::output_blocking(
            std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path()),
        );
        assert!(
            out.status.success(),
            "the disk-full test mounts a tmpfs and needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Ok(mut umount) = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .spawn()
        {
            let _ = crate::helpers::bin::wait_bounded(&mut umount);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_disk_full_refuses_new_calls_and_loses_none() {
    let disk = Tmpfs::mount("1m");
    let jdir = disk.0.path().join("journal");
    let db = TestDb::new().await;
    // An upstream that counts what reaches it.
    let up = ScriptedUpstream::start().await;
    up.answer_always(Script::json(200, captures::COMPAT_R1_JSON));
    let app = LedgerApp::start_on(&db, &jdir, up.upstream(), |_| {}).await;
    let http = test_client();
    let url = format!("http://{}{COMPAT_PATH}", app.proxy_addr);
    let body = r#"{"model":"deepseek-r1","messages":[{"role":"user","content":"hi"}]}"#;
    let mut answered = HashSet::new();
    let (mut refused, mut other) = (0usize, Vec::new());
    let mut call = async |answered: &mut HashSet<String>| {
        let resp = http.post(&url).body(body).send().await.unwrap();
        let id = call_id(&resp);
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        match status {
            200 => {
                answered.insert(id);
            }
            503 if text.contains("MeterJournalFull") => refused += 1,
            _ => other.push((status, text)),
        }
        status
    };
    for _ in 0..10 {
        assert_eq!(call(&mut answered).await, 200);
    }

    // The disk fills up (another process's file): the next record's write fails, is held in memory and
    // retried; meanwhile new calls are refused in the caller's shape, nothing forwarded.
    let filler = disk.0.path().join("filler");
    fill(&filler);
    let full_since = Instant::now();
    let mut refused_seen = false;
    while full_since.elapsed() < Duration::from_secs(2) {
        if call(&mut answered).await == 503 {
            refused_seen = true;
        }
    }
    assert!(
        refused_seen,
        "calls are refused while the journal cannot write"
    );
    let r = ready(&http, app.admin_addr).await;
    assert_eq!(r["journal_writes_failing"], true, "{r}");
    assert_eq!(r["accepting_calls"], false, "{r}");
    let readyz = http
        .get(format!("http://{}/readyz", app.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(
        readyz.status(),
        503,
        "out of rotation while the journal cannot write"
    );
    let segments = std::fs::read_dir(&jdir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".journal"))
        })
        .count();
    assert!(
        segments <= 3,
        "retrying a full disk does not litter the journal with segments ({segments})"
    );

    // Space comes back: held records are written, calls are accepted again.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    loop {
        if ready(&http, app.admin_addr).await["accepting_calls"] == true {
            break;
        }
        assert!(freed.elapsed() < Duration::from_secs(10), "recovers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered_ms = freed.elapsed().as_millis();
    for _ in 0..10 {
        assert_eq!(call(&mut answered).await, 200);
    }
    assert!(
        other.is_empty(),
        "only 200 or 503 MeterJournalFull: {other:?}"
    );
    assert_eq!(
        up.seen.lock().unwrap().len(),
        answered.len(),
        "every answered call forwarded once, no refused call forwarded"
    );
    tokio::time::timeout(Duration::from_secs(30), app.flush_ledger())
        .await
        .expect("flush");
    let statuses = db.audit(&answered, &jdir).await;
    let metrics = get_text(&http, &format!("http://{}/metrics", app.admin_addr)).await;
    assert!(
        metrics.contains(&format!(
            "deepseek_meter_journal_full_refusals_total {refused}"
        )),
        "every refusal counted: {refused}"
    );
    assert!(metrics.contains("deepseek_meter_ledger_pending_records 0"));
    println!(
        "RESULT journal disk full (1 MiB tmpfs): answered={} rows={} refused={refused} lost=0 duplicated=0 accepting_again_ms={recovered_ms}",
        answered.len(),
        statuses.len()
    );
    app.shutdown().await;
}

/// What the client of a faulted call gets: its HTTP status, and either a complete body that contains each
/// of these texts, or a body cut short (the transfer ends in an error).
enum Answer {
    Complete(u16, &'static [&'static str]),
    Exactly(u16, &'static [u8]),
    Cut(u16),
}

/// The client's answer and the row's status for a simulator fault, by protocol and streaming.
fn fault_outcome(fault: &str, native: bool, stream: bool) -> (Answer, &'static str) {
    use Answer::*;
    match (fault, native, stream) {
        // Native streams carry the upstream's error as an SSE event with HTTP 200 (reference §2.4).
        ("401", true, true) => (Complete(200, &["event:error", ":HTTP_STATUS/401", "InvalidApiKey"]), "upstream_error"),
        ("401", true, false) => (Complete(401, &["\"code\":\"InvalidApiKey\""]), "upstream_error"),
        ("401", false, _) => (Complete(401, &["\"code\":\"invalid_api_key\""]), "upstream_error"),
        ("429", true, true) => (Complete(200, &["event:error", ":HTTP_STATUS/429", "Throttling.RateQuota"]), "upstream_error"),
        ("429", true, false) => (Complete(429, &["\"code\":\"Throttling.RateQuota\""]), "upstream_error"),
        ("429", false, _) => (Complete(429, &["\"code\":\"limit_requests\""]), "upstream_error"),
        ("500", true, true) => (Complete(200, &["event:error", ":HTTP_STATUS/500", "InternalError"]), "upstream_error"),
        ("500", true, false) => (Complete(500, &["\"code\":\"InternalError\""]), "upstream_error"),
        ("500", false, _) => (Complete(500, &["\"code\":\"internal_error\""]), "upstream_error"),
        // The simulator frames this fault for streams only; a plain call gets a normal answer.
        ("sse-error", true, true) => (Complete(200, &["event:error", ":HTTP_STATUS/400", "InvalidParameter"]), "upstream_error"),
        ("sse-error", false, true) => (Complete(400, &["data: {\"error\"", "invalid_parameter_error"]), "upstream_error"),
        ("sse-error", true, false) => (Complete(200, &["\"output\"", "\"finish_reason\":\"stop\""]), "ok"),
        ("sse-error", false, false) => (Complete(200, &["\"choices\"", "\"finish_reason\":\"stop\""]), "ok"),
        // Moderation: an error body, or an error event half way through a stream the client got the start of.
        ("moderation", true, true) => (Complete(200, &["event:result", "DataInspectionFailed"]), "upstream_error"),
        ("moderation", true, false) => (Complete(400, &["\"code\":\"DataInspectionFailed\""]), "upstream_error"),
        ("moderation", false, true) => (Complete(200, &["\"choices\"", "data_inspection_failed"]), "upstream_error"),
        ("moderation", false, false) => (Complete(400, &["\"code\":\"data_inspection_failed\""]), "upstream_error"),
        // A reset before the head of a whole body reaches the proxy is our 502; a stream is cut mid-way.
        ("reset", true, false) => (Complete(502, &["\"code\":\"UpstreamUnavailable\""]), "upstream_aborted"),
        ("reset", false, false) => (Complete(502, &["\"code\":\"UpstreamUnavailable\""]), "upstream_aborted"),
        ("reset", _, true) => (Cut(200), "upstream_aborted"),
        // Silence after half the body: the idle timeout cuts it.
        ("stall", _, _) => (Cut(200), "upstream_aborted"),
        // Not the protocol at all: the client gets the bytes as sent. A whole body is read (no usage in it);
        // a stream that never says it is done is an aborted one.
        ("garbage", _, false) => (Exactly(200, "\u{fffd}garbage{\"usage\":".as_bytes()), "ok"),
        ("garbage", _, true) => (
            Exactly(200, b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":{\"prompt_tokens\":\xff\xfe\n\n"),
            "upstream_aborted",
        ),
        other => panic!("no outcome for {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_fault_gives_one_row_and_the_client_an_answer() {
    let t = LedgerApp::start(Upstream::Sim, |s| {
        s.idle_timeout = Duration::from_millis(400);
    })
    .await;
    let mut ids = HashSet::new();
    let mut expected = Vec::new();
    for fault in SIM_FAULTS {
        for (native, stream) in [(false, false), (false, true), (true, false), (true, true)] {
            let (path, body) = if native {
                (
                    NATIVE_PATH,
                    r#"{"model":"deepseek-r1","input":{"messages":[{"role":"user","content":"hi"}]},"parameters":{"incremental_output":true}}"#.to_owned(),
                )
            } else {
                (
                    COMPAT_PATH,
                    format!(
                        r#"{{"model":"deepseek-r1","messages":[{{"role":"user","content":"hi"}}],"stream":{stream}}}"#
                    ),
                )
            };
            let mut rb = t
                .http
                .post(t.url(path))
                .body(body)
                .header("x-sim-fault", fault);
            if native && stream {
                rb = rb.header("x-dashscope-sse", "enable");
            }
            let resp = rb.send().await.unwrap();
            let id = call_id(&resp);
            let status = resp.status().as_u16();
            let got = resp.bytes().await;
            let case = format!("{fault} native={native} stream={stream}");
            let (answer, row) = fault_outcome(fault, native, stream);
            match answer {
                Answer::Complete(want, texts) => {
                    assert_eq!(status, want, "{case}");
                    let got = String::from_utf8_lossy(&got.expect("a complete body")).into_owned();
                    for text in texts {
                        assert!(got.contains(text), "{case}: {text} not in {got}");
                    }
                }
                Answer::Exactly(want, bytes) => {
                    assert_eq!(status, want, "{case}");
                    assert_eq!(&got.expect("a complete body")[..], bytes, "{case}");
                }
                Answer::Cut(want) => {
                    assert_eq!(status, want, "{case}");
                    assert!(got.is_err(), "{case}: the body is cut short");
                }
            }
            expected.push((id.clone(), case, row));
            ids.insert(id);
        }
    }
    // Connection refused: a second sidecar whose upstream port is bound but not listening (held for the
    // whole test, so no other test can take it).
    let (closed, closed_addr) = refusing_port();
    let refused_journal = tempfile::tempdir().unwrap();
    let refused_app = LedgerApp::start_on(
        &t.db,
        refused_journal.path(),
        Upstream::Url(format!("http://{closed_addr}").parse().unwrap()),
        |_| {},
    )
    .await;
    let resp = t
        .http
        .post(format!("http://{}{COMPAT_PATH}", refused_app.proxy_addr))
        .body(r#"{"model":"deepseek-r1","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let id = call_id(&resp);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UpstreamUnavailable");
    assert_eq!(body["request_id"], id.as_str());
    expected.push((id.clone(), "connection refused".into(), "upstream_aborted"));
    ids.insert(id);
    flush(&refused_app).await;
    flush(&t.app).await;
    assert_no_dead_letters(refused_journal.path());

    let statuses = t.db.audit(&ids, t.journal.path()).await;
    for (id, case, want) in &expected {
        assert_eq!(statuses[id], *want, "{case}: row status");
    }
    println!(
        "RESULT upstream faults: calls={} rows={} lost=0 duplicated=0",
        ids.len(),
        statuses.len()
    );
    refused_app.shutdown().await;
    t.app.shutdown().await;
    drop(closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_client_requests_are_forwarded_or_answered_and_metered() {
    let t = LedgerApp::start(Upstream::Sim, |_| {}).await;
    let good = r#"{"model":"deepseek-v3","messages":[{"role":"user","content":"hi"}]}"#;
    let mut ids = HashSet::new();
    // Content-Type missing, odd, or lying: the upstream judges the request; the proxy forwards and meters.
    for ct in [
        None,
        Some("text/plain; charset=gbk"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
    ] {
        let mut rb = t.http.post(t.url(COMPAT_PATH)).body(good);
        if let Some(ct) = ct {
            rb = rb.header("content-type", ct);
        }
        let resp = rb.send().await.unwrap();
        assert_eq!(resp.status(), 200, "content-type {ct:?}");
        ids.insert(call_id(&resp));
        resp.bytes().await.unwrap();
    }
    // A control character in a header value: HTTP clients refuse to send one, so it goes out as raw bytes.
    // It is not HTTP (RFC 9110 §5.5): the server's parser answers 400 itself, nothing reaches the proxy.
    let raw = format!(
        "POST {COMPAT_PATH} HTTP/1.1\r\nhost: x\r\ncontent-type: \u{1}\r\ncontent-length: {}\r\n\r\n{good}",
        good.len()
    );
    let answer = raw_http(t.app.proxy_addr, raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // Invalid JSON and an empty body: forwarded, the upstream's answer metered.
    for body in ["{not json", ""] {
        let resp = t
            .http
            .post(t.url(COMPAT_PATH))
            .body(body)
            .send()
            .await
            .unwrap();
        ids.insert(call_id(&resp));
        assert!(
            resp.status().is_client_error(),
            "{body:?}: {}",
            resp.status()
        );
        resp.bytes().await.unwrap();
    }
    // Other methods on a metered path are forwarded but not metered (no row).
    for method in [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let resp = t
            .http
            .request(method.clone(), t.url(COMPAT_PATH))
            .send()
            .await
            .unwrap();
        assert!(resp.headers().contains_key("x-meter-call-id"), "{method}");
        resp.bytes().await.unwrap();
    }
    flush(&t.app).await;
    let statuses = t.db.audit(&ids, t.journal.path()).await;
    let metrics = get_text(&t.http, &t.admin_url("/metrics")).await;
    assert!(
        metrics.contains("deepseek_meter_forwarded_unmetered_total 3"),
        "{metrics}"
    );
    println!(
        "RESULT odd client requests: metered calls={} rows={}",
        ids.len(),
        statuses.len()
    );
    t.app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_slow_clients_are_cut_and_real_calls_still_served() {
    let slow_clients = scale(1_000, 5_000);
    let t = LedgerApp::start(Upstream::Sim, |s| {
        s.header_read_timeout = Duration::from_millis(1_000);
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..slow_clients {
        slow.push(slow_client(t.app.proxy_addr).await);
    }
    // Real calls go through while every slow client holds its connection.
    let mut ids = HashSet::new();
    let started = Instant::now();
    for i in 0..20 {
        let (path, body, headers) = varied_call(i);
        let mut rb = t.http.post(t.url(path)).body(body);
        for (k, v) in headers {
            rb = rb.header(k, v);
        }
        let resp = rb.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        ids.insert(call_id(&resp));
        resp.bytes().await.unwrap();
    }
    let served_in = started.elapsed();
    for s in slow {
        let held = s.held_for(Duration::from_secs(20)).await;
        assert!(
            held >= Duration::from_millis(1_000),
            "cut at the header timeout, not before: held {held:?}"
        );
    }
    let all_cut_in = started.elapsed();
    flush(&t.app).await;
    let statuses = t.db.audit(&ids, t.journal.path()).await;
    println!(
        "RESULT {slow_clients} slow clients: 20 real calls served in {} ms meanwhile, rows={}, all slow clients cut after {} ms",
        served_in.as_millis(),
        statuses.len(),
        all_cut_in.as_millis()
    );
    t.app.shutdown().await;
}

/// A write that the disk cuts short leaves whole frames and a torn one behind; they are written again when
/// space returns. The journal must not then hold those frames twice (the shipper would count them twice
/// against `pending`, and the gauge operators watch before touching the journal would read low).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cut_short_by_a_full_disk_leaves_no_frame_twice() {
    use deepseek_meter::journal::{self, Durability, Journal, JournalConfig, OnFull};
    let disk = Tmpfs::mount("1m");
    let dir = disk.0.path().join("journal");
    let (journal, writer) = Journal::open(JournalConfig {
        dir: dir.clone(),
        durability: Durability::Batched,
        group_commit: Duration::from_millis(10),
        segment_bytes: 64 << 20,
        max_bytes: 1 << 30,
        on_full: OnFull::Refuse,
    })
    .unwrap();
    // Leave 8 KiB free: a batch bigger than that is written in part, then fails.
    let reserve = disk.0.path().join("reserve");
    std::fs::write(&reserve, vec![0u8; 8 << 10]).unwrap();
    let filler = disk.0.path().join("filler");
    fill(&filler);
    std::fs::remove_file(&reserve).unwrap();
    let n = 200;
    let mut ids = HashSet::new();
    for i in 0..n {
        let r = a_record(i);
        ids.insert(r.call_id);
        journal.append(r);
    }
    let failing_since = Instant::now();
    while journal.backlog().write_failures == 0 {
        assert!(
            failing_since.elapsed() < Duration::from_secs(5),
            "the disk refuses a write"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A few retries against the full disk (the writer retries every 100 ms).
    let retrying_since = Instant::now();
    while journal.backlog().write_failures < 3 {
        assert!(
            retrying_since.elapsed() < Duration::from_secs(5),
            "the writer retries"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::fs::remove_file(&filler).unwrap();
    journal.close();
    drop(journal);
    writer.join().await;

    let frames: Vec<_> = journal::records_on_disk(&dir)
        .unwrap()
        .into_iter()
        .map(|r| r.call_id)
        .collect();
    let distinct: HashSet<_> = frames.iter().copied().collect();
    assert_eq!(distinct, ids, "every record journaled");
    assert_eq!(frames.len(), n, "no record journaled twice");
}
