//! The byte layout of segments: a fixed header, then checksummed records.
//!
//! Owns: [`SegmentHeader`], [`RecordBatch`] (framing on the caller's thread) and the
//! pure decoders [`decode_record`] and [`scan`].
//! Knows nothing of: files, threads, what a payload means.
//!
//! Everything here is a pure function over `&[u8]`, so a fuzzer (or the proptests
//! below) can call it with any bytes; it never panics and never allocates in
//! proportion to a length it read from the input.
//!
//! ```text
//! segment = header record*
//! header  = magic "MKVLOG\r\n" | format: u32 LE | crc32c of the next 16 bytes: u32 LE
//!         | data epoch: u64 LE | covers_from: u64 LE                      (32 bytes)
//! record  = len: u32 LE (1..=MAX_RECORD_BYTES) | crc32c(payload): u32 LE | payload
//! ```
//!
//! CRC-32C (Castagnoli) rather than the zlib CRC-32: it detects more error patterns at
//! these lengths, it is what ext4, iSCSI, LevelDB and RocksDB use for the same job,
//! and the `crc32c` crate computes it with the SSE4.2 / ARMv8 instruction (~10 GB/s),
//! so recovery is bound by reading, not checksumming. A zero length is invalid, so a
//! zero-filled tail (a file extended but never written) never parses as records.

use std::fmt;

/// Marks a meshkv segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"MKVLOG\r\n";
/// Bytes of the segment header.
pub const SEGMENT_HEADER_BYTES: usize = 32;
/// Bytes of a record header (length and checksum).
pub const RECORD_HEADER_BYTES: usize = 8;
/// The largest payload a record may carry. A length above it is treated as damage,
/// never as an allocation request.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

/// The header of a segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The on-disk format version that wrote the segment.
    pub format: u32,
    /// The data epoch of the directory, so a segment copied from another directory is
    /// refused rather than replayed.
    pub epoch: u64,
    /// The oldest segment id whose records this segment carries. A plain segment
    /// covers only itself; a merged one covers the whole prefix it replaced, so segments
    /// with smaller ids still present after a crash are known to be leftovers.
    pub covers_from: u64,
}

impl SegmentHeader {
    /// The 32 header bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut bytes = [0u8; SEGMENT_HEADER_BYTES];
        bytes[..8].copy_from_slice(&SEGMENT_MAGIC);
        bytes[8..12].copy_from_slice(&self.format.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.epoch.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.covers_from.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[16..32]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Parses the header at the start of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordFault> {
        let Some(header) = bytes.get(..SEGMENT_HEADER_BYTES) else {
            return Err(RecordFault::ShortHeader);
        };
        if header[..8] != SEGMENT_MAGIC {
            return Err(RecordFault::BadMagic);
        }
        let crc = u32_at(header, 12);
        if crc32c::crc32c(&header[16..32]) != crc {
            return Err(RecordFault::BadHeaderChecksum);
        }
        Ok(Self {
            format: u32_at(header, 8),
            epoch: u64_at(header, 16),
            covers_from: u64_at(header, 24),
        })
    }
}

/// Why bytes are not a valid header or record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordFault {
    /// Fewer bytes than a segment header.
    ShortHeader,
    /// The segment does not start with the meshkv magic.
    BadMagic,
    /// The segment header's checksum does not match.
    BadHeaderChecksum,
    /// A record length of zero or above [`MAX_RECORD_BYTES`].
    ImpossibleLength(u32),
    /// The payload does not match its checksum.
    BadChecksum,
    /// The bytes end inside a record.
    Incomplete,
}

impl fmt::Display for RecordFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ShortHeader => f.write_str("the segment header is incomplete"),
            Self::BadMagic => f.write_str("not a meshkv segment (bad magic)"),
            Self::BadHeaderChecksum => f.write_str("the segment header checksum does not match"),
            Self::ImpossibleLength(len) => write!(f, "impossible record length {len}"),
            Self::BadChecksum => f.write_str("the record checksum does not match"),
            Self::Incomplete => f.write_str("the file ends inside a record"),
        }
    }
}

/// What the bytes at the start of a buffer hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, valid record of `size` bytes (header included).
    Record {
        /// The payload.
        payload: &'a [u8],
        /// Header plus payload.
        size: usize,
    },
    /// The buffer ends before the record does: `needed` bytes in all would complete it
    /// (if the rest turns out valid). Mid-file this means "read more"; at the end of
    /// a file it is a torn write.
    Incomplete {
        /// Bytes the whole record would take.
        needed: usize,
    },
    /// The record is damaged.
    Invalid(RecordFault),
}

