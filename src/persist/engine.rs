//! The file engine: opening a data directory, recovery, and the [`Journal`] it serves.
//!
//! Owns: [`FileJournal`] and its state shared with the writer and compaction threads,
//! [`JournalOptions`], the recovery report.
//! Knows nothing of: what payloads mean, the async runtime beyond the watch channel
//! that publishes durability and the semaphore that bounds the queue.
//!
//! Directory layout:
//! ```text
//! DIR/LOCK                       held (flock) for the life of the process, holds its pid
//! DIR/meta                       identity (see `meta`)
//! DIR/clock                      HLC lease (see `lease`)
//! DIR/log-<16 hex>.seg           segments, replayed in id order
//! DIR/log-<16 hex>.merge.tmp     a compaction in progress (removed at open)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::{oneshot, watch, Semaphore};

use super::lease::LeaseFile;
use super::meta::{sync_dir, DirLock, Meta, META_FILE};
use super::record::{RecordBatch, RecordFault, SEGMENT_HEADER_BYTES};
use super::writer::{Request, Writer};
use super::{
    io_error, segment, CompactionReport, FsyncPolicy, Journal, JournalError, JournalFuture,
    JournalStats, Liveness, Lsn, Slot,
};
use crate::clock::{Clock, NodeId};

mod compaction;
#[cfg(test)]
mod tests;

#[cfg(test)]
use compaction::MergeStep;

/// Segment size at which the active segment is sealed and a new one started.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Append calls that may wait in the queue before `reserve` waits.
pub const DEFAULT_QUEUE_APPENDS: usize = 4096;
/// No automatic compaction below this many bytes on disk.
pub const DEFAULT_COMPACTION_MIN_BYTES: u64 = 64 << 20;
/// Automatic compaction once disk bytes reach this multiple of live bytes.
pub const DEFAULT_COMPACTION_RATIO: u64 = 2;

/// How to open a data directory.
#[derive(Clone)]
pub struct JournalOptions {
    /// The data directory (created if missing).
    pub dir: PathBuf,
    /// Wall time for the directory's creation time and compaction reports (the node's
    /// clock seam; nothing here reads the system clock).
    pub clock: Arc<dyn Clock>,
    /// The cluster name the directory must belong to.
    pub cluster: String,
    /// The node the directory must belong to.
    pub node: NodeId,
    /// When appends become durable.
    pub fsync: FsyncPolicy,
    /// Segment rotation size.
    pub segment_bytes: u64,
    /// Bound of the append queue, in append calls.
    pub queue_appends: usize,
    /// Drop unreadable parts instead of refusing to open (reported in [`Recovery`]).
    pub repair: bool,
    /// See [`DEFAULT_COMPACTION_MIN_BYTES`].
    pub compaction_min_bytes: u64,
    /// See [`DEFAULT_COMPACTION_RATIO`].
    pub compaction_ratio: u64,
}

impl JournalOptions {
    /// Defaults for `dir`, owned by `node` of `cluster`.
    pub fn new(
        dir: impl Into<PathBuf>,
        cluster: impl Into<String>,
        node: NodeId,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            dir: dir.into(),
            clock,
            cluster: cluster.into(),
            node,
            fsync: FsyncPolicy::default(),
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            queue_appends: DEFAULT_QUEUE_APPENDS,
            repair: false,
            compaction_min_bytes: DEFAULT_COMPACTION_MIN_BYTES,
            compaction_ratio: DEFAULT_COMPACTION_RATIO,
        }
    }
}

impl std::fmt::Debug for JournalOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalOptions")
            .field("dir", &self.dir)
            .field("cluster", &self.cluster)
            .field("node", &self.node)
            .field("fsync", &self.fsync)
            .field("segment_bytes", &self.segment_bytes)
            .field("queue_appends", &self.queue_appends)
            .field("repair", &self.repair)
            .field("compaction_min_bytes", &self.compaction_min_bytes)
            .field("compaction_ratio", &self.compaction_ratio)
            .finish_non_exhaustive()
    }
}

