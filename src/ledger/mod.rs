//! All SQL for calls: the `usage_ledger` table, its migrations, inserts and reads, its partitions.
//!
//! - [`insert`]: a batch of records with the rollups that commit with them. Inserts are idempotent (`ON
//!   CONFLICT (call_id, billing_hour) DO NOTHING`): a record shipped twice (a crash between insert and
//!   checkpoint, two replays) is one row, counted once.
//! - [`partitions`]: the ledger's monthly partitions, created ahead, and retention by dropping whole ones.
//!
//! Two connection pools: one for background work (the shipper, the roller, the refresher, the deliverers,
//! admin reads) and a small one for the request path (budget admissions in Postgres), so a busy background
//! never makes a call wait for a connection. What to do when an insert fails is the shipper's business
//! (`crate::shipper`): this module only talks to Postgres.

pub mod insert;
pub mod partitions;

use crate::record::CallRecord;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use std::str::FromStr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connections of the background pool: the shipper, the roller, the refresher, two deliverers and admin reads
/// take turns on them; none is held across a network call to anything but Postgres.
pub const BACKGROUND_CONNECTIONS: u32 = 4;
/// Connections of the request path's pool: one budget admission each, a round trip of well under a millisecond.
pub const ADMISSION_CONNECTIONS: u32 = 4;

/// The batch size from which [`Ledger::insert`] sends rows by binary `COPY`. Measured by `bench/ledger` (Postgres
/// backend CPU per row, 2 rounds, 2026-12-05): at 5,000 rows binary COPY 15.6–15.7 µs vs UNNEST 16.7–17.4 µs; at
/// 1,000 the same (20.9–21.3 vs 21.1–21.4); at 120, the shipper's batch at ~6,000 calls/s, UNNEST slightly
/// cheaper (26.9–27.6 vs 27.3–28.6, within the rounds' spread).
pub const COPY_FROM: usize = 5_000;

