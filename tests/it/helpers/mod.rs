//! Test harness: the real app on port 0, a scripted upstream over raw TCP, and real HTTP clients.

pub mod bin;
pub mod captures;
pub mod receiver;

use deepseek_meter::app::{App, Injected};
use deepseek_meter::clock::Clock;
use deepseek_meter::config::{Settings, Upstream};
use deepseek_meter::record::{CallRecord, MemoryRecorder};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};

pub struct TestApp {
    pub app: App,
    pub records: MemoryRecorder,
    pub http: reqwest::Client,
    /// The wall clock billing reads: the system clock unless the test set one.
    pub clock: Clock,
}

impl TestApp {
    pub async fn start(upstream: Upstream) -> TestApp {
        Self::start_with(upstream, |_| {}).await
    }

    pub async fn start_with(upstream: Upstream, tweak: impl FnOnce(&mut Settings)) -> TestApp {
        let mut settings = Settings::for_tests();
        settings.upstream = upstream;
        tweak(&mut settings);
        Self::start_on(settings, Clock::system()).await
    }

    /// The app on `settings` (listeners, upstream and ledger as they say; records in memory), reading
    /// `clock` for every call's finish time.
    pub async fn start_on(settings: Settings, clock: Clock) -> TestApp {
        let records = MemoryRecorder::default();
        let injected = Injected {
            recorder: Some(Arc::new(records.clone())),
            clock: Some(clock.clone()),
        };
        let app = App::start_with(settings, injected)
            .await
            .expect("app starts");
        let http = test_client();
        TestApp {
            app,
            records,
            http,
            clock,
        }
    }

    /// Moves the app's wall clock (a manual clock only).
    pub fn advance_clock(&self, by: chrono::Duration) {
        self.clock.advance(by);
    }

    /// POSTs a body to a proxy path and returns the record of the call.
    pub async fn post_for_record(&self, path: &str, body: &str) -> CallRecord {
        let resp = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let id = call_id(&resp);
        resp.bytes().await.unwrap();
        self.record_of(&id).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.app.proxy_addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.app.admin_addr, path)
    }

    /// The record of the call whose response carried this `X-Meter-Call-Id`.
    pub async fn record_of(&self, resp_call_id: &str) -> CallRecord {
        let id = resp_call_id.parse().expect("call id is a uuid");
        tokio::time::timeout(Duration::from_secs(10), self.records.wait_for_call(id))
            .await
            .expect("record arrives")
    }
}

/// A sidecar with the durable ledger: its own fresh database and journal directory.
pub struct LedgerApp {
    pub app: App,
    pub db: TestDb,
    pub journal: tempfile::TempDir,
    pub http: reqwest::Client,
    /// Every call id a client of this test saw, for the audit.
    seen: Mutex<HashSet<String>>,
}

impl LedgerApp {
    pub async fn start(upstream: Upstream, tweak: impl FnOnce(&mut Settings)) -> LedgerApp {
        Self::start_at(upstream, Clock::system(), tweak).await
    }

    /// The sidecar reading `clock` for every call's finish time (and the open billing hour).
    pub async fn start_at(
        upstream: Upstream,
        clock: Clock,
        tweak: impl FnOnce(&mut Settings),
    ) -> LedgerApp {
        let db = TestDb::new().await;
        let journal = tempfile::tempdir().unwrap();
        let app = sidecar(&db, journal.path(), upstream, clock, tweak).await;
        let http = test_client();
        LedgerApp {
            app,
            db,
            journal,
            http,
            seen: Mutex::default(),
        }
    }

    /// A test's own sidecar on `db` and `journal`, with the verbs of this type.
    pub fn adopt(app: App, db: TestDb, journal: tempfile::TempDir) -> LedgerApp {
        LedgerApp {
            app,
            db,
            journal,
            http: test_client(),
            seen: Mutex::default(),
        }
    }

