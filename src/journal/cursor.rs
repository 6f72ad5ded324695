//! The journal read back in order: what the shipper uses to move records downstream.
//!
//! A cursor hands out batches from the last commit on, never past what the writer has published (a frame
//! boundary), and skips a torn or corrupt segment tail. `commit` says that everything handed out is stored
//! downstream: it writes the checkpoint, deletes the segments wholly before it and lowers `pending`. Until
//! a commit, a restart hands the same records out again, so downstream inserts must be idempotent.

use super::segment;
use super::{JournalStats, Position};
use crate::record::CallRecord;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::watch;

pub struct Cursor {
    pub(super) dir: Arc<PathBuf>,
    pub(super) stats: Arc<JournalStats>,
    /// What the writer has published.
    pub(super) end: watch::Receiver<Position>,
    /// Everything before this is stored downstream.
    pub(super) committed: watch::Sender<Position>,
    /// The position after the last batch handed out.
    pub(super) read: Position,
    /// Records handed out since the last commit.
    pub(super) handed_out: u64,
}

impl Cursor {
    /// Up to `max` records after those already handed out; empty when caught up with the writer. File reads
    /// run on the blocking pool: a runtime worker, which the proxy's calls share, never waits on the disk.
    pub async fn next_batch(&mut self, max: usize) -> io::Result<Vec<CallRecord>> {
        let end = *self.end.borrow_and_update();
        let (dir, stats, from) = (self.dir.clone(), self.stats.clone(), self.read);
        let (batch, next) =
            tokio::task::spawn_blocking(move || segment::read_batch(&dir, from, end, max, &stats))
                .await
                .map_err(io::Error::other)??;
        self.read = next;
        self.handed_out += batch.len() as u64;
        Ok(batch)
    }

    /// Whether a commit would move the checkpoint (records handed out, or a torn tail or finished segment
    /// skipped).
    pub fn uncommitted(&self) -> bool {
        self.read != *self.committed.borrow()
    }

    /// Everything handed out is stored downstream: checkpoint it and delete the finished segments. The
    /// checkpoint and the deletions change filesystem metadata, which can wait behind a commit of the
    /// filesystem's own journal (ext4's jbd2, forced by our fsyncs) for tens of milliseconds: on the blocking
    /// pool too.
    pub async fn commit(&mut self) {
        let shipped = std::mem::take(&mut self.handed_out);
        let _ = self
            .stats
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                Some(p.saturating_sub(shipped))
            });
        let next = self.read;
        self.committed.send_replace(next);
        let (dir, stats) = (self.dir.clone(), self.stats.clone());
        let _ =
            tokio::task::spawn_blocking(move || segment::remove_shipped(&dir, next, &stats)).await;
    }

    /// Waits until the writer publishes more; `false` once the writer is gone.
    pub async fn published(&mut self) -> bool {
        self.end.changed().await.is_ok()
    }

    /// Follows the committed position (a barrier's position is stored once this reaches it).
    pub fn committed(&self) -> watch::Receiver<Position> {
        self.committed.subscribe()
    }

    /// Where `dead-letter.jsonl` and the segments live.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}
