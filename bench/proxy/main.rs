//! The proxy against the physical floor (issue 5). One run, on loopback, measures three targets in
//! alternation — `direct` (the mock upstream itself), `floor` (the zero-logic hyper proxy of `floor.rs`) and
//! `sidecar` (the release `deepseek-meter serve`, ledger into a fresh Postgres database, metrics on, default
//! logging) — each in its own process, so each one's CPU time per call comes from `/proc`.
//!
//! - W1 overhead: wrk, 1 connection, non-streaming; p50/p99 and the latency each proxy adds to direct.
//! - W2 throughput: wrk, 32 connections; calls/s, CPU-µs per call; then an open-loop rising rate (our own
//!   generator, latency from each call's scheduled start, so a stall is not hidden) for the highest rate whose
//!   p99 ≤ 1 ms.
//! - W3 streaming fidelity: 64 events 20 ms apart, 16 concurrent streams; time to first byte, each event's
//!   delay from the mock's send time, inter-event gaps, coalesced or lost events.
//! - W4 capacity: 250 → 2,000 concurrent streams (64 events 50 ms apart) through the sidecar; errors, lost
//!   events, RSS idle / peak / 5 s and 15 s after.
//! - W5 ledger: rows/s into Postgres while W2 runs against the sidecar, and the ledger lag
//!   (`recorded_at − finished_at`) p50/p99. Ingest capacity is `cargo bench --bench ledger`.
//!
//! Run: `bash bench/run.sh` (or `cargo bench --bench proxy`; needs `wrk` and Postgres on 127.0.0.1:5432).
//! `BENCH_REPS` (default 5) sets the alternations; `BENCH_ONLY=w1,open,w3,w4` runs some workloads;
//! `BENCH_SIDECAR_ARGS` adds `serve` flags (e.g. `--group-commit-ms 1000`); `BENCH_SIDECAR_BIN` runs another
//! build of the sidecar (an A/B against an older commit's release binary). Writes
//! `bench/results/proxy.json` and `proxy.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: fail loudly

mod floor;
mod mock;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read as _, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PATH: &str = "/compatible-mode/v1/chat/completions";
const CALL: &str = r#"{"model":"deepseek-v3.2-exp","messages":[{"role":"user","content":"你是谁"}],"enable_thinking":true}"#;
const STREAM_CALL: &str = r#"{"model":"deepseek-v3.2-exp","messages":[{"role":"user","content":"你是谁"}],"stream":true}"#;
const PG: &str = "postgres://postgres@127.0.0.1:5432";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("mock") => role(|l| Box::pin(mock::serve(l))),
        Some("floor") => {
            let upstream: SocketAddr = args[2].parse().unwrap();
            role(move |l| Box::pin(floor::serve(l, upstream)))
        }
        _ => drive(),
    }
}

type Serve = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// A child role: serve on an ephemeral port, print it, exit when stdin closes (the driver went away).
fn role(serve: impl FnOnce(tokio::net::TcpListener) -> Serve) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    println!("{}", listener.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    rt.block_on(serve(listener));
}

struct Proc {
    child: Child,
    addr: SocketAddr,
}

impl Proc {
    fn role(args: &[&str]) -> Proc {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        Proc {
            addr: line.trim().parse().unwrap(),
            child,
        }
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| {
        rest.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (field(11) + field(12)) / ticks
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    pct(&v, 0.5)
}

#[derive(Clone, Copy, PartialEq)]
enum Target {
    Direct,
    Floor,
    Sidecar,
}

impl Target {
    const ALL: [Target; 3] = [Target::Direct, Target::Floor, Target::Sidecar];
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Floor => "floor",
            Target::Sidecar => "sidecar",
        }
    }
}

struct Rig {
    mock: Proc,
    floor: Proc,
    sidecar: Child,
    sidecar_addr: SocketAddr,
    admin_addr: SocketAddr,
    db_name: String,
    _journal: tempfile::TempDir,
}

impl Rig {
    fn addr(&self, t: Target) -> SocketAddr {
        match t {
            Target::Direct => self.mock.addr,
            Target::Floor => self.floor.addr,
            Target::Sidecar => self.sidecar_addr,
        }
    }
    /// The process whose CPU a call through `t` costs (the proxy's; direct has none).
    fn proxy_pid(&self, t: Target) -> Option<u32> {
        match t {
            Target::Direct => None,
            Target::Floor => Some(self.floor.pid()),
            Target::Sidecar => Some(self.sidecar.id()),
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.sidecar.id().to_string()])
            .status();
        let _ = self.sidecar.wait();
        let _ = Command::new("psql")
            .args([
                &format!("{PG}/postgres"),
                "-qc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db_name),
            ])
            .status();
    }
}

