//! The node's shared replicated state, and the one place where entries are merged.
//!
//! Owns: [`NodeState`]: the HLC and the store behind one lock, the failure detector,
//! the clock, the settings ([`ReplicationOptions`]), the metrics and the log limiter.
//! The store changes only through [`NodeState::apply_local`] (a client's write) and
//! [`NodeState::apply_remote`] (entries from a peer); everything else reads it through
//! [`NodeState::with_store`]. Durability hooks in at those two methods.
//! Knows nothing of: peers' queues and links, consistency levels, tasks.
//!
//! The core lock is a std mutex: it is held for microseconds and never across an
//! `.await`, which is exactly the case where tokio recommends it over its own.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tracing::{info, warn};

use crate::clock::{Clock, Hlc, NodeId, Version};
use crate::membership::FailureDetector;
use crate::metrics::{Metrics, PeerLabels, ReasonLabels};
use crate::peer::LogLimiter;
use crate::skew::{Estimate, Fence, Fenced, Sample, SkewMonitor, Transition};
use crate::store::conflict::{self, ConflictLog, Recorded};
use crate::store::{Entry, Limits, Merged, Store};

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
}

/// The clock and the data, locked together: a write's stamp and its merge are one
/// critical section.
struct Core {
    hlc: Hlc,
    store: Store,
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
}

impl NodeState {
    /// The state of node `id` with an empty store, whose detector watches `peers`.
    pub(super) fn new(
        id: NodeId,
        peers: &[NodeId],
        clock: Arc<dyn Clock>,
        options: ReplicationOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        let detector = FailureDetector::new(
            peers.iter().cloned(),
            options.suspect_after.as_millis() as u64,
        );
        Self {
            id,
            core: Mutex::new(Core {
                hlc: Hlc::new(options.max_clock_skew_ms),
                store: Store::new(),
            }),
            detector: Mutex::new(detector),
            skew: Mutex::new(SkewMonitor::new(
                peers.iter().cloned(),
                options.max_clock_skew_ms,
            )),
            conflicts: Mutex::new(ConflictLog::default()),
            log_limiter: LogLimiter::new(clock.clone()),
            clock,
            options,
            metrics,
        }
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

    /// A client's write of `value` (`None`: a tombstone) under `key`: the HLC stamps a
    /// version and the store merges it, in one critical section, so two writes on one
    /// node see each other in version order. Returns the version and the value held
    /// before (`None`: absent or deleted).
    pub(super) fn apply_local(&self, key: &str, value: Option<Bytes>) -> (Version, Option<Bytes>) {
        let mut core = self.core();
        let now = self.clock.wall_ms();
        let version = Version {
            timestamp: core.hlc.tick(now),
            node: self.id.clone(),
        };
        let entry = Entry {
            key: key.to_owned(),
            version: version.clone(),
            value,
            replaces: core.store.get(key).map(|register| register.marker.clone()),
        };
        let previous = match core.store.merge(entry) {
            Merged::Applied { previous } => previous.and_then(|register| register.val.value),
            // Cannot happen: every stored version went through the HLC, so a fresh
            // stamp is larger. Were it to, the write is lost to a newer one, as
            // LWW says; panicking here would poison the lock and stop the node.
            Merged::Stale => {
                debug_assert!(
                    false,
                    "a fresh HLC stamp is larger than every stored version"
                );
                core.store
                    .get(key)
                    .and_then(|register| register.val.value.clone())
            }
        };
        (version, previous)
    }

    /// Merges entries from `from`, refusing versions too far in the future. Returns the
    /// keys refused.
    pub(super) fn apply_remote(&self, from: &NodeId, entries: Vec<Entry>) -> Vec<String> {
        let mut refused = Vec::new();
        let mut worst_skew = None;
        let mut conflicts = Vec::new();
        {
            let mut core = self.core();
            let now = self.clock.wall_ms();
            for entry in entries {
                if let Err(skew) = core.hlc.observe(entry.version.timestamp, now) {
                    worst_skew = Some(skew);
                    refused.push(entry.key);
                    continue;
                }
                conflicts.extend(conflict::detect(core.store.get(&entry.key), &entry));
                core.store.merge(entry);
            }
        }
        self.record_conflicts(conflicts);
        if let Some(skew) = worst_skew {
            self.metrics.skew_refusals.inc_by(refused.len() as u64);
            if self.may_log(&format!("skew:{from}")) {
                warn!(peer = %from, refused = refused.len(), "refused remote versions: {skew}; anti-entropy will offer them again");
            }
        }
        refused
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