/// Decodes the record at the start of `buf`. Pure; never panics.
pub fn decode_record(buf: &[u8]) -> Decoded<'_> {
    if buf.len() < RECORD_HEADER_BYTES {
        // A zero length is already known to be damage even without the checksum.
        if buf.len() >= 4 && u32_at(buf, 0) == 0 {
            return Decoded::Invalid(RecordFault::ImpossibleLength(0));
        }
        return Decoded::Incomplete {
            needed: RECORD_HEADER_BYTES,
        };
    }
    let len = u32_at(buf, 0);
    let payload_len = len as usize;
    if payload_len == 0 || payload_len > MAX_RECORD_BYTES {
        return Decoded::Invalid(RecordFault::ImpossibleLength(len));
    }
    let size = RECORD_HEADER_BYTES + payload_len;
    let Some(payload) = buf.get(RECORD_HEADER_BYTES..size) else {
        return Decoded::Incomplete { needed: size };
    };
    if crc32c::crc32c(payload) != u32_at(buf, 4) {
        return Decoded::Invalid(RecordFault::BadChecksum);
    }
    Decoded::Record { payload, size }
}

/// How a scan of a byte string ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte belonged to a valid record.
    Clean,
    /// The bytes from `offset` on are not a valid record.
    Damaged {
        /// Where the first bad record starts.
        offset: usize,
        /// What is wrong with it.
        fault: RecordFault,
    },
}

/// Iterates over the records of a byte string (records only, no segment header).
/// Pure; never panics. After the iterator is exhausted, [`Scan::end`] says whether the
/// bytes ended cleanly.
#[derive(Clone, Debug)]
pub struct Scan<'a> {
    buf: &'a [u8],
    offset: usize,
    end: Option<ScanEnd>,
}

/// Scans `buf` as a sequence of records.
pub fn scan(buf: &[u8]) -> Scan<'_> {
    Scan {
        buf,
        offset: 0,
        end: None,
    }
}

impl<'a> Scan<'a> {
    /// How the scan ended; `None` until the iterator has returned `None`.
    pub fn end(&self) -> Option<ScanEnd> {
        self.end
    }

    /// Bytes consumed by valid records so far.
    pub fn offset(&self) -> usize {
        self.offset
    }
}

impl<'a> Iterator for Scan<'a> {
    /// The byte offset of the record and its payload.
    type Item = (usize, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.end.is_some() {
            return None;
        }
        let rest = &self.buf[self.offset..];
        if rest.is_empty() {
            self.end = Some(ScanEnd::Clean);
            return None;
        }
        match decode_record(rest) {
            Decoded::Record { payload, size } => {
                let at = self.offset;
                self.offset += size;
                Some((at, payload))
            }
            Decoded::Incomplete { .. } => {
                self.end = Some(ScanEnd::Damaged {
                    offset: self.offset,
                    fault: RecordFault::Incomplete,
                });
                None
            }
            Decoded::Invalid(fault) => {
                self.end = Some(ScanEnd::Damaged {
                    offset: self.offset,
                    fault,
                });
                None
            }
        }
    }
}

/// Why a payload cannot become a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Records carry at least one byte (a zero length marks damage).
    #[error("a record payload must not be empty")]
    Empty,
    /// The payload exceeds [`MAX_RECORD_BYTES`].
    #[error("a record payload of {0} bytes exceeds the limit of {MAX_RECORD_BYTES} bytes")]
    TooLarge(usize),
}

/// Records framed and checksummed on the caller's thread, appended as one unit: all of
/// them land in the same segment, in order, and become durable together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordBatch {
    bytes: Vec<u8>,
    records: usize,
}