/// The reason of a [`Truncation`] that drops nothing ever written: the zeros of the
/// preallocated tail of a segment the process did not close (killed, power cut).
pub const UNUSED_TAIL: &str = "zeros to the end: preallocated space never written";

/// Bytes cut from a segment at open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    /// The segment.
    pub file: PathBuf,
    /// Where it was cut (0: the whole file was removed).
    pub offset: u64,
    /// Bytes dropped.
    pub bytes_dropped: u64,
    /// What was wrong.
    pub reason: String,
    /// `true`: an interrupted last write (expected after a crash); `false`: damage
    /// dropped because `repair` was set.
    pub torn: bool,
}

impl Truncation {
    /// Whether only never-written preallocated space was cut (no record was lost).
    pub fn is_unused_tail(&self) -> bool {
        self.torn && self.reason == UNUSED_TAIL
    }
}

/// What opening found; the caller logs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The directory was new.
    pub created: bool,
    /// The directory's data epoch: a random number drawn at its creation.
    pub epoch: u64,
    /// When the directory was created (wall-clock ms).
    pub created_ms: u64,
    /// Segments replayed.
    pub segments: usize,
    /// Records handed to the callback.
    pub records: u64,
    /// Bytes of the segments replayed.
    pub bytes: u64,
    /// Bytes cut away.
    pub truncations: Vec<Truncation>,
    /// Leftovers of an interrupted compaction (temporary files, segments a merged
    /// segment already covers), removed.
    pub removed: Vec<PathBuf>,
}

/// One segment known to the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SegmentInfo {
    pub(super) id: u64,
    pub(super) bytes: u64,
    pub(super) covers_from: u64,
}

/// The segments: sealed ones oldest first, and the active one's size.
#[derive(Debug)]
pub(super) struct SegmentSet {
    pub(super) sealed: Vec<SegmentInfo>,
    pub(super) active_bytes: u64,
}

/// Durability progress, published to async waiters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Every append up to this LSN is durable.
    pub durable: Lsn,
    /// Set when a write or fsync failed; nothing becomes durable after it.
    pub failure: Option<Arc<str>>,
    /// Set after shutdown.
    pub closed: bool,
}

/// The producer side of the queue: LSN assignment and send happen under one lock, so
/// queue order is LSN order.
struct Queue {
    last: Lsn,
    requests: Option<Sender<Request>>,
}

