//! Segment files: names, creation, and reading their records back in bounded chunks.
//!
//! Owns: the `log-<16 hex>.seg` naming, [`create`], [`replay`] (streaming reader built
//! on the pure `record` decoder) and the torn-tail rule [`is_torn`].
//! Knows nothing of: the writer thread, compaction policy, what payloads mean.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::meta::sync_dir;
use super::record::{
    decode_record, Decoded, RecordFault, SegmentHeader, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use super::{io_error, JournalError, FORMAT_VERSION};

/// Bytes read from a segment at a time during replay.
const READ_CHUNK_BYTES: usize = 4 << 20;

/// The file name of segment `id`.
pub fn file_name(id: u64) -> String {
    format!("log-{id:016x}.seg")
}

/// The id of a segment file name, if it is one.
pub fn parse_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("log-")?.strip_suffix(".seg")?;
    if hex.len() != 16 || !hex.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// The path of segment `id` in `dir`.
pub fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(file_name(id))
}

/// Creates `path` with a segment header and makes it (and its directory entry) durable.
/// `preallocate_bytes` > 0 sets the file's length up front (sparse): appends then never
/// change the file size, so each fdatasync has less metadata to commit (measured:
/// ~0.10 instead of ~0.12 ms per 125-byte append on this machine's ext4). The writer
/// cuts the unused tail when it seals the segment; after a crash the zero tail is
/// recognised as never written. Returns the file, positioned after the header.
pub fn create(
    path: &Path,
    epoch: u64,
    covers_from: u64,
    preallocate_bytes: u64,
) -> Result<File, JournalError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|error| io_error(format!("creating {}", path.display()), error))?;
    let header = SegmentHeader {
        format: FORMAT_VERSION,
        epoch,
        covers_from,
    };
    file.write_all(&header.encode())
        .and_then(|()| {
            if preallocate_bytes > SEGMENT_HEADER_BYTES as u64 {
                file.set_len(preallocate_bytes)?;
            }
            file.sync_all()
        })
        .map_err(|error| io_error(format!("writing {}", path.display()), error))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(file)
}

/// Reads and checks the header of a segment.
pub fn read_header(path: &Path, epoch: u64) -> Result<Result<SegmentHeader, String>, JournalError> {
    let file =
        File::open(path).map_err(|error| io_error(format!("opening {}", path.display()), error))?;
    let mut bytes = Vec::with_capacity(SEGMENT_HEADER_BYTES);
    file.take(SEGMENT_HEADER_BYTES as u64)
        .read_to_end(&mut bytes)
        .map_err(|error| io_error(format!("reading {}", path.display()), error))?;
    Ok(match SegmentHeader::decode(&bytes) {
        Err(fault) => Err(fault.to_string()),
        Ok(header) if header.format != FORMAT_VERSION => Err(format!(
            "segment of format {}, this meshkv reads {FORMAT_VERSION}",
            header.format
        )),
        Ok(header) if header.epoch != epoch => Err(format!(
            "segment of another data directory (epoch {:016x}, this directory {epoch:016x})",
            header.epoch
        )),
        Ok(header) => Ok(header),
    })
}

/// Whether a segment file holds no header yet: shorter than one, or zeros throughout.
pub fn never_written(path: &Path, file_bytes: u64) -> Result<bool, JournalError> {
    if file_bytes < SEGMENT_HEADER_BYTES as u64 {
        return Ok(true);
    }
    let file =
        File::open(path).map_err(|error| io_error(format!("opening {}", path.display()), error))?;
    zeros_from(&file, 0, file_bytes)
}

/// Where a segment's records stop being readable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset (in the file) of the first bad record.
    pub offset: u64,
    /// What is wrong with it.
    pub fault: RecordFault,
    /// Whether it looks like an interrupted final write rather than corruption.
    pub torn: bool,
}

/// The outcome of replaying one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replayed {
    /// Valid records handed to the callback.
    pub records: u64,
    /// File length.
    pub file_bytes: u64,
    /// Where valid records end (== `file_bytes` unless damaged).
    pub valid_end: u64,
    /// The first bad record, if any.
    pub damage: Option<Damage>,
}

