//! Composition root: builds the state, binds the listeners, owns every task, and shuts down in order.
//!
//! Shutdown order (implemented in [`App::shutdown`]; keep it in this order):
//! 1. Stop accepting: both listeners close, so new calls get connection refused rather than a cut.
//! 2. Drain: in-flight connections finish their current call (HTTP/1 keep-alive ends after it).
//! 3. At the drain deadline, abort what is left: each open stream's body is dropped, which records the
//!    call (`client_aborted`) and cancels its upstream request.
//! 4. Close the journal: the writer writes and fsyncs everything queued (every call now has its record on
//!    disk).
//! 5. Let the shipper put what Postgres will take into the ledger, for up to the ship deadline; whatever
//!    is left stays in the journal for the next start.
//! 6. Stop the in-process simulator, if any, last: draining streams may still be reading from it.

use crate::config::{Settings, Upstream};
use crate::journal::{Journal, WriterHandle};
use crate::ledger::{Ledger, Shipper};
use crate::metrics::Metrics;
use crate::pricing::{self, PriceBook};
use crate::record::{CallRecord, MemoryRecorder, Recorder};
use crate::{admin, proxy, sim};
use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderValue, Request, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Idle upstream connections kept for reuse (all to the one configured upstream).
pub const UPSTREAM_IDLE_CONNECTIONS: usize = 256;

pub type UpstreamClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The call log line (target `deepseek_meter::call`) at a given level: one field list for both levels.
macro_rules! call_log {
    ($level:expr, $r:expr) => {
        tracing::event!(
            target: "deepseek_meter::call",
            $level,
            call_id = %$r.call_id,
            protocol = $r.protocol.as_str(),
            model = %$r.model,
            stream = $r.stream,
            status = $r.status.as_str(),
            http_status = $r.http_status,
            error_code = $r.error_code.as_deref(),
            upstream_request_id = $r.upstream_request_id.as_deref(),
            input_tokens = $r.input_tokens,
            cached_tokens = $r.cached_tokens,
            output_tokens = $r.output_tokens,
            reasoning_tokens = $r.reasoning_tokens,
            answer_tokens = $r.answer_tokens,
            usage_source = $r.usage_source.as_str(),
            ttft_ms = $r.ttft_ms,
            duration_ms = $r.duration_ms,
            key_fingerprint = $r.key_fingerprint.as_deref(),
            project = $r.project.as_deref(),
            end_user = $r.end_user.as_deref(),
            cost_total = $r.cost_total.map(|c| c.to_string()),
            "call"
        )
    };
}

/// Cheap handles shared by every request.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

pub struct Shared {
    pub client: UpstreamClient,
    upstream_scheme: http::uri::Scheme,
    upstream_authority: http::uri::Authority,
    upstream_host_header: Option<HeaderValue>,
    /// `Bearer <DASHSCOPE_API_KEY>`, injected only when a client sends no Authorization.
    pub api_key_header: Option<HeaderValue>,
    pub max_body_bytes: usize,
    pub idle_timeout: Duration,
    pub metrics: Metrics,
    pub prices: Arc<PriceBook>,
    pub billing_timezone: chrono_tz::Tz,
    pub recorder: Arc<dyn Recorder>,
    pub journal: Option<Journal>,
    pub ledger: Option<Ledger>,
    pub admin_token: Option<String>,
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.inner
    }
}