/// State shared by the handle, the writer thread and compaction.
pub(super) struct Shared {
    pub(super) dir: PathBuf,
    pub(super) epoch: u64,
    pub(super) options: JournalOptions,
    pub(super) segments: Mutex<SegmentSet>,
    pub(super) garbage: AtomicU64,
    /// Bytes handed to the OS by the writer, since open.
    pub(super) written_bytes: AtomicU64,
    /// fdatasyncs of the active segment, since open.
    pub(super) fsyncs: AtomicU64,
    /// Compactions completed, since open.
    pub(super) compactions: AtomicU64,
    progress: watch::Sender<Progress>,
    /// Appends waited for, by LSN: each publish wakes exactly the waiters it satisfies
    /// (a watch channel would wake every waiter on every group).
    waiters: Mutex<BTreeMap<Lsn, Vec<oneshot::Sender<()>>>>,
    queue: Mutex<Queue>,
    permits: Arc<Semaphore>,
    liveness: Mutex<Option<Arc<dyn Liveness>>>,
    /// Serialises compactions.
    pub(super) compaction_lock: Mutex<()>,
    /// A background compaction thread, if one was started.
    compactor: Mutex<Option<JoinHandle<()>>>,
    compacting: AtomicBool,
    pub(super) closing: AtomicBool,
    last_compaction: Mutex<Option<CompactionReport>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent, so a panic elsewhere does not
    // make the data unusable.
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl Shared {
    pub(super) fn publish_durable(&self, lsn: Lsn) {
        self.progress.send_modify(|progress| {
            progress.durable = progress.durable.max(lsn);
        });
        // After the publish: a waiter that registers from now on sees it (see
        // `wait_durable`), and those registered before are released here.
        let released = {
            let mut waiters = lock(&self.waiters);
            let later = waiters.split_off(&(lsn + 1));
            std::mem::replace(&mut *waiters, later)
        };
        for sender in released.into_values().flatten() {
            let _ = sender.send(());
        }
    }

    pub(super) fn publish_failure(&self, message: Arc<str>) {
        self.progress
            .send_modify(|progress| progress.failure = Some(message));
        self.release_all();
    }

    /// Drops every waiter's sender: each wakes and reads the failure or the closing
    /// from the progress.
    fn release_all(&self) {
        let released = std::mem::take(&mut *lock(&self.waiters));
        drop(released);
    }

    pub(super) fn set_active_bytes(&self, bytes: u64) {
        lock(&self.segments).active_bytes = bytes;
    }

    pub(super) fn seal_active(&self, id: u64, bytes: u64) {
        let mut segments = lock(&self.segments);
        segments.sealed.push(SegmentInfo {
            id,
            bytes,
            covers_from: id,
        });
        segments.active_bytes = SEGMENT_HEADER_BYTES as u64;
    }

    fn disk_bytes(&self) -> (u64, usize) {
        let segments = lock(&self.segments);
        let sealed: u64 = segments.sealed.iter().map(|segment| segment.bytes).sum();
        (sealed + segments.active_bytes, segments.sealed.len() + 1)
    }

    /// Sends a request to the writer and waits for its reply (blocking).
    pub(super) fn ask<T>(
        &self,
        request: impl FnOnce(mpsc::SyncSender<Result<T, JournalError>>) -> Request,
    ) -> Result<T, JournalError> {
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        {
            let queue = lock(&self.queue);
            let requests = queue.requests.as_ref().ok_or(JournalError::Closed)?;
            requests
                .send(request(reply_tx))
                .map_err(|_| JournalError::Closed)?;
        }
        reply_rx.recv().map_err(|_| JournalError::Closed)?
    }

    /// Starts a background compaction if the trigger says so. Called by the writer
    /// after each group.
    pub(super) fn maybe_compact(self: &Arc<Self>) {
        if self.compacting.load(Ordering::Relaxed) {
            return;
        }
        let (disk, _) = self.disk_bytes();
        let garbage = self.garbage.load(Ordering::Relaxed);
        let live = disk.saturating_sub(garbage);
        if disk < self.options.compaction_min_bytes
            || disk < live.saturating_mul(self.options.compaction_ratio)
        {
            return;
        }
        let Some(liveness) = lock(&self.liveness).clone() else {
            return;
        };
        let mut compactor = lock(&self.compactor);
        if self.closing.load(Ordering::Relaxed) || self.compacting.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Some(finished) = compactor.take() {
            let _ = finished.join();
        }
        let shared = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("meshkv-compact".to_owned())
            .spawn(move || {
                match compaction::compact(&shared, liveness.as_ref(), None) {
                    Ok(Some(report)) => tracing::info!(
                        segments = report.segments_in,
                        bytes_in = report.bytes_in,
                        bytes_out = report.bytes_out,
                        "compacted the journal"
                    ),
                    Ok(None) => {}
                    Err(error) => tracing::warn!("journal compaction failed: {error}"),
                }
                shared.compacting.store(false, Ordering::Relaxed);
            });
        match spawned {
            Ok(handle) => *compactor = Some(handle),
            Err(error) => {
                tracing::warn!("cannot start a compaction thread: {error}");
                self.compacting.store(false, Ordering::Relaxed);
            }
        }
    }
}

/// A data directory opened for appending: the file implementation of [`Journal`].
/// Dropping it shuts it down (flushes, syncs, joins its threads).
pub struct FileJournal {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    lease: Mutex<LeaseFile>,
    _lock: DirLock,
}

impl std::fmt::Debug for FileJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileJournal")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

impl FileJournal {
    /// Opens (or creates) the data directory, hands every stored payload to
    /// `on_record` in order, and starts the writer thread. Blocking: call it before
    /// the runtime serves, or from `spawn_blocking`.
    pub fn open(
        options: JournalOptions,
        mut on_record: impl FnMut(&[u8]),
    ) -> Result<(Self, Recovery), JournalError> {
        let dir = options.dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|error| io_error(format!("creating {}", dir.display()), error))?;
        let dir_lock = DirLock::acquire(&dir)?;
        let mut recovery = Recovery::default();

