//! The span exporter: a bounded queue the meter step puts spans into without waiting (a full queue drops the
//! span, counted), and one task that sends them in batches over OTLP/HTTP — up to [`BATCH`] spans, or what
//! came within [`LINGER`]. A batch the collector does not take within the timeout (or refuses) is lost,
//! counted and logged once per outage; calls and ledger rows never wait for any of it.

use super::span::{Context, Span};
use super::{OtelSettings, Trace};
use crate::metrics::InstanceMetrics;
use crate::record::CallRecord;
use crate::webhook::Webhook;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Spans waiting to be sent, at most (about 1 KiB each).
pub const QUEUE: usize = 4096;
/// Spans in one POST, at most.
pub const BATCH: usize = 512;
/// How long a batch waits for more spans after its first, by default (`OTEL_BSP_SCHEDULE_DELAY`).
pub const LINGER: Duration = Duration::from_millis(500);

/// Cheap to clone: a handle on the queue.
#[derive(Clone)]
pub struct Exporter {
    inner: Arc<Inner>,
}

struct Inner {
    queue: mpsc::Sender<Span>,
    metrics: InstanceMetrics,
    server_address: Option<String>,
    server_port: Option<u16>,
    gen_ai_system: bool,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
    closing: CancellationToken,
}

impl Exporter {
    /// Starts the sending task. `upstream`: the URL calls go to (`server.address`, `server.port`).
    pub fn start(
        settings: &OtelSettings,
        upstream: &http::Uri,
        metrics: InstanceMetrics,
    ) -> anyhow::Result<Exporter> {
        let hook = Webhook::with_timeout(settings.traces_endpoint.clone(), settings.timeout)?;
        let (queue, rx) = mpsc::channel(QUEUE);
        let sender = Sender {
            linger: settings.schedule_delay,
            hook,
            headers: settings.headers.clone(),
            resource: settings.resource.clone(),
            metrics: metrics.clone(),
        };
        let closing = CancellationToken::new();
        let task = tokio::spawn(sender.run(rx, closing.clone()));
        let port = upstream.port_u16().or(match upstream.scheme_str() {
            Some("https") => Some(443),
            Some("http") => Some(80),
            _ => None,
        });
        Ok(Exporter {
            inner: Arc::new(Inner {
                queue,
                metrics,
                server_address: upstream.host().map(str::to_owned),
                server_port: port,
                gen_ai_system: settings.gen_ai_system,
                task: std::sync::Mutex::new(Some(task)),
                closing,
            }),
        })
    }

    /// Queues the span of a finished call (if its trace is sampled). Never waits.
    pub fn export(
        &self,
        record: &CallRecord,
        trace: Trace,
        response_model: Option<&str>,
        finish_reasons: &[String],
    ) {
        if !trace.sampled() {
            return;
        }
        let me = &self.inner;
        let cx = Context {
            server_address: me.server_address.as_deref(),
            server_port: me.server_port,
            gen_ai_system: me.gen_ai_system,
            response_model,
            finish_reasons,
        };
        if me.queue.try_send(Span::of(record, trace, &cx)).is_err() {
            me.metrics.otel_spans("dropped", 1);
        }
    }

    /// Sends what is queued and stops (shutdown, after the last call finished), within `bound`; what is
    /// still unsent then is lost.
    pub async fn close(&self, bound: Duration) {
        self.inner.closing.cancel();
        let task = self.inner.task.lock().ok().and_then(|mut t| t.take());
        if let Some(mut task) = task {
            if tokio::time::timeout(bound, &mut task).await.is_err() {
                task.abort();
                // What was still queued is lost (the batch in flight too, uncounted: it may have landed).
                let left = QUEUE - self.inner.queue.capacity();
                if left > 0 {
                    self.inner.metrics.otel_spans("dropped", left as u64);
                }
            }
        }
    }
}

struct Sender {
    linger: Duration,
    hook: Webhook,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    resource: Vec<(String, String)>,
    metrics: InstanceMetrics,
}

impl Sender {
    async fn run(self, mut rx: mpsc::Receiver<Span>, closing: CancellationToken) {
        let mut failing = false;
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            // Closing wins over more spans: the drain below sends what is queued in whole batches.
            let first = tokio::select! {
                biased;
                _ = closing.cancelled() => None,
                next = rx.recv() => next,
            };
            let Some(first) = first else {
                break;
            };
            batch.push(first);
            let linger = tokio::time::sleep(self.linger);
            tokio::pin!(linger);
            while batch.len() < BATCH {
                tokio::select! {
                    biased;
                    _ = closing.cancelled() => break,
                    _ = &mut linger => break,
                    next = rx.recv() => match next {
                        Some(s) => batch.push(s),
                        None => break,
                    },
                }
            }
            self.send(&mut batch, &mut failing).await;
        }
        // Closing: what is queued goes out now, batch by batch.
        while let Ok(s) = rx.try_recv() {
            batch.push(s);
            if batch.len() == BATCH {
                self.send(&mut batch, &mut failing).await;
            }
        }
        if !batch.is_empty() {
            self.send(&mut batch, &mut failing).await;
        }
    }

    async fn send(&self, batch: &mut Vec<Span>, failing: &mut bool) {
        let n = batch.len() as u64;
        let body = Bytes::from(super::proto::export_request(&self.resource, batch));
        batch.clear();
        match self
            .hook
            .post(body, "application/x-protobuf", &self.headers)
            .await
        {
            Ok(()) => {
                self.metrics.otel_spans("exported", n);
                if *failing {
                    tracing::info!("OTLP collector reachable again: spans are exported");
                    *failing = false;
                }
            }
            Err(e) => {
                self.metrics.otel_spans("failed", n);
                if !*failing {
                    tracing::warn!(spans = n, error = %e, "OTLP export failed: these spans are lost (calls are not affected)");
                    *failing = true;
                }
            }
        }
    }
}
