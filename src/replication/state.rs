//! The node's shared replicated state, and the one place where entries are merged.
//!
//! Owns: [`NodeState`]: the HLC and the store behind one lock, the failure detector,
//! the clock, the settings ([`ReplicationOptions`]), the metrics and the log limiter.
//! The store changes only through [`NodeState::apply_local`] (a client's write) and
//! [`NodeState::apply_remote`] (entries from a peer); everything else reads it through
//! [`NodeState::with_store`]. Durability hooks in at those two methods: each appends
//! what it merges to the journal under the core lock (so the journal's order is the
//! order of the merges, and compaction's liveness check sees only appended records),
//! and returns the LSN to wait for before acknowledging. Local stamps stay within the
//! durable HLC lease (see `durable`).
//! The one other change, dropping tombstones, is [`NodeState::collect_tombstones`],
//! under the rule of the collection [`Ledger`] it also holds. It also holds the session
//! watermarks (per peer, up to where this node holds every write the peer stamped),
//! which clean anti-entropy rounds raise and session reads consult.
//! The change feed that watches read (`changes`) hooks in at the same two methods:
//! each change that wins its merge is published there, inside the critical section,
//! so watchers see the apply order.
//! Knows nothing of: peers' queues and links, consistency levels, tasks.
//!
//! The core lock is a std mutex: it is held for microseconds and never across an
//! `.await`, which is exactly the case where tokio recommends it over its own.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use tracing::{info, warn};

use super::durable::{self, Lease, Recovered};
use crate::clock::{Clock, Hlc, NodeId, SkewError, Timestamp, Version};
use crate::membership::FailureDetector;
use crate::metrics::{Metrics, PeerLabels, ReasonLabels};
use crate::peer::LogLimiter;
use crate::persist::{Journal, JournalError, JournalStats, Lsn, RecordBatch, Slot};
use crate::session::Watermarks;
use crate::store::{Entry, Limits, Merged, Seq, Store};
use crate::wire::{DataEpoch, Lineage};

use super::tombstones::{CollectionView, Horizon, Ledger};
use crate::skew::{Estimate, Fence, Fenced, Sample, SkewMonitor, Transition};
use crate::store::conflict::{self, ConflictLog, Recorded};

use super::changes::{ChangeFeed, Origin, TooManyWatchers, Watch};

/// Settings of the replication layer.
#[derive(Clone, Debug)]
pub struct ReplicationOptions {
    /// Key and value limits.
    pub limits: Limits,
    /// Remote versions further ahead are refused for now.
    pub max_clock_skew_ms: u64,
    /// How long `live` writes wait for acks.
    pub live_timeout: Duration,
    /// How long `quorum`/`all` requests wait.
    pub strong_timeout: Duration,
    /// Bytes per push batch or anti-entropy reply.
    pub batch_bytes: usize,
    /// Distinct keys per outbox.
    pub outbox_max_keys: usize,
    /// Unanswered this long: suspect.
    pub suspect_after: Duration,
    /// Longest wait after start before serving clients, caught up or not.
    pub startup_sync_timeout: Duration,
    /// A peer out of contact longer than this no longer holds tombstone collection back
    /// (and its data is refused when it returns).
    pub tombstone_grace: Duration,
    /// The epoch of this node's data: when and with which random id its store began
    /// empty.
    pub epoch: DataEpoch,
    /// Changes buffered per watcher before it is cut off.
    pub watch_buffer: usize,
    /// Watchers open at once.
    pub max_watchers: usize,
    /// Longest a request with a session token waits for this node to catch up.
    pub session_wait: Duration,
}

impl ReplicationOptions {
    /// The cluster file's defaults for a node built in one process (tests, fuzzing,
    /// the simulator): `limits`, data epoch 1 created at 0. Adjust with struct update
    /// syntax; a served node gets its options from the cluster file (`node`).
    pub fn in_process(limits: Limits) -> Self {
        Self {
            limits,
            max_clock_skew_ms: 1000,
            live_timeout: Duration::from_millis(500),
            strong_timeout: Duration::from_millis(1000),
            batch_bytes: 4096,
            outbox_max_keys: 1000,
            suspect_after: Duration::from_millis(600),
            startup_sync_timeout: Duration::from_millis(5000),
            tombstone_grace: Duration::from_secs(7 * 24 * 3600),
            epoch: DataEpoch {
                id: 1,
                created_ms: 0,
            },
            watch_buffer: 1024,
            max_watchers: 256,
            session_wait: Duration::from_millis(500),
        }
    }
}

