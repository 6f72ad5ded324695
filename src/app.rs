//! Composition root: builds the state, binds the listeners, owns every task, and shuts down in order.
//! Nothing imports this module; it imports what it wires.
//!
//! Shutdown order (implemented in [`App::shutdown`]; keep it in this order):
//! 1. Stop accepting: both listeners close, so new calls get connection refused rather than a cut.
//! 2. Drain: in-flight connections finish their current call (HTTP/1 keep-alive ends after it).
//! 3. At the drain deadline, abort what is left: each open stream's body is dropped, which records the
//!    call (`client_aborted`) and cancels its upstream request.
//!    Then the spans still queued for the OpenTelemetry collector are sent (at most 2 s).
//! 4. Close the journal: the writer writes and fsyncs everything queued (every call now has its record on
//!    disk).
//! 5. Let the shipper put what Postgres will take into the ledger, for up to the ship deadline; whatever
//!    is left stays in the journal for the next start.
//! 6. The bill: the roller makes one last round (heartbeat and roll), so the bill holds every shipped row;
//!    the deliverer finishes the delivery it is making (bounded by the webhook timeout), and what is still
//!    pending stays in the outbox for any sidecar to deliver.
//! 7. Stop the in-process simulator, if any, last: draining streams may still be reading from it.

use crate::admin;
use crate::billing::delivery::{Attempt, Deliverer, Destinations, StatusCell};
use crate::billing::roller::Roller;
use crate::billing::{self as bill, Bill};
use crate::budget::coordinated::Coordination;
use crate::budget::gate::Budgets;
use crate::clock::Clock;
use crate::config::{LedgerSettings, Settings, Upstream as UpstreamSetting};
use crate::journal::{Journal, Position, WriterHandle};
use crate::ledger::Ledger;
use crate::meter::Meter;
use crate::metrics::Metrics;
use crate::proxy::upstream::Upstream;
use crate::proxy::{Proxy, ProxyOptions};
use crate::record::{MemoryRecorder, Recorder};
use crate::server::{ConnectionLimits, Connections};
use crate::shipper::Shipper;
use crate::sim;
use crate::state::AppState;

use anyhow::Context as _;
use http::{Request, Uri};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The admin listener's own connection pool.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// What a test or an embedder may put in place of the defaults.
#[derive(Default)]
pub struct Injected {
    /// Where records go instead of the journal and ledger of the settings.
    pub recorder: Option<Arc<dyn Recorder>>,
    /// The wall clock billing reads; the system clock by default.
    pub clock: Option<Clock>,
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
    journal: Journal,
    ledger: Ledger,
    writer: WriterHandle,
    shipped: watch::Receiver<Position>,
    shipper: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
    drain: CancellationToken,
    ship_deadline: Duration,
    bill: Bill,
    /// This sidecar in `meter_instances` (its heartbeat).
    instance: uuid::Uuid,
    /// Stops the roller (after its last round) and the deliverer (after its current delivery).
    billing_stop: CancellationToken,
    /// Built once the meter exists (its clock says which hour is open).
    roller: Option<Arc<Roller>>,
    rolling: tokio::task::JoinHandle<()>,
    deliverer: Deliverer,
    delivering: tokio::task::JoinHandle<()>,
    /// Budgets' refresher and alert deliverer (a finished task when no budget is configured).
    budgeting: tokio::task::JoinHandle<()>,
    delivery_status: StatusCell,
    /// The hours of the journal's unshipped records, for the heartbeat.
    held: Arc<crate::journal::Held>,
    /// `--ledger-retention`.
    retention: Option<chrono::Duration>,
}

impl App {
    /// Starts the sidecar: the durable ledger if the settings have one, else records in memory.
    pub async fn start(settings: Settings) -> anyhow::Result<App> {
        Self::start_with(settings, Injected::default()).await
    }

