//! Durability: the node's data directory, behind one small seam.
//!
//! Owns: the [`Journal`] trait (what the node needs from storage), its two
//! implementations [`MemoryOnly`] and [`FileJournal`], the [`FsyncPolicy`], and the
//! on-disk formats (`record`, `meta`, `lease`).
//! Knows nothing of: what a record means (payloads are opaque bytes; the caller owns
//! the codec and the in-memory index), the network, the async runtime's tasks.
//!
//! # Design: a Bitcask-style log
//! The node keeps every key in memory (the store and its digest need them all), so the
//! disk only has to make changes durable and give them back at restart. That is the
//! job of an append-only log, and nothing more:
//! * **Segments** `log-<16 hex>.seg`: a header, then `[len][crc32c][payload]` records
//!   (see `record`). The active segment rotates at `segment_bytes`.
//! * **Group commit.** One writer thread owns the active segment. Appends are framed on
//!   the caller's thread and queued; the thread writes everything queued, then (policy
//!   `batch`) fdatasyncs once and publishes the durable [`Lsn`], so concurrent writers
//!   share one fsync. File I/O and fsync never run on the async runtime.
//!   The active segment is preallocated (sparse) to its full size, so appends do not
//!   change the file size, and trimmed when sealed.
//! * **Recovery** replays every segment in order through a callback. What a crash can
//!   leave in the last segment (a record cut short, a checksum failing with only zeros
//!   after it, a zero tail, a header never written) is cut away and reported. Damage
//!   anywhere else is an error naming file and byte offset, unless `repair` is set:
//!   then the damaged segment is cut at its first bad record (its framing cannot be
//!   trusted after it) and later segments are kept, since each starts with its own
//!   header. Keeping them is safe because a record is a self-contained fact ("key had
//!   version v") and merges are order-independent; what repair loses is only what it
//!   reports.
//! * **Compaction** rewrites a prefix of the sealed segments, keeping the records the
//!   caller's [`Liveness`] says are current. Always a prefix, so a tombstone is never
//!   dropped while an older segment may still hold an older value of its key.
//! * **The HLC lease** (`clock` file) is a durable upper bound on the versions issued.
//!
//! redb and fjall were measured against this log on the node's workload and neither
//! won (the log loads 1 M keys fastest, uses no cache memory, and writes as fast as
//! the best of them); see `bench/storage-engines/README.md` for the figures.
//!
//! Known limits: a crash whose unsynced pages reach the disk out of order (a zero
//! sector before a written one, inside the last segment) looks like damage, not a torn
//! tail, and needs `repair`; only records after the last fsync can be in that region,
//! so repair loses nothing that was acknowledged as durable.
//!
//! # Contract with the caller
//! * LSNs order appends within one open journal; they are not stored and restart at 0.
//! * A change must be appended (its [`Journal::append`] call returned) before the
//!   caller's [`Liveness`] can see it, e.g. by appending under the same lock that
//!   applies the change to memory. Compaction relies on it: it drops a record only
//!   after every append queued before its liveness check is durable.
//! * Recovery order is the order of appends, except that compaction may move old
//!   records; merges must therefore be order-independent (LWW by version is).

mod engine;
pub mod lease;
pub mod meta;
pub mod record;
mod segment;
pub mod storage;
mod writer;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedSemaphorePermit;

pub use engine::{
    FileJournal, JournalOptions, Progress, Recovery, Truncation, DEFAULT_COMPACTION_MIN_BYTES,
    DEFAULT_COMPACTION_RATIO, DEFAULT_QUEUE_APPENDS, DEFAULT_SEGMENT_BYTES, UNUSED_TAIL,
};
pub use record::{BatchError, RecordBatch, MAX_RECORD_BYTES};
pub use storage::{DirStorage, MemoryStorage, Opened, Owner, Storage};

/// The on-disk format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// A log sequence number: the position of one [`Journal::append`] call among the
/// calls of one open journal. 0 means "nothing".
pub type Lsn = u64;

/// A future returned by the (object-safe) [`Journal`] methods.
pub type JournalFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, JournalError>> + Send + 'a>>;

/// When appended records become durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FsyncPolicy {
    /// fdatasync after every append call.
    Always,
    /// Write everything queued, then one fdatasync for the whole group.
    #[default]
    Batch,
    /// Durable as soon as the bytes are handed to the OS: survives a killed process,
    /// not a power cut.
    Never,
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Always => "always",
            Self::Batch => "batch",
            Self::Never => "never",
        })
    }
}

/// An fsync policy name that is not `always`, `batch` or `never`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("fsync policy {0:?} is unknown: use always, batch or never")]
pub struct UnknownFsyncPolicy(pub String);

impl<'de> serde::Deserialize<'de> for FsyncPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for FsyncPolicy {
    type Err = UnknownFsyncPolicy;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "always" => Ok(Self::Always),
            "batch" => Ok(Self::Batch),
            "never" => Ok(Self::Never),
            other => Err(UnknownFsyncPolicy(other.to_owned())),
        }
    }
}

