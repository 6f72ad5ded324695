//! Logging: where log lines go and in what form.

use crate::config::LogFormat;

/// `info`, without Postgres's notices (`relation … already exists, skipping` at every start's migration check).
pub const DEFAULT_FILTER: &str = "info,sqlx::postgres::notice=warn";

/// Log lines (one per call at `info`) are written to stderr by a thread of their own, so no request waits
/// on a write syscall. Not lossy: if stderr stalls long enough to fill the queue, logging waits. The guard
/// flushes the queue when dropped. Colour only when stderr is a terminal: a redirected log stays plain.
pub fn init(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("METER_LOG")
        .unwrap_or_else(|_| DEFAULT_FILTER.into());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    guard
}