    /// Binds both listeners (and the simulator for `--upstream sim`) and starts serving.
    pub async fn start_with(settings: Settings, injected: Injected) -> anyhow::Result<App> {
        let metrics = Metrics::new().context("registering metrics")?;
        let ledger_tasks = match (&injected.recorder, &settings.ledger) {
            (None, Some(ls)) => Some(start_ledger(ls, settings.billing_timezone, &metrics)?),
            _ => None,
        };
        let clock = injected.clock.clone().unwrap_or_else(Clock::system);
        let mut state = app_state(&settings, injected, metrics, ledger_tasks.as_ref());
        state.budgets = start_budgets(&settings, &state, ledger_tasks.as_ref())?;
        let ledger_tasks = ledger_tasks.map(|mut t| {
            if let Some(budgets) = &state.budgets {
                let refresher = crate::budget::refresher::Refresher {
                    tracker: budgets.tracker().clone(),
                    coordinator: budgets.coordinator().cloned(),
                    ledger: t.ledger.clone(),
                    clock: clock.clone(),
                    timezone: settings.billing_timezone,
                    metrics: state.metrics.instance.clone(),
                    alert_webhook: settings.alert_webhook.clone(),
                    instance_stale: bill::INSTANCE_STALE,
                };
                t.budgeting = tokio::spawn(refresher.run(t.billing_stop.clone()));
            }
            let roller = Arc::new(Roller {
                bill: t.bill.clone(),
                pool: t.ledger.pool().clone(),
                instance: t.instance,
                clock: clock.clone(),
                timezone: settings.billing_timezone,
                held: t.held.clone(),
                metrics: state.metrics.instance.clone(),
                retention: t.retention,
            });
            t.rolling = tokio::spawn(roller.clone().run(t.billing_stop.clone()));
            t.roller = Some(roller);
            t.delivering = tokio::spawn(bill::delivery::run(
                t.deliverer.clone(),
                clock.clone(),
                state.metrics.instance.clone(),
                t.delivery_status.clone(),
                t.billing_stop.clone(),
            ));
            t
        });
        let (sim, upstream_uri) = start_upstream(&settings.upstream).await?;
        if let Some(otel) = &settings.otel {
            let exporter =
                crate::otel::Exporter::start(otel, &upstream_uri, state.metrics.instance.clone())
                    .context("--otlp-endpoint")?;
            state.meter.set_exporter(exporter);
            tracing::info!(spans = "on", "OpenTelemetry export to the OTLP endpoint");
        }
        let proxy = Proxy::new(
            Upstream::new(
                &upstream_uri,
                settings.connect_timeout,
                settings.upstream_address,
            )?,
            state.clone(),
            ProxyOptions {
                api_key: settings.dashscope_api_key.clone(),
                max_body_bytes: settings.max_body_bytes,
                idle_timeout: settings.idle_timeout,
                client_token: settings.client_token.clone(),
                anthropic_input: settings.anthropic_input_tokens,
            },
        )?;
        let proxy_listener = bind(settings.listen, "--listen").await?;
        let admin_listener = bind(settings.admin_listen, "--admin-listen").await?;
        let proxy_addr = proxy_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let conns = Connections {
            stop_accepting: CancellationToken::new(),
            abort: CancellationToken::new(),
            tracker: TaskTracker::new(),
            limits: ConnectionLimits::new(settings.max_connections, settings.header_read_timeout),
        };
        serve(
            &conns,
            &settings,
            proxy_listener,
            proxy,
            admin_listener,
            &state,
        );
        tracing::info!(%proxy_addr, %admin_addr, upstream = %upstream_uri, "deepseek-meter serving");
        Ok(App {
            proxy_addr,
            admin_addr,
            state,
            stop_accepting: conns.stop_accepting,
            abort: conns.abort,
            tracker: conns.tracker,
            drain_timeout: settings.drain_timeout,
            sim,
            ledger_tasks,
        })
    }

    /// Waits until every call finished so far is in Postgres (tests, benchmarks, operators' `flush`).
    /// Returns at once without a ledger.
    pub async fn flush_ledger(&self) {
        let Some(tasks) = &self.ledger_tasks else {
            return;
        };
        let Some(end) = tasks.journal.barrier().await else {
            return;
        };
        let mut shipped = tasks.shipped.clone();
        let _ = shipped.wait_for(|p| *p >= end).await;
    }

    /// One round of the roller now: this sidecar's heartbeat, then a roll of the hourly bill (tests; the
    /// roller also runs every second). `None` without a ledger.
    pub async fn roll_bill(&self) -> Option<Result<bill::Rolled, sqlx::Error>> {
        let roller = self.ledger_tasks.as_ref()?.roller.as_ref()?;
        Some(roller.round().await)
    }

    /// Makes every report delivery that is due now (tests; the deliverer also runs every second). Empty
    /// without a ledger or destinations.
    pub async fn deliver_reports(&self) -> Result<Vec<Attempt>, sqlx::Error> {
        let mut made = Vec::new();
        if let Some(tasks) = &self.ledger_tasks {
            tasks.deliverer.enqueue(self.state.meter.now()).await?;
            while let Some(a) = tasks.deliverer.deliver_one(self.state.meter.now()).await? {
                made.push(a);
            }
        }
        Ok(made)
    }

