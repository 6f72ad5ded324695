//! Composition root: builds the state, binds the listeners, owns every task, and shuts down in order.
//!
//! Shutdown order (implemented in [`App::shutdown`]; keep it in this order):
//! 1. Stop accepting: both listeners close, so new calls get connection refused rather than a cut.
//! 2. Drain: in-flight connections finish their current call (HTTP/1 keep-alive ends after it).
//! 3. At the drain deadline, abort what is left: each open stream's body is dropped, which records the
//!    call (`client_aborted`) and cancels its upstream request.
//! 4. Stop the in-process simulator, if any, last: draining streams may still be reading from it.

use crate::config::{Settings, Upstream};
use crate::metrics::Metrics;
use crate::pricing::PriceBook;
use crate::record::{CallRecord, Recorder};
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

pub type UpstreamClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

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
    pub recorder: Arc<dyn Recorder>,
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

    /// The single exit of every metered call: metrics, the call log line, then the recorder.
    pub fn finish_call(&self, record: CallRecord) {
        let label = self.prices.model_label(&record.model);
        self.metrics.observe_call(&record, label);
        if !self.prices.knows(&record.model) {
            self.metrics.unpriced.with_label_values(&[label]).inc();
        }
        tracing::info!(
            target: "deepseek_meter::call",
            call_id = %record.call_id,
            protocol = record.protocol.as_str(),
            model = %record.model,
            stream = record.stream,
            status = record.status.as_str(),
            http_status = record.http_status,
            error_code = record.error_code.as_deref(),
            upstream_request_id = record.upstream_request_id.as_deref(),
            input_tokens = record.input_tokens,
            cached_tokens = record.cached_tokens,
            output_tokens = record.output_tokens,
            reasoning_tokens = record.reasoning_tokens,
            answer_tokens = record.answer_tokens,
            usage_source = record.usage_source.as_str(),
            ttft_ms = record.ttft_ms,
            duration_ms = record.duration_ms,
            key_fingerprint = record.key_fingerprint.as_deref(),
            project = record.project.as_deref(),
            end_user = record.end_user.as_deref(),
            "call"
        );
        self.recorder.record(record);
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
}

impl App {
    /// Binds both listeners (and the simulator for `--upstream sim`) and starts serving.
    pub async fn start(settings: Settings, recorder: Arc<dyn Recorder>) -> anyhow::Result<App> {
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
                metrics: Metrics::new().context("registering metrics")?,
                prices: Arc::new(settings.prices.clone()),
                recorder,
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
        };
        tracker.spawn(conns.clone().serve(proxy_listener, proxy_service));
        tracker.spawn(conns.serve(admin_listener, admin_service));
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
        })
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
        // 4: the simulator last.
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
        .build(https))
}

/// Accepts connections and serves them as owned tasks that stop when told.
#[derive(Clone)]
pub struct Connections {
    pub stop_accepting: CancellationToken,
    pub abort: CancellationToken,
    pub tracker: TaskTracker,
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
            self.tracker.spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
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