    /// Another sidecar on this one's database, with a journal of its own (dropped with the returned dir).
    pub async fn beside(
        &self,
        upstream: Upstream,
        clock: Clock,
        tweak: impl FnOnce(&mut Settings),
    ) -> (App, tempfile::TempDir) {
        let journal = tempfile::tempdir().unwrap();
        let app = sidecar(&self.db, journal.path(), upstream, clock, tweak).await;
        (app, journal)
    }

    /// POSTs `{"model": model}` through the proxy with `key` and `project`, the upstream answering `answer`
    /// with 200; reads the answer to its end (the call is recorded) and keeps its id for the audit.
    pub async fn call_as(
        &self,
        up: &ScriptedUpstream,
        answer: &str,
        model: &str,
        key: &str,
        project: &str,
    ) {
        up.push(Script::json(200, answer));
        let resp = self
            .http
            .post(self.url(COMPAT_PATH))
            .bearer_auth(key)
            .header("x-meter-project", project)
            .body(format!(
                r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        self.saw(&call_id(&resp));
        resp.bytes().await.unwrap();
    }

    /// POSTs a body through the proxy with the key `sk-ledger-test-1234`; returns status, call id and body.
    /// The id is kept for the audit.
    pub async fn call(
        &self,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String, Vec<u8>) {
        let mut rb = self
            .http
            .post(self.url(path))
            .bearer_auth("sk-ledger-test-1234")
            .body(body.to_owned());
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        let id = call_id(&resp);
        self.saw(&id);
        let bytes = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        (status, id, bytes)
    }

    /// The call ids this test's clients saw.
    pub fn seen_ids(&self) -> HashSet<String> {
        self.seen.lock().unwrap().clone()
    }

    /// A call id a client saw, outside [`LedgerApp::call`].
    pub fn saw(&self, id: &str) {
        self.seen.lock().unwrap().insert(id.to_owned());
    }

    /// The audit every ledger test ends with: the ledger holds a row for exactly the calls this test's
    /// clients saw, minus `refused` (calls answered without a record, e.g. 503 at the journal cap), and
    /// nothing was dead-lettered. Returns each row's status by call id.
    pub async fn audit(&self, refused: &[&str]) -> HashMap<String, String> {
        flush(&self.app).await;
        let mut expected = self.seen.lock().unwrap().clone();
        for id in refused {
            assert!(expected.remove(*id), "{id} was seen by a client");
        }
        self.db.audit(&expected, self.journal.path()).await
    }

    /// Shuts this sidecar down and starts it again on the same database, journal directory and `clock`
    /// (what the test's clients saw is kept for the audit).
    pub async fn restart_at(
        self,
        upstream: Upstream,
        clock: Clock,
        tweak: impl FnOnce(&mut Settings),
    ) -> LedgerApp {
        self.stop().await.start_at(upstream, clock, tweak).await
    }

    /// Shuts this sidecar down, keeping its database, journal directory and what its clients saw.
    pub async fn stop(self) -> Stopped {
        let LedgerApp {
            app,
            db,
            journal,
            http,
            seen,
        } = self;
        app.shutdown().await;
        Stopped {
            db,
            journal,
            http,
            seen,
        }
    }

    /// Another sidecar on the same database and journal directory (a restart).
    pub async fn start_on(
        db: &TestDb,
        journal: &std::path::Path,
        upstream: Upstream,
        tweak: impl FnOnce(&mut Settings),
    ) -> App {
        sidecar(db, journal, upstream, Clock::system(), tweak).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.app.proxy_addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.app.admin_addr, path)
    }

    /// The ledger row of a call, through the admin API.
    pub async fn row(&self, call_id: &str) -> serde_json::Value {
        flush(&self.app).await;
        let resp = self
            .http
            .get(self.admin_url(&format!("/v1/calls/{call_id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "row of {call_id}");
        resp.json().await.unwrap()
    }
}

/// A sidecar [`LedgerApp::stop`]ped: its database and journal directory, until it starts again.
pub struct Stopped {
    pub db: TestDb,
    pub journal: tempfile::TempDir,
    http: reqwest::Client,
    seen: Mutex<HashSet<String>>,
}

impl Stopped {
    /// Starts the sidecar again on its database and journal directory, reading `clock`.
    pub async fn start_at(
        self,
        upstream: Upstream,
        clock: Clock,
        tweak: impl FnOnce(&mut Settings),
    ) -> LedgerApp {
        let Stopped {
            db,
            journal,
            http,
            seen,
        } = self;
        let app = sidecar(&db, journal.path(), upstream, clock, tweak).await;
        LedgerApp {
            app,
            db,
            journal,
            http,
            seen,
        }
    }
}

/// A sidecar on `db` and `journal`, reading `clock`.
pub async fn sidecar(
    db: &TestDb,
    journal: &std::path::Path,
    upstream: Upstream,
    clock: Clock,
    tweak: impl FnOnce(&mut Settings),
) -> App {
    let mut settings = Settings::for_tests();
    settings.upstream = upstream;
    settings.ledger = Some(ledger_settings(&db.url, journal));
    tweak(&mut settings);
    let injected = Injected {
        recorder: None,
        clock: Some(clock),
    };
    App::start_with(settings, injected)
        .await
        .expect("app starts")
}

/// The ledger settings `serve` would resolve for this database and journal directory (every other value its
/// default), with a short shutdown ship deadline.
pub fn ledger_settings(
    url: &str,
    journal: &std::path::Path,
) -> deepseek_meter::config::LedgerSettings {
    use deepseek_meter::config::{FileConfig, ServeArgs};
    let args = ServeArgs {
        database_url: Some(url.to_owned()),
        journal_dir: Some(journal.display().to_string()),
        ..ServeArgs::default()
    };
    let settings = Settings::resolve(args, FileConfig::default()).expect("valid settings");
    deepseek_meter::config::LedgerSettings {
        ship_deadline: Duration::from_secs(2),
        ..settings.ledger.expect("serve has a ledger")
    }
}

/// A database of its own, created on demand by the app (or `migrate`) and dropped when the test ends.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

/// The Postgres server the tests create their databases on: `DATABASE_URL` without its database name,
/// else the local server.
pub fn pg() -> String {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", rest.split('/').next().unwrap_or(rest)),
        None => url,
    }
}

/// `host:port` of that server.
pub fn pg_addr() -> String {
    let server = pg();
    let authority = server.rsplit('@').next().unwrap_or(&server);
    authority.trim_start_matches("postgres://").to_owned()
}

impl TestDb {
    pub async fn new() -> TestDb {
        let name = format!("dm_test_{}", uuid::Uuid::now_v7().simple());
        TestDb {
            url: format!("{}/{name}", pg()),
            name,
        }
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url).await.unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        admin_sql(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ));
    }
}

/// Runs one statement on the `postgres` database, best effort, from a `Drop`: on a thread with its own
/// runtime, because the test's runtime may be shutting down.
pub fn admin_sql(sql: String) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            if let Ok(pool) = sqlx::PgPool::connect(&format!("{}/postgres", pg())).await {
                let _ = sqlx::query(&sql).execute(&pool).await;
            }
        });
    })
    .join();
}

