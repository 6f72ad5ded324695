//! The journal: a durable local log of finished calls, between the proxy and Postgres.
//!
//! Every record is appended here before it counts as recorded; the shipper reads the journal back from disk
//! through a [`Cursor`] and inserts into Postgres, so replay after a crash and normal shipping are the same
//! code path. A Postgres outage only makes the journal grow.
//!
//! On disk ([`segment`]): segment files of CRC-framed records. A frame whose length or checksum does not
//! match ends the readable part of its segment (a torn tail after a crash): it is counted and skipped,
//! never fatal. A restarted writer never appends to an old segment; it opens a new one. The checkpoint
//! holds the position up to which records are in Postgres (losing it only means re-shipping, which is
//! idempotent). Fully shipped segments are deleted.
//!
//! Durability ([`writer`]): one writer thread owns the files and writes each batch as soon as it arrives; a
//! separate syncer thread fsyncs at most every `group_commit` (default 10 ms), so a slow fsync never holds
//! up writes. A process kill loses only what is still queued in memory for the writer; a machine crash
//! also loses what was written but not yet fsynced. In `strict` mode a record's caller gets an ack only
//! after the fsync that covers it; the proxy holds the call's last byte until then.

mod cursor;
mod segment;
mod writer;

pub use cursor::Cursor;
pub use segment::records_on_disk;

use crate::record::{CallRecord, Recorder};
use std::fs::{self, OpenOptions};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// fsync at most every group-commit window; a machine crash may lose that window.
    Batched,
    /// fsync before the call's last byte reaches the client.
    Strict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnFull {
    /// Refuse new calls with 503 while the journal is at its cap (an unmetered call is untracked money).
    Refuse,
    /// Keep serving; calls that cannot be journaled are counted in `deepseek_meter_ledger_unrecorded_calls`.
    Serve,
}

#[derive(Debug, Clone)]
pub struct JournalConfig {
    pub dir: PathBuf,
    pub durability: Durability,
    pub group_commit: Duration,
    pub segment_bytes: u64,
    pub max_bytes: u64,
    pub on_full: OnFull,
}

/// A place in the journal: segment sequence number and byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// Counters kept by the writer and the cursor; everyone else reads them through [`Journal::backlog`].
#[derive(Debug, Default)]
pub(crate) struct JournalStats {
    /// Records journaled and not yet confirmed in Postgres.
    pub pending: AtomicU64,
    /// Bytes in segment files on disk.
    pub bytes: AtomicU64,
    /// Records that could not be journaled (`--on-journal-full=serve` at the cap).
    pub unrecorded: AtomicU64,
    /// Failed writes or fsyncs (the batch is kept and retried).
    pub write_failures: AtomicU64,
    /// Frames skipped as torn or corrupt.
    pub corrupt_frames: AtomicU64,
    /// The writer cannot write (disk full, I/O error): new calls are refused in `refuse` mode.
    pub failing: AtomicBool,
}

pub(super) enum Entry {
    Record {
        record: Box<CallRecord>,
        ack: Option<oneshot::Sender<()>>,
    },
    /// Write what is queued, fsync, and stop.
    Close,
    /// Answer with the end position once everything queued before it is written.
    Barrier(oneshot::Sender<Position>),
}

/// The handle the proxy appends through. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Entry>,
    held: Arc<Held>,
    stats: Arc<JournalStats>,
    dir: Arc<PathBuf>,
    config: Arc<JournalConfig>,
    end: watch::Receiver<Position>,
}

/// The writer thread; joining it waits for the final fsync.
pub struct WriterHandle(Option<std::thread::JoinHandle<()>>);

