//! The on-disk format: segment files of CRC-framed records, and the checkpoint.
//!
//! Segment `<seq>.journal` (20-digit sequence number) holds frames `[len u32 LE][crc32 u32 LE][payload]`,
//! payload = the record as JSON. A frame whose length or checksum does not match ends the readable part of
//! its segment (a torn tail after a crash). `checkpoint` holds the position up to which records are stored
//! downstream, written by rename. Nothing outside the journal reads these files: the shipper goes through
//! [`super::Cursor`].

use super::{JournalStats, Position};
use crate::record::CallRecord;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

pub(super) const FRAME_HEADER: usize = 8;
/// A frame larger than this is corruption, not a record (records are about 1 KiB).
const MAX_FRAME: u32 = 16 * 1024 * 1024;

/// Appends one record's frame to `buf`.
pub(super) fn encode_frame(record: &CallRecord, buf: &mut Vec<u8>) {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEADER]);
    // Serializing a plain struct to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, record);
    let len = (buf.len() - start - FRAME_HEADER) as u32;
    let crc = crc32fast::hash(&buf[start + FRAME_HEADER..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

pub(super) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.journal"))
}

pub(super) fn create_segment(dir: &Path, seq: u64) -> io::Result<File> {
    let f = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(segment_path(dir, seq))?;
    // The new name must survive a crash too.
    File::open(dir)?.sync_all()?;
    Ok(f)
}

/// Segment sequence numbers present, ascending.
pub(super) fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
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

pub(super) fn read_checkpoint(dir: &Path) -> Position {
    let text = fs::read_to_string(dir.join("checkpoint")).unwrap_or_default();
    let mut it = text.split_whitespace().map(|s| s.parse::<u64>());
    match (it.next(), it.next()) {
        (Some(Ok(segment)), Some(Ok(offset))) => Position { segment, offset },
        _ => Position::default(),
    }
}

pub(super) fn write_checkpoint(dir: &Path, pos: Position) -> io::Result<()> {
    let tmp = dir.join("checkpoint.tmp");
    fs::write(&tmp, format!("{} {}\n", pos.segment, pos.offset))?;
    fs::rename(tmp, dir.join("checkpoint"))
}

/// Reads frames of one segment from `offset`, up to `limit` (exclusive; `None` = to the end of the file).
/// Returns the records, the offset after the last good frame, and whether a bad frame was met (a torn or
/// corrupt tail: the rest of this segment is unreadable).
pub(super) fn read_frames(
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
pub(super) fn count_frames(path: &Path, offset: u64) -> io::Result<(u64, u64, u64)> {
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

/// The next batch from `pos`, never past `end` (what the writer has published), and the position after it.
pub(super) fn read_batch(
    dir: &Path,
    pos: Position,
    end: Position,
    max: usize,
    stats: &JournalStats,
) -> io::Result<(Vec<CallRecord>, Position)> {
    let mut out = Vec::new();
    let mut at = pos;
    for seq in list_segments(dir)? {
        if seq < at.segment {
            continue;
        }
        if seq > end.segment {
            break;
        }
        let from = if seq == at.segment { at.offset } else { 0 };
        let limit = (seq == end.segment).then_some(end.offset);
        let (records, next, bad) =
            read_frames(&segment_path(dir, seq), from, limit, max - out.len())?;
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

/// Records `next` as the checkpoint and deletes the segments wholly before it.
pub(super) fn remove_shipped(dir: &Path, next: Position, stats: &JournalStats) {
    if let Err(e) = write_checkpoint(dir, next) {
        tracing::error!(error = %e, "journal checkpoint write failed (records may be shipped again; harmless)");
    }
    for seq in list_segments(dir).unwrap_or_default() {
        if seq >= next.segment {
            break;
        }
        let path = segment_path(dir, seq);
        let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if fs::remove_file(&path).is_ok() {
            let _ = stats
                .bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    Some(b.saturating_sub(len))
                });
        }
    }
}

/// Every readable record in the directory's segments, in order, shipped or not (each segment read up to
/// its first bad frame). For inspection: an operator's look at a journal, and the tests' frame audit.
pub fn records_on_disk(dir: &Path) -> io::Result<Vec<CallRecord>> {
    let mut out = Vec::new();
    for seq in list_segments(dir)? {
        out.extend(read_frames(&segment_path(dir, seq), 0, None, usize::MAX)?.0);
    }
    Ok(out)
}
