//! Reconciliation of the ledger with the platform's own bill (DESIGN §11): `deepseek-meter reconcile --bill
//! FILE` and `GET /v1/reconcile`.
//!
//! - [`import`]: the bill-detail CSV export → lines (pure; a bad line is an error naming it);
//! - [`compare`]: ledger lines against bill lines → a verdict per hour (pure);
//! - [`store`]: the SQL — the `platform_bill` table (idempotent imports), the ledger's side, the runs;
//! - [`render`]: the result as a table, JSON or CSV.

pub mod compare;
pub mod import;
pub mod render;
pub mod store;

use serde::Deserialize;

/// The `[reconcile]` table of the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    /// The ID (`llm-…`) of the workspace calls without `X-DashScope-WorkSpace` run in (the console shows it).
    /// Unset: workspaces are left out of the comparison.
    #[serde(default)]
    pub default_workspace: Option<String>,
    /// Header names of the export's columns, for an export whose headers are neither the English nor the
    /// Chinese set.
    #[serde(default)]
    pub columns: import::Columns,
}

/// The `[reconcile]` table (absent: the defaults); the error in one line.
pub fn parse(value: Option<&toml::Value>) -> Result<ReconcileConfig, String> {
    match value {
        None => Ok(ReconcileConfig::default()),
        Some(v) => v.clone().try_into().map_err(|e: toml::de::Error| {
            e.message().lines().next().unwrap_or("invalid").to_owned()
        }),
    }
}

/// What `reconcile` was asked: an export to import first (its bytes), the period (default: the hours the
/// export covers), and whether to record the run (the CLI and `POST /v1/reconcile` do; a `GET` only reads).
#[derive(Debug, Default)]
pub struct Request<'a> {
    pub bill: Option<&'a [u8]>,
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    pub to: Option<chrono::DateTime<chrono::Utc>>,
    pub record: bool,
}

/// What the ledger's side needs from the settings.
pub struct Context<'a> {
    pub config: &'a ReconcileConfig,
    pub keys: &'a crate::keys::ApiKeys,
    pub prices: &'a crate::pricing::PriceBook,
    pub timezone: chrono_tz::Tz,
}

#[derive(Debug)]
pub struct Outcome {
    pub imported: Option<store::Imported>,
    pub reconciliation: compare::Reconciliation,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("the bill cannot be imported (nothing was): {0}")]
    Import(#[from] import::ImportError),
    #[error("no period: give --from and --to, or a --bill export with lines")]
    NoPeriod,
    #[error("--from must be before --to")]
    EmptyPeriod,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Imports the export (if any), compares the period, and records the run (when asked). `progress` hears each
/// stage.
pub async fn reconcile(
    pool: &sqlx::PgPool,
    cx: &Context<'_>,
    req: Request<'_>,
    now: chrono::DateTime<chrono::Utc>,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Outcome, ReconcileError> {
    use sha2::Digest as _;
    let mut imported = None;
    let mut covered = None;
    if let Some(bytes) = req.bill {
        progress("reading the export");
        let bill = import::read(bytes, &cx.config.columns, cx.timezone)?;
        progress(&format!("importing {} lines", bill.lines.len()));
        let sha = hex::encode(sha2::Sha256::digest(bytes));
        imported = Some(store::import(pool, &bill, &sha, now).await?);
        covered = store::period_of(&bill.lines);
    }
    let from = req
        .from
        .or(covered.map(|c| c.0))
        .ok_or(ReconcileError::NoPeriod)?;
    let to = req
        .to
        .or(covered.map(|c| c.1))
        .ok_or(ReconcileError::NoPeriod)?;
    if from >= to {
        return Err(ReconcileError::EmptyPeriod);
    }
    progress("reading the ledger");
    let ledger = store::ledger_lines(pool, from, to, cx.keys, cx.prices).await?;
    let bill = store::bill_lines(pool, from, to).await?;
    progress(&format!(
        "comparing {} ledger and {} bill lines",
        ledger.len(),
        bill.len()
    ));
    let r = compare::compare(
        from,
        to,
        &ledger,
        &bill,
        cx.config.default_workspace.as_deref(),
    );
    if req.record {
        store::record(pool, &r, now).await?;
    }
    Ok(Outcome {
        imported,
        reconciliation: r,
    })
}