/// The clock and the data, locked together: a write's stamp and its merge are one
/// critical section.
struct Core {
    hlc: Hlc,
    store: Store,
    /// The LSN of the last journal append: everything the store holds is durable
    /// once this is.
    last_lsn: Lsn,
}

/// The outcome of [`NodeState::apply_local`].
pub(super) enum Stamped {
    /// Stamped, merged and appended.
    Done {
        /// The version stamped.
        version: Version,
        /// The value held before (`None`: absent or deleted).
        previous: Option<Bytes>,
        /// Acknowledge once this LSN is durable.
        lsn: Lsn,
    },
    /// The stamp would pass the durable lease: wait for it to cover `wall_ms` (see
    /// [`NodeState::cover_lease`]) and try again with the slot given back.
    NeedsLease {
        /// The unused journal slot.
        slot: Slot,
        /// The stamp's wall time.
        wall_ms: u64,
    },
}

/// What every part of the replication layer shares: see the module header.
pub(super) struct NodeState {
    id: NodeId,
    core: Mutex<Core>,
    detector: Mutex<FailureDetector>,
    /// Clock offsets to the peers and the write fence (see `skew`).
    skew: Mutex<SkewMonitor>,
    /// The recent concurrent writes that merges discarded (API.md §3.4).
    conflicts: Mutex<ConflictLog>,
    clock: Arc<dyn Clock>,
    options: ReplicationOptions,
    metrics: Arc<Metrics>,
    log_limiter: LogLimiter,
    journal: Arc<dyn Journal>,
    lease: Arc<Lease>,
    durable: bool,
    resumed: bool,
    /// Tombstone collection: watermarks, contacts, retirements.
    ledger: Mutex<Ledger>,
    /// Session watermarks: per peer, an HLC timestamp such that this node holds every
    /// version the peer stamped at or below it, or a newer one (raised by clean
    /// anti-entropy rounds, see `anti_entropy`; read by `read::read_session`). Only
    /// grows; in memory (a restart starts from none, which is safe).
    watermarks: Mutex<Watermarks>,
    /// Every applied change goes here, under the core lock (see `changes`).
    changes: ChangeFeed,
}

impl NodeState {
    /// The state of node `id` holding what `recovered` holds, whose detector watches
    /// `peers`. The HLC resumes above every version in the store and above the lease
    /// of the node's previous life.
    pub(super) fn new(
        id: NodeId,
        peers: &[NodeId],
        clock: Arc<dyn Clock>,
        options: ReplicationOptions,
        metrics: Arc<Metrics>,
        recovered: Recovered,
    ) -> Self {
        let detector = FailureDetector::new(
            peers.iter().cloned(),
            options.suspect_after.as_millis() as u64,
        );
        let Recovered {
            store,
            journal,
            durable,
            ..
        } = recovered;
        let lease_read = journal.read_lease();
        // A previous life vouches for itself only with its lease (a directory just
        // created, or a lease lost to `--repair`, keeps the memory-only start rule).
        let resumed =
            recovered.recovery.is_some_and(|recovery| !recovery.created) && lease_read.is_some();
        let mut hlc = Hlc::new(options.max_clock_skew_ms);
        if let Some(max) = store.summary().max_version {
            hlc.resume_after(max.timestamp);
        }
        let old_lease = lease_read.unwrap_or(0);
        hlc.resume_after(Timestamp {
            wall_ms: old_lease,
            logical: u32::MAX,
        });
        let window = durable::lease_window_ms(options.max_clock_skew_ms);
        // Without a disk nothing survives the process, so there is nothing to lease.
        let lease = Lease::new(if durable { old_lease } else { u64::MAX }, window);
        let ledger = Ledger::new(
            id.clone(),
            peers.iter().cloned(),
            options.epoch,
            options.tombstone_grace.as_millis() as u64,
            clock.wall_ms(),
        );
        Self {
            ledger: Mutex::new(ledger),
            watermarks: Mutex::new(Watermarks::default()),
            id,
            core: Mutex::new(Core {
                hlc,
                store,
                last_lsn: 0,
            }),
            detector: Mutex::new(detector),
            skew: Mutex::new(SkewMonitor::new(
                peers.iter().cloned(),
                options.max_clock_skew_ms,
            )),
            conflicts: Mutex::new(ConflictLog::default()),
            log_limiter: LogLimiter::new(clock.clone()),
            changes: ChangeFeed::new(options.watch_buffer, options.max_watchers, metrics.clone()),
            clock,
            options,
            metrics,
            journal,
            lease: Arc::new(lease),
            durable,
            resumed,
        }
    }