pub fn call_id(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-meter-call-id")
        .expect("x-meter-call-id")
        .to_str()
        .unwrap()
        .to_owned()
}

pub const COMPAT_PATH: &str = "/compatible-mode/v1/chat/completions";
pub const NATIVE_PATH: &str = "/api/v1/services/aigc/text-generation/generation";

// ---- scripted upstream --------------------------------------------------------------------------------

/// How a scripted response ends.
#[derive(Clone, Debug, PartialEq)]
pub enum End {
    /// Proper end of body.
    Clean,
    /// Connection closed mid-body (no chunked terminator).
    Reset,
    /// Silence until the peer goes away.
    Stall,
}

/// One scripted response: status, headers, the body as separate writes, and how it ends.
#[derive(Clone, Debug)]
pub struct Script {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub chunks: Vec<Vec<u8>>,
    pub end: End,
    /// Wait for one permit of the upstream's gate before each write after the first.
    pub gated: bool,
    /// Silence before the response head (the request has been read).
    pub head_delay: Option<Duration>,
}

impl Script {
    pub fn sse(chunks: Vec<Vec<u8>>) -> Script {
        Script {
            status: 200,
            headers: vec![(
                "content-type".into(),
                "text/event-stream;charset=UTF-8".into(),
            )],
            chunks,
            end: End::Clean,
            gated: false,
            head_delay: None,
        }
    }

