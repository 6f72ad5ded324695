//! The doorway: parse settings, start logging, run the chosen command until a signal.

use clap::Parser;
use deepseek_meter::config::{self, Cli, Command, LogFormat, Settings};
use deepseek_meter::{app::App, ledger::Ledger, sim};
use std::process::ExitCode;

/// jemalloc with its background purge thread: memory freed after a burst goes back to the OS within
/// seconds. glibc's malloc kept the whole peak of 2,000 concurrent streams (RSS 105 MB, the connections long
/// closed) because the freed chunks sit between live ones; `BENCH_ONLY=w4 cargo bench --bench proxy`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = init_tracing(cli.log_format);
    let result = run(cli).await;
    drop(log); // every log line out before the last word
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deepseek-meter: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let signal = shutdown_signal();
    match cli.command {
        Command::Serve(mut args) => {
            args.dashscope_api_key = std::env::var("DASHSCOPE_API_KEY").ok();
            let file = config::load_file(cli.config.as_deref())?;
            let app = App::start(Settings::resolve(*args, file)?).await?;
            app.run_until(signal).await;
        }
        Command::Sim(args) => sim::run(args, signal).await?,
        Command::Migrate(args) => {
            Ledger::create_and_migrate(&args.database_url).await?;
            eprintln!("deepseek-meter: database migrated");
        }
        Command::Prices(args) => print!("{}", args.price_book()?.render_table()),
    }
    Ok(())
}

/// Log lines (one per call at `info`) are written to stderr by a thread of their own, so no request waits
/// on a write syscall. Not lossy: if stderr stalls long enough to fill the queue, logging waits. The guard
/// flushes the queue when dropped. Colour only when stderr is a terminal: a redirected log stays plain.
fn init_tracing(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("METER_LOG").unwrap_or_else(|_| "info".into());
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

/// SIGTERM or SIGINT. The handlers are registered when this is called, not when the future is first
/// polled: a signal that arrives while the app is still starting must drain it, not kill it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
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
