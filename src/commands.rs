//! The commands that run to their end against the ledger (`reconcile`, `reprice`): flags read, a small pool,
//! the library's work, the result printed. `main.rs` only dispatches to them.

use crate::config::{ReconcileArgs, RepriceArgs, Settings};
use crate::reconcile as reconciliation;

/// `deepseek-meter reconcile`: imports the export (if given), compares, records the run, and returns the
/// result in the format asked. Stages are shown on a terminal (stderr), never when piped.
pub async fn reconcile(settings: &Settings, r: &ReconcileArgs) -> anyhow::Result<String> {
    use crate::calendar::parse_instant;
    use anyhow::Context as _;
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
    let cx = reconciliation::Context {
        config: &settings.reconcile,
        keys: &settings.api_keys,
        prices: &settings.prices,
        timezone: tz,
    };
    let req = reconciliation::Request {
        record: true,
        bill: bytes.as_deref(),
        from,
        to,
    };
    let outcome = reconciliation::reconcile(&pool, &cx, req, chrono::Utc::now(), &progress).await?;
    pool.close().await;
    if let Some(i) = outcome.imported {
        eprintln!(
            "deepseek-meter: imported the bill: {} new lines, {} changed, {} unchanged, {} of other products skipped",
            i.new, i.changed, i.unchanged, i.skipped
        );
    }
    Ok(reconciliation::render::render(
        &outcome.reconciliation,
        r.format,
        tz,
    ))
}

/// `deepseek-meter reprice`: one adjustment per call the corrected book prices differently; the summary on
/// stdout, progress (hours done) on a terminal.
pub async fn reprice(settings: &Settings, r: &RepriceArgs) -> anyhow::Result<()> {
    use crate::billing::reprice;
    use crate::calendar::parse_instant;
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
    crate::ledger::command_pool(&url).await
}