impl WriterHandle {
    /// Waits (off the async runtime) until every record appended before all `Journal` handles were dropped
    /// is written and fsynced.
    pub async fn join(mut self) {
        if let Some(h) = self.0.take() {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

impl Journal {
    /// Opens (creating) the journal directory, counts what is still unshipped, and starts the writer.
    pub fn open(config: JournalConfig) -> io::Result<(Journal, WriterHandle)> {
        fs::create_dir_all(&config.dir)?;
        // One process per journal directory: two writers would interleave segments and checkpoints. The
        // lock is released when the writer thread (which owns the file) ends.
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(config.dir.join("lock"))?;
        lock.try_lock().map_err(|_| {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                "the journal directory is in use by another deepseek-meter process",
            )
        })?;
        let stats = Arc::new(JournalStats::default());
        let segments = segment::list_segments(&config.dir)?;
        let checkpoint = segment::read_checkpoint(&config.dir);
        let mut bytes = 0;
        let mut pending = 0;
        for &seq in &segments {
            let path = segment::segment_path(&config.dir, seq);
            bytes += fs::metadata(&path)?.len();
            let from = if seq == checkpoint.segment {
                checkpoint.offset
            } else {
                0
            };
            if seq >= checkpoint.segment {
                let (records, _, corrupt) = segment::count_frames(&path, from)?;
                pending += records;
                stats.corrupt_frames.fetch_add(corrupt, Ordering::Relaxed);
            }
        }
        stats.bytes.store(bytes, Ordering::Relaxed);
        stats.pending.store(pending, Ordering::Relaxed);
        let seq = segments.last().map_or(1, |s| s + 1);
        let file = segment::create_segment(&config.dir, seq)?;
        let (end_tx, end_rx) = watch::channel(Position {
            segment: seq,
            offset: 0,
        });
        let (tx, rx) = mpsc::channel();
        let handle = writer::start(config.clone(), stats.clone(), file, seq, end_tx, lock, rx)?;
        let journal = Journal {
            tx,
            held: Arc::default(),
            stats,
            dir: Arc::new(config.dir.clone()),
            config: Arc::new(config),
            end: end_rx,
        };
        // The previous run's unshipped records hold their hours until they are shipped.
        journal.for_each_unshipped(|r| journal.held.add(r.billing_hour))?;
        Ok((journal, WriterHandle(Some(handle))))
    }

    /// The billing hours of the records journaled and not yet shipped.
    pub fn held(&self) -> Arc<Held> {
        self.held.clone()
    }

    pub fn config(&self) -> &JournalConfig {
        &self.config
    }

    /// Whether new calls may start: `false` only in `refuse` mode at the cap or while writes fail.
    pub fn accepting(&self) -> bool {
        self.config.on_full == OnFull::Serve
            || !(self.at_cap() || self.stats.failing.load(Ordering::Relaxed))
    }

    fn at_cap(&self) -> bool {
        self.stats.bytes.load(Ordering::Relaxed) >= self.config.max_bytes
    }

    /// Appends a record. In strict mode the receiver fires after the fsync covering it.
    pub fn append(&self, record: CallRecord) -> Option<oneshot::Receiver<()>> {
        if self.config.on_full == OnFull::Serve && self.at_cap() {
            self.stats.unrecorded.fetch_add(1, Ordering::Relaxed);
            tracing::error!(call_id = %record.call_id, "journal at its size cap: call NOT recorded");
            return None;
        }
        let hour = record.billing_hour;
        let (ack, rx) = match self.config.durability {
            Durability::Strict => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            Durability::Batched => (None, None),
        };
        if self
            .tx
            .send(Entry::Record {
                record: Box::new(record),
                ack,
            })
            .is_err()
        {
            // Only after shutdown began; the writer is gone.
            self.stats.unrecorded.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.held.add(hour);
        rx
    }

    /// Asks the writer to write and fsync everything queued, then stop. Appends after this are counted as
    /// unrecorded. Join the [`WriterHandle`] to wait for it.
    pub fn close(&self) {
        let _ = self.tx.send(Entry::Close);
    }

    /// The end position once every record appended before this call is written.
    pub async fn barrier(&self) -> Option<Position> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Entry::Barrier(tx)).ok()?;
        rx.await.ok()
    }

    /// A reader from the last checkpoint on, for the one shipper of this journal.
    pub fn cursor(&self) -> Cursor {
        let from = segment::read_checkpoint(&self.dir);
        Cursor {
            dir: self.dir.clone(),
            stats: self.stats.clone(),
            end: self.end.clone(),
            committed: watch::channel(from).0,
            read: from,
            handed_out: 0,
        }
    }

    /// Hands every record not shipped yet (from the checkpoint to what the writer has published) to `visit`,
    /// in order, a batch at a time; returns how many. Blocking file reads, meant for startup (budgets count
    /// what this sidecar journaled and has not shipped). Reads only: the shipper's cursor is not moved.
    pub fn for_each_unshipped(&self, mut visit: impl FnMut(CallRecord)) -> io::Result<u64> {
        let end = *self.end.borrow();
        let mut at = segment::read_checkpoint(&self.dir);
        let scratch = JournalStats::default();
        let mut n = 0;
        loop {
            let (batch, next) = segment::read_batch(&self.dir, at, end, 10_000, &scratch)?;
            if batch.is_empty() {
                return Ok(n);
            }
            n += batch.len() as u64;
            batch.into_iter().for_each(&mut visit);
            at = next;
        }
    }

    /// The backlog as it stands (readiness, metrics, shutdown).
    pub fn backlog(&self) -> Backlog {
        Backlog {
            pending_records: self.stats.pending.load(Ordering::Relaxed),
            bytes: self.stats.bytes.load(Ordering::Relaxed),
            max_bytes: self.config.max_bytes,
            unrecorded_calls: self.stats.unrecorded.load(Ordering::Relaxed),
            writes_failing: self.stats.failing.load(Ordering::Relaxed),
            write_failures: self.stats.write_failures.load(Ordering::Relaxed),
        }
    }
}

/// The billing hours of the records in the journal that are not in Postgres yet, a count per hour: counted
/// when a record is appended (or found unshipped at open) and released by the shipper once the record is in
/// the ledger. A live sidecar holding an hour's records keeps that hour from closing (the hourly bill's heartbeat), so
/// the count is exact — a record between its append and the shipper's read is held too.
#[derive(Debug, Default)]
pub struct Held {
    hours: std::sync::Mutex<std::collections::BTreeMap<chrono::DateTime<chrono::Utc>, u64>>,
}

impl Held {
    fn add(&self, hour: chrono::DateTime<chrono::Utc>) {
        if let Ok(mut h) = self.hours.lock() {
            *h.entry(hour).or_default() += 1;
        }
    }