impl RecordBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// A batch of the given payloads.
    pub fn of<P: AsRef<[u8]>>(payloads: impl IntoIterator<Item = P>) -> Result<Self, BatchError> {
        let mut batch = Self::new();
        for payload in payloads {
            batch.push(payload.as_ref())?;
        }
        Ok(batch)
    }

    /// Adds one record.
    pub fn push(&mut self, payload: &[u8]) -> Result<(), BatchError> {
        if payload.is_empty() {
            return Err(BatchError::Empty);
        }
        if payload.len() > MAX_RECORD_BYTES {
            return Err(BatchError::TooLarge(payload.len()));
        }
        let len = u32::try_from(payload.len()).map_err(|_| BatchError::TooLarge(payload.len()))?;
        self.bytes.reserve(RECORD_HEADER_BYTES + payload.len());
        self.bytes.extend_from_slice(&len.to_le_bytes());
        self.bytes
            .extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        self.bytes.extend_from_slice(payload);
        self.records += 1;
        Ok(())
    }

    /// Empties the batch, keeping its buffer.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.records = 0;
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// The framed bytes, as written to the segment.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn framed(payloads: &[Vec<u8>]) -> Vec<u8> {
        RecordBatch::of(payloads).unwrap().as_bytes().to_vec()
    }

    #[test]
    fn records_round_trip() {
        let payloads = vec![b"a".to_vec(), vec![7u8; 300], b"xyz".to_vec()];
        let bytes = framed(&payloads);
        let mut scan = scan(&bytes);
        let read: Vec<Vec<u8>> = scan.by_ref().map(|(_, p)| p.to_vec()).collect();
        assert_eq!(read, payloads);
        assert_eq!(scan.end(), Some(ScanEnd::Clean));
    }

    #[test]
    fn header_round_trips_and_detects_damage() {
        let header = SegmentHeader {
            format: 1,
            epoch: 0xdead_beef,
            covers_from: 3,
        };
        let mut bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        bytes[20] ^= 1;
        assert_eq!(
            SegmentHeader::decode(&bytes),
            Err(RecordFault::BadHeaderChecksum)
        );
        assert_eq!(
            SegmentHeader::decode(&bytes[..10]),
            Err(RecordFault::ShortHeader)
        );
    }

    #[test]
    fn each_fault_is_named() {
        let bytes = framed(&[b"hello".to_vec()]);
        let mut flipped = bytes.clone();
        flipped[9] ^= 0x40;
        assert_eq!(
            decode_record(&flipped),
            Decoded::Invalid(RecordFault::BadChecksum)
        );
        assert_eq!(
            decode_record(&[0u8; 12]),
            Decoded::Invalid(RecordFault::ImpossibleLength(0))
        );
        assert_eq!(
            decode_record(&[0xff; 12]),
            Decoded::Invalid(RecordFault::ImpossibleLength(u32::MAX))
        );
        assert_eq!(
            decode_record(&bytes[..bytes.len() - 1]),
            Decoded::Incomplete {
                needed: bytes.len()
            }
        );
        assert_eq!(RecordBatch::new().push(b""), Err(BatchError::Empty));
    }

    proptest! {
        /// Any bytes: no panic, records tile the consumed prefix exactly.
        #[test]
        fn scanning_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = SegmentHeader::decode(&bytes);
            let mut scan = scan(&bytes);
            let mut expected_offset = 0;
            for (offset, payload) in scan.by_ref() {
                prop_assert_eq!(offset, expected_offset);
                expected_offset += RECORD_HEADER_BYTES + payload.len();
            }
            prop_assert_eq!(scan.offset(), expected_offset);
            prop_assert!(scan.end().is_some());
        }

        /// Valid records cut anywhere: exactly the whole records before the cut survive.
        #[test]
        fn a_cut_keeps_exactly_the_whole_records(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..64), 1..20),
            cut in any::<proptest::sample::Index>(),
        ) {
            let bytes = framed(&payloads);
            let cut = cut.index(bytes.len() + 1);
            let mut scan = scan(&bytes[..cut]);
            let read: Vec<&[u8]> = scan.by_ref().map(|(_, p)| p).collect();
            let mut boundary = 0;
            let mut whole = 0;
            for payload in &payloads {
                if boundary + RECORD_HEADER_BYTES + payload.len() > cut { break; }
                boundary += RECORD_HEADER_BYTES + payload.len();
                whole += 1;
            }
            prop_assert_eq!(read.len(), whole);
            if cut == boundary {
                prop_assert_eq!(scan.end(), Some(ScanEnd::Clean));
            } else {
                let damaged_at = matches!(scan.end(), Some(ScanEnd::Damaged { offset, .. }) if offset == boundary);
                prop_assert!(damaged_at);
            }
        }

        /// One flipped byte never yields a record that was not written.
        #[test]
        fn a_flipped_byte_is_caught(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..64), 1..20),
            at in any::<proptest::sample::Index>(),
            mask in 1u8..,
        ) {
            let mut bytes = framed(&payloads);
            let at = at.index(bytes.len());
            bytes[at] ^= mask;
            let read: Vec<Vec<u8>> = scan(&bytes).map(|(_, p)| p.to_vec()).collect();
            for (index, payload) in read.iter().enumerate() {
                prop_assert_eq!(payload, &payloads[index]);
            }
            prop_assert!(read.len() < payloads.len());
        }
    }
}