    /// The journal.
    pub(super) fn journal(&self) -> &Arc<dyn Journal> {
        &self.journal
    }

    /// The HLC lease.
    pub(super) fn lease(&self) -> &Arc<Lease> {
        &self.lease
    }

    /// The clock.
    pub(super) fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Whether the node's writes survive the process.
    pub(super) fn durable(&self) -> bool {
        self.durable
    }

    /// Whether the node recovered a data directory its previous life wrote.
    pub(super) fn resumed(&self) -> bool {
        self.resumed
    }

    /// Journal figures for metrics.
    pub(super) fn journal_stats(&self) -> JournalStats {
        self.journal.stats()
    }

    /// Room for one journal append (waits while the journal's queue is full).
    pub(super) fn reserve(
        &self,
    ) -> impl Future<Output = Result<Slot, JournalError>> + Send + 'static {
        let journal = self.journal.clone();
        async move { journal.reserve().await }
    }

    /// Resolves once every append up to `lsn` is durable.
    pub(super) fn wait_durable(
        &self,
        lsn: Lsn,
    ) -> impl Future<Output = Result<(), JournalError>> + Send + 'static {
        let journal = self.journal.clone();
        async move {
            if lsn == 0 {
                return Ok(());
            }
            journal.wait_durable(lsn).await
        }
    }

    /// Waits until the durable lease covers stamps at `wall_ms`.
    pub(super) async fn cover_lease(&self, wall_ms: u64) -> Result<(), JournalError> {
        self.lease.cover(wall_ms).await
    }

    /// Gives the journal the compaction predicate: a record is live while its version
    /// is still its key's version in the store.
    pub(super) fn install_liveness(self: &Arc<Self>) {
        let node: Weak<NodeState> = Arc::downgrade(self);
        self.journal
            .set_liveness(Arc::new(move |payload: &[u8]| -> bool {
                let (Some(node), Ok(entry)) = (node.upgrade(), durable::decode(payload)) else {
                    // Unknown to us, or the node is gone: keep it.
                    return true;
                };
                node.with_store(|store| {
                    store
                        .version(&entry.key)
                        .is_some_and(|version| version == entry.version)
                })
            }));
    }

    /// This node's id.
    pub(super) fn id(&self) -> &NodeId {
        &self.id
    }

    /// The settings.
    pub(super) fn options(&self) -> &ReplicationOptions {
        &self.options
    }

    /// The metrics registry.
    pub(super) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Milliseconds since the Unix epoch on the node's clock.
    pub(super) fn wall_ms(&self) -> u64 {
        self.clock.wall_ms()
    }

    /// Milliseconds on the monotonic clock (the failure detector's time).
    pub(super) fn now_ms(&self) -> u64 {
        self.clock.monotonic_ms()
    }

    /// Runs `read` on the store, under the core lock (so: briefly, and no `.await`).
    pub(super) fn with_store<R>(&self, read: impl FnOnce(&Store) -> R) -> R {
        read(&self.core().store)
    }

    /// [`NodeState::with_store`], and the LSN after which everything `read` saw is
    /// durable: a reply that exposes state to a peer waits for it first.
    pub(super) fn with_durable_store<R>(&self, read: impl FnOnce(&Store) -> R) -> (R, Lsn) {
        let core = self.core();
        (read(&core.store), core.last_lsn)
    }

    /// [`NodeState::with_durable_store`], with the HLC read under the same lock: every
    /// version this node stamped at or below it is in the store `read` sees (or a newer
    /// one of the same key), since a write's stamp and its merge are one critical
    /// section.
    pub(super) fn with_durable_store_and_hlc<R>(
        &self,
        read: impl FnOnce(&Store, Timestamp) -> R,
    ) -> (R, Lsn) {
        let core = self.core();
        (read(&core.store, core.hlc.last()), core.last_lsn)
    }

    /// The largest HLC timestamp issued or observed so far.
    pub(super) fn hlc_last(&self) -> Timestamp {
        self.core().hlc.last()
    }

    /// The failure detector, locked.
    pub(super) fn detector(&self) -> MutexGuard<'_, FailureDetector> {
        self.detector.lock().expect("detector lock poisoned")
    }

    /// True if a complaint about `source` may be logged now (see [`LogLimiter`]).
    pub(super) fn may_log(&self, source: &str) -> bool {
        self.log_limiter.allow(source)
    }

    fn skew(&self) -> MutexGuard<'_, SkewMonitor> {
        self.skew.lock().expect("skew lock poisoned")
    }

    /// Records a clock sample from an exchange with `peer`: the request left at our
    /// `sent_wall_ms` / monotonic `sent_ms`, the reply carried the peer's `peer_wall_ms`
    /// and (`Some`) whether it is fenced. Logs a change of the fence.
    pub(super) fn clock_sample(
        &self,
        peer: &NodeId,
        sent_wall_ms: u64,
        sent_ms: u64,
        peer_wall_ms: u64,
        peer_fenced: Option<bool>,
    ) {
        let at_ms = self.now_ms();
        let sample = Sample {
            sent_wall_ms,
            peer_wall_ms,
            rtt_ms: at_ms.saturating_sub(sent_ms),
            at_ms,
        };
        let (transition, estimate) = {
            let mut skew = self.skew();
            let transition = skew.record(peer, sample, peer_fenced);
            (transition, skew.estimate(peer, at_ms))
        };
        if let Some(estimate) = estimate {
            self.metrics
                .clock_offset_ms
                .get_or_create(&PeerLabels {
                    peer: peer.to_string(),
                })
                .set(estimate.offset_ms.round() as i64);
        }
        self.on_fence_change(transition);
    }

    fn on_fence_change(&self, transition: Option<Transition>) {
        match transition {
            None => return,
            Some(Transition::Fenced(far)) => {
                let offsets: Vec<String> = far
                    .iter()
                    .map(|(peer, offset)| format!("{peer} {offset:+.0} ms"))
                    .collect();
                warn!(
                    max_clock_skew_ms = self.options.max_clock_skew_ms,
                    "clock skew: this node's clock is too far from a majority of the cluster \
                     (peers' offsets: {}); refusing client writes until it is back within bounds",
                    offsets.join(", ")
                );
            }
            Some(Transition::Recovered) => {
                info!("clock skew: this node's clock is back within bounds; accepting client writes again");
            }
        }
        let fenced = self.skew().fence() != Fence::Open;
        self.metrics.fenced.set(fenced as i64);
    }

    /// `Ok` if this node may stamp client writes now; else the offsets that fence it.
    pub(super) fn write_fence(&self) -> Result<(), Fenced> {
        let now = self.now_ms();
        let transition = self.skew().poll(now);
        self.on_fence_change(transition);
        self.skew().check_write(now)
    }

    /// Peers certainly more than the allowed skew behind us that have not said they are
    /// fenced, with their offsets: they would refuse a write stamped now.
    pub(super) fn too_far_behind(&self) -> Vec<(NodeId, f64)> {
        self.skew().too_far_behind(self.now_ms())
    }

    /// Whether replies to peers say this node is fenced (see `skew`).
    pub(super) fn reports_fenced(&self) -> bool {
        let now = self.now_ms();
        let transition = self.skew().poll(now);
        self.on_fence_change(transition);
        self.skew().reports_fenced()
    }

    /// True while this node refuses client writes for clock skew.
    pub(super) fn fenced(&self) -> bool {
        self.write_fence().is_err()
    }

    /// How far `peer`'s clock may be behind ours, ms, for commit-wait; `None`: the peer
    /// is fenced and cannot stamp writes for now.
    pub(super) fn lag_bound_ms(&self, peer: &NodeId) -> Option<u64> {
        self.skew().lag_bound_ms(peer, self.now_ms())
    }

    /// Whether `peer` said it is fenced (and its lease holds).
    pub(super) fn peer_fenced(&self, peer: &NodeId) -> bool {
        self.skew().peer_fenced(peer, self.now_ms())
    }

    /// The estimate of `peer`'s clock offset, `None` until measured.
    pub(super) fn clock_offset(&self, peer: &NodeId) -> Option<Estimate> {
        self.skew().estimate(peer, self.now_ms())
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().expect("core lock poisoned")
    }

    /// Folds `floor` into the HLC, so that every later stamp is larger; refused (and
    /// nothing changed) when it is further ahead of the wall clock than the skew limit.
    pub(super) fn observe(&self, floor: Timestamp) -> Result<(), SkewError> {
        let now = self.clock.wall_ms();
        self.core().hlc.observe(floor, now)
    }

    /// A client's write of `value` (`None`: a tombstone) under `key`: the HLC stamps a
    /// version, the entry is appended to the journal (with `slot`) and the store merges
    /// it, in one critical section, so two writes on one node see each other in
    /// version order. Refuses to stamp past the durable lease.
    pub(super) fn apply_local(
        &self,
        slot: Slot,
        key: &str,
        value: Option<Bytes>,
    ) -> Result<Stamped, JournalError> {
        let mut core = self.core();
        let now = self.clock.wall_ms();
        let stamp = core.hlc.peek(now);
        if stamp.wall_ms > self.lease.bound_ms() {
            return Ok(Stamped::NeedsLease {
                slot,
                wall_ms: stamp.wall_ms,
            });
        }
        let version = Version {
            timestamp: core.hlc.tick(now),
            node: self.id.clone(),
        };
        let entry = Entry {
            key: key.to_owned(),
            version: version.clone(),
            value,
            replaces: core.store.version(key),
        };
        // A memory-only journal keeps nothing: skip the encoding.
        let batch = if self.durable {
            RecordBatch::of([durable::encode(&entry)])?
        } else {
            RecordBatch::new()
        };
        let lsn = self.journal.append(slot, batch)?;
        core.last_lsn = lsn;
        let change = self.changes.capture(&entry, Origin::Local);
        let previous = match core.store.merge(entry) {
            Merged::Applied { previous } => {
                self.changes.publish(change);
                previous.and_then(|register| {
                    self.journal
                        .record_garbage(durable::record_weight(key, &register));
                    register.val.value
                })
            }
            // Cannot happen: every stored version went through the HLC, so a fresh
            // stamp is larger. Were it to, the write is lost to a newer one, as
            // LWW says; panicking here would poison the lock and stop the node.
            Merged::Stale => {
                debug_assert!(
                    false,
                    "a fresh HLC stamp is larger than every stored version"
                );
                core.store.read(key).and_then(|(_, value)| value)
            }
        };
        Ok(Stamped::Done {
            version,
            previous,
            lsn,
        })
    }

    /// Merges entries from `from`, refusing versions too far in the future; what is
    /// new is appended to the journal (with `slot`) first. Returns the keys refused and
    /// the LSN after which every entry of the call is durable here (new or already
    /// held).
    pub(super) fn apply_remote(
        &self,
        slot: Slot,
        from: &NodeId,
        entries: Vec<Entry>,
    ) -> Result<(Vec<String>, Lsn), JournalError> {
        let mut refused = Vec::new();
        let mut worst_skew = None;
        let mut conflicts = Vec::new();
        let barrier = {
            let mut core = self.core();
            let now = self.clock.wall_ms();
            let mut batch = RecordBatch::new();
            let mut fresh = Vec::new();
            for entry in entries {
                if let Err(skew) = core.hlc.observe(entry.version.timestamp, now) {
                    worst_skew = Some(skew);
                    refused.push(entry.key);
                    continue;
                }
                let stale = core
                    .store
                    .version(&entry.key)
                    .is_some_and(|version| version >= entry.version);
                if !stale {
                    if self.durable {
                        batch.push(&durable::encode(&entry))?;
                    }
                    fresh.push(entry);
                }
            }
            if !fresh.is_empty() {
                core.last_lsn = self.journal.append(slot, batch)?;
                for entry in fresh {
                    let key = entry.key.clone();
                    conflicts.extend(conflict::detect(
                        core.store.get(&entry.key).as_ref(),
                        &entry,
                    ));
                    let change = self.changes.capture(&entry, Origin::Replicated);
                    if let Merged::Applied { previous } = core.store.merge(entry) {
                        self.changes.publish(change);
                        if let Some(previous) = previous {
                            self.journal
                                .record_garbage(durable::record_weight(&key, &previous));
                        }
                    }
                }
            }
            core.last_lsn
        };
        self.record_conflicts(conflicts);
        if let Some(skew) = worst_skew {
            self.metrics.skew_refusals.inc_by(refused.len() as u64);
            if self.may_log(&format!("skew:{from}")) {
                warn!(peer = %from, refused = refused.len(), "refused remote versions: {skew}; anti-entropy will offer them again");
            }
        }
        Ok((refused, barrier))
    }

    /// [`NodeState::apply_remote`] for callers that need no durability wait (read
    /// repair, anti-entropy pulls: their data is already durable elsewhere): reserves
    /// a slot, merges, and logs a failure. True if every entry was merged (or was
    /// already known): none refused, no journal failure.
    pub(super) async fn merge_remote(&self, from: &NodeId, entries: Vec<Entry>) -> bool {
        let result = match self.reserve().await {
            Ok(slot) => self.apply_remote(slot, from, entries),
            Err(error) => Err(error),
        };
        match result {
            Ok((refused, _)) => refused.is_empty(),
            Err(error) => {
                if self.may_log("journal") {
                    warn!(peer = %from, "cannot store entries from a peer: {error}");
                }
                false
            }
        }
    }

    /// Counts and keeps the conflicts a merge found (each once).
    fn record_conflicts(&self, found: Vec<conflict::Conflict>) {
        if found.is_empty() {
            return;
        }
        let at_ms = self.clock.wall_ms();
        let mut log = self.conflicts.lock().expect("conflict log lock poisoned");
        for conflict in found {
            if log.record(conflict, at_ms) {
                self.metrics.conflicts.inc();
            }
        }
    }

    /// The most recent `limit` conflicts seen here, newest first.
    pub(super) fn conflicts(&self, limit: usize) -> Vec<Recorded> {
        let log = self.conflicts.lock().expect("conflict log lock poisoned");
        log.recent(limit)
    }

    /// A watch of the changes under `prefix`, and the entries (tombstones included, in
    /// key order) whose version is newer than `after` when it starts, at most
    /// `max_snapshot` of them (the flag says more were newer). Taken under the core lock,
    /// where changes are published, so the snapshot and the watch neither overlap nor
    /// leave a gap.
    pub(super) fn watch(
        &self,
        prefix: &str,
        after: Option<&Version>,
        max_snapshot: usize,
    ) -> Result<(Watch, Vec<Entry>, bool), TooManyWatchers> {
        let core = self.core();
        let watch = self.changes.subscribe(prefix)?;
        let (snapshot, more) = match after {
            Some(after) => core.store.newer_than(prefix, after, max_snapshot),
            None => (Vec::new(), false),
        };
        Ok((watch, snapshot, more))
    }

    /// Ends every watch (the node is stopping).
    pub(super) fn close_watches(&self) {
        self.changes.close();
    }

    /// A write could not be queued for `peer`: its outbox is full. Anti-entropy will
    /// carry it instead.
    pub(super) fn outbox_full(&self, peer: &NodeId) {
        self.metrics
            .pushes_dropped
            .get_or_create(&PeerLabels {
                peer: peer.to_string(),
            })
            .inc();
        if self.may_log(&format!("outbox:{peer}")) {
            warn!(%peer, limit = self.options.outbox_max_keys, "outbox full: writes left to anti-entropy");
        }
    }

    /// A bound other than the outbox was hit for `peer`: counted and logged.
    pub(super) fn bound_hit(&self, bound: &'static str, peer: &NodeId) {
        self.metrics
            .bounds_hit
            .get_or_create(&ReasonLabels { reason: bound })
            .inc();
        if self.may_log(&format!("{bound}:{peer}")) {
            warn!(%peer, bound, "bound reached: request to the peer dropped");
        }
    }

    /// Records an anti-entropy outcome in the metrics.
    pub(super) fn count_round(&self, reason: &'static str) {
        self.metrics
            .anti_entropy_rounds
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts keys repaired, by how.
    pub(super) fn count_repaired(&self, reason: &'static str, count: usize) {
        if count > 0 {
            self.metrics
                .keys_repaired
                .get_or_create(&ReasonLabels { reason })
                .inc_by(count as u64);
        }
    }
}

