//! The doorway: parse settings, start logging, run the chosen command until a signal.

use clap::Parser;
use deepseek_meter::config::{self, Cli, Command, LogFormat};
use deepseek_meter::{app, pricing, record, sim};
use std::process::ExitCode;
use std::sync::Arc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match cli.command {
        Command::Serve(mut args) => {
            args.dashscope_api_key = std::env::var("DASHSCOPE_API_KEY").ok();
            match config::load_file(cli.config.as_deref())
                .map_err(config::ConfigError::from)
                .and_then(|f| config::resolve(args, f))
            {
                Ok(settings) => {
                    let recorder = Arc::new(record::MemoryRecorder::default());
                    match app::App::start(settings, pricing::PriceBook::builtin(), recorder).await {
                        Ok(app) => Ok(app.run_until(shutdown_signal()).await),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Sim(args) => sim::run(args, shutdown_signal()).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deepseek-meter: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("METER_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
