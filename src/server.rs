//! The accept loop, shared by the proxy listener, the admin listener and the simulator: each connection is
//! an owned task (a [`TaskTracker`]) that stops accepting, finishes its current call or is aborted when
//! told, and the number of open connections and the time to send a request head are bounded.

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

/// SIGTERM or SIGINT. The handlers are registered when this is called, not when the future is first
/// polled: a signal that arrives while the app is still starting must drain it, not kill it.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