fn start_rig() -> Rig {
    let mock = Proc::role(&["mock"]);
    let floor = Proc::role(&["floor", &mock.addr.to_string()]);
    let journal = tempfile::tempdir().unwrap();
    let db_name = format!("dm_bench_{}", uuid::Uuid::now_v7().simple());
    let (listen, admin) = (free_port(), free_port());
    let log = std::fs::File::create(journal.path().join("sidecar.log")).unwrap();
    // BENCH_SIDECAR_ARGS: more `serve` flags, e.g. "--group-commit-ms 1000" or a --database-url of its own.
    let extra: Vec<String> = std::env::var("BENCH_SIDECAR_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    // BENCH_SIDECAR_BIN: another build of the sidecar (an A/B against an older commit's release binary).
    let bin = std::env::var("BENCH_SIDECAR_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_deepseek-meter").to_owned());
    let sidecar = Command::new(bin)
        .args(["serve", "--upstream", &format!("http://{}", mock.addr)])
        .args([
            "--listen",
            &listen.to_string(),
            "--admin-listen",
            &admin.to_string(),
        ])
        .args(if extra.iter().any(|a| a == "--database-url") {
            vec![]
        } else {
            vec!["--database-url".to_owned(), format!("{PG}/{db_name}")]
        })
        .arg("--journal-dir")
        .arg(journal.path().join("journal"))
        .args(&extra)
        .env_remove("DASHSCOPE_API_KEY")
        .stderr(log)
        .spawn()
        .unwrap();
    let rig = Rig {
        mock,
        floor,
        sidecar,
        sidecar_addr: listen,
        admin_addr: admin,
        db_name,
        _journal: journal,
    };
    for _ in 0..200 {
        if std::net::TcpStream::connect(rig.admin_addr).is_ok() {
            return rig;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("sidecar did not start");
}

fn http_client() -> Client<HttpConnector, Full<Bytes>> {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build(c)
}

fn request(
    addr: SocketAddr,
    body: &'static str,
    headers: &[(&str, &str)],
) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::post(format!("http://{addr}{PATH}"))
        .header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

// ---- wrk ----------------------------------------------------------------------------------------------

struct WrkRun {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    calls: f64,
    proxy_cpu_us_per_call: Option<f64>,
    /// CPU seconds per wall second used by wrk, the mock and the proxy (to flag what bounds the run).
    cpu_cores: [(String, f64); 3],
}

fn wrk(rig: &Rig, t: Target, conns: u32, secs: u32) -> WrkRun {
    let script = std::env::temp_dir().join("deepseek-meter-bench-post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{CALL}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
        ),
    )
    .unwrap();
    let proxy = rig.proxy_pid(t);
    let (proxy0, mock0) = (proxy.map(cpu_seconds), cpu_seconds(rig.mock.pid()));
    let started = Instant::now();
    let threads = conns.min(2);
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "wrk -t{threads} -c{conns} -d{secs}s --latency -s {} http://{}{PATH} && times",
            script.display(),
            rig.addr(t)
        ))
        .output()
        .expect("wrk (apt-get install wrk)");
    let wall = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk failed: {text}");
    let dur = |s: &str| -> f64 {
        let (num, unit) = s.split_at(s.find(|c: char| c.is_alphabetic()).unwrap_or(s.len()));
        let n: f64 = num.parse().unwrap_or(f64::NAN);
        match unit {
            "us" => n,
            "ms" => n * 1e3,
            "s" => n * 1e6,
            _ => f64::NAN,
        }
    };
    let line_val = |prefix: &str| -> Option<String> {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
    };
    let rps: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let calls: f64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .map(|l| {
            l.split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum();
    // `times`: the shell's own line, then its children's (wrk): "0m1.234s 0m0.567s".
    let wrk_cpu: f64 = text
        .lines()
        .last()
        .map(|l| {
            l.split_whitespace()
                .map(|t| {
                    let (m, s) = t
                        .trim_end_matches('s')
                        .split_once('m')
                        .unwrap_or(("0", "0"));
                    m.parse::<f64>().unwrap_or(0.0) * 60.0 + s.parse::<f64>().unwrap_or(0.0)
                })
                .sum()
        })
        .unwrap_or(0.0);
    let proxy_cpu = proxy.map(|p| cpu_seconds(p) - proxy0.unwrap_or(0.0));
    let mock_cpu = cpu_seconds(rig.mock.pid()) - mock0;
    WrkRun {
        rps,
        p50_us: dur(&line_val("50%").unwrap_or_default()),
        p99_us: dur(&line_val("99%").unwrap_or_default()),
        errors,
        calls,
        proxy_cpu_us_per_call: proxy_cpu.map(|c| c * 1e6 / calls.max(1.0)),
        cpu_cores: [
            ("wrk".into(), wrk_cpu / wall),
            ("mock".into(), mock_cpu / wall),
            (t.name().into(), proxy_cpu.unwrap_or(0.0) / wall),
        ],
    }
}

/// What bounds a run: the machine's two cores, or one process's share of them.
fn bound(run: &WrkRun) -> String {
    let total: f64 = run.cpu_cores.iter().map(|(_, c)| c).sum();
    let top = run
        .cpu_cores
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    let parts: Vec<String> = run
        .cpu_cores
        .iter()
        .map(|(n, c)| format!("{n} {c:.2}"))
        .collect();
    if total >= 1.8 {
        format!(
            "CPU-bound: 2 cores saturated ({}); largest: {}",
            parts.join(", "),
            top.0
        )
    } else {
        format!("cores used: {}", parts.join(", "))
    }
}

// ---- open loop ----------------------------------------------------------------------------------------

/// Calls at a fixed rate for `secs`, each timed from its scheduled start; returns (p50 µs, p99 µs, errors).
/// The pacing is a thread of its own sleeping to each due time (tokio's timer ticks in whole milliseconds,
/// which would add up to 1 ms to every call); a call starts when the pacer hands it over, and a pacer or
/// runtime running late shows up in the latency instead of hiding it.
async fn open_loop(addr: SocketAddr, rate: f64, secs: f64) -> (f64, f64, usize) {
    let client = http_client();
    // The first 250 ms at the step's rate are not timed: each step starts with fresh connections.
    let warm = (rate * 0.25) as usize;
    let total = warm + (rate * secs) as usize;
    let lat = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (tx, mut due_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let start = Instant::now() + Duration::from_millis(10);
    let pacer = std::thread::spawn(move || {
        for k in 0..total {
            let due = start + Duration::from_secs_f64(k as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if tx.send(due).is_err() {
                return;
            }
        }
    });
    let mut tasks = Vec::with_capacity(total);
    let mut k = 0usize;
    while let Some(scheduled) = due_rx.recv().await {
        let timed = k >= warm;
        k += 1;
        let (client, lat, errors) = (client.clone(), lat.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let ok = match client.request(request(addr, CALL, &[])).await {
                Ok(r) => r.status() == 200 && r.into_body().collect().await.is_ok(),
                Err(_) => false,
            };
            if !ok {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let us = scheduled.elapsed().as_secs_f64() * 1e6;
            if !timed {
                return;
            }
            if us > 20_000.0 && std::env::var_os("BENCH_DEBUG").is_some() {
                eprintln!(
                    "slow call: due at +{:?}, took {us:.0} µs",
                    scheduled - start
                );
            }
            lat.lock().unwrap().push(us);
        }));
    }
    pacer.join().unwrap();
    for t in tasks {
        let _ = t.await;
    }
    let mut l = lat.lock().unwrap().clone();
    l.sort_by(f64::total_cmp);
    (
        pct(&l, 0.5),
        pct(&l, 0.99),
        errors.load(std::sync::atomic::Ordering::Relaxed),
    )
}

// ---- streams ------------------------------------------------------------------------------------------

#[derive(Default)]
struct StreamStats {
    ttfb_us: Vec<f64>,
    /// Each event: receive time minus the mock's send time.
    delay_us: Vec<f64>,
    /// Each gap between consecutive events, minus the nominal interval.
    gap_excess_us: Vec<f64>,
    events: usize,
    coalesced_frames: usize,
    lost: usize,
    errors: usize,
}

/// One stream of `chunks` events `interval_ms` apart, read frame by frame with a timestamp on each.
async fn one_stream(
    client: Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    chunks: usize,
    interval_ms: u64,
    stats: Arc<Mutex<StreamStats>>,
) {
    let (c, i) = (chunks.to_string(), interval_ms.to_string());
    let req = request(
        addr,
        STREAM_CALL,
        &[
            ("x-mock-chunks", c.as_str()),
            ("x-mock-interval-ms", i.as_str()),
        ],
    );
    let sent = Instant::now();
    let Ok(resp) = client.request(req).await else {
        stats.lock().unwrap().errors += 1;
        return;
    };
    let mut body = resp.into_body();
    let (mut ttfb, mut delays, mut gaps) = (None, Vec::new(), Vec::new());
    let (mut events, mut coalesced, mut last) = (0usize, 0usize, None::<Instant>);
    let mut failed = false;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            failed = true;
            break;
        };
        let now = Instant::now();
        let wall = mock::now_nanos();
        let Ok(data) = frame.into_data() else {
            continue;
        };
        ttfb.get_or_insert(now - sent);
        let stamps: Vec<u128> = memchr::memmem::find_iter(&data, b"\"content\":\"t")
            .filter_map(|p| {
                let s = &data[p + 12..];
                let end = s.iter().position(|b| !b.is_ascii_digit())?;
                std::str::from_utf8(&s[..end]).ok()?.parse().ok()
            })
            .collect();
        if stamps.len() > 1 {
            coalesced += 1;
        }
        for s in &stamps {
            delays.push(wall.saturating_sub(*s) as f64 / 1e3);
            if let Some(prev) = last {
                gaps.push((now - prev).as_secs_f64() * 1e6 - interval_ms as f64 * 1e3);
            }
            last = Some(now);
            events += 1;
        }
    }
    let mut s = stats.lock().unwrap();
    if failed {
        s.errors += 1;
    }
    if let Some(t) = ttfb {
        s.ttfb_us.push(t.as_secs_f64() * 1e6);
    }
    s.delay_us.extend(delays);
    s.gap_excess_us.extend(gaps);
    s.events += events;
    s.coalesced_frames += coalesced;
    s.lost += chunks.saturating_sub(events);
}