        let mut ids = list_segments(&dir, &mut recovery)?;
        let meta = if dir.join(META_FILE).exists() {
            Meta::load(&dir, &options.cluster, &options.node)?
        } else if ids.is_empty() {
            let meta = Meta::create(&options.cluster, &options.node, options.clock.wall_ms())?;
            meta.store(&dir)?;
            recovery.created = true;
            meta
        } else {
            return Err(JournalError::MetaInvalid {
                path: dir.join(META_FILE),
                reason: "missing, but the directory holds segments".to_owned(),
            });
        };
        let epoch = meta.epoch().unwrap_or_default();
        recovery.epoch = epoch;
        recovery.created_ms = meta.created_ms;
        let lease = LeaseFile::open(&dir, options.repair)?;

        let mut sealed = check_headers(&dir, epoch, options.repair, &mut ids, &mut recovery)?;
        let last_index = sealed.len().checked_sub(1);
        for (index, info) in sealed.iter_mut().enumerate() {
            let path = segment::path(&dir, info.id);
            let replayed = segment::replay(&path, &mut on_record)?;
            recovery.records += replayed.records;
            recovery.segments += 1;
            if let Some(damage) = replayed.damage {
                let torn = damage.torn && Some(index) == last_index;
                if !torn && !options.repair {
                    return Err(JournalError::Corrupt {
                        file: path,
                        offset: damage.offset,
                        reason: damage.fault.to_string(),
                    });
                }
                segment::truncate(&path, damage.offset)?;
                let reason = if torn && damage.fault == RecordFault::ImpossibleLength(0) {
                    UNUSED_TAIL.to_owned()
                } else {
                    damage.fault.to_string()
                };
                recovery.truncations.push(Truncation {
                    file: path,
                    offset: damage.offset,
                    bytes_dropped: replayed.file_bytes - damage.offset,
                    reason,
                    torn,
                });
            }
            info.bytes = replayed.valid_end;
            recovery.bytes += replayed.valid_end;
        }

        // A new active segment for this life; the old ones are sealed as they are.
        let active_id = sealed.last().map_or(1, |info| info.id + 1);
        let file = segment::create(
            &segment::path(&dir, active_id),
            epoch,
            active_id,
            options.segment_bytes,
        )?;

        let (requests_tx, requests_rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            epoch,
            segments: Mutex::new(SegmentSet {
                sealed,
                active_bytes: SEGMENT_HEADER_BYTES as u64,
            }),
            garbage: AtomicU64::new(0),
            written_bytes: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            progress: watch::Sender::new(Progress::default()),
            waiters: Mutex::new(BTreeMap::new()),
            queue: Mutex::new(Queue {
                last: 0,
                requests: Some(requests_tx),
            }),
            permits: Arc::new(Semaphore::new(options.queue_appends.max(1))),
            liveness: Mutex::new(None),
            compaction_lock: Mutex::new(()),
            compactor: Mutex::new(None),
            compacting: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            last_compaction: Mutex::new(None),
            options,
        });
        let writer = Writer {
            shared: Arc::clone(&shared),
            requests: requests_rx,
            file,
            active_id,
            active_bytes: SEGMENT_HEADER_BYTES as u64,
            buffer: Vec::new(),
            written: 0,
            failure: None,
        };
        let handle = std::thread::Builder::new()
            .name("meshkv-journal".to_owned())
            .spawn(move || writer.run())
            .map_err(|error| io_error("starting the journal writer thread".to_owned(), error))?;
        Ok((
            Self {
                shared,
                writer: Mutex::new(Some(handle)),
                lease: Mutex::new(lease),
                _lock: dir_lock,
            },
            recovery,
        ))
    }

    /// Durability progress as a watch channel, for callers that prefer to observe it
    /// (e.g. one task acknowledging many writes).
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.shared.progress.subscribe()
    }

    /// Compacts, stopping before `step` as if the process crashed there (tests only).
    #[cfg(test)]
    pub(super) fn compact_until(
        &self,
        step: MergeStep,
    ) -> Result<Option<CompactionReport>, JournalError> {
        let liveness = lock(&self.shared.liveness).clone();
        let liveness = liveness.expect("tests set a liveness first");
        compaction::compact(&self.shared, liveness.as_ref(), Some(step))
    }
}

