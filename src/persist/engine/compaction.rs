//! Compaction (Bitcask's merge): rewrite the sealed prefix, keeping what is live.
//!
//! Owns: the merge steps and their crash-safe order.
//! Knows nothing of: what makes a record live (the caller's [`Liveness`] decides).
//!
//! Steps, each leaving a directory that opens to the same state if the process dies
//! right after it:
//! 1. Ask the writer to seal the active segment. Appends go on into a new one.
//! 2. Take every sealed segment, oldest first: always a prefix of the log. A record is
//!    dropped only when the caller says a newer one exists, and a tombstone the caller
//!    forgot can go only together with every older value of its key.
//! 3. Copy the live records into `log-<last id>.merge.tmp`, whose header says it
//!    covers the whole prefix; fsync it. (Crash: the temp file is removed at open.)
//! 4. Barrier: ask the writer to write and fsync everything queued. Every append made
//!    before a liveness check is now durable, so no record is dropped in favour of a
//!    newer one that a crash could still lose.
//! 5. Rename the temp file over the prefix's last segment, fsync the directory.
//!    (Crash: open sees the merged segment covering the older ones and removes them.)
//! 6. Remove the older segments, fsync the directory.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::atomic::Ordering;

use super::{lock, SegmentInfo, Shared};
use crate::persist::meta::sync_dir;
use crate::persist::record::{RecordBatch, SEGMENT_HEADER_BYTES};
use crate::persist::segment;
use crate::persist::writer::Request;
use crate::persist::{io_error, CompactionReport, JournalError, Liveness};

/// A point between two merge steps, where tests make the compaction stop as if the
/// process had died there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeStep {
    /// After the merged temp file is written and synced, before the rename.
    Rename,
    /// After the rename, before any older segment is removed.
    RemoveOld,
    /// After the first older segment is removed.
    RemoveRest,
}

/// Runs one compaction on the calling thread. `stop_before` is for crash tests.
pub(super) fn compact(
    shared: &Shared,
    liveness: &dyn Liveness,
    stop_before: Option<MergeStep>,
) -> Result<Option<CompactionReport>, JournalError> {
    let _one_at_a_time = lock(&shared.compaction_lock);
    shared.ask(Request::Rotate)?;
    let prefix: Vec<SegmentInfo> = lock(&shared.segments).sealed.clone();
    let (Some(first), Some(last)) = (prefix.first().copied(), prefix.last().copied()) else {
        return Ok(None);
    };

    let temporary = shared.dir.join(format!("log-{:016x}.merge.tmp", last.id));
    let result = write_merged(shared, liveness, &prefix, first.covers_from, &temporary);
    let (bytes_out, records_in, records_out) = match result {
        Ok(counts) => counts,
        Err(error) => {
            let _ = std::fs::remove_file(&temporary);
            return Err(error);
        }
    };

    shared.ask(Request::Sync)?;
    if stop_before == Some(MergeStep::Rename) {
        return Ok(None);
    }
    let target = segment::path(&shared.dir, last.id);
    std::fs::rename(&temporary, &target)
        .map_err(|error| io_error(format!("renaming into {}", target.display()), error))?;
    sync_dir(&shared.dir)?;
    if stop_before == Some(MergeStep::RemoveOld) {
        return Ok(None);
    }
    for (index, old) in prefix[..prefix.len() - 1].iter().enumerate() {
        if index == 1 && stop_before == Some(MergeStep::RemoveRest) {
            return Ok(None);
        }
        let path = segment::path(&shared.dir, old.id);
        std::fs::remove_file(&path)
            .map_err(|error| io_error(format!("removing {}", path.display()), error))?;
    }
    sync_dir(&shared.dir)?;

    let bytes_in: u64 = prefix.iter().map(|info| info.bytes).sum();
    {
        let mut segments = lock(&shared.segments);
        // The writer only appends to `sealed`, so the prefix is still at its front.
        segments.sealed.splice(
            ..prefix.len(),
            [SegmentInfo {
                id: last.id,
                bytes: bytes_out,
                covers_from: first.covers_from,
            }],
        );
    }
    let dropped = bytes_in.saturating_sub(bytes_out);
    let _ = shared
        .garbage
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |garbage| {
            Some(garbage.saturating_sub(dropped))
        });
    let report = CompactionReport {
        at_ms: shared.options.clock.wall_ms(),
        segments_in: prefix.len(),
        bytes_in,
        bytes_out,
        records_in,
        records_out,
    };
    *lock(&shared.last_compaction) = Some(report.clone());
    shared.compactions.fetch_add(1, Ordering::Relaxed);
    Ok(Some(report))
}

/// Writes the live records of `prefix` to `temporary` and syncs it. Returns the bytes
/// written and the records read and kept.
fn write_merged(
    shared: &Shared,
    liveness: &dyn Liveness,
    prefix: &[SegmentInfo],
    covers_from: u64,
    temporary: &std::path::Path,
) -> Result<(u64, u64, u64), JournalError> {
    let _ = std::fs::remove_file(temporary);
    let file = segment::create(temporary, shared.epoch, covers_from, 0)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut bytes_out = SEGMENT_HEADER_BYTES as u64;
    let (mut records_in, mut records_out) = (0u64, 0u64);
    let mut write_error = None;
    let mut batch = RecordBatch::new();
    for info in prefix {
        if shared.closing.load(Ordering::Relaxed) {
            return Err(JournalError::Closed);
        }
        let path = segment::path(&shared.dir, info.id);
        let replayed = segment::replay(&path, |payload| {
            records_in += 1;
            if write_error.is_some() || !liveness.is_live(payload) {
                return;
            }
            batch.clear();
            // Payloads were framed once already, so they fit a record.
            if batch.push(payload).is_ok() {
                bytes_out += batch.as_bytes().len() as u64;
                records_out += 1;
                if let Err(error) = out.write_all(batch.as_bytes()) {
                    write_error = Some(error);
                }
            }
        })?;
        if let Some(damage) = replayed.damage {
            return Err(JournalError::Corrupt {
                file: path,
                offset: damage.offset,
                reason: damage.fault.to_string(),
            });
        }
    }
    let write_failed = |error| io_error(format!("writing {}", temporary.display()), error);
    if let Some(error) = write_error {
        return Err(write_failed(error));
    }
    let file: File = out
        .into_inner()
        .map_err(|error| write_failed(error.into_error()))?;
    file.sync_all().map_err(write_failed)?;
    Ok((bytes_out, records_in, records_out))
}
