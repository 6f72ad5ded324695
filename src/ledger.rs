//! All SQL for calls: the `usage_ledger` table, migrations, and the shipper that moves journaled records
//! into Postgres.
//!
//! Inserts are idempotent (`ON CONFLICT (call_id) DO NOTHING`): a record shipped twice (a crash between
//! insert and checkpoint, two replays) is one row. The shipper never drops a batch: a failed insert is
//! retried with backoff until Postgres takes it; a batch Postgres rejects as invalid is split row by row and
//! a row that still fails goes to `dead-letter.jsonl` in the journal directory, loudly (it would be a bug:
//! records are validated when built).

use crate::journal::{self, JournalStats, Position};
use crate::metrics::Metrics;
use crate::record::CallRecord;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Records per INSERT.
pub const BATCH: usize = 5_000;

/// When fewer than a batch of records are waiting, the shipper waits this long for more before it inserts:
/// at thousands of calls per second that is one INSERT (and one checkpoint) per 20 ms instead of one per
/// handful of calls, which leaves the two hops of the proxy more of the cores they share with Postgres.
/// The cost is at most this much more ledger lag; a backlog (full batches) ships without pause.
pub const LINGER: Duration = Duration::from_millis(20);

#[derive(Clone)]
pub struct Ledger {
    pool: PgPool,
    /// Last known reachability, for `/readyz`.
    pub reachable: Arc<AtomicBool>,
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
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    /// Inserts a batch; returns how many rows were new.
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
        let mut output = Vec::with_capacity(n);
        let mut reasoning = Vec::with_capacity(n);
        let mut answer = Vec::with_capacity(n);
        let mut usage_source = Vec::with_capacity(n);
        let mut priced = Vec::with_capacity(n);
        let mut price_version = Vec::with_capacity(n);
        let mut cost_total = Vec::with_capacity(n);
        let mut key_fingerprint = Vec::with_capacity(n);
        let mut key_hint = Vec::with_capacity(n);
        let mut project = Vec::with_capacity(n);
        let mut end_user = Vec::with_capacity(n);
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
            output.push(big(r.output_tokens));
            reasoning.push(big(r.reasoning_tokens));
            answer.push(big(r.answer_tokens));
            usage_source.push(r.usage_source.as_str());
            priced.push(r.priced);
            price_version.push(r.price_version.as_deref());
            cost_total.push(r.cost_total);
            key_fingerprint.push(r.key_fingerprint.as_deref());
            key_hint.push(r.key_hint.as_deref());
            project.push(r.project.as_deref());
            end_user.push(r.end_user.as_deref());
            ttft_ms.push(r.ttft_ms);
            duration_ms.push(r.duration_ms);
        }
        let result = sqlx::query(
            "INSERT INTO usage_ledger (call_id, upstream_request_id, protocol, model, stream, status, http_status,
                error_code, started_at, finished_at, billing_hour, input_tokens, cached_tokens, output_tokens,
                reasoning_tokens, answer_tokens, usage_source, priced, price_version, cost_total, key_fingerprint,
                key_hint, project, end_user, ttft_ms, duration_ms)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bool[], $6::text[],
                $7::int2[], $8::text[], $9::timestamptz[], $10::timestamptz[], $11::timestamptz[], $12::int8[],
                $13::int8[], $14::int8[], $15::int8[], $16::int8[], $17::text[], $18::bool[], $19::text[],
                $20::numeric[], $21::text[], $22::text[], $23::text[], $24::text[], $25::float8[], $26::float8[])
             ON CONFLICT (call_id) DO NOTHING",
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
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// One ledger row as JSON; money as a decimal string.
    pub async fn call(&self, call_id: Uuid) -> Result<Option<serde_json::Value>, sqlx::Error> {
        let row: Option<(serde_json::Value,)> = sqlx::query_as(
            "SELECT (to_jsonb(l) - 'cost_total' - 'recorded_at')
                    || jsonb_build_object('cost_total', l.cost_total::text)
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

/// Moves journaled records into Postgres, in journal order, and never drops one.
pub struct Shipper {
    pub ledger: Ledger,
    pub dir: PathBuf,
    pub stats: Arc<JournalStats>,
    pub end: watch::Receiver<Position>,
    pub metrics: Metrics,
    pub migrate: bool,
    pub create_database: Option<String>,
    /// Everything before this position is in Postgres.
    pub shipped: watch::Sender<Position>,
}

/// Waits [`LINGER`] for more records to gather, unless the shipper is stopping.
async fn linger(stop: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(LINGER) => {}
        _ = stop.cancelled() => {}
    }
}

impl Shipper {
    /// Ships until `stop` fires, then keeps shipping what the journal holds until `drain` fires (or it is
    /// all in), then returns. Records left over are shipped at the next start.
    pub async fn run(mut self, stop: CancellationToken, drain: CancellationToken) {
        let mut pos = journal::read_checkpoint(&self.dir);
        self.shipped.send_replace(pos);
        let mut backoff = Backoff::default();
        let mut ready = !self.migrate;
        loop {
            if drain.is_cancelled() {
                return;
            }
            if !ready {
                match self.prepare().await {
                    Ok(()) => {
                        ready = true;
                        self.ledger.reachable.store(true, Ordering::Relaxed);
                        backoff.reset();
                    }
                    Err(e) => {
                        self.ledger.reachable.store(false, Ordering::Relaxed);
                        tracing::warn!(error = %e, "ledger database not ready; calls stay in the journal");
                        if !backoff.wait(&drain).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let end = *self.end.borrow_and_update();
            let dir = self.dir.clone();
            let stats = self.stats.clone();
            let read =
                tokio::task::spawn_blocking(move || read_batch(&dir, pos, end, BATCH, &stats))
                    .await;
            let (batch, next) = match read {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "journal read failed");
                    if !backoff.wait(&drain).await {
                        return;
                    }
                    continue;
                }
                Err(_) => return,
            };
            if batch.is_empty() {
                if next != pos {
                    pos = self.advance(next, 0).await;
                    continue;
                }
                if stop.is_cancelled() {
                    return;
                }
                tokio::select! {
                    _ = self.end.changed() => linger(&stop).await,
                    _ = stop.cancelled() => {}
                }
                continue;
            }
            let shipped = loop {
                match self.ship(&batch).await {
                    Ok(()) => break true,
                    Err(e) => {
                        self.ledger.reachable.store(false, Ordering::Relaxed);
                        self.metrics.ledger_write_failures.inc();
                        tracing::warn!(error = %e, records = batch.len(), "ledger insert failed; retrying");
                        if !backoff.wait(&drain).await {
                            break false;
                        }
                    }
                }
            };
            if !shipped {
                return;
            }
            self.ledger.reachable.store(true, Ordering::Relaxed);
            backoff.reset();
            pos = self.advance(next, batch.len() as u64).await;
            if batch.len() < BATCH {
                linger(&stop).await;
            }
        }
    }

    async fn prepare(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.create_database {
            create_database_if_missing(url).await?;
        }
        self.ledger.migrate().await?;
        Ok(())
    }

    /// Inserts a batch; a batch Postgres rejects as invalid is split so one bad row cannot block the rest.
    async fn ship(&self, batch: &[CallRecord]) -> Result<(), sqlx::Error> {
        match self.ledger.insert(batch).await {
            Ok(n) => {
                self.metrics.ledger_written.inc_by(n);
                Ok(())
            }
            Err(sqlx::Error::Database(e))
                if e.code()
                    .is_some_and(|c| c.starts_with("22") || c.starts_with("23")) =>
            {
                for r in batch {
                    match self.ledger.insert(std::slice::from_ref(r)).await {
                        Ok(n) => self.metrics.ledger_written.inc_by(n),
                        Err(sqlx::Error::Database(e))
                            if e.code()
                                .is_some_and(|c| c.starts_with("22") || c.starts_with("23")) =>
                        {
                            self.dead_letter(r, &e.to_string());
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn dead_letter(&self, record: &CallRecord, why: &str) {
        use std::io::Write;
        self.metrics.ledger_write_failures.inc();
        tracing::error!(call_id = %record.call_id, error = why, "ledger rejected a record; kept in dead-letter.jsonl");
        let line = serde_json::json!({"error": why, "record": record}).to_string();
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dead-letter.jsonl"))
            .and_then(|mut f| writeln!(f, "{line}").and_then(|_| f.sync_data()));
        if let Err(e) = written {
            tracing::error!(call_id = %record.call_id, error = %e, "dead-letter write failed");
        }
    }

    /// Records that everything before `next` is in Postgres: checkpoint, then delete finished segments.
    async fn advance(&self, next: Position, shipped: u64) -> Position {
        let _ = self
            .stats
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                Some(p.saturating_sub(shipped))
            });
        self.shipped.send_replace(next);
        // The checkpoint and the deletions change filesystem metadata, which can wait behind a commit of
        // the filesystem's own journal (ext4's jbd2, forced by our fsyncs) for tens of milliseconds. On the
        // blocking pool, so that never stalls a runtime worker, which the proxy's calls share.
        let (dir, stats) = (self.dir.clone(), self.stats.clone());
        let _ = tokio::task::spawn_blocking(move || remove_shipped(&dir, next, &stats)).await;
        next
    }
}

/// Records `next` as the checkpoint and deletes the segments wholly before it.
fn remove_shipped(dir: &std::path::Path, next: Position, stats: &JournalStats) {
    if let Err(e) = journal::write_checkpoint(dir, next) {
        tracing::error!(error = %e, "journal checkpoint write failed (records may be shipped again; harmless)");
    }
    for seq in journal::list_segments(dir).unwrap_or_default() {
        if seq >= next.segment {
            break;
        }
        let path = journal::segment_path(dir, seq);
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if std::fs::remove_file(&path).is_ok() {
            let _ = stats
                .bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    Some(b.saturating_sub(len))
                });
        }
    }
}

/// The next batch from `pos`, never past `end` (what the writer has published), and the position after it.
fn read_batch(
    dir: &std::path::Path,
    pos: Position,
    end: Position,
    max: usize,
    stats: &JournalStats,
) -> std::io::Result<(Vec<CallRecord>, Position)> {
    let mut out = Vec::new();
    let mut at = pos;
    for seq in journal::list_segments(dir)? {
        if seq < at.segment {
            continue;
        }
        if seq > end.segment {
            break;
        }
        let from = if seq == at.segment { at.offset } else { 0 };
        let limit = (seq == end.segment).then_some(end.offset);
        let (records, next, bad) = journal::read_frames(
            &journal::segment_path(dir, seq),
            from,
            limit,
            max - out.len(),
        )?;
        out.extend(records);
        at = Position {
            segment: seq,
            offset: next,
        };
        if out.len() >= max || seq == end.segment {
            return Ok((out, at));
        }
        if bad {
            stats.corrupt_frames.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                segment = seq,
                offset = next,
                "torn or corrupt journal tail skipped"
            );
        }
        // A closed segment is done: continue at the start of the next.
        at = Position {
            segment: seq + 1,
            offset: 0,
        };
    }
    Ok((out, at))
}

/// Exponential backoff from 100 ms to 5 s.
#[derive(Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Sleeps; returns `false` if `cancel` fired first.
    async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let ms = (100u64 << self.attempt.min(6)).min(5_000);
        self.attempt += 1;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => true,
            _ = cancel.cancelled() => false,
        }
    }
}