/// Room for one append call in a journal's queue, taken before the append so that the
/// append itself never waits (it can then run under the caller's lock).
#[derive(Debug)]
pub struct Slot {
    /// Released when the writer has taken the append off the queue.
    _permit: Option<OwnedSemaphorePermit>,
}

impl Slot {
    /// A slot of a journal whose queue is unbounded (nothing to release).
    pub fn unbounded() -> Self {
        Self { _permit: None }
    }

    /// A slot holding one permit of the journal's queue semaphore.
    pub fn from_permit(permit: OwnedSemaphorePermit) -> Self {
        Self {
            _permit: Some(permit),
        }
    }
}

/// Decides, during compaction, whether a record is still current. The caller answers
/// from its in-memory map (key present with exactly this version). Called from a
/// compaction thread, never while the journal holds a lock the caller might need.
pub trait Liveness: Send + Sync {
    /// Whether the record must be kept.
    fn is_live(&self, payload: &[u8]) -> bool;
}

impl<F: Fn(&[u8]) -> bool + Send + Sync> Liveness for F {
    fn is_live(&self, payload: &[u8]) -> bool {
        self(payload)
    }
}

/// What a compaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactionReport {
    /// When it finished: wall-clock ms from the journal's [`Clock`](crate::clock::Clock).
    pub at_ms: u64,
    /// Segments rewritten.
    pub segments_in: usize,
    /// Bytes of the rewritten segments.
    pub bytes_in: u64,
    /// Bytes of the merged segment.
    pub bytes_out: u64,
    /// Records read.
    pub records_in: u64,
    /// Records kept.
    pub records_out: u64,
}

/// Figures for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Bytes of valid data in all segment files (the active segment's preallocated,
    /// sparse tail is not counted: it occupies no blocks).
    pub disk_bytes: u64,
    /// Segment files, the active one included.
    pub segments: usize,
    /// Bytes the caller reported as overwritten ([`Journal::record_garbage`]) and not yet
    /// compacted away.
    pub garbage_bytes: u64,
    /// The last LSN handed out.
    pub appended: Lsn,
    /// The last durable LSN.
    pub durable: Lsn,
    /// The last compaction, if any ran since open.
    pub last_compaction: Option<CompactionReport>,
    /// Bytes handed to the OS since open (records and their headers).
    pub written_bytes: u64,
    /// fdatasyncs of the log since open (the lease's are not counted).
    pub fsyncs: u64,
    /// Compactions completed since open.
    pub compactions: u64,
}

/// What the node needs from storage. Object-safe (`Arc<dyn Journal>`), and free of file
/// types, so a simulated disk can implement it.
///
/// The write path: `reserve().await` (waits while the queue is full: backpressure),
/// then `append` under the node's lock (never blocks), then `wait_durable(lsn).await`
/// before acknowledging.
pub trait Journal: Send + Sync {
    /// Waits until the queue has room for one append call. Cancel-safe.
    fn reserve(&self) -> JournalFuture<'_, Slot>;

    /// Room for one append call if there is some now; [`JournalError::Full`] if not.
    fn try_reserve(&self) -> Result<Slot, JournalError>;

    /// Queues `batch` and returns its LSN at once. An empty batch still gets an LSN
    /// (useful as a durability barrier).
    fn append(&self, slot: Slot, batch: RecordBatch) -> Result<Lsn, JournalError>;

    /// Resolves once every append up to `lsn` is durable under the policy; fails if the
    /// journal failed or closed first.
    fn wait_durable(&self, lsn: Lsn) -> JournalFuture<'_, ()>;

    /// The bound read from the lease at open, raised by every [`Journal::extend_lease`].
    fn read_lease(&self) -> Option<u64>;

    /// Makes `bound_ms` durable before returning. Blocking: call it from a blocking
    /// context (`spawn_blocking`), rarely.
    fn extend_lease(&self, bound_ms: u64) -> Result<(), JournalError>;

    /// Gives the journal the predicate compaction asks; automatic compaction runs only
    /// once one is set.
    fn set_liveness(&self, liveness: Arc<dyn Liveness>);

    /// Tells the journal that a record of `bytes` payload bytes was overwritten (the
    /// caller's merge replaced it), which drives the compaction trigger.
    fn record_garbage(&self, bytes: u64);

    /// Compacts now, on the calling thread (blocking), if there is anything sealed.
    fn compact_now(&self) -> Result<Option<CompactionReport>, JournalError>;

    /// Figures for metrics.
    fn stats(&self) -> JournalStats;

    /// Writes and syncs everything queued and stops the background threads. Blocking.
    /// Later appends fail with [`JournalError::Closed`].
    fn shutdown(&self) -> Result<(), JournalError>;

    /// Whether the blocking calls ([`Journal::extend_lease`], [`Journal::shutdown`]) do
    /// I/O and so belong on a blocking thread. A journal without a disk says no, and
    /// is called in place: no thread hop, which also keeps a simulated node, whose
    /// time stands still while a blocking task runs, deterministic.
    fn blocks(&self) -> bool {
        true
    }