/// Tombstone collection (see `tombstones`): the ledger's rule applied to the store.
impl NodeState {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().expect("ledger lock poisoned")
    }

    /// What this node presents in a handshake.
    pub(super) fn lineage(&self) -> Lineage {
        self.ledger().lineage()
    }

    /// Admits `peer` presenting `theirs` in a handshake, or says why not (logged at most
    /// once per interval per peer).
    pub(super) fn admit(&self, peer: &NodeId, theirs: &Lineage) -> Result<(), String> {
        let admitted = self.ledger().admit(peer, theirs, self.wall_ms());
        if let Err(reason) = &admitted {
            if self.may_log(&format!("retired:{peer}")) {
                warn!(%peer, "{reason}");
            }
        }
        admitted
    }

    /// Why the links with `peer` must be dropped now, if they must.
    pub(super) fn refused(&self, peer: &NodeId) -> Option<String> {
        self.ledger().refused(peer)
    }

    /// Why this node no longer takes part in the cluster, if it does not.
    pub(super) fn self_refusal(&self) -> Option<String> {
        self.ledger().self_refusal()
    }

    /// A round with `peer` pulled every version it stamped at or below `hlc` (see
    /// `anti_entropy::Outcome::pulled`).
    pub(super) fn raise_watermark(&self, peer: &NodeId, hlc: Timestamp) {
        self.watermarks
            .lock()
            .expect("watermarks lock poisoned")
            .raise(peer, hlc);
    }

    /// The session watermarks as they are now. Read them *before* the registers they
    /// are combined with: both only grow, so a watermark read first is proved by state
    /// already merged when the register is read.
    pub(super) fn watermarks(&self) -> Watermarks {
        self.watermarks
            .lock()
            .expect("watermarks lock poisoned")
            .clone()
    }

    /// A round with `peer` that began at change `covered` finished cleanly.
    pub(super) fn round_clean(&self, peer: &NodeId, covered: Seq) {
        self.ledger().round_clean(peer, covered, self.wall_ms());
    }

    /// Every peer as collection sees it.
    pub(super) fn collection_views(&self) -> Vec<CollectionView> {
        self.ledger().views(self.wall_ms())
    }

    /// Drops up to `slice` collectable tombstones (one short hold of the core lock) and
    /// returns how many. A collection that leaves out peers silent for longer than the
    /// grace retires them first (see `tombstones`).
    pub(super) fn collect_tombstones(&self, slice: usize) -> usize {
        let now = self.wall_ms();
        let seq = self.with_store(Store::seq);
        let Horizon::At {
            seq: horizon,
            excluded,
        } = self.ledger().horizon(now, seq)
        else {
            return 0;
        };
        if !self.with_store(|store| store.has_collectable(horizon)) {
            return 0;
        }
        if !excluded.is_empty() {
            let retired = self.ledger().retire(&excluded, now);
            if !retired.is_empty() {
                warn!(peers = ?retired, grace_ms = self.options.tombstone_grace.as_millis() as u64, "collecting tombstones without peers out of contact for longer than the grace: their present data will be refused");
            }
        }
        let collected = self.core().store.collect(horizon, slice);
        self.metrics.tombstones_collected.inc_by(collected as u64);
        collected
    }
}