impl AppState {
    /// The upstream URI for a request: the configured scheme and authority, the request's path and query.
    pub fn upstream_uri(&self, uri: &Uri) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.upstream_scheme.clone());
        parts.authority = Some(self.upstream_authority.clone());
        parts.path_and_query = uri.path_and_query().cloned();
        Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
    }

    pub fn upstream_authority_header(&self) -> Option<HeaderValue> {
        self.upstream_host_header.clone()
    }

    /// The single exit of every metered call: price it, count it, log it, record it. Returns the strict-
    /// durability ack, if the recorder gives one.
    pub fn finish_call(
        &self,
        mut record: CallRecord,
    ) -> Option<tokio::sync::oneshot::Receiver<()>> {
        record.billing_hour = pricing::billing_hour(record.finished_at, self.billing_timezone);
        let price = self.prices.price_at(&record.model, record.finished_at);
        let label = self.prices.model_label(&record.model);
        let by_class = price.map(|p| p.cost_by_class(&record.tokens()));
        record.priced = price.is_some();
        record.price_version = price.map(|p| p.version());
        record.cost_total = by_class.map(|c| {
            c.iter()
                .map(|(_, v)| *v)
                .sum::<rust_decimal::Decimal>()
                .normalize()
        });
        self.metrics.observe_call(&record, label, by_class.as_ref());
        if price.is_none() {
            self.metrics.unpriced.with_label_values(&[label]).inc();
        }
        // The ledger row is the durable record of every call; the log line is for people. Calls that went
        // wrong or cannot be billed exactly (unpriced, usage not reported) are logged at info; the rest at
        // debug, which costs nothing when off (enable with METER_LOG=info,deepseek_meter::call=debug).
        if record.status == crate::usage::CallStatus::Ok
            && record.priced
            && record.usage_source == crate::usage::UsageSource::Reported
        {
            call_log!(tracing::Level::DEBUG, record);
        } else {
            call_log!(tracing::Level::INFO, record);
        }
        self.recorder.record(record)
    }

    /// Whether the proxy may start a new metered call (the journal can take its record).
    pub fn accepting(&self) -> bool {
        self.recorder.accepting()
    }
}

/// A running sidecar.
pub struct App {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub state: AppState,
    stop_accepting: CancellationToken,
    abort: CancellationToken,
    tracker: TaskTracker,
    drain_timeout: Duration,
    sim: Option<sim::SimServer>,
    ledger_tasks: Option<LedgerTasks>,
}

/// The journal writer and the shipper, stopped in steps 4 and 5 of the shutdown order.
struct LedgerTasks {
    writer: WriterHandle,
    shipped: tokio::sync::watch::Receiver<crate::journal::Position>,
    shipper: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
    drain: CancellationToken,
    ship_deadline: Duration,
}

impl App {
    /// Starts the sidecar: the durable ledger if the settings have one, else records in memory.
    pub async fn start(settings: Settings) -> anyhow::Result<App> {
        Self::start_with_recorder(settings, None).await
    }

