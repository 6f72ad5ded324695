//! The journal: a durable local log of finished calls, between the proxy and Postgres.
//!
//! Every record is appended here before it counts as recorded; the shipper (`ledger::Shipper`) reads the
//! journal back from disk and inserts into Postgres, so replay after a crash and normal shipping are the
//! same code path. A Postgres outage only makes the journal grow.
//!
//! On disk: segment files `<seq>.journal` (20-digit sequence numbers) of frames
//! `[len u32 LE][crc32 u32 LE][payload]`, payload = the record as JSON. A frame whose length or checksum
//! does not match ends the readable part of its segment (a torn tail after a crash): it is counted and
//! skipped, never fatal. A restarted writer never appends to an old segment; it opens a new one.
//! `checkpoint` holds the position up to which records are in Postgres (written by rename; losing it only
//! means re-shipping, which is idempotent). Fully shipped segments are deleted.
//!
//! Durability: one writer thread owns the files and writes each batch as soon as it arrives; a separate
//! syncer thread fsyncs at most every `group_commit` (default 10 ms), so a slow fsync never holds up writes.
//! A process kill loses only what is still queued in memory for the writer; a machine crash also loses what
//! was written but not yet fsynced. In `strict` mode a record's caller gets an ack only after the fsync that
//! covers it; the proxy holds the call's last byte until then.

use crate::record::CallRecord;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

const FRAME_HEADER: usize = 8;
/// A frame larger than this is corruption, not a record (records are about 1 KiB).
const MAX_FRAME: u32 = 16 * 1024 * 1024;

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

/// Counters shared by the writer, the shipper, the proxy and the admin listener.
#[derive(Debug, Default)]
pub struct JournalStats {
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

enum Entry {
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
    pub stats: Arc<JournalStats>,
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
        let segments = list_segments(&config.dir)?;
        let checkpoint = read_checkpoint(&config.dir);
        let mut bytes = 0;
        let mut pending = 0;
        for &seq in &segments {
            let path = segment_path(&config.dir, seq);
            bytes += fs::metadata(&path)?.len();
            let from = if seq == checkpoint.segment {
                checkpoint.offset
            } else {
                0
            };
            if seq >= checkpoint.segment {
                let (records, _, corrupt) = count_frames(&path, from)?;
                pending += records;
                stats.corrupt_frames.fetch_add(corrupt, Ordering::Relaxed);
            }
        }
        stats.bytes.store(bytes, Ordering::Relaxed);
        stats.pending.store(pending, Ordering::Relaxed);
        let seq = segments.last().map_or(1, |s| s + 1);
        let file = create_segment(&config.dir, seq)?;
        let (end_tx, end_rx) = watch::channel(Position {
            segment: seq,
            offset: 0,
        });
        let (tx, rx) = mpsc::channel();
        let sync = Arc::new(SyncShared {
            state: Mutex::new(SyncState {
                file: Some(file.try_clone()?),
                ..SyncState::default()
            }),
            wake: Condvar::new(),
        });
        let syncer = {
            let (sync, stats, window) = (sync.clone(), stats.clone(), config.group_commit);
            std::thread::Builder::new()
                .name("journal-syncer".into())
                .spawn(move || sync_loop(&sync, window, &stats))?
        };
        let writer = Writer {
            config: config.clone(),
            stats: stats.clone(),
            file,
            seq,
            offset: 0,
            end: end_tx,
            sync,
            syncer: Some(syncer),
            retry: Vec::new(),
            parked: 0,
            acks: Vec::new(),
            _lock: lock,
        };
        let handle = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer.run(rx))?;
        let journal = Journal {
            tx,
            stats,
            config: Arc::new(config),
            end: end_rx,
        };
        Ok((journal, WriterHandle(Some(handle))))
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

    /// The end of what has been written (a frame boundary), for the shipper.
    pub fn end(&self) -> watch::Receiver<Position> {
        self.end.clone()
    }

    pub fn dir(&self) -> &Path {
        &self.config.dir
    }
}

