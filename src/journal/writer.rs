//! The writer thread, which owns the segment files, and the syncer thread, which fsyncs them.

use super::segment::{self, encode_frame};
use super::{Durability, Entry, JournalConfig, JournalStats, Position};
use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// The longest a batched-mode record waits for company before it is written (see [`Writer::run`]).
const MAX_LINGER: Duration = Duration::from_millis(1);

/// How long the writer lingers before draining a batch: at most [`MAX_LINGER`] and never past the group-commit
/// window (a kill may lose that window, no more); not at all in strict mode, where each call waits for its fsync.
fn linger(durability: Durability, group_commit: Duration) -> Duration {
    match durability {
        Durability::Batched => group_commit.min(MAX_LINGER),
        Durability::Strict => Duration::ZERO,
    }
}

/// Starts the writer (and its syncer) on `file`, segment `seq`; it runs until it receives `Close` or every
/// sender is gone, and holds `lock` until then.
pub(super) fn start(
    config: JournalConfig,
    stats: Arc<JournalStats>,
    file: File,
    seq: u64,
    end: watch::Sender<Position>,
    lock: File,
    rx: mpsc::Receiver<Entry>,
) -> io::Result<std::thread::JoinHandle<()>> {
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
        config,
        stats,
        file,
        seq,
        offset: 0,
        end,
        sync,
        syncer: Some(syncer),
        retry: Vec::new(),
        parked: 0,
        acks: Vec::new(),
        _lock: lock,
    };
    std::thread::Builder::new()
        .name("journal-writer".into())
        .spawn(move || writer.run(rx))
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
        let linger = linger(self.config.durability, self.config.group_commit);
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
            // Batched mode: linger a moment before draining, so the calls finishing meanwhile join this write.
            // While the writer sleeps it is not waiting on the channel, so those appends wake no thread: one
            // wake-up, one write and one notice to the shipper per linger instead of per call (each wake-up
            // is a futex call on both sides and a context switch). A record then reaches the file `linger`
            // later plus however long the woken writer waits for a CPU, inside the group-commit window a
            // kill may lose anyway. Not after a barrier or close (someone waits for them), nor in strict
            // mode (the call's last byte waits).
            if matches!(first, Some(Entry::Record { ack: None, .. })) && !linger.is_zero() {
                std::thread::sleep(linger);
            }
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
        match segment::create_segment(&self.config.dir, next) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_linger_stays_inside_the_group_commit_window_and_strict_mode_never_lingers() {
        let ms = Duration::from_millis;
        assert_eq!(linger(Durability::Batched, ms(10)), MAX_LINGER);
        assert_eq!(
            linger(Durability::Batched, Duration::from_micros(200)),
            Duration::from_micros(200)
        );
        assert_eq!(linger(Durability::Batched, Duration::ZERO), Duration::ZERO);
        assert_eq!(linger(Durability::Strict, ms(10)), Duration::ZERO);
        assert_eq!(MAX_LINGER, ms(1));
    }
}
