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
use tracing::warn;

use crate::clock::{Clock, Hlc, NodeId, Timestamp, Version};
use crate::membership::FailureDetector;
use crate::metrics::{Metrics, PeerLabels, ReasonLabels};
use crate::peer::LogLimiter;
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
        {
            let mut core = self.core();
            let now = self.clock.wall_ms();
            for entry in entries {
                if let Err(skew) = core.hlc.observe(entry.version.timestamp, now) {
                    worst_skew = Some(skew);
                    refused.push(entry.key);
                    continue;
                }
                core.store.merge(entry);
            }
        }
        if let Some(skew) = worst_skew {
            self.metrics.skew_refusals.inc_by(refused.len() as u64);
            if self.may_log(&format!("skew:{from}")) {
                warn!(peer = %from, refused = refused.len(), "refused remote versions: {skew}; anti-entropy will offer them again");
            }
        }
        refused
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