    /// `try_reserve` then `append`.
    fn try_append(&self, batch: RecordBatch) -> Result<Lsn, JournalError> {
        let slot = self.try_reserve()?;
        self.append(slot, batch)
    }
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another process holds the directory's lock.
    #[error("data directory {} is in use by another process{}", dir.display(), pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default())]
    InUse {
        /// The directory.
        dir: PathBuf,
        /// The holder's pid, as it wrote it in the lock file.
        pid: Option<u32>,
    },
    /// The directory was written by another on-disk format.
    #[error("data directory {} has format {found}, this meshkv reads {FORMAT_VERSION}", dir.display())]
    FormatMismatch {
        /// The directory.
        dir: PathBuf,
        /// The format its meta file names.
        found: u32,
    },
    /// The directory belongs to another node or cluster.
    #[error("data directory {} belongs to {what} {found}, not {expected}", dir.display())]
    WrongOwner {
        /// The directory.
        dir: PathBuf,
        /// `node` or `cluster`.
        what: &'static str,
        /// What the meta file says.
        found: String,
        /// What this node is.
        expected: String,
    },
    /// The meta file cannot be read as one.
    #[error("{} is not a valid meta file: {reason}", path.display())]
    MetaInvalid {
        /// The meta file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Damaged bytes where no crash can have left them.
    #[error("{} is damaged at byte {offset}: {reason} (open with repair to drop the unreadable part)", file.display())]
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The append queue is full; wait with [`Journal::reserve`] or shed load.
    #[error("the journal's queue is full")]
    Full,
    /// The journal was shut down.
    #[error("the journal is shut down")]
    Closed,
    /// An earlier write or fsync failed; the journal accepts nothing more, since after a
    /// failed fsync the kernel may have dropped the dirty pages (restart the node).
    #[error("the journal failed earlier and accepts no more writes: {0}")]
    Failed(Arc<str>),
    /// A record cannot be framed.
    #[error(transparent)]
    Batch(#[from] BatchError),
}

/// Wraps an I/O error with what was being done.
fn io_error(context: String, source: std::io::Error) -> JournalError {
    JournalError::Io { context, source }
}

/// Durability without a disk: every append is durable at once, the lease lives in
/// memory. The node's behaviour before the data directory existed, and the baseline
/// the benchmarks compare against.
#[derive(Debug, Default)]
pub struct MemoryOnly {
    appended: AtomicU64,
    lease: Mutex<Option<u64>>,
}

impl MemoryOnly {
    /// A journal that writes nothing.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Journal for MemoryOnly {
    fn reserve(&self) -> JournalFuture<'_, Slot> {
        Box::pin(std::future::ready(Ok(Slot::unbounded())))
    }

    fn try_reserve(&self) -> Result<Slot, JournalError> {
        Ok(Slot::unbounded())
    }

    fn append(&self, _slot: Slot, _batch: RecordBatch) -> Result<Lsn, JournalError> {
        Ok(self.appended.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn wait_durable(&self, _lsn: Lsn) -> JournalFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn read_lease(&self) -> Option<u64> {
        *self
            .lease
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn extend_lease(&self, bound_ms: u64) -> Result<(), JournalError> {
        let mut lease = self
            .lease
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        *lease = Some(lease.map_or(bound_ms, |current| current.max(bound_ms)));
        Ok(())
    }

    fn set_liveness(&self, _liveness: Arc<dyn Liveness>) {}

    fn record_garbage(&self, _bytes: u64) {}

    fn compact_now(&self) -> Result<Option<CompactionReport>, JournalError> {
        Ok(None)
    }

    fn stats(&self) -> JournalStats {
        let appended = self.appended.load(Ordering::Relaxed);
        JournalStats {
            appended,
            durable: appended,
            ..JournalStats::default()
        }
    }

    fn shutdown(&self) -> Result<(), JournalError> {
        Ok(())
    }

    fn blocks(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_policy_names_round_trip() {
        for policy in [FsyncPolicy::Always, FsyncPolicy::Batch, FsyncPolicy::Never] {
            assert_eq!(policy.to_string().parse::<FsyncPolicy>(), Ok(policy));
        }
        let error = "sometimes".parse::<FsyncPolicy>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "fsync policy \"sometimes\" is unknown: use always, batch or never"
        );
    }

    #[tokio::test]
    async fn memory_only_is_durable_at_once_and_keeps_the_larger_lease() {
        let journal: Arc<dyn Journal> = Arc::new(MemoryOnly::new());
        let slot = journal.reserve().await.unwrap();
        let lsn = journal
            .append(slot, RecordBatch::of([b"x"]).unwrap())
            .unwrap();
        assert_eq!(lsn, 1);
        journal.wait_durable(lsn).await.unwrap();
        assert_eq!(journal.stats().durable, 1);
        assert_eq!(journal.read_lease(), None);
        journal.extend_lease(20).unwrap();
        journal.extend_lease(10).unwrap();
        assert_eq!(journal.read_lease(), Some(20));
    }
}