struct Writer {
    config: JournalConfig,
    stats: Arc<JournalStats>,
    file: File,
    seq: u64,
    offset: u64,
    end: watch::Sender<Position>,
    /// Handed to the syncer thread, which fsyncs so the writer never waits on the disk.
    sync: Arc<SyncShared>,
    syncer: Option<std::thread::JoinHandle<()>>,
    /// Encoded frames whose write failed, retried before anything newer.
    retry: Vec<u8>,
    /// Records in `retry`.
    parked: u64,
    /// Strict acks of records not yet written (they go to the syncer with the write that covers them).
    acks: Vec<oneshot::Sender<()>>,
    /// Held for the writer's lifetime.
    _lock: File,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Entry>) {
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut closed = false;
        // After close, a failing disk gets this many more tries (100 ms apart) before giving up loudly.
        let mut last_tries = 50u32;
        while !closed || (!self.retry.is_empty() && last_tries > 0) {
            if closed {
                last_tries -= 1;
            }
            let wait = (!self.retry.is_empty()).then_some(Duration::from_millis(100));
            let first = if closed {
                std::thread::sleep(wait.unwrap_or_default());
                None
            } else {
                match wait {
                    None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                    Some(w) => rx.recv_timeout(w),
                }
                .map_or_else(
                    |e| {
                        closed = e == mpsc::RecvTimeoutError::Disconnected;
                        None
                    },
                    Some,
                )
            };
            buf.clear();
            let mut records = 0u64;
            let mut barriers = Vec::new();
            for entry in first
                .into_iter()
                .chain(std::iter::from_fn(|| rx.try_recv().ok()))
            {
                match entry {
                    Entry::Record { record, ack } => {
                        encode_frame(&record, &mut buf);
                        records += 1;
                        self.acks.extend(ack);
                    }
                    Entry::Close => closed = true,
                    Entry::Barrier(tx) => barriers.push(tx),
                }
            }
            if records > 0 || !self.retry.is_empty() {
                self.write(&buf, records);
            }
            for b in barriers {
                let _ = b.send(*self.end.borrow());
            }
        }
        // The syncer's last fsync covers everything written.
        lock(&self.sync.state).closed = true;
        self.sync.wake.notify_one();
        if let Some(h) = self.syncer.take() {
            let _ = h.join();
        }
        if self.parked > 0 {
            self.stats
                .unrecorded
                .fetch_add(self.parked, Ordering::Relaxed);
            tracing::error!(
                records = self.parked,
                "journal closed with records it could not write: NOT recorded"
            );
        }
    }

    fn write(&mut self, buf: &[u8], records: u64) {
        self.retry.extend_from_slice(buf);
        self.parked += records;
        match self.file.write_all(&self.retry) {
            Ok(()) => {
                let written = self.retry.len() as u64;
                self.offset += written;
                self.stats.bytes.fetch_add(written, Ordering::Relaxed);
                self.stats
                    .pending
                    .fetch_add(std::mem::take(&mut self.parked), Ordering::Relaxed);
                self.retry.clear();
                self.stats.failing.store(false, Ordering::Relaxed);
                // Wake the syncer only when its wait changes: clean → dirty (it starts the window), or a
                // strict ack waiting. Already dirty, it is waiting out the window and wakes on time; a
                // wake per write would cost a futex call and a context switch per batch for nothing.
                let mut st = lock(&self.sync.state);
                let wake = !st.dirty || !self.acks.is_empty();
                st.dirty = true;
                st.acks.append(&mut self.acks);
                drop(st);
                if wake {
                    self.sync.wake.notify_one();
                }
                self.end.send_replace(Position {
                    segment: self.seq,
                    offset: self.offset,
                });
                if self.offset >= self.config.segment_bytes {
                    self.rotate();
                }
            }
            Err(e) => self.failed("write", &e),
        }
    }

    fn failed(&mut self, what: &str, e: &io::Error) {
        self.stats.write_failures.fetch_add(1, Ordering::Relaxed);
        self.stats.failing.store(true, Ordering::Relaxed);
        tracing::error!(error = %e, what, held_bytes = self.retry.len(), "journal write failed; holding records and retrying");
        // A partial write may have left whole frames and a torn one past `offset`. They are all in `retry`
        // and will be written again, so cut the segment back to the last frame we counted: no frame is ever
        // in the journal twice, and a long outage of the disk retries in place instead of opening a new
        // segment every 100 ms. Only if the cut fails, leave the debris at a segment's tail (readers skip a
        // torn tail) and continue in a fresh one.
        if self.file.set_len(self.offset).is_err() {
            self.rotate();
        }
    }

    fn rotate(&mut self) {
        // The closing segment is synced here; the syncer takes over the new one.
        if let Err(e) = self.file.sync_data() {
            self.stats.write_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "journal fsync failed");
        }
        let next = self.seq + 1;
        match create_segment(&self.config.dir, next) {
            Ok(f) => {
                lock(&self.sync.state).file = f.try_clone().ok();
                self.file = f;
                self.seq = next;
                self.offset = 0;
                self.end.send_replace(Position {
                    segment: next,
                    offset: 0,
                });
            }
            Err(e) => tracing::error!(error = %e, "journal cannot open a new segment"),
        }
    }
}

/// What the writer hands the syncer: the current segment, whether it has writes not yet fsynced, and the
/// strict acks those writes carry.
#[derive(Default)]
struct SyncState {
    file: Option<File>,
    dirty: bool,
    acks: Vec<oneshot::Sender<()>>,
    closed: bool,
}

struct SyncShared {
    state: Mutex<SyncState>,
    wake: Condvar,
}

