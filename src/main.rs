//! The doorway: parse settings, start logging, run the chosen command until a signal.

use clap::Parser;
use deepseek_meter::config::{self, Cli, Command, Settings};
use deepseek_meter::{app::App, billing::read, ledger::Ledger, server, sim, telemetry};
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
        Command::Reconcile(r) => print!("{}", cli_reconcile(&settings, &r).await?),
        Command::Reprice(r) => cli_reprice(&settings, &r).await?,
        Command::Sim(_) => {}
    }
    Ok(())
}

/// `deepseek-meter reconcile`: imports the export (if given), compares, records the run, and returns the
/// result in the format asked. Stages are shown on a terminal (stderr), never when piped.
async fn cli_reconcile(settings: &Settings, r: &config::ReconcileArgs) -> anyhow::Result<String> {
    use anyhow::Context as _;
    use deepseek_meter::billing::report::parse_instant;
    use deepseek_meter::reconcile;
    use std::io::IsTerminal as _;
    let tz = settings.billing_timezone;
    let instant = |flag: &str, text: &Option<String>| {
        text.as_deref()
            .map(|t| {
                parse_instant(t, tz)
                    .map_err(|e| anyhow::anyhow!("invalid reconcile flag --{flag}: {e}"))
            })
            .transpose()
    };
    let (from, to) = (instant("from", &r.from)?, instant("to", &r.to)?);
    let bytes = match &r.bill {
        Some(path) => Some(std::fs::read(path).with_context(|| {
            format!(
                "invalid reconcile flag --bill: cannot read {}",
                path.display()
            )
        })?),
        None => None,
    };
    let pool = command_pool(settings).await?;
    let terminal = std::io::stderr().is_terminal();
    let progress = |stage: &str| {
        if terminal {
            eprintln!("reconcile: {stage}…");
        }
    };
    let cx = reconcile::Context {
        config: &settings.reconcile,
        keys: &settings.api_keys,
        prices: &settings.prices,
        timezone: tz,
    };
    let req = reconcile::Request {
        bill: bytes.as_deref(),
        from,
        to,
    };
    let outcome = reconcile::reconcile(&pool, &cx, req, chrono::Utc::now(), &progress).await?;
    pool.close().await;
    if let Some(i) = outcome.imported {
        eprintln!(
            "deepseek-meter: imported the bill: {} new lines, {} changed, {} unchanged, {} of other products skipped",
            i.new, i.changed, i.unchanged, i.skipped
        );
    }
    Ok(reconcile::render::render(
        &outcome.reconciliation,
        r.format,
        tz,
    ))
}

/// `deepseek-meter reprice`: one adjustment per call the corrected book prices differently; the summary on
/// stdout, progress (hours done) on a terminal.
async fn cli_reprice(settings: &Settings, r: &config::RepriceArgs) -> anyhow::Result<()> {
    use deepseek_meter::billing::report::parse_instant;
    use deepseek_meter::billing::reprice;
    use std::io::IsTerminal as _;
    let tz = settings.billing_timezone;
    let from = parse_instant(&r.from, tz)
        .map_err(|e| anyhow::anyhow!("invalid reprice flag --from: {e}"))?;
    let to =
        parse_instant(&r.to, tz).map_err(|e| anyhow::anyhow!("invalid reprice flag --to: {e}"))?;
    reprice::check_period(from, to).map_err(|e| anyhow::anyhow!("invalid reprice flags: {e}"))?;
    let pool = command_pool(settings).await?;
    let terminal = std::io::stderr().is_terminal();
    let progress = |done: u64, total: u64| {
        if terminal {
            eprint!("\rreprice: hour {done} of {total}");
            if done == total {
                eprintln!();
            }
        }
    };
    let out = reprice::reprice(
        &pool,
        &settings.prices,
        from,
        to,
        chrono::Utc::now(),
        &progress,
    )
    .await
    .map_err(|e| anyhow::anyhow!("reprice failed, nothing was changed: {e}"))?;
    pool.close().await;
    println!("{}", serde_json::to_string(&out).unwrap_or_default());
    Ok(())
}

/// A small pool for a command that runs to its end (`reconcile`, `reprice`).
async fn command_pool(settings: &Settings) -> anyhow::Result<sqlx::PgPool> {
    let url = settings
        .ledger
        .as_ref()
        .map(|l| l.database_url.clone())
        .unwrap_or_default();
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(&url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the ledger (--database-url, DATABASE_URL): {e}"))
}