    /// Runs until `signal` completes, then shuts down in order.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        self.shutdown().await;
    }

    /// The shutdown order of the module doc.
    pub async fn shutdown(self) {
        let started = std::time::Instant::now();
        // 1 + 2: listeners stop; connections finish their current call.
        self.stop_accepting.cancel();
        self.tracker.close();
        tracing::info!(
            calls = self.tracker.len(),
            "shutting down: listeners closed, draining calls in flight"
        );
        // 3: past the deadline, drop what is left (each dropped stream records itself).
        if tokio::time::timeout(self.drain_timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(drain_timeout = ?self.drain_timeout, "drain deadline passed; aborting open calls");
            self.abort.cancel();
            self.tracker.wait().await;
        }
        // 3b: every call has finished: the spans queued go out (bounded; the rest are lost, counted).
        if let Some(exporter) = self.state.meter.exporter() {
            exporter.close(SPANS_BOUND).await;
        }
        if let Some(tasks) = self.ledger_tasks {
            // 4: every record on disk.
            tasks.journal.close();
            tasks.writer.join().await;
            // 5: ship what Postgres will take, within the deadline (a short one when it is not answering).
            let reachable = tasks
                .ledger
                .reachable
                .load(std::sync::atomic::Ordering::Relaxed);
            let deadline = if reachable {
                tasks.ship_deadline
            } else {
                tasks.ship_deadline.min(UNREACHABLE_BOUND)
            };
            tracing::info!(
                records = tasks.journal.backlog().pending_records,
                ?deadline,
                database_reachable = reachable,
                "shutting down: journal closed, shipping what is left"
            );
            tasks.stop.cancel();
            let mut shipper = tasks.shipper;
            if tokio::time::timeout(deadline, &mut shipper).await.is_err() {
                tasks.drain.cancel();
                let _ = shipper.await;
            }
            // 6: the roller's last round; the deliverer's current delivery; the budgets' refresher — together,
            // bounded (briefly when the database is not answering: there is nothing to finish there).
            tasks.billing_stop.cancel();
            let reachable = tasks
                .ledger
                .reachable
                .load(std::sync::atomic::Ordering::Relaxed);
            let bound = if reachable {
                crate::webhook::WEBHOOK_TIMEOUT + Duration::from_secs(2)
            } else {
                UNREACHABLE_BOUND
            };
            let mut workers = [tasks.rolling, tasks.delivering, tasks.budgeting];
            let all = futures_util::future::join_all(workers.iter_mut());
            if tokio::time::timeout(bound, all).await.is_err() {
                for w in &workers {
                    w.abort();
                }
            }
            let left = tasks.journal.backlog().pending_records;
            if left > 0 {
                tracing::warn!(
                    records = left,
                    "records left in the journal; they are shipped at the next start"
                );
            }
        }
        // 7: the simulator last.
        if let Some(sim) = self.sim {
            sim.shutdown().await;
        }
        tracing::info!(took = ?started.elapsed(), "shut down");
    }
}

/// How long shutdown gives the spans still queued to reach the collector.
const SPANS_BOUND: Duration = Duration::from_secs(2);

/// How long shutdown gives work that needs the database once it is not answering (shipping, the last roll).
const UNREACHABLE_BOUND: Duration = Duration::from_secs(2);

/// The shared state: the meter (with the injected or the journal's recorder, and clock), metrics, and the
/// journal and ledger handles for the admin listener.
fn app_state(
    settings: &Settings,
    injected: Injected,
    metrics: Metrics,
    ledger_tasks: Option<&LedgerTasks>,
) -> AppState {
    let recorder: Arc<dyn Recorder> = match (injected.recorder, ledger_tasks) {
        (Some(r), _) => r,
        (None, Some(tasks)) => Arc::new(tasks.journal.clone()),
        (None, None) => Arc::new(MemoryRecorder::default()),
    };
    AppState {
        meter: Meter::new(
            settings.prices.clone(),
            settings.billing_timezone,
            injected.clock.unwrap_or_else(Clock::system),
            metrics.instance.clone(),
            recorder,
        ),
        metrics,
        journal: ledger_tasks.map(|t| t.journal.clone()),
        ledger: ledger_tasks.map(|t| t.ledger.clone()),
        deliveries: ledger_tasks.map(|t| t.delivery_status.clone()),
        timezone: settings.billing_timezone,
        admin_token: settings.admin_token.clone(),
        api_keys: settings.api_keys.clone(),
        reconcile: settings.reconcile.clone(),
        budgets: None,
    }
}