/// `n` streams at once (opened over `ramp`); samples `rss_pid` while they run. Returns stats and peak RSS.
async fn streams(
    addr: SocketAddr,
    n: usize,
    chunks: usize,
    interval_ms: u64,
    ramp: Duration,
    rss_pid: Option<u32>,
) -> (StreamStats, f64) {
    let client = http_client();
    let stats = Arc::new(Mutex::new(StreamStats::default()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = rss_pid.map(|pid| {
        let done = done.clone();
        tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_mb(pid));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        })
    });
    let mut tasks = Vec::new();
    for _ in 0..n {
        tasks.push(tokio::spawn(one_stream(
            client.clone(),
            addr,
            chunks,
            interval_ms,
            stats.clone(),
        )));
        if !ramp.is_zero() {
            tokio::time::sleep(ramp / n as u32).await;
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = match sampler {
        Some(s) => s.await.unwrap(),
        None => 0.0,
    };
    let s = std::mem::take(&mut *stats.lock().unwrap());
    (s, peak)
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

// ---- the run ------------------------------------------------------------------------------------------

async fn metric(http: &reqwest::Client, admin: SocketAddr, name: &str) -> f64 {
    let text = http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn drive() {
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    // BENCH_ONLY=w1,w3,... runs some workloads (w1 and w2 run together, with w5; `open` is the open loop).
    let only = std::env::var("BENCH_ONLY").ok();
    let run = |w: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|x| x == w || (w == "w1" && x == "w2")))
    };
    let rig = start_rig();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut out = json!({});
    let mut md = String::new();

    // Warm up every path (connection pools, the database, the first ledger batch).
    for t in Target::ALL {
        wrk(&rig, t, 4, 1);
    }
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss = rss_mb(rig.sidecar.id());

    // W1 + W2, alternating targets in every repetition.
    let mut w1: Vec<Vec<WrkRun>> = (0..3).map(|_| Vec::new()).collect();
    let mut w2: Vec<Vec<WrkRun>> = (0..3).map(|_| Vec::new()).collect();
    let mut w5_rate = Vec::new();
    let w2_from = chrono::Utc::now();
    for rep in 0..if run("w1") { reps } else { 0 } {
        for k in 0..3 {
            let ti = (k + rep) % 3;
            let t = Target::ALL[ti];
            eprintln!("rep {rep}: W1 {}", t.name());
            w1[ti].push(wrk(&rig, t, 1, 3));
            let written0 = rt.block_on(metric(
                &http,
                rig.admin_addr,
                "deepseek_meter_ledger_written_total",
            ));
            let t0 = Instant::now();
            eprintln!("rep {rep}: W2 {}", t.name());
            w2[ti].push(wrk(&rig, t, 32, 4));
            if t == Target::Sidecar {
                let written = rt.block_on(metric(
                    &http,
                    rig.admin_addr,
                    "deepseek_meter_ledger_written_total",
                ));
                w5_rate.push((written - written0) / t0.elapsed().as_secs_f64());
            }
        }
    }
    let w2_to = chrono::Utc::now();

    let med = |runs: &[WrkRun], f: &dyn Fn(&WrkRun) -> f64| median(runs.iter().map(f).collect());
    let bounds = |runs: &[Vec<WrkRun>]| -> Vec<String> {
        runs.iter().filter_map(|r| r.last().map(bound)).collect()
    };
    let (d1, f1, s1) = (&w1[0], &w1[1], &w1[2]);
    let added = |runs: &[WrkRun], f: &dyn Fn(&WrkRun) -> f64| {
        // Paired by repetition: each proxy run against the direct run of the same repetition.
        median(runs.iter().zip(d1).map(|(r, d)| f(r) - f(d)).collect())
    };
    let w1_json = json!({
        "direct": {"p50_us": med(d1, &|r| r.p50_us), "p99_us": med(d1, &|r| r.p99_us)},
        "floor": {"p50_us": med(f1, &|r| r.p50_us), "p99_us": med(f1, &|r| r.p99_us),
                  "added_p50_us": added(f1, &|r| r.p50_us), "added_p99_us": added(f1, &|r| r.p99_us),
                  "cpu_us_per_call": med(f1, &|r| r.proxy_cpu_us_per_call.unwrap_or(f64::NAN))},
        "sidecar": {"p50_us": med(s1, &|r| r.p50_us), "p99_us": med(s1, &|r| r.p99_us),
                  "added_p50_us": added(s1, &|r| r.p50_us), "added_p99_us": added(s1, &|r| r.p99_us),
                  "cpu_us_per_call": med(s1, &|r| r.proxy_cpu_us_per_call.unwrap_or(f64::NAN))},
        "errors": w1.iter().flatten().map(|r| r.errors).sum::<u64>(),
        "bound": bounds(&w1),
    });
    let (d2, f2, s2) = (&w2[0], &w2[1], &w2[2]);
    let w2_json = json!({
        "direct": {"rps": med(d2, &|r| r.rps), "p99_us": med(d2, &|r| r.p99_us)},
        "floor": {"rps": med(f2, &|r| r.rps), "p99_us": med(f2, &|r| r.p99_us),
                  "cpu_us_per_call": med(f2, &|r| r.proxy_cpu_us_per_call.unwrap_or(f64::NAN))},
        "sidecar": {"rps": med(s2, &|r| r.rps), "p99_us": med(s2, &|r| r.p99_us),
                  "cpu_us_per_call": med(s2, &|r| r.proxy_cpu_us_per_call.unwrap_or(f64::NAN))},
        "errors": w2.iter().flatten().map(|r| r.errors).sum::<u64>(),
        "calls": w2.iter().flatten().map(|r| r.calls).sum::<f64>(),
        "bound": bounds(&w2),
    });
    out["w1"] = w1_json.clone();
    out["w2"] = w2_json.clone();

    // W5: ledger rows/s during the sidecar's W2 runs, and the lag of those rows (in the bench's own database).
    let own_database =
        !std::env::var("BENCH_SIDECAR_ARGS").is_ok_and(|a| a.contains("--database-url"));
    rt.block_on(async {
        if !run("w1") || !own_database {
            return;
        }
        // Everything shipped: the pending gauge back to zero.
        for _ in 0..600 {
            if metric(&http, rig.admin_addr, "deepseek_meter_ledger_pending_records").await == 0.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pool = sqlx::PgPool::connect(&format!("{PG}/{}", rig.db_name)).await.unwrap();
        let (rows, p50, p99, max): (i64, f64, f64, f64) = sqlx::query_as(
            "SELECT count(*), \
               coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM recorded_at - finished_at)), 0)::float8 * 1000, \
               coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM recorded_at - finished_at)), 0)::float8 * 1000, \
               coalesce(max(extract(epoch FROM recorded_at - finished_at)), 0)::float8 * 1000 \
             FROM usage_ledger WHERE finished_at BETWEEN $1 AND $2",
        )
        .bind(w2_from)
        .bind(w2_to)
        .fetch_one(&pool)
        .await
        .unwrap();
        out["w5"] = json!({
            "rows_per_s_during_w2": median(w5_rate.clone()),
            "rows_in_window": rows,
            "lag_p50_ms": p50, "lag_p99_ms": p99, "lag_max_ms": max,
        });
    });

    // W2, open loop: rising rate until p99 passes 5 ms; the highest rate with p99 ≤ 1 ms.
    let rates = [
        250.0, 500.0, 1000.0, 1500.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 8000.0,
    ];
    let mut open = json!({});
    for t in Target::ALL.into_iter().filter(|_| run("open")) {
        let mut best = 0.0;
        let mut steps = Vec::new();
        for &rate in &rates {
            let (p50, p99, errors) = rt.block_on(open_loop(rig.addr(t), rate, 2.0));
            eprintln!(
                "open loop {} {rate}/s: p50 {p50:.0} µs p99 {p99:.0} µs errors {errors}",
                t.name()
            );
            steps.push(json!({"rate": rate, "p50_us": p50, "p99_us": p99, "errors": errors}));
            if p99 <= 1000.0 && errors == 0 {
                best = rate;
            }
            if p99 > 5000.0 || errors > 0 {
                break;
            }
        }
        open[t.name()] = json!({"max_rate_p99_le_1ms": best, "steps": steps});
    }
    out["w2_open_loop"] = open.clone();

    // W3: 16 concurrent streams of 64 events 20 ms apart, alternating targets.
    let mut w3: Vec<StreamStats> = (0..3).map(|_| StreamStats::default()).collect();
    for rep in 0..if run("w3") { reps.min(3) } else { 0 } {
        for k in 0..3 {
            let ti = (k + rep) % 3;
            let (s, _) = rt.block_on(streams(
                rig.addr(Target::ALL[ti]),
                16,
                64,
                20,
                Duration::from_millis(320),
                None,
            ));
            let a = &mut w3[ti];
            a.ttfb_us.extend(s.ttfb_us);
            a.delay_us.extend(s.delay_us);
            a.gap_excess_us.extend(s.gap_excess_us);
            a.events += s.events;
            a.coalesced_frames += s.coalesced_frames;
            a.lost += s.lost;
            a.errors += s.errors;
        }
    }
    let mut w3_json = json!({});
    for (ti, t) in Target::ALL.iter().enumerate() {
        let s = &w3[ti];
        let (ttfb, delay, gap) = (
            sorted(s.ttfb_us.clone()),
            sorted(s.delay_us.clone()),
            sorted(s.gap_excess_us.clone()),
        );
        w3_json[t.name()] = json!({
            "ttfb_p50_us": pct(&ttfb, 0.5), "ttfb_p99_us": pct(&ttfb, 0.99),
            "event_delay_p50_us": pct(&delay, 0.5), "event_delay_p99_us": pct(&delay, 0.99),
            "gap_excess_p99_us": pct(&gap, 0.99),
            "events": s.events, "coalesced_frames": s.coalesced_frames, "lost": s.lost, "errors": s.errors,
        });
    }
    out["w3"] = w3_json.clone();

    // W4: concurrent realistic streams through the sidecar, with its RSS.
    let mut w4 = Vec::new();
    for n in [250usize, 500, 1000, 2000]
        .into_iter()
        .filter(|_| run("w4"))
    {
        let started = Instant::now();
        let (s, peak) = rt.block_on(streams(
            rig.sidecar_addr,
            n,
            64,
            50,
            Duration::from_millis(1000),
            Some(rig.sidecar.id()),
        ));
        let delay = sorted(s.delay_us.clone());
        eprintln!(
            "W4 {n}: peak RSS {peak:.1} MB, lost {}, errors {}",
            s.lost, s.errors
        );
        w4.push(json!({
            "streams": n, "events": s.events, "lost": s.lost, "errors": s.errors,
            "coalesced_frames": s.coalesced_frames,
            "event_delay_p99_us": pct(&delay, 0.99),
            "peak_rss_mb": peak, "wall_s": started.elapsed().as_secs_f64(),
        }));
    }
    let fds_at_end = open_fds(rig.sidecar.id());
    std::thread::sleep(Duration::from_secs(5));
    let after_rss = rss_mb(rig.sidecar.id());
    let fds_after = open_fds(rig.sidecar.id());
    // The allocator gives memory back on a decay of about 10 s.
    std::thread::sleep(Duration::from_secs(10));
    let after_rss_15s = rss_mb(rig.sidecar.id());
    eprintln!("W4 after: {fds_at_end} open fds at the end, {fds_after} 5 s later; RSS {after_rss:.1} MB after 5 s, {after_rss_15s:.1} MB after 15 s");
    out["w4"] = json!({"idle_rss_mb": idle_rss, "levels": w4, "after_5s_rss_mb": after_rss,
                       "after_15s_rss_mb": after_rss_15s, "open_fds_at_end": fds_at_end, "open_fds_after_5s": fds_after});

    out["machine"] = json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().lines()
            .find_map(|l| l.strip_prefix("model name")).map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned()),
        "reps": reps,
        "date": chrono::Utc::now().to_rfc3339(),
    });

    // The markdown table.
    let f = |v: &Value| v.as_f64().map_or("—".into(), |x| format!("{x:.0}"));
    let ratio = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}×", a / b),
        _ => "—".into(),
    };
    let (w1j, w2j) = (&out["w1"], &out["w2"]);
    md.push_str("| workload | measure | direct | floor | sidecar | sidecar / floor | target |\n|---|---|---:|---:|---:|---:|---|\n");
    md.push_str(&format!(
        "| W1 1 client | p50 / p99 latency (µs) | {} / {} | {} / {} | {} / {} | | |\n",
        f(&w1j["direct"]["p50_us"]),
        f(&w1j["direct"]["p99_us"]),
        f(&w1j["floor"]["p50_us"]),
        f(&w1j["floor"]["p99_us"]),
        f(&w1j["sidecar"]["p50_us"]),
        f(&w1j["sidecar"]["p99_us"])
    ));
    md.push_str(&format!(
        "| W1 1 client | added p50 (µs) | | {} | {} | {} | ≤ 150 µs, ≤ 2× floor |\n",
        f(&w1j["floor"]["added_p50_us"]),
        f(&w1j["sidecar"]["added_p50_us"]),
        ratio(
            &w1j["sidecar"]["added_p50_us"],
            &w1j["floor"]["added_p50_us"]
        )
    ));
    md.push_str(&format!(
        "| W1 1 client | added p99 (µs) | | {} | {} | {} | ≤ 500 µs |\n",
        f(&w1j["floor"]["added_p99_us"]),
        f(&w1j["sidecar"]["added_p99_us"]),
        ratio(
            &w1j["sidecar"]["added_p99_us"],
            &w1j["floor"]["added_p99_us"]
        )
    ));
    md.push_str(&format!(
        "| W1 1 client | proxy CPU per call (µs) | | {} | {} | {} | |\n",
        f(&w1j["floor"]["cpu_us_per_call"]),
        f(&w1j["sidecar"]["cpu_us_per_call"]),
        ratio(
            &w1j["sidecar"]["cpu_us_per_call"],
            &w1j["floor"]["cpu_us_per_call"]
        )
    ));
    md.push_str(&format!(
        "| W2 32 clients | calls/s | {} | {} | {} | {} | ≥ 0.6× floor |\n",
        f(&w2j["direct"]["rps"]),
        f(&w2j["floor"]["rps"]),
        f(&w2j["sidecar"]["rps"]),
        ratio(&w2j["sidecar"]["rps"], &w2j["floor"]["rps"])
    ));
    md.push_str(&format!(
        "| W2 32 clients | proxy CPU per call (µs) | | {} | {} | {} | ≤ 2× floor |\n",
        f(&w2j["floor"]["cpu_us_per_call"]),
        f(&w2j["sidecar"]["cpu_us_per_call"]),
        ratio(
            &w2j["sidecar"]["cpu_us_per_call"],
            &w2j["floor"]["cpu_us_per_call"]
        )
    ));
    md.push_str(&format!(
        "| W2 open loop | highest rate with p99 ≤ 1 ms (calls/s) | {} | {} | {} | {} | |\n",
        f(&open["direct"]["max_rate_p99_le_1ms"]),
        f(&open["floor"]["max_rate_p99_le_1ms"]),
        f(&open["sidecar"]["max_rate_p99_le_1ms"]),
        ratio(
            &open["sidecar"]["max_rate_p99_le_1ms"],
            &open["floor"]["max_rate_p99_le_1ms"]
        )
    ));
    md.push_str(&format!("| W3 64 × 20 ms | time to first byte p50 / p99 (µs) | {} / {} | {} / {} | {} / {} | | p99 ≤ floor + 200 µs |\n",
        f(&w3_json["direct"]["ttfb_p50_us"]), f(&w3_json["direct"]["ttfb_p99_us"]),
        f(&w3_json["floor"]["ttfb_p50_us"]), f(&w3_json["floor"]["ttfb_p99_us"]),
        f(&w3_json["sidecar"]["ttfb_p50_us"]), f(&w3_json["sidecar"]["ttfb_p99_us"])));
    md.push_str(&format!("| W3 64 × 20 ms | event delay p50 / p99 (µs, mock send → client) | {} / {} | {} / {} | {} / {} | | added p99 ≤ 250 µs |\n",
        f(&w3_json["direct"]["event_delay_p50_us"]), f(&w3_json["direct"]["event_delay_p99_us"]),
        f(&w3_json["floor"]["event_delay_p50_us"]), f(&w3_json["floor"]["event_delay_p99_us"]),
        f(&w3_json["sidecar"]["event_delay_p50_us"]), f(&w3_json["sidecar"]["event_delay_p99_us"])));
    md.push_str(&format!(
        "| W3 64 × 20 ms | gap beyond 20 ms, p99 (µs) | {} | {} | {} | | |\n",
        f(&w3_json["direct"]["gap_excess_p99_us"]),
        f(&w3_json["floor"]["gap_excess_p99_us"]),
        f(&w3_json["sidecar"]["gap_excess_p99_us"])
    ));
    md.push_str(&format!("| W3 64 × 20 ms | events / coalesced / lost | {} / {} / {} | {} / {} / {} | {} / {} / {} | | 0 coalesced, 0 lost |\n",
        w3_json["direct"]["events"], w3_json["direct"]["coalesced_frames"], w3_json["direct"]["lost"],
        w3_json["floor"]["events"], w3_json["floor"]["coalesced_frames"], w3_json["floor"]["lost"],
        w3_json["sidecar"]["events"], w3_json["sidecar"]["coalesced_frames"], w3_json["sidecar"]["lost"]));
    for l in out["w4"]["levels"].as_array().unwrap() {
        md.push_str(&format!("| W4 {} streams | peak RSS (MB) / errors / lost events | | | {:.1} / {} / {} | | ≤ 150 MB at 2,000; 0 errors |\n",
            l["streams"], l["peak_rss_mb"].as_f64().unwrap_or(0.0), l["errors"], l["lost"]));
    }
    md.push_str(&format!(
        "| W4 | RSS idle / 5 s after / 15 s after (MB) | | | {idle_rss:.1} / {after_rss:.1} / {after_rss_15s:.1} | | idle ≤ 30 MB, back near idle |\n"
    ));
    md.push_str(&format!("| W5 during W2 | ledger rows/s; lag p50 / p99 (ms) | | | {} ; {:.1} / {:.1} | | ingest ≥ 20,000 rows/s (`--bench ledger`) |\n",
        f(&out["w5"]["rows_per_s_during_w2"]), out["w5"]["lag_p50_ms"].as_f64().unwrap_or(0.0),
        out["w5"]["lag_p99_ms"].as_f64().unwrap_or(0.0)));
    // The open loop step by step: p50 / p99 (µs) per offered rate.
    if run("open") {
        md.push_str("\n| open loop, calls/s | direct p50 / p99 (µs) | floor p50 / p99 (µs) | sidecar p50 / p99 (µs) |\n|---:|---:|---:|---:|\n");
        for rate in rates {
            let cell = |t: Target| {
                open[t.name()]["steps"]
                    .as_array()
                    .and_then(|steps| steps.iter().find(|s| s["rate"].as_f64() == Some(rate)))
                    .map_or("—".to_owned(), |s| {
                        format!("{} / {}", f(&s["p50_us"]), f(&s["p99_us"]))
                    })
            };
            md.push_str(&format!(
                "| {rate} | {} | {} | {} |\n",
                cell(Target::Direct),
                cell(Target::Floor),
                cell(Target::Sidecar)
            ));
        }
    }
    md.push_str(&format!(
        "\nBounds (last repetition, CPU cores used per wall second): W1 {:?}; W2 {:?}\n",
        w1j["bound"], w2j["bound"]
    ));

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("proxy.json"),
        serde_json::to_string_pretty(&out).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("proxy.md"), &md).unwrap();
    println!("{md}");
    drop(rig);
}