    /// Binds both listeners (and the simulator for `--upstream sim`) and starts serving. `recorder`
    /// replaces the ledger (tests); with neither, records are kept in memory.
    pub async fn start_with_recorder(
        settings: Settings,
        recorder: Option<Arc<dyn Recorder>>,
    ) -> anyhow::Result<App> {
        let metrics = Metrics::new().context("registering metrics")?;
        let mut journal = None;
        let mut ledger = None;
        let mut ledger_tasks = None;
        let recorder: Arc<dyn Recorder> = match (recorder, &settings.ledger) {
            (Some(r), _) => r,
            (None, None) => Arc::new(MemoryRecorder::default()),
            (None, Some(ls)) => {
                let (j, writer) = Journal::open(ls.journal.clone()).with_context(|| {
                    format!(
                        "invalid setting --journal-dir: cannot open {}",
                        ls.journal.dir.display()
                    )
                })?;
                let l = Ledger::connect_lazy(&ls.database_url).map_err(|e| {
                    anyhow::anyhow!("invalid setting --database-url (DATABASE_URL): {e}")
                })?;
                let (stop, drain) = (CancellationToken::new(), CancellationToken::new());
                let (shipped_tx, shipped) =
                    tokio::sync::watch::channel(crate::journal::Position::default());
                let shipper = Shipper {
                    ledger: l.clone(),
                    dir: ls.journal.dir.clone(),
                    stats: j.stats.clone(),
                    end: j.end(),
                    metrics: metrics.clone(),
                    migrate: ls.migrate,
                    create_database: ls.migrate.then(|| ls.database_url.clone()),
                    shipped: shipped_tx,
                };
                let shipper = tokio::spawn(shipper.run(stop.clone(), drain.clone()));
                ledger_tasks = Some(LedgerTasks {
                    writer,
                    shipped,
                    shipper,
                    stop,
                    drain,
                    ship_deadline: ls.ship_deadline,
                });
                journal = Some(j.clone());
                ledger = Some(l);
                Arc::new(j)
            }
        };
        let (sim, upstream): (Option<sim::SimServer>, Uri) = match &settings.upstream {
            Upstream::Sim => {
                let server =
                    sim::SimServer::start(sim::SimOptions::default(), ([127, 0, 0, 1], 0).into())
                        .await
                        .context("starting the built-in simulator")?;
                let uri = format!("http://{}", server.addr)
                    .parse()
                    .context("simulator address")?;
                (Some(server), uri)
            }
            Upstream::Url(u) => (None, u.clone()),
        };
        let (Some(upstream_scheme), Some(upstream_authority)) =
            (upstream.scheme().cloned(), upstream.authority().cloned())
        else {
            anyhow::bail!("upstream {upstream} has no scheme or host");
        };
        let api_key_header = match &settings.dashscope_api_key {
            Some(k) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {k}")).map_err(|_| {
                    anyhow::anyhow!("invalid setting DASHSCOPE_API_KEY: not a valid header value")
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let state = AppState {
            inner: Arc::new(Shared {
                client: upstream_client(settings.connect_timeout)?,
                upstream_host_header: HeaderValue::from_str(upstream_authority.as_str()).ok(),
                upstream_scheme,
                upstream_authority,
                api_key_header,
                max_body_bytes: settings.max_body_bytes,
                idle_timeout: settings.idle_timeout,
                metrics,
                prices: Arc::new(settings.prices.clone()),
                billing_timezone: settings.billing_timezone,
                recorder,
                journal,
                ledger,
                admin_token: settings.admin_token.clone(),
            }),
        };

        let proxy_listener = bind(settings.listen, "--listen").await?;
        let admin_listener = bind(settings.admin_listen, "--admin-listen").await?;
        let proxy_addr = proxy_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let stop_accepting = CancellationToken::new();
        let abort = CancellationToken::new();
        let tracker = TaskTracker::new();

        let proxy_state = state.clone();
        let proxy_service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let state = proxy_state.clone();
            async move {
                Ok::<_, Infallible>(proxy::handle(state, req.map(axum::body::Body::new)).await)
            }
        });
        let admin_service =
            hyper_util::service::TowerToHyperService::new(admin::router(state.clone()));
        let conns = Connections {
            stop_accepting: stop_accepting.clone(),
            abort: abort.clone(),
            tracker: tracker.clone(),
            limits: ConnectionLimits::new(settings.max_connections, settings.header_read_timeout),
        };
        // The admin listener gets its own small pool: a flood on the proxy must not lock operators out.
        let admin_conns = Connections {
            limits: ConnectionLimits::new(64, settings.header_read_timeout),
            ..conns.clone()
        };
        tracker.spawn(conns.serve(proxy_listener, proxy_service));
        tracker.spawn(admin_conns.serve(admin_listener, admin_service));
        tracing::info!(%proxy_addr, %admin_addr, upstream = %upstream, "deepseek-meter serving");
        Ok(App {
            proxy_addr,
            admin_addr,
            state,
            stop_accepting,
            abort,
            tracker,
            drain_timeout: settings.drain_timeout,
            sim,
            ledger_tasks,
        })
    }

    /// Waits until every call finished so far is in Postgres (tests, benchmarks, operators' `flush`).
    /// Returns at once without a ledger.
    pub async fn flush_ledger(&self) {
        let (Some(journal), Some(tasks)) = (&self.state.journal, &self.ledger_tasks) else {
            return;
        };
        let Some(end) = journal.barrier().await else {
            return;
        };
        let mut shipped = tasks.shipped.clone();
        let _ = shipped.wait_for(|p| *p >= end).await;
    }

    /// Runs until `signal` completes, then shuts down in order.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        self.shutdown().await;
    }

    /// The shutdown order of the module doc, steps 1–4.
    pub async fn shutdown(self) {
        // 1 + 2: listeners stop; connections finish their current call.
        self.stop_accepting.cancel();
        self.tracker.close();
        // 3: past the deadline, drop what is left (each dropped stream records itself).
        if tokio::time::timeout(self.drain_timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(drain_timeout = ?self.drain_timeout, "drain deadline passed; aborting open calls");
            self.abort.cancel();
            self.tracker.wait().await;
        }
        if let Some(tasks) = self.ledger_tasks {
            // 4: every record on disk.
            if let Some(j) = &self.state.journal {
                j.close();
            }
            tasks.writer.join().await;
            // 5: ship what Postgres will take, within the deadline.
            tasks.stop.cancel();
            let mut shipper = tasks.shipper;
            if tokio::time::timeout(tasks.ship_deadline, &mut shipper)
                .await
                .is_err()
            {
                tasks.drain.cancel();
                let _ = shipper.await;
            }
            if let Some(j) = &self.state.journal {
                let left = j.stats.pending.load(std::sync::atomic::Ordering::Relaxed);
                if left > 0 {
                    tracing::warn!(
                        records = left,
                        "records left in the journal; they are shipped at the next start"
                    );
                }
            }
        }
        // 6: the simulator last.
        if let Some(sim) = self.sim {
            sim.shutdown().await;
        }
    }
}