/// Hands every valid record of the segment at `path` (header already checked) to
/// `on_record`, in order, reading at most a few MiB at a time. Stops at the first bad
/// record and describes it. Allocates beyond the chunk only for a record whose bytes
/// are really in the file.
pub fn replay(path: &Path, mut on_record: impl FnMut(&[u8])) -> Result<Replayed, JournalError> {
    let read_error = |error| io_error(format!("reading {}", path.display()), error);
    let mut file = File::open(path).map_err(read_error)?;
    let file_bytes = file.metadata().map_err(read_error)?.len();
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    // File offset of buf[0]; the header is skipped by reading and discarding it.
    let mut base = 0u64;
    let mut pos = SEGMENT_HEADER_BYTES;
    let mut records = 0u64;
    let mut eof = false;
    loop {
        let rest = &buf[pos.min(buf.len())..];
        match decode_record(rest) {
            Decoded::Record { payload, size } => {
                on_record(payload);
                records += 1;
                pos += size;
                continue;
            }
            Decoded::Invalid(fault) => {
                let offset = base + pos as u64;
                let torn = is_torn(&file, rest, offset, file_bytes, fault)?;
                return Ok(Replayed {
                    records,
                    file_bytes,
                    valid_end: offset,
                    damage: Some(Damage {
                        offset,
                        fault,
                        torn,
                    }),
                });
            }
            Decoded::Incomplete { needed } => {
                let offset = base + pos as u64;
                let available = file_bytes.saturating_sub(offset);
                if eof || (needed as u64) > available {
                    if available == 0 {
                        return Ok(Replayed {
                            records,
                            file_bytes,
                            valid_end: offset,
                            damage: None,
                        });
                    }
                    // The file ends inside this record: the write was interrupted.
                    let fault = RecordFault::Incomplete;
                    return Ok(Replayed {
                        records,
                        file_bytes,
                        valid_end: offset,
                        damage: Some(Damage {
                            offset,
                            fault,
                            torn: true,
                        }),
                    });
                }
                // Refill: keep the unread tail, read at least what the record needs.
                let keep = pos.min(buf.len());
                buf.drain(..keep);
                base += keep as u64;
                pos -= keep;
                let want = needed.max(READ_CHUNK_BYTES);
                let start = buf.len();
                buf.resize(want.max(start), 0);
                let mut filled = start;
                while filled < buf.len() {
                    match file.read(&mut buf[filled..]).map_err(read_error)? {
                        0 => {
                            eof = true;
                            break;
                        }
                        read => filled += read,
                    }
                }
                buf.truncate(filled);
            }
        }
    }
}

/// Whether damage at `offset` is the mark of an interrupted last write in this file,
/// given that a segment's unwritten space reads as zeros (it is preallocated):
/// * everything from `offset` on is zero (space allocated, never written), or
/// * the record's checksum fails and only zeros follow it (its write was cut short).
///
/// The caller applies it only to the last segment; "the file ends inside a record" is
/// decided by [`replay`] itself.
fn is_torn(
    file: &File,
    rest: &[u8],
    offset: u64,
    file_bytes: u64,
    fault: RecordFault,
) -> Result<bool, JournalError> {
    match fault {
        RecordFault::BadChecksum => {
            let mut len = [0u8; 4];
            len.copy_from_slice(&rest[..4]);
            let end = offset + RECORD_HEADER_BYTES as u64 + u64::from(u32::from_le_bytes(len));
            zeros_from(file, end, file_bytes)
        }
        RecordFault::ImpossibleLength(0) => zeros_from(file, offset, file_bytes),
        _ => Ok(false),
    }
}

/// Whether the file holds only zeros from `from` to `file_bytes`.
fn zeros_from(file: &File, from: u64, file_bytes: u64) -> Result<bool, JournalError> {
    let mut chunk = vec![0u8; 64 << 10];
    let mut at = from;
    while at < file_bytes {
        let read = file
            .read_at(&mut chunk, at)
            .map_err(|error| io_error("reading a segment tail".to_owned(), error))?;
        if read == 0 {
            break;
        }
        if chunk[..read].iter().any(|&byte| byte != 0) {
            return Ok(false);
        }
        at += read as u64;
    }
    Ok(true)
}

/// Cuts the file at `len` and makes the cut durable.
pub fn truncate(path: &Path, len: u64) -> Result<(), JournalError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|file| {
            file.set_len(len)?;
            file.sync_all()
        })
        .map_err(|error| io_error(format!("truncating {}", path.display()), error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_strangers_are_ignored() {
        assert_eq!(file_name(0x2a), "log-000000000000002a.seg");
        assert_eq!(parse_name("log-000000000000002a.seg"), Some(0x2a));
        assert_eq!(parse_name("log-2a.seg"), None);
        assert_eq!(parse_name("log-000000000000002a.seg.tmp"), None);
        assert_eq!(parse_name("log-00000000000000zz.seg"), None);
    }
}