fn lock(m: &Mutex<SyncState>) -> std::sync::MutexGuard<'_, SyncState> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The syncer thread: fsyncs written data at most every `window` — at once when a strict ack waits — and
/// releases the acks its fsync covers. It runs beside the writer so that a slow fsync never stops records
/// from being written (a process kill then loses only what is still queued in memory).
fn sync_loop(shared: &SyncShared, window: Duration, stats: &JournalStats) {
    let mut last = Instant::now();
    loop {
        let (file, acks) = {
            let mut st = lock(&shared.state);
            loop {
                if st.dirty && (st.closed || !st.acks.is_empty() || last.elapsed() >= window) {
                    break;
                }
                if st.closed {
                    return;
                }
                let wait = if st.dirty {
                    window.saturating_sub(last.elapsed())
                } else {
                    Duration::from_secs(60)
                };
                st = match shared.wake.wait_timeout(st, wait) {
                    Ok((g, _)) => g,
                    Err(e) => e.into_inner().0,
                };
            }
            st.dirty = false;
            (
                st.file.as_ref().and_then(|f| f.try_clone().ok()),
                std::mem::take(&mut st.acks),
            )
        };
        let synced = file.is_some_and(|f| f.sync_data().is_ok());
        last = Instant::now();
        if synced {
            for ack in acks {
                let _ = ack.send(());
            }
        } else {
            stats.write_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!("journal fsync failed; retrying");
            let mut st = lock(&shared.state);
            st.dirty = true;
            st.acks.extend(acks);
            drop(st);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn encode_frame(record: &CallRecord, buf: &mut Vec<u8>) {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEADER]);
    // Serializing a plain struct to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, record);
    let len = (buf.len() - start - FRAME_HEADER) as u32;
    let crc = crc32fast::hash(&buf[start + FRAME_HEADER..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.journal"))
}

fn create_segment(dir: &Path, seq: u64) -> io::Result<File> {
    let f = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(segment_path(dir, seq))?;
    // The new name must survive a crash too.
    File::open(dir)?.sync_all()?;
    Ok(f)
}

/// Segment sequence numbers present, ascending.
pub fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".journal")?
                .parse()
                .ok()
        })
        .collect();
    out.sort_unstable();
    Ok(out)
}

pub fn read_checkpoint(dir: &Path) -> Position {
    let text = fs::read_to_string(dir.join("checkpoint")).unwrap_or_default();
    let mut it = text.split_whitespace().map(|s| s.parse::<u64>());
    match (it.next(), it.next()) {
        (Some(Ok(segment)), Some(Ok(offset))) => Position { segment, offset },
        _ => Position::default(),
    }
}

pub fn write_checkpoint(dir: &Path, pos: Position) -> io::Result<()> {
    let tmp = dir.join("checkpoint.tmp");
    fs::write(&tmp, format!("{} {}\n", pos.segment, pos.offset))?;
    fs::rename(tmp, dir.join("checkpoint"))
}

/// Reads frames of one segment from `offset`, up to `limit` (exclusive; `None` = to the end of the file).
/// Returns the records, the offset after the last good frame, and whether a bad frame was met (a torn or
/// corrupt tail: the rest of this segment is unreadable).
pub fn read_frames(
    path: &Path,
    offset: u64,
    limit: Option<u64>,
    max_records: usize,
) -> io::Result<(Vec<CallRecord>, u64, bool)> {
    let mut file = BufReader::with_capacity(256 * 1024, File::open(path)?);
    file.seek(SeekFrom::Start(offset))?;
    let mut pos = offset;
    let mut out = Vec::new();
    let mut payload = Vec::new();
    while out.len() < max_records && limit.is_none_or(|l| pos < l) {
        let mut header = [0u8; FRAME_HEADER];
        match file.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Ok((out, pos, limit.is_none() && file_len(path)? > pos))
            }
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 || len > MAX_FRAME {
            return Ok((out, pos, true));
        }
        payload.resize(len as usize, 0);
        if file.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
            return Ok((out, pos, true));
        }
        match serde_json::from_slice::<CallRecord>(&payload) {
            Ok(r) => out.push(r),
            Err(_) => return Ok((out, pos, true)),
        }
        pos += FRAME_HEADER as u64 + u64::from(len);
    }
    Ok((out, pos, false))
}

fn file_len(path: &Path) -> io::Result<u64> {
    Ok(fs::metadata(path)?.len())
}

/// Good records from `offset` to the first bad frame, that frame's offset, and corrupt-frame count (0/1).
fn count_frames(path: &Path, offset: u64) -> io::Result<(u64, u64, u64)> {
    let mut records = 0;
    let mut pos = offset;
    loop {
        let (batch, next, bad) = read_frames(path, pos, None, 10_000)?;
        records += batch.len() as u64;
        pos = next;
        if bad {
            return Ok((records, pos, 1));
        }
        if batch.is_empty() {
            return Ok((records, pos, 0));
        }
    }
}
