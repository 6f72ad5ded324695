//! All SQL for calls: the `usage_ledger` table, its migrations, inserts and reads.
//!
//! Inserts are idempotent (`ON CONFLICT (call_id) DO NOTHING`): a record shipped twice (a crash between
//! insert and checkpoint, two replays) is one row. What to do when an insert fails is the shipper's
//! business (`crate::shipper`): this module only talks to Postgres.

use crate::record::CallRecord;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use std::str::FromStr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone)]
pub struct Ledger {
    pool: PgPool,
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
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(options);
        Ok(Ledger {
            pool,
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

    pub fn pool(&self) -> &PgPool {
        &self.pool
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

    /// Inserts a batch; returns how many rows were new. In the same statement, each billing hour that got a
    /// new row is marked for the bill's roller (`bill_dirty_hours`, see `crate::bill`): a row and its mark
    /// commit together, or neither does.
    pub async fn insert(&self, records: &[CallRecord]) -> Result<u64, sqlx::Error> {
        let n = records.len();
        let mut call_id = Vec::with_capacity(n);
        let mut upstream_request_id = Vec::with_capacity(n);
        let mut protocol = Vec::with_capacity(n);
        let mut model = Vec::with_capacity(n);
        let mut stream = Vec::with_capacity(n);
        let mut status = Vec::with_capacity(n);
        let mut http_status = Vec::with_capacity(n);
        let mut error_code = Vec::with_capacity(n);
        let mut started_at = Vec::with_capacity(n);
        let mut finished_at = Vec::with_capacity(n);
        let mut billing_hour = Vec::with_capacity(n);
        let mut input = Vec::with_capacity(n);
        let mut cached = Vec::with_capacity(n);
        let mut cache_creation = Vec::with_capacity(n);
        let mut output = Vec::with_capacity(n);
        let mut reasoning = Vec::with_capacity(n);
        let mut answer = Vec::with_capacity(n);
        let mut usage_source = Vec::with_capacity(n);
        let mut priced = Vec::with_capacity(n);
        let mut price_version = Vec::with_capacity(n);
        let mut price_period = Vec::with_capacity(n);
        let mut cost_total = Vec::with_capacity(n);
        let mut cost_input = Vec::with_capacity(n);
        let mut reasoning_estimated = Vec::with_capacity(n);
        let mut key_fingerprint = Vec::with_capacity(n);
        let mut key_hint = Vec::with_capacity(n);
        let mut project = Vec::with_capacity(n);
        let mut end_user = Vec::with_capacity(n);
        let mut workspace = Vec::with_capacity(n);
        let mut api_key_id = Vec::with_capacity(n);
        let mut ttft_ms = Vec::with_capacity(n);
        let mut duration_ms = Vec::with_capacity(n);
        let big = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for r in records {
            call_id.push(r.call_id);
            upstream_request_id.push(r.upstream_request_id.as_deref());
            protocol.push(r.protocol.as_str());
            model.push(r.model.as_str());
            stream.push(r.stream);
            status.push(r.status.as_str());
            http_status.push(r.http_status.map(|s| s as i16));
            error_code.push(r.error_code.as_deref());
            started_at.push(r.started_at);
            finished_at.push(r.finished_at);
            billing_hour.push(r.billing_hour);
            input.push(big(r.input_tokens));
            cached.push(big(r.cached_tokens));
            cache_creation.push(big(r.cache_creation_tokens));
            output.push(big(r.output_tokens));
            reasoning.push(big(r.reasoning_tokens));
            answer.push(big(r.answer_tokens));
            usage_source.push(r.usage_source.as_str());
            priced.push(r.priced);
            price_version.push(r.price_version.as_deref());
            price_period.push(r.price_period.as_deref());
            cost_total.push(r.cost_total);
            cost_input.push(r.cost_input);
            reasoning_estimated.push(r.reasoning_estimated);
            key_fingerprint.push(r.key_fingerprint.as_deref());
            key_hint.push(r.key_hint.as_deref());
            project.push(r.project.as_deref());
            end_user.push(r.end_user.as_deref());
            workspace.push(r.workspace.as_deref());
            api_key_id.push(r.api_key_id.as_deref());
            ttft_ms.push(r.ttft_ms);
            duration_ms.push(r.duration_ms);
        }
        let inserted: i64 = sqlx::query_scalar(
            "WITH ins AS (INSERT INTO usage_ledger (call_id, upstream_request_id, protocol, model, stream, status, http_status,
                error_code, started_at, finished_at, billing_hour, input_tokens, cached_tokens, output_tokens,
                reasoning_tokens, answer_tokens, usage_source, priced, price_version, cost_total, key_fingerprint,
                key_hint, project, end_user, ttft_ms, duration_ms, workspace, api_key_id, cache_creation_tokens,
                price_period, cost_input, reasoning_estimated)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bool[], $6::text[],
                $7::int2[], $8::text[], $9::timestamptz[], $10::timestamptz[], $11::timestamptz[], $12::int8[],
                $13::int8[], $14::int8[], $15::int8[], $16::int8[], $17::text[], $18::bool[], $19::text[],
                $20::numeric[], $21::text[], $22::text[], $23::text[], $24::text[], $25::float8[], $26::float8[],
                $27::text[], $28::text[], $29::int8[], $30::text[], $31::numeric[], $32::bool[])
             ON CONFLICT (call_id) DO NOTHING
             RETURNING billing_hour),
             marked AS (INSERT INTO bill_dirty_hours (billing_hour) SELECT DISTINCT billing_hour FROM ins)
             SELECT count(*) FROM ins",
        )
        .bind(call_id)
        .bind(upstream_request_id)
        .bind(protocol)
        .bind(model)
        .bind(stream)
        .bind(status)
        .bind(http_status)
        .bind(error_code)
        .bind(started_at)
        .bind(finished_at)
        .bind(billing_hour)
        .bind(input)
        .bind(cached)
        .bind(output)
        .bind(reasoning)
        .bind(answer)
        .bind(usage_source)
        .bind(priced)
        .bind(price_version)
        .bind(cost_total)
        .bind(key_fingerprint)
        .bind(key_hint)
        .bind(project)
        .bind(end_user)
        .bind(ttft_ms)
        .bind(duration_ms)
        .bind(workspace)
        .bind(api_key_id)
        .bind(cache_creation)
        .bind(price_period)
        .bind(cost_input)
        .bind(reasoning_estimated)
        .fetch_one(&self.pool)
        .await?;
        Ok(inserted as u64)
    }

    /// Cost of one billing hour so far by model, priced rows only, over every sidecar on the database
    /// (the `(billing_hour, model)` index serves it).
    pub async fn hour_cost_by_model(
        &self,
        billing_hour: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<(String, rust_decimal::Decimal)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT model, sum(cost_total) FROM usage_ledger
             WHERE billing_hour = $1 AND priced GROUP BY model",
        )
        .bind(billing_hour)
        .fetch_all(&self.pool)
        .await
    }

    /// One ledger row as JSON; money as a decimal string.
    pub async fn call(&self, call_id: Uuid) -> Result<Option<serde_json::Value>, sqlx::Error> {
        let row: Option<(serde_json::Value,)> = sqlx::query_as(
            "SELECT (to_jsonb(l) - 'cost_total' - 'cost_input' - 'recorded_at')
                    || jsonb_build_object('cost_total', l.cost_total::text, 'cost_input', l.cost_input::text)
             FROM usage_ledger l WHERE call_id = $1",
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