    pub fn json(status: u16, body: &str) -> Script {
        Script {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            chunks: vec![body.as_bytes().to_vec()],
            end: End::Clean,
            gated: false,
            head_delay: None,
        }
    }
}

/// What the upstream received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub request_line: String,
    pub headers: Vec<(String, String)>,
    /// The request head as received, byte for byte (header values need not be UTF-8).
    pub raw_head: Vec<u8>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone)]
pub struct ScriptedUpstream {
    pub addr: SocketAddr,
    scripts: Arc<Mutex<VecDeque<Script>>>,
    /// Played when no script is queued (a 599 if none).
    fallback: Arc<Mutex<Option<Script>>>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub gate: Arc<Semaphore>,
    /// Notified when a connection's peer went away while the upstream was still writing or stalled.
    pub peer_gone: Arc<Notify>,
}

impl ScriptedUpstream {
    pub async fn start() -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = ScriptedUpstream {
            addr: listener.local_addr().unwrap(),
            scripts: Arc::default(),
            fallback: Arc::default(),
            seen: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
            peer_gone: Arc::new(Notify::new()),
        };
        let me = up.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                // Each write goes out as its own segment at once (no Nagle delay): a test that needs the
                // proxy to see writes separately gates them (`Script::gated`) and reads in lockstep.
                let _ = stream.set_nodelay(true);
                let me = me.clone();
                tokio::spawn(async move { me.serve(stream).await });
            }
        });
        up
    }

    pub fn upstream(&self) -> Upstream {
        Upstream::Url(format!("http://{}", self.addr).parse().unwrap())
    }

    /// Answers every request that has no queued script with `script`.
    pub fn answer_always(&self, script: Script) {
        *self.fallback.lock().unwrap() = Some(script);
    }

    pub fn push(&self, script: Script) {
        self.scripts.lock().unwrap().push_back(script);
    }

    pub fn last_seen(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw a request")
    }

    async fn serve(&self, mut stream: TcpStream) {
        loop {
            let Some(seen) = read_request(&mut stream).await else {
                return;
            };
            self.seen.lock().unwrap().push(seen);
            let script = self
                .scripts
                .lock()
                .unwrap()
                .pop_front()
                .or_else(|| self.fallback.lock().unwrap().clone())
                .unwrap_or_else(|| Script::json(599, "{}"));
            if let Some(delay) = script.head_delay {
                tokio::time::sleep(delay).await;
            }
            let mut head = format!("HTTP/1.1 {} X\r\n", script.status);
            for (k, v) in &script.headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("transfer-encoding: chunked\r\n\r\n");
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for (i, chunk) in script.chunks.iter().enumerate() {
                if script.gated && i > 0 {
                    self.gate.acquire().await.unwrap().forget();
                }
                let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
                frame.extend_from_slice(chunk);
                frame.extend_from_slice(b"\r\n");
                if stream.write_all(&frame).await.is_err() || stream.flush().await.is_err() {
                    self.peer_gone.notify_one();
                    return;
                }
            }
            match script.end {
                End::Clean => {
                    if stream.write_all(b"0\r\n\r\n").await.is_err() {
                        return;
                    }
                }
                End::Reset => return,
                End::Stall => {
                    // Wait for the peer to close.
                    let mut buf = [0u8; 1];
                    let _ = stream.read(&mut buf).await;
                    self.peer_gone.notify_one();
                    return;
                }
            }
        }
    }
}