    /// These records are in the ledger (or dead-lettered): their hours are held by them no more.
    pub fn shipped(&self, records: &[CallRecord]) {
        let Ok(mut h) = self.hours.lock() else {
            return;
        };
        for r in records {
            if let std::collections::btree_map::Entry::Occupied(mut e) = h.entry(r.billing_hour) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
    }

    /// The oldest hour held (`None`: everything journaled is in the ledger). A poisoned lock holds the
    /// oldest possible hour: never release an hour by accident.
    pub fn oldest(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        match self.hours.lock() {
            Ok(h) => h.keys().next().copied(),
            Err(_) => Some(chrono::DateTime::<chrono::Utc>::MIN_UTC),
        }
    }
}

/// A snapshot of the journal's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Records journaled and not yet confirmed in Postgres.
    pub pending_records: u64,
    /// Bytes in segment files on disk, and the cap.
    pub bytes: u64,
    pub max_bytes: u64,
    /// Calls served without a record.
    pub unrecorded_calls: u64,
    /// The writer cannot write (disk full, I/O error).
    pub writes_failing: bool,
    /// Failed writes or fsyncs so far (each retried; nothing dropped).
    pub write_failures: u64,
}

impl Recorder for Journal {
    fn record(&self, record: CallRecord) -> Option<oneshot::Receiver<()>> {
        self.append(record)
    }

    fn accepting(&self) -> bool {
        Journal::accepting(self)
    }
}