impl Journal for FileJournal {
    fn reserve(&self) -> JournalFuture<'_, Slot> {
        let permits = Arc::clone(&self.shared.permits);
        Box::pin(async move {
            let permit = permits
                .acquire_owned()
                .await
                .map_err(|_| JournalError::Closed)?;
            Ok(Slot::from_permit(permit))
        })
    }

    fn try_reserve(&self) -> Result<Slot, JournalError> {
        match Arc::clone(&self.shared.permits).try_acquire_owned() {
            Ok(permit) => Ok(Slot::from_permit(permit)),
            Err(tokio::sync::TryAcquireError::NoPermits) => Err(JournalError::Full),
            Err(tokio::sync::TryAcquireError::Closed) => Err(JournalError::Closed),
        }
    }

    fn append(&self, slot: Slot, batch: RecordBatch) -> Result<Lsn, JournalError> {
        if let Some(message) = self.shared.progress.borrow().failure.clone() {
            return Err(JournalError::Failed(message));
        }
        let mut queue = lock(&self.shared.queue);
        let lsn = queue.last + 1;
        let requests = queue.requests.as_ref().ok_or(JournalError::Closed)?;
        requests
            .send(Request::Append { lsn, batch, slot })
            .map_err(|_| JournalError::Closed)?;
        queue.last = lsn;
        Ok(lsn)
    }

    fn wait_durable(&self, lsn: Lsn) -> JournalFuture<'_, ()> {
        let outcome = move |progress: &Progress| {
            if progress.durable >= lsn {
                Some(Ok(()))
            } else if let Some(message) = &progress.failure {
                Some(Err(JournalError::Failed(message.clone())))
            } else if progress.closed {
                Some(Err(JournalError::Closed))
            } else {
                None
            }
        };
        let receiver = {
            // Checked under the waiters' lock: a publish either happened before (and
            // is seen here) or releases this waiter after.
            let mut waiters = lock(&self.shared.waiters);
            if let Some(done) = outcome(&self.shared.progress.borrow()) {
                return Box::pin(std::future::ready(done));
            }
            let (sender, receiver) = oneshot::channel();
            waiters.entry(lsn).or_default().push(sender);
            receiver
        };
        Box::pin(async move {
            // Released (or dropped by a failure or the shutdown): read why.
            let _ = receiver.await;
            outcome(&self.shared.progress.borrow()).unwrap_or(Err(JournalError::Closed))
        })
    }

    fn read_lease(&self) -> Option<u64> {
        lock(&self.lease).bound_ms()
    }

    fn extend_lease(&self, bound_ms: u64) -> Result<(), JournalError> {
        lock(&self.lease).extend(bound_ms)
    }

    fn set_liveness(&self, liveness: Arc<dyn Liveness>) {
        *lock(&self.shared.liveness) = Some(liveness);
    }

    fn record_garbage(&self, bytes: u64) {
        self.shared.garbage.fetch_add(
            bytes + super::record::RECORD_HEADER_BYTES as u64,
            Ordering::Relaxed,
        );
    }

    fn compact_now(&self) -> Result<Option<CompactionReport>, JournalError> {
        let Some(liveness) = lock(&self.shared.liveness).clone() else {
            return Ok(None);
        };
        compaction::compact(&self.shared, liveness.as_ref(), None)
    }

    fn stats(&self) -> JournalStats {
        let (disk_bytes, segments) = self.shared.disk_bytes();
        let progress = self.shared.progress.borrow().clone();
        JournalStats {
            disk_bytes,
            segments,
            garbage_bytes: self.shared.garbage.load(Ordering::Relaxed),
            appended: lock(&self.shared.queue).last,
            durable: progress.durable,
            last_compaction: lock(&self.shared.last_compaction).clone(),
            written_bytes: self.shared.written_bytes.load(Ordering::Relaxed),
            fsyncs: self.shared.fsyncs.load(Ordering::Relaxed),
            compactions: self.shared.compactions.load(Ordering::Relaxed),
        }
    }

    fn shutdown(&self) -> Result<(), JournalError> {
        let Some(writer) = lock(&self.writer).take() else {
            return Ok(());
        };
        // No new compaction; let a running one finish (it needs the writer).
        let compactor = {
            let mut compactor = lock(&self.shared.compactor);
            self.shared.closing.store(true, Ordering::Relaxed);
            compactor.take()
        };
        if let Some(compactor) = compactor {
            let _ = compactor.join();
        }
        let result = self.shared.ask(Request::Shutdown);
        lock(&self.shared.queue).requests = None;
        self.shared.permits.close();
        let _ = writer.join();
        self.shared
            .progress
            .send_modify(|progress| progress.closed = true);
        self.shared.release_all();
        result
    }
}