async fn read_request(stream: &mut TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = stream.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Some(Seen {
        request_line,
        headers,
        raw_head: buf[..head_end].to_vec(),
        body,
    })
}

/// Splits a capture into its SSE events (each a separate write), keeping every byte.
pub fn events(capture: &str) -> Vec<Vec<u8>> {
    capture
        .split_inclusive("\n\n")
        .map(|s| s.as_bytes().to_vec())
        .collect()
}

/// A TCP proxy in front of Postgres that can be switched off: existing connections are cut and new ones
/// are closed at once, as in a network partition or a database restart.
#[derive(Clone)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    down: Arc<tokio::sync::watch::Sender<bool>>,
}

impl FaultProxy {
    /// A proxy to `target` (`host:port`).
    pub async fn start(target: String) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if *rx.borrow() {
                    drop(client);
                    continue;
                }
                let mut down = rx.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = down.wait_for(|d| *d) => {}
                    }
                });
            }
        });
        FaultProxy {
            addr,
            down: Arc::new(tx),
        }
    }

    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }

    /// `url` with its host and port replaced by this proxy's.
    pub fn url_for(&self, url: &str) -> String {
        url.replace(&pg_addr(), &self.addr.to_string())
    }
}

/// `bytes` cut at the given points (taken modulo its length), in order. Repeated points give empty
/// pieces: a reader must treat an empty read as nothing.
pub fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut out = Vec::new();
    let mut prev = 0;
    for p in points.into_iter().chain([bytes.len()]) {
        out.push(bytes[prev..p].to_vec());
        prev = p;
    }
    out
}

/// A GET whose body is text (metrics, readiness).
pub async fn get_text(http: &reqwest::Client, url: &str) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

/// GET `url`, its body as JSON.
pub async fn get_json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

impl TestDb {
    /// The call ids stored in the ledger.
    pub async fn call_ids(&self) -> HashSet<String> {
        let pool = self.pool().await;
        let ids = sqlx::query_scalar::<_, String>("SELECT call_id::text FROM usage_ledger")
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        ids.into_iter().collect()
    }

    /// The ledger audit: the rows are exactly the calls in `ids` (no call without its row, no row without
    /// its call) and the shipper dead-lettered nothing in `journal` (a rejected insert is not a stored row).
    /// Returns each row's status by call id.
    pub async fn audit(
        &self,
        ids: &HashSet<String>,
        journal: &std::path::Path,
    ) -> HashMap<String, String> {
        assert_no_dead_letters(journal);
        let stored = self.call_ids().await;
        let lost: Vec<_> = ids.difference(&stored).collect();
        let extra: Vec<_> = stored.difference(ids).collect();
        assert!(
            lost.is_empty(),
            "{} calls have no row: {lost:?}",
            lost.len()
        );
        assert!(
            extra.is_empty(),
            "{} rows belong to no call: {extra:?}",
            extra.len()
        );
        let pool = self.pool().await;
        let statuses =
            sqlx::query_as::<_, (String, String)>("SELECT call_id::text, status FROM usage_ledger")
                .fetch_all(&pool)
                .await
                .unwrap();
        pool.close().await;
        statuses.into_iter().collect()
    }
}

/// The shipper wrote no record to `dead-letter.jsonl` in this journal directory.
pub fn assert_no_dead_letters(journal: &std::path::Path) {
    let dead = std::fs::read_to_string(journal.join("dead-letter.jsonl")).unwrap_or_default();
    assert!(dead.is_empty(), "records were dead-lettered: {dead}");
}

/// `ci` in a normal run; `soak` when `METER_SOAK` is set (`bench/soak.sh` runs the fault suite that way).
pub fn scale(ci: usize, soak: usize) -> usize {
    if std::env::var_os("METER_SOAK").is_some() {
        soak
    } else {
        ci
    }
}

