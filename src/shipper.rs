//! The shipper: moves journaled records into the Postgres ledger, in journal order, and never drops one.
//!
//! It reads the journal through its [`Cursor`] and commits a batch only once Postgres has it, so a crash
//! in between ships the batch again (inserts are idempotent). A failed insert is retried with backoff until
//! Postgres takes it; a batch Postgres rejects as invalid (SQLSTATE class 22 or 23) is split row by row, and
//! a row that still fails goes to `dead-letter.jsonl` in the journal directory, loudly (it would be a bug:
//! records are validated when built).

use crate::journal::{Cursor, Held};
use crate::ledger::{self, Ledger};
use crate::metrics::InstanceMetrics;
use crate::record::CallRecord;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Records per INSERT.
pub const BATCH: usize = 5_000;
// A full batch is what the ledger sends by COPY (its cheaper way at that size): keep them in step.
const _: () = assert!(BATCH >= crate::ledger::COPY_FROM);

/// When fewer than a batch of records are waiting, the shipper waits this long for more before it inserts:
/// at thousands of calls per second that is one INSERT (and one checkpoint) per 20 ms instead of one per
/// handful of calls, which leaves the two hops of the proxy more of the cores they share with Postgres.
/// The cost is at most this much more ledger lag; a backlog (full batches) ships without pause.
pub const LINGER: Duration = Duration::from_millis(20);

pub struct Shipper {
    ledger: Ledger,
    cursor: Cursor,
    metrics: InstanceMetrics,
    /// The hours of the journal's unshipped records: released here as records reach the ledger.
    held: Arc<Held>,
    /// Create the database (this URL) and apply migrations before the first insert.
    prepare: Option<String>,
}

impl Shipper {
    /// `migrate_url`: create that database if missing and migrate it first (not with `--no-migrate`).
    pub fn new(
        ledger: Ledger,
        cursor: Cursor,
        held: Arc<Held>,
        metrics: InstanceMetrics,
        migrate_url: Option<String>,
    ) -> Shipper {
        Shipper {
            ledger,
            cursor,
            held,
            metrics,
            prepare: migrate_url,
        }
    }

    /// Ships until `stop` fires, then keeps shipping what the journal holds until `drain` fires (or it is
    /// all in), then returns. Records left over are shipped at the next start.
    pub async fn run(mut self, stop: CancellationToken, drain: CancellationToken) {
        let mut backoff = Backoff::default();
        let mut ready = self.prepare.is_none();
        if ready {
            self.ledger.set_migrated();
        }
        loop {
            if drain.is_cancelled() {
                return;
            }
            if !ready {
                match self.prepare().await {
                    Ok(()) => {
                        ready = true;
                        self.ledger.reachable.store(true, Ordering::Relaxed);
                        self.ledger.set_migrated();
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
            let batch = match self.cursor.next_batch(BATCH).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "journal read failed");
                    if !backoff.wait(&drain).await {
                        return;
                    }
                    continue;
                }
            };
            if batch.is_empty() {
                // A skipped torn tail or a finished segment still moves the checkpoint.
                if self.cursor.uncommitted() {
                    self.cursor.commit().await;
                    continue;
                }
                if stop.is_cancelled() {
                    return;
                }
                tokio::select! {
                    _ = self.cursor.published() => linger(&stop).await,
                    _ = stop.cancelled() => {}
                }
                continue;
            }
            let shipped = loop {
                match self.ship(&batch).await {
                    Ok(()) => break true,
                    Err(e) => {
                        self.ledger.reachable.store(false, Ordering::Relaxed);
                        self.metrics.ledger_write_failed();
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
            // Shipped: these records hold their hours no more (before the commit is seen, so a caller that
            // waited for the commit never reads a stale hold).
            self.held.shipped(&batch);
            self.cursor.commit().await;
            if batch.len() < BATCH {
                linger(&stop).await;
            }
        }
    }

    async fn prepare(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.prepare {
            ledger::create_database_if_missing(url).await?;
        }
        self.ledger.migrate().await?;
        Ok(())
    }

    /// Inserts a batch; a batch Postgres rejects as invalid is split so one bad row cannot block the rest.
    async fn ship(&self, batch: &[CallRecord]) -> Result<(), sqlx::Error> {
        match self.ledger.insert(batch).await {
            Ok(n) => {
                self.metrics.ledger_rows_written(n);
                Ok(())
            }
            Err(sqlx::Error::Database(e)) if ledger::is_invalid_data(e.as_ref()) => {
                for r in batch {
                    match self.ledger.insert(std::slice::from_ref(r)).await {
                        Ok(n) => self.metrics.ledger_rows_written(n),
                        Err(sqlx::Error::Database(e)) if ledger::is_invalid_data(e.as_ref()) => {
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
        self.metrics.ledger_write_failed();
        tracing::error!(call_id = %record.call_id, error = why, "ledger rejected a record; kept in dead-letter.jsonl");
        let line = serde_json::json!({"error": why, "record": record}).to_string();
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.cursor.dir().join("dead-letter.jsonl"))
            .and_then(|mut f| writeln!(f, "{line}").and_then(|_| f.sync_data()));
        if let Err(e) = written {
            tracing::error!(call_id = %record.call_id, error = %e, "dead-letter write failed");
        }
    }
}

/// Waits [`LINGER`] for more records to gather, unless the shipper is stopping.
async fn linger(stop: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(LINGER) => {}
        _ = stop.cancelled() => {}
    }
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
