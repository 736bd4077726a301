//! A simulated disk for durable nodes, through the node's storage seam
//! (`NodeEnv.storage`): what a journal has synced lives outside the host, so a crash
//! (the host's runtime dropped) loses only what was not synced yet, and the next life
//! of the node replays the rest, HLC lease included.
//!
//! Owns: [`SimDisk`] (one per durable node, kept across its restarts like a real
//! disk), [`SimStorage`] (the node's `Storage`) and the journal of one life.
//! Knows nothing of: turmoil, the node's tasks. Payloads are opaque, except to
//! [`SimDisk::versions`], which decodes them for the checks.
//!
//! # The model
//! An append is queued in the journal of the node's current life, in memory. An fsync
//! takes [`SYNC_LATENCY`] of simulated time and makes durable every append queued
//! before it started, as a group commit does (the policy `batch`; `always` and `batch`
//! promise the same to an acknowledgement). Whoever waits for durability runs the
//! fsync, so there is no task to keep: a waiter cancelled mid-fsync leaves the records
//! unsynced, as a crash mid-fsync would. A journal of an earlier life never writes
//! again (its host is gone, but an `Arc` of it may outlive the host).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use meshkv::clock::Version;
use meshkv::persist::{
    CompactionReport, Journal, JournalError, JournalFuture, JournalStats, Liveness, Lsn, Opened,
    Owner, RecordBatch, Recovery, Slot, Storage,
};
use meshkv::store::Entry;

use super::clock::EPOCH_MS;

/// How long an fsync takes.
pub const SYNC_LATENCY: Duration = Duration::from_millis(2);

/// The frame of a record in a batch: length and checksum, each 4 bytes (persist::record).
const RECORD_HEADER_BYTES: usize = 8;
/// The record kind of one entry (`replication::durable`).
const KIND_ENTRY: u8 = 1;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Default)]
struct Platter {
    /// Synced record payloads, in order.
    records: Vec<Vec<u8>>,
    /// The synced HLC lease.
    lease: Option<u64>,
    /// Lives of the node that opened the disk; only the last one writes.
    lives: u64,
}

/// One node's disk. Clones of the `Arc` share it.
#[derive(Debug)]
pub struct SimDisk {
    platter: Mutex<Platter>,
    /// The data epoch, fixed for the disk's life (drawn from the seed, for
    /// determinism).
    epoch: u64,
}

impl SimDisk {
    /// An empty disk whose data epoch is `epoch`.
    pub fn new(epoch: u64) -> Arc<Self> {
        Arc::new(Self {
            platter: Mutex::default(),
            epoch,
        })
    }

    /// Per key, every version the synced records hold.
    pub fn versions(&self) -> BTreeMap<String, BTreeSet<Version>> {
        let mut versions: BTreeMap<String, BTreeSet<Version>> = BTreeMap::new();
        for payload in &lock(&self.platter).records {
            let entry = match payload.split_first() {
                Some((&KIND_ENTRY, body)) => rmp_serde::from_slice::<Entry>(body).ok(),
                _ => None,
            };
            let entry = entry.expect("the node writes only entries to its journal");
            versions.entry(entry.key).or_default().insert(entry.version);
        }
        versions
    }
}

/// The storage of a durable simulated node: its [`SimDisk`].
pub struct SimStorage {
    /// The disk.
    pub disk: Arc<SimDisk>,
}

impl Storage for SimStorage {
    fn open(&self, _owner: &Owner, replay: &mut dyn FnMut(&[u8])) -> Result<Opened, JournalError> {
        let mut platter = lock(&self.disk.platter);
        platter.lives += 1;
        let created = platter.lives == 1;
        let mut bytes = 0;
        for record in &platter.records {
            replay(record);
            bytes += (RECORD_HEADER_BYTES + record.len()) as u64;
        }
        let journal = LifeJournal {
            disk: self.disk.clone(),
            life: platter.lives,
            lease: Mutex::new(platter.lease),
            queue: Mutex::default(),
        };
        Ok(Opened {
            journal: Arc::new(journal),
            recovery: Some(Recovery {
                created,
                epoch: self.disk.epoch,
                created_ms: EPOCH_MS,
                segments: 1,
                records: platter.records.len() as u64,
                bytes,
                truncations: Vec::new(),
                removed: Vec::new(),
            }),
        })
    }

    fn durable(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("simulated disk (fsync {} ms)", SYNC_LATENCY.as_millis())
    }

    /// Called in place: a blocking task would run on a real thread, and the host's
    /// simulated time would advance past it or not depending on the thread's speed.
    fn blocks(&self) -> bool {
        false
    }
}

#[derive(Debug, Default)]
struct Queue {
    /// The last LSN handed out.
    appended: Lsn,
    /// The last LSN synced.
    durable: Lsn,
    /// Appends not synced yet: LSN and payloads.
    pending: Vec<(Lsn, Vec<Vec<u8>>)>,
    closed: bool,
}