#[derive(Clone)]
pub struct Ledger {
    pool: PgPool,
    /// The request path's own pool (budget admissions).
    admission: PgPool,
    /// Last known reachability, for `/readyz`.
    pub reachable: Arc<AtomicBool>,
    /// The schema is this build's (migrated at startup, or `--no-migrate`): readers may start.
    migrated: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Ledger {
    /// A pool that connects on first use: an unreachable database must not stop the proxy.
    pub fn connect_lazy(url: &str) -> Result<Ledger, sqlx::Error> {
        let options = PgConnectOptions::from_str(url)?.disable_statement_logging();
        let pool = PgPoolOptions::new()
            .max_connections(BACKGROUND_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(options.clone());
        let admission = PgPoolOptions::new()
            .max_connections(ADMISSION_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(1))
            .connect_lazy_with(options);
        Ok(Ledger {
            pool,
            admission,
            reachable: Arc::new(AtomicBool::new(false)),
            migrated: Arc::new(tokio::sync::watch::channel(false).0),
        })
    }

    /// Says the schema is ready (the shipper, once it has migrated, or at once with `--no-migrate`).
    pub fn set_migrated(&self) {
        self.migrated.send_replace(true);
    }

    /// Waits until the schema is ready.
    pub async fn wait_migrated(&self) {
        let mut rx = self.migrated.subscribe();
        let _ = rx.wait_for(|m| *m).await;
    }

    /// The background pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The request path's pool (budget admissions).
    pub fn admission_pool(&self) -> &PgPool {
        &self.admission
    }

    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    /// `deepseek-meter migrate`: creates the database if missing and applies the migrations. Idempotent;
    /// several sidecars may run it at once (sqlx takes an advisory lock around the migrations).
    pub async fn create_and_migrate(url: &str) -> anyhow::Result<Ledger> {
        use anyhow::Context as _;
        create_database_if_missing(url)
            .await
            .context("creating the ledger database")?;
        let ledger = Ledger::connect_lazy(url)
            .map_err(|e| anyhow::anyhow!("invalid setting --database-url (DATABASE_URL): {e}"))?;
        ledger.migrate().await.context("applying migrations")?;
        Ok(ledger)
    }

    /// Inserts a batch with the rollups that commit with it; returns how many rows were new. A batch of
    /// [`COPY_FROM`] records or more (the shipper's full batches: a backlog draining) goes by binary `COPY`
    /// ([`insert::copy_binary_insert`]), smaller ones by `UNNEST` ([`insert::insert`]); both store the same rows
    /// and sums. A COPY that fails for any reason but the rows' data (a role without the `TEMPORARY` privilege,
    /// say) is logged and the batch goes by `UNNEST` instead: the way rows travel never stops them. A data
    /// error is returned as it is, for the caller to split the batch.
    pub async fn insert(&self, records: &[CallRecord]) -> Result<u64, sqlx::Error> {
        if records.len() < COPY_FROM {
            return insert::insert(&self.pool, records).await;
        }
        match insert::copy_binary_insert(&self.pool, records).await {
            Err(sqlx::Error::Database(e)) if !is_invalid_data(e.as_ref()) => {
                tracing::warn!(error = %e, "ledger COPY failed; inserting the batch by UNNEST instead");
                insert::insert(&self.pool, records).await
            }
            done => done,
        }
    }

    /// One ledger row as JSON, with its effective cost (price corrections included); money as decimal
    /// strings.
    pub async fn call(&self, call_id: Uuid) -> Result<Option<serde_json::Value>, sqlx::Error> {
        let row: Option<(serde_json::Value,)> = sqlx::query_as(
            "SELECT (to_jsonb(l) - 'cost_total' - 'cost_input' - 'recorded_at')
                    || jsonb_build_object('cost_total', l.cost_total::text, 'cost_input', l.cost_input::text,
                                          'effective_cost', e.cost::text, 'adjustment_yuan', e.adjustment::text)
             FROM usage_ledger l JOIN effective_costs e USING (call_id, billing_hour) WHERE l.call_id = $1",
        )
        .bind(call_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.0))
    }
}

/// Creates the database named in `url` if it does not exist (connecting to `postgres` to do so).
pub async fn create_database_if_missing(url: &str) -> Result<(), sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?;
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin = options
        .database("postgres")
        .disable_statement_logging()
        .connect()
        .await?;
    let exists: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_optional(&mut admin)
        .await?;
    if exists.is_none() {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&sql).execute(&mut admin).await {
            Ok(_) => {}
            // Another sidecar created it first.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A small pool for a command that runs to its end (`report`, `reconcile`, `reprice`). It connects once first,
/// so a database that cannot be reached is named with what went wrong — refused, no such host, a wrong
/// password — and where (never the password), instead of a pool's timeout.
pub async fn command_pool(url: &str) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| anyhow::anyhow!("invalid setting --database-url (DATABASE_URL): {e}"))?;
    let place = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    );
    let cannot = |why: String| {
        anyhow::anyhow!(
            "cannot reach the ledger database at {place} (--database-url, DATABASE_URL): {why}"
        )
    };
    let options = options.disable_statement_logging();
    match tokio::time::timeout(CONNECT_BOUND, options.connect()).await {
        Err(_) => return Err(cannot(format!("no answer within {CONNECT_BOUND:?}"))),
        Ok(Err(e)) => return Err(cannot(e.to_string())),
        Ok(Ok(first)) => {
            let _ = sqlx::Connection::close(first).await;
        }
    }
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(CONNECT_BOUND)
        .connect_with(options)
        .await
        .map_err(|e| cannot(e.to_string()))
}

/// How long a command waits for the database to answer a connection.
pub const CONNECT_BOUND: Duration = Duration::from_secs(5);

/// Data exceptions (22) and integrity violations (23): the rows, not the connection or the way they travel, are
/// at fault.
pub fn is_invalid_data(e: &dyn sqlx::error::DatabaseError) -> bool {
    e.code()
        .is_some_and(|c| c.starts_with("22") || c.starts_with("23"))
}
