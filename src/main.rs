//! The doorway: parse settings, start logging, run the chosen command until a signal.

use clap::Parser;
use deepseek_meter::config::{self, Cli, Command, Settings};
use deepseek_meter::{app::App, billing::read, commands, ledger::Ledger, server, sim, telemetry};
use std::process::ExitCode;

/// jemalloc with its background purge thread: memory freed after a burst goes back to the OS within
/// seconds. glibc's malloc kept the whole peak of 2,000 concurrent streams (RSS 105 MB, the connections long
/// closed) because the freed chunks sit between live ones; `BENCH_ONLY=w4 cargo bench --bench proxy`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = telemetry::init(cli.log_format);
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

async fn run(mut cli: Cli) -> anyhow::Result<()> {
    let signal = server::shutdown_signal();
    let mut args = match &mut cli.command {
        Command::Sim(args) => return sim::run(args.clone(), signal).await,
        Command::Serve(args) | Command::Migrate(args) | Command::Prices(args) => {
            std::mem::take(args)
        }
        Command::Report(r) => Box::new(std::mem::take(&mut r.serve)),
        Command::Reconcile(r) => Box::new(std::mem::take(&mut r.serve)),
        Command::Reprice(r) => {
            if r.serve.prices.is_none() {
                anyhow::bail!("invalid reprice flag --prices: required (the corrected price book)");
            }
            Box::new(std::mem::take(&mut r.serve))
        }
    };
    args.dashscope_api_key = std::env::var("DASHSCOPE_API_KEY").ok();
    args.dashscope_api_key_file = std::env::var("DASHSCOPE_API_KEY_FILE").ok();
    let settings = Settings::resolve(*args, config::load_file(cli.config.as_deref())?)?;
    match cli.command {
        Command::Serve(_) => App::start(settings).await?.run_until(signal).await,
        Command::Migrate(_) => {
            let url = settings.ledger.map(|l| l.database_url).unwrap_or_default();
            Ledger::create_and_migrate(&url).await?;
            eprintln!("deepseek-meter: database migrated");
        }
        Command::Prices(_) => print!("{}", settings.prices.render_table()),
        Command::Report(r) => {
            let url = settings.ledger.map(|l| l.database_url).unwrap_or_default();
            let texts = [&r.from, &r.to, &r.by, &r.granularity].map(|t| t.as_deref());
            let text = read::cli_report(&url, settings.billing_timezone, texts, r.format).await?;
            print!("{text}");
        }
        Command::Reconcile(r) => print!("{}", commands::reconcile(&settings, &r).await?),
        Command::Reprice(r) => commands::reprice(&settings, &r).await?,
        Command::Sim(_) => {}
    }
    Ok(())
}