/// The journal of one life of a node.
struct LifeJournal {
    disk: Arc<SimDisk>,
    life: u64,
    lease: Mutex<Option<u64>>,
    queue: Mutex<Queue>,
}

impl LifeJournal {
    /// Syncs every append up to `target`, if this life still owns the disk.
    fn sync(&self, target: Lsn) {
        let mut queue = lock(&self.queue);
        let mut platter = lock(&self.disk.platter);
        if platter.lives != self.life {
            return;
        }
        let cut = queue.pending.partition_point(|(lsn, _)| *lsn <= target);
        for (_, records) in queue.pending.drain(..cut) {
            platter.records.extend(records);
        }
        queue.durable = queue.durable.max(target);
    }
}

/// The payloads of a framed batch.
fn payloads(batch: &RecordBatch) -> Vec<Vec<u8>> {
    let mut bytes = batch.as_bytes();
    let mut records = Vec::with_capacity(batch.len());
    while bytes.len() >= RECORD_HEADER_BYTES {
        let len = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
        records.push(bytes[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len].to_vec());
        bytes = &bytes[RECORD_HEADER_BYTES + len..];
    }
    records
}

impl Journal for LifeJournal {
    fn reserve(&self) -> JournalFuture<'_, Slot> {
        Box::pin(std::future::ready(Ok(Slot::unbounded())))
    }

    fn try_reserve(&self) -> Result<Slot, JournalError> {
        Ok(Slot::unbounded())
    }

    fn append(&self, _slot: Slot, batch: RecordBatch) -> Result<Lsn, JournalError> {
        let mut queue = lock(&self.queue);
        if queue.closed {
            return Err(JournalError::Closed);
        }
        queue.appended += 1;
        let lsn = queue.appended;
        queue.pending.push((lsn, payloads(&batch)));
        Ok(lsn)
    }

    fn wait_durable(&self, lsn: Lsn) -> JournalFuture<'_, ()> {
        Box::pin(async move {
            loop {
                let target = {
                    let queue = lock(&self.queue);
                    if queue.durable >= lsn {
                        return Ok(());
                    }
                    if queue.closed {
                        return Err(JournalError::Closed);
                    }
                    queue.appended
                };
                tokio::time::sleep(SYNC_LATENCY).await;
                self.sync(target);
            }
        })
    }

    fn read_lease(&self) -> Option<u64> {
        *lock(&self.lease)
    }

    fn extend_lease(&self, bound_ms: u64) -> Result<(), JournalError> {
        let mut lease = lock(&self.lease);
        let mut platter = lock(&self.disk.platter);
        if platter.lives != self.life {
            return Err(JournalError::Closed);
        }
        let bound = lease.map_or(bound_ms, |current| current.max(bound_ms));
        *lease = Some(bound);
        platter.lease = Some(bound);
        Ok(())
    }

    fn set_liveness(&self, _liveness: Arc<dyn Liveness>) {}

    fn record_garbage(&self, _bytes: u64) {}

    fn compact_now(&self) -> Result<Option<CompactionReport>, JournalError> {
        Ok(None)
    }

    fn stats(&self) -> JournalStats {
        let queue = lock(&self.queue);
        JournalStats {
            appended: queue.appended,
            durable: queue.durable,
            ..JournalStats::default()
        }
    }

    fn blocks(&self) -> bool {
        false
    }

    fn shutdown(&self) -> Result<(), JournalError> {
        let appended = lock(&self.queue).appended;
        self.sync(appended);
        lock(&self.queue).closed = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner {
        Owner {
            cluster: "sim".into(),
            node: meshkv::clock::NodeId::new("n1").unwrap(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_crash_keeps_the_synced_records_and_loses_the_rest() {
        let disk = SimDisk::new(7);
        let storage = SimStorage { disk: disk.clone() };
        let opened = storage.open(&owner(), &mut |_| panic!("empty")).unwrap();
        assert!(opened.recovery.as_ref().unwrap().created);
        let journal = opened.journal;
        let first = journal
            .try_append(RecordBatch::of([&b"a"[..], &b"bb"[..]]).unwrap())
            .unwrap();
        journal.wait_durable(first).await.unwrap();
        journal.extend_lease(42).unwrap();
        journal
            .try_append(RecordBatch::of([b"ccc"]).unwrap())
            .unwrap();
        // The second append is never synced: the node dies. Its next life sees the
        // first batch and the lease, and the old life can no longer write.
        let mut replayed = Vec::new();
        let reopened = storage
            .open(&owner(), &mut |payload| replayed.push(payload.to_vec()))
            .unwrap();
        assert_eq!(replayed, vec![b"a".to_vec(), b"bb".to_vec()]);
        assert!(!reopened.recovery.unwrap().created);
        assert_eq!(reopened.journal.read_lease(), Some(42));
        journal.shutdown().unwrap();
        assert_eq!(lock(&disk.platter).records.len(), 2);
        assert!(journal.extend_lease(50).is_err());
    }
}
