//! The HLC lease: a durable upper bound on every version this node has issued.
//!
//! Owns: the `clock` file and its two-slot layout ([`LeaseFile`]).
//! Knows nothing of: the HLC itself (the caller decides the bound), segments.
//!
//! A restarted node must never stamp a version at or below one it issued in its
//! previous life. Before issuing versions up to `B` it makes `B` durable here; after a
//! restart it starts its clock above the bound it reads. Extending is rare (the caller
//! leases ahead, e.g. seconds at a time), so each extension is a synchronous pwrite +
//! fdatasync of one 512-byte sector.
//!
//! ```text
//! clock file = slot 0 (512 bytes) | slot 1 (512 bytes)
//! slot       = magic "MKVLEASE" | sequence: u64 LE | bound_ms: u64 LE | crc32c: u32 LE | zeros
//! ```
//!
//! Extensions alternate between the slots (sequence parity), so a write torn by a
//! crash damages only the slot being written and the other still holds the previous
//! bound. Reading takes the valid slot with the larger sequence.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{io_error, JournalError};

/// File name of the lease file.
pub const CLOCK_FILE: &str = "clock";
/// One slot per sector, so a torn sector write touches one slot only.
const SLOT_BYTES: usize = 512;
const SLOT_MAGIC: [u8; 8] = *b"MKVLEASE";
/// Magic, sequence, bound.
const SLOT_BODY_BYTES: usize = 24;

/// One valid slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    sequence: u64,
    bound_ms: u64,
}

fn encode_slot(slot: Slot) -> [u8; SLOT_BYTES] {
    let mut bytes = [0u8; SLOT_BYTES];
    bytes[..8].copy_from_slice(&SLOT_MAGIC);
    bytes[8..16].copy_from_slice(&slot.sequence.to_le_bytes());
    bytes[16..24].copy_from_slice(&slot.bound_ms.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[..SLOT_BODY_BYTES]);
    bytes[24..28].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// Whether the slot is valid (`Ok(Some)`), never written (`Ok(None)`: all zeros) or
/// damaged (`Err`).
fn decode_slot(bytes: &[u8]) -> Result<Option<Slot>, ()> {
    if bytes.iter().all(|&byte| byte == 0) {
        return Ok(None);
    }
    if bytes.len() < SLOT_BODY_BYTES + 4 || bytes[..8] != SLOT_MAGIC {
        return Err(());
    }
    let word = |at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(word)
    };
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[24..28]);
    if crc32c::crc32c(&bytes[..SLOT_BODY_BYTES]) != u32::from_le_bytes(crc) {
        return Err(());
    }
    Ok(Some(Slot {
        sequence: word(8),
        bound_ms: word(16),
    }))
}

/// The open `clock` file.
#[derive(Debug)]
pub struct LeaseFile {
    file: File,
    path: PathBuf,
    /// The newest valid slot, if any.
    current: Option<Slot>,
}

impl LeaseFile {
    /// Creates the file (both slots empty) if it is missing, and reads it. Both slots
    /// damaged is an error unless `repair`, which starts over without a bound.
    pub fn open(dir: &Path, repair: bool) -> Result<Self, JournalError> {
        let path = dir.join(CLOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|error| io_error(format!("opening {}", path.display()), error))?;
        let mut bytes = vec![0u8; 2 * SLOT_BYTES];
        let read = read_up_to(&file, &mut bytes)
            .map_err(|error| io_error(format!("reading {}", path.display()), error))?;
        if read < bytes.len() {
            // New (or cut short): give the file its full size so slot writes never
            // extend it.
            file.set_len(bytes.len() as u64)
                .and_then(|()| file.sync_all())
                .map_err(|error| io_error(format!("sizing {}", path.display()), error))?;
        }
        let slots = [
            decode_slot(&bytes[..SLOT_BYTES]),
            decode_slot(&bytes[SLOT_BYTES..]),
        ];
        let valid = slots.iter().filter_map(|slot| slot.ok().flatten());
        let current = valid.max_by_key(|slot| slot.sequence);
        if current.is_none() && slots.iter().all(Result::is_err) && !repair {
            return Err(JournalError::Corrupt {
                file: path,
                offset: 0,
                reason: "both lease slots are damaged".to_owned(),
            });
        }
        Ok(Self {
            file,
            path,
            current,
        })
    }

    /// The bound the node promised, if it ever leased one.
    pub fn bound_ms(&self) -> Option<u64> {
        self.current.map(|slot| slot.bound_ms)
    }

    /// Makes `bound_ms` durable. A bound at or below the current one changes nothing:
    /// the promise only grows.
    pub fn extend(&mut self, bound_ms: u64) -> Result<(), JournalError> {
        if self.bound_ms().is_some_and(|current| bound_ms <= current) {
            return Ok(());
        }
        let sequence = self.current.map_or(0, |slot| slot.sequence + 1);
        let slot = Slot { sequence, bound_ms };
        let offset = (sequence % 2) * SLOT_BYTES as u64;
        self.file
            .write_all_at(&encode_slot(slot), offset)
            .and_then(|()| self.file.sync_data())
            .map_err(|error| io_error(format!("writing {}", self.path.display()), error))?;
        self.current = Some(slot);
        Ok(())
    }
}

fn read_up_to(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], filled as u64)? {
            0 => break,
            read => filled += read,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_survives_reopen_and_only_grows() {
        let dir = tempfile::tempdir().unwrap();
        let mut lease = LeaseFile::open(dir.path(), false).unwrap();
        assert_eq!(lease.bound_ms(), None);
        lease.extend(1_000).unwrap();
        lease.extend(2_000).unwrap();
        lease.extend(1_500).unwrap();
        drop(lease);
        let mut lease = LeaseFile::open(dir.path(), false).unwrap();
        assert_eq!(lease.bound_ms(), Some(2_000));
        lease.extend(3_000).unwrap();
        drop(lease);
        assert_eq!(
            LeaseFile::open(dir.path(), false).unwrap().bound_ms(),
            Some(3_000)
        );
    }

    #[test]
    fn a_torn_slot_falls_back_to_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let mut lease = LeaseFile::open(dir.path(), false).unwrap();
        lease.extend(1_000).unwrap(); // sequence 0, slot 0
        lease.extend(2_000).unwrap(); // sequence 1, slot 1
        drop(lease);
        let path = dir.path().join(CLOCK_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[SLOT_BYTES + 17] ^= 0xff; // tear the newer slot
        std::fs::write(&path, &bytes).unwrap();
        let mut lease = LeaseFile::open(dir.path(), false).unwrap();
        assert_eq!(lease.bound_ms(), Some(1_000));
        // The next extension overwrites the torn slot, not the good one.
        lease.extend(1_500).unwrap();
        drop(lease);
        assert_eq!(
            LeaseFile::open(dir.path(), false).unwrap().bound_ms(),
            Some(1_500)
        );
    }

    #[test]
    fn both_slots_damaged_is_refused_unless_repairing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CLOCK_FILE), vec![0x5a; 2 * SLOT_BYTES]).unwrap();
        let error = LeaseFile::open(dir.path(), false).unwrap_err();
        assert!(error.to_string().contains("both lease slots"), "{error}");
        assert_eq!(LeaseFile::open(dir.path(), true).unwrap().bound_ms(), None);
    }
}