/// A slowloris client: connects, sends half a request head, then nothing.
pub struct SlowClient {
    /// Taken before connecting: the server's header timer starts after this.
    pub connected_before: std::time::Instant,
    /// Resolves, with the moment, when the server closes the connection.
    pub closed: tokio::task::JoinHandle<std::time::Instant>,
}

impl SlowClient {
    /// Waits (at most `bound`) for the server to cut this client; returns how long it held on after
    /// connecting (at least the server's header timeout, if the server waited for it).
    pub async fn held_for(self, bound: Duration) -> Duration {
        let closed_at = tokio::time::timeout(bound, self.closed)
            .await
            .expect("the slow client is cut")
            .unwrap();
        closed_at - self.connected_before
    }
}

pub async fn slow_client(addr: SocketAddr) -> SlowClient {
    let connected_before = std::time::Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /compatible-mode/v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let closed = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        std::time::Instant::now()
    });
    SlowClient {
        connected_before,
        closed,
    }
}

/// Every fault the simulator can play (`x-sim-fault`).
pub const SIM_FAULTS: [&str; 8] = [
    "401",
    "429",
    "500",
    "sse-error",
    "moderation",
    "reset",
    "stall",
    "garbage",
];

/// Sends `request` as raw bytes on a fresh connection and returns what the server answers before it closes.
pub async fn raw_http(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("the server answers and closes")
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

/// The documented split of `output` tokens between the two texts of a reply whose usage has no
/// reasoning_tokens: `round(output × est(reasoning) / (est(reasoning) + est(answer)))`, with the estimator's
/// token count of each text, computed here from the texts themselves.
pub fn split_by_text(output: u64, reasoning: &str, answer: &str) -> u64 {
    use deepseek_meter::usage::estimate::Transcript;
    let (r, a) = (
        Transcript::of(reasoning).tokens(),
        Transcript::of(answer).tokens(),
    );
    assert!(r > 0 && a > 0, "both texts present");
    let split = (output as f64 * r as f64 / (r + a) as f64).round() as u64;
    assert!(split > 0 && split < output);
    split
}

/// Waits until every call the app finished so far is in Postgres, or fails the test after 30 s (5 min at
/// soak scale) instead of hanging.
pub async fn flush(app: &App) {
    let bound = Duration::from_secs(scale(30, 300) as u64);
    tokio::time::timeout(bound, app.flush_ledger())
        .await
        .unwrap_or_else(|_| panic!("the ledger did not catch up within {bound:?}"));
}

/// A loopback port that refuses connections and stays that way while the returned socket lives: bound, never
/// listening. (A listener bound and dropped frees its port for any parallel test to take.)
pub fn refusing_port() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// A valid, priced record of a finished call (for journal-level tests), distinct by `i`.
pub fn a_record(i: usize) -> deepseek_meter::record::CallRecord {
    serde_json::from_value(serde_json::json!({
        "call_id": uuid::Uuid::now_v7(), "upstream_request_id": format!("req-{i}"), "protocol": "openai",
        "model": "deepseek-v3.2-exp", "stream": true, "status": "ok", "http_status": 200, "error_code": null,
        "started_at": "2026-11-25T10:00:00Z", "finished_at": "2026-11-25T10:00:01Z",
        "billing_hour": "2026-11-25T10:00:00Z", "ttft_ms": 120.0, "duration_ms": 1000.0,
        "input_tokens": 1200, "cached_tokens": 256, "output_tokens": 640, "reasoning_tokens": 400,
        "answer_tokens": 240, "usage_source": "reported", "priced": true,
        "price_version": "deepseek-v3.2-exp@2025-09-29", "cost_total": "0.0040144",
        "key_fingerprint": "0123456789ab", "key_hint": "sk-…abcd", "project": format!("p{i}"), "end_user": null,
    }))
    .unwrap()
}

/// The HTTP client of the test sidecars: no proxy, and no request that waits forever (a hang fails the test
/// with the call that hung instead of running into the harness's limit).
pub fn test_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}