/// Spawns both accept loops as owned tasks. The admin listener gets its own small pool: a flood on the
/// proxy must not lock operators out.
fn serve(
    conns: &Connections,
    settings: &Settings,
    proxy_listener: TcpListener,
    proxy: Proxy,
    admin_listener: TcpListener,
    state: &AppState,
) {
    let proxy_service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let proxy = proxy.clone();
        async move { Ok::<_, Infallible>(proxy.handle(req.map(axum::body::Body::new)).await) }
    });
    let admin_service = hyper_util::service::TowerToHyperService::new(admin::router(state.clone()));
    let admin_conns = Connections {
        limits: ConnectionLimits::new(ADMIN_MAX_CONNECTIONS, settings.header_read_timeout),
        ..conns.clone()
    };
    conns
        .tracker
        .spawn(conns.clone().serve(proxy_listener, proxy_service));
    conns
        .tracker
        .spawn(admin_conns.serve(admin_listener, admin_service));
}

/// Opens the journal and starts the shipper into a lazily connected ledger.
fn start_ledger(
    ls: &LedgerSettings,
    timezone: chrono_tz::Tz,
    metrics: &Metrics,
) -> anyhow::Result<LedgerTasks> {
    let (journal, writer) = Journal::open(ls.journal.clone()).with_context(|| {
        format!(
            "invalid setting --journal-dir: cannot open {}",
            ls.journal.dir.display()
        )
    })?;
    let ledger = Ledger::connect_lazy(&ls.database_url)
        .map_err(|e| anyhow::anyhow!("invalid setting --database-url (DATABASE_URL): {e}"))?;
    let cursor = journal.cursor();
    let shipped = cursor.committed();
    let held = journal.held();
    let shipper = Shipper::new(
        ledger.clone(),
        cursor,
        held.clone(),
        metrics.instance.clone(),
        ls.migrate.then(|| ls.database_url.clone()),
    );
    let (stop, drain) = (CancellationToken::new(), CancellationToken::new());
    let shipper = tokio::spawn(shipper.run(stop.clone(), drain.clone()));
    let bill = Bill::new(ledger.pool().clone(), ls.billing_grace);
    let webhook = match &ls.report_webhook {
        Some(url) => Some((
            url.clone(),
            crate::webhook::Webhook::new(url.clone()).context("--report-webhook client")?,
        )),
        None => None,
    };
    let destinations = Destinations {
        dir: ls.report_dir.clone(),
        webhook,
    };
    Ok(LedgerTasks {
        bill,
        held,
        billing_stop: CancellationToken::new(),
        instance: uuid::Uuid::now_v7(),
        roller: None,
        rolling: tokio::spawn(async {}),
        retention: ls.retention,
        deliverer: Deliverer::new(ledger.pool().clone(), timezone, destinations),
        delivering: tokio::spawn(async {}),
        budgeting: tokio::spawn(async {}),
        delivery_status: StatusCell::default(),
        journal,
        ledger,
        writer,
        shipped,
        shipper,
        stop,
        drain,
        ship_deadline: ls.ship_deadline,
    })
}

/// The budgets of the settings, if any (`budget::gate::Budgets::start`), their tracker on the meter.
fn start_budgets(
    settings: &Settings,
    state: &AppState,
    ledger_tasks: Option<&LedgerTasks>,
) -> anyhow::Result<Option<Arc<Budgets>>> {
    if settings.budgets.is_empty() {
        return Ok(None);
    }
    let options = crate::budget::gate::Options {
        budgets: settings.budgets.clone(),
        timezone: settings.billing_timezone,
        reservation: settings.budget_reservation,
        when_unknown: settings.budget_when_database_down,
        unpriced: settings.budget_unpriced,
        prices: settings.prices.clone(),
    };
    let coordinated = ledger_tasks
        .filter(|_| settings.budget_coordination == Coordination::Postgres)
        .map(|t| {
            (
                t.ledger.pool().clone(),
                t.ledger.admission_pool().clone(),
                t.instance,
            )
        });
    let budgets = Budgets::start(
        options,
        state.meter.now(),
        state.metrics.instance.clone(),
        ledger_tasks.map(|t| &t.journal),
        coordinated,
    )?;
    state.meter.set_budgets(budgets.tracker().clone());
    Ok(Some(Arc::new(budgets)))
}

/// The upstream's base URI, starting the in-process simulator for `--upstream sim`.
async fn start_upstream(
    setting: &UpstreamSetting,
) -> anyhow::Result<(Option<sim::SimServer>, Uri)> {
    match setting {
        UpstreamSetting::Sim => {
            let server =
                sim::SimServer::start(sim::SimOptions::default(), ([127, 0, 0, 1], 0).into())
                    .await
                    .context("starting the built-in simulator")?;
            let uri = format!("http://{}", server.addr)
                .parse()
                .context("simulator address")?;
            Ok((Some(server), uri))
        }
        UpstreamSetting::Url(u) => Ok((None, u.clone())),
    }
}

async fn bind(addr: SocketAddr, setting: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("invalid setting {setting}: cannot listen on {addr}"))
}