impl Drop for FileJournal {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            tracing::error!("closing the journal: {error}");
        }
    }
}

/// The ids of the segment files in `dir`, sorted; removes temporary files left by an
/// interrupted compaction or meta write.
fn list_segments(dir: &Path, recovery: &mut Recovery) -> Result<Vec<u64>, JournalError> {
    let mut ids = Vec::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|error| io_error(format!("listing {}", dir.display()), error))?;
    for entry in entries {
        let entry = entry.map_err(|error| io_error(format!("listing {}", dir.display()), error))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = segment::parse_name(name) {
            ids.push(id);
        } else if name.ends_with(".tmp") {
            let path = entry.path();
            std::fs::remove_file(&path)
                .map_err(|error| io_error(format!("removing {}", path.display()), error))?;
            recovery.removed.push(path);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Reads every segment header; removes segments a merged segment covers (leftovers of
/// a compaction interrupted after its rename) and an empty last segment whose header
/// was never completed. A bad header elsewhere is an error unless `repair`.
fn check_headers(
    dir: &Path,
    epoch: u64,
    repair: bool,
    ids: &mut Vec<u64>,
    recovery: &mut Recovery,
) -> Result<Vec<SegmentInfo>, JournalError> {
    let mut infos = Vec::new();
    for (index, &id) in ids.iter().enumerate() {
        let path = segment::path(dir, id);
        match segment::read_header(&path, epoch)? {
            Ok(header) => infos.push(SegmentInfo {
                id,
                bytes: 0,
                covers_from: header.covers_from.min(id),
            }),
            Err(reason) => {
                let bytes = std::fs::metadata(&path).map_or(0, |metadata| metadata.len());
                let is_last = index + 1 == ids.len();
                // A segment being created when the process died: its header is missing
                // or still zeros (the preallocation can reach the disk before it).
                let torn = is_last && segment::never_written(&path, bytes)?;
                if !torn && !repair {
                    return Err(JournalError::Corrupt {
                        file: path,
                        offset: 0,
                        reason,
                    });
                }
                remove(&path)?;
                recovery.truncations.push(Truncation {
                    file: path,
                    offset: 0,
                    bytes_dropped: bytes,
                    reason,
                    torn,
                });
            }
        }
    }
    // Segments covered by a later merged segment.
    let mut kept: Vec<SegmentInfo> = Vec::with_capacity(infos.len());
    for info in infos {
        while kept
            .last()
            .is_some_and(|previous| previous.id >= info.covers_from)
        {
            let covered = kept.pop().map(|previous| previous.id).unwrap_or_default();
            let path = segment::path(dir, covered);
            remove(&path)?;
            recovery.removed.push(path);
        }
        kept.push(info);
    }
    if !recovery.removed.is_empty() || !recovery.truncations.is_empty() {
        sync_dir(dir)?;
    }
    ids.clear();
    ids.extend(kept.iter().map(|info| info.id));
    Ok(kept)
}

fn remove(path: &Path) -> Result<(), JournalError> {
    std::fs::remove_file(path)
        .map_err(|error| io_error(format!("removing {}", path.display()), error))
}