async fn bind(addr: SocketAddr, setting: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("invalid setting {setting}: cannot listen on {addr}"))
}

fn upstream_client(connect_timeout: Duration) -> anyhow::Result<UpstreamClient> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .context("TLS setup")?
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        // After a burst of thousands of concurrent streams, keep enough warm connections for the next one,
        // not every socket of the burst, with its buffers, for the idle timeout (W4 of bench/proxy: 274 open
        // fds 5 s after 2,000 streams).
        .pool_max_idle_per_host(UPSTREAM_IDLE_CONNECTIONS)
        .build(https))
}

/// Accepts connections and serves them as owned tasks that stop when told.
#[derive(Clone)]
pub struct Connections {
    pub stop_accepting: CancellationToken,
    pub abort: CancellationToken,
    pub tracker: TaskTracker,
    pub limits: ConnectionLimits,
}

/// Protection against clients that hold connections without using them.
#[derive(Clone)]
pub struct ConnectionLimits {
    /// At most this many open connections; past it the listener stops accepting (new connections wait in
    /// the kernel's backlog) until one closes.
    pub slots: Arc<tokio::sync::Semaphore>,
    /// A client must finish sending a request head within this time (slowloris).
    pub header_read_timeout: Duration,
}

impl ConnectionLimits {
    pub fn new(max_connections: usize, header_read_timeout: Duration) -> Self {
        ConnectionLimits {
            slots: Arc::new(tokio::sync::Semaphore::new(max_connections)),
            header_read_timeout,
        }
    }
}

impl Connections {
    pub async fn serve<S, B>(self, listener: TcpListener, service: S)
    where
        S: hyper::service::Service<Request<Incoming>, Response = http::Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        loop {
            let slot = tokio::select! {
                _ = self.stop_accepting.cancelled() => return,
                slot = self.limits.slots.clone().acquire_owned() => match slot {
                    Ok(s) => s,
                    Err(_) => return,
                },
            };
            let stream = tokio::select! {
                _ = self.stop_accepting.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let service = service.clone();
            let (stop, abort) = (self.stop_accepting.clone(), self.abort.clone());
            let header_read_timeout = self.limits.header_read_timeout;
            self.tracker.spawn(async move {
                let _slot = slot;
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(header_read_timeout);
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
                }
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = abort.cancelled() => {}
                }
            });
        }
    }
}
