//! The startup gate: whether a node that has just started may serve clients.
//!
//! Owns: [`StartupGate`] and its rule (below); the flag it sets once, for good.
//! Knows nothing of: how rounds are run (it reads the failure detector's account of
//! them), HTTP.
//!
//! A node that starts (or restarts, empty) has an empty store and an HLC that knows
//! nothing of the versions it issued before. Serving at once would answer stale reads,
//! stamp writes lower than versions already in the cluster (so an acknowledged write
//! could lose to an older one), and, within the clock-skew window, could even reissue a
//! version of its previous life for another value. So it waits until every peer has
//! completed an anti-entropy round with it (its HLC has then seen every version they
//! hold), or, if some peer cannot be reached, until every peer was tried and
//! `max_clock_skew_ms` has passed since the start (no version of its previous life can
//! be ahead of its wall clock any more), and at most `startup_sync_timeout`.
//!
//! A durable node that recovered its data directory serves at once: its HLC resumed
//! above every version it stored and above the lease of its previous life, so it can
//! neither reuse a version nor stamp below one it acknowledged; it serves what it has
//! on disk, like a node that was partitioned for a while. A durable node whose
//! directory was just created (new, or wiped), or whose lease was lost to `--repair`,
//! knows nothing of a previous life and keeps the rule above.
//!
//! Separately, the gate tells whether the node is *catching up*: from its start until
//! every peer is settled (an anti-entropy round with it completed, or it was tried and
//! found down). Latched: once caught up, a node stays so.
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::info;

use super::level::ReplicationError;
use super::peers::Peers;
use super::state::NodeState;

/// Closed until the node has caught up after its start; then open for good.
pub(super) struct StartupGate {
    /// The monotonic time of the node's start.
    started_ms: u64,
    /// Set once the node may serve; never cleared.
    ready: AtomicBool,
    /// Set once every peer is settled; never cleared.
    caught_up: AtomicBool,
}

impl StartupGate {
    /// A closed gate; the node starts now.
    pub(super) fn new(node: &NodeState) -> Self {
        Self {
            started_ms: node.now_ms(),
            ready: AtomicBool::new(node.durable() && node.resumed()),
            caught_up: AtomicBool::new(false),
        }
    }

    /// Whether the node is still catching up after its start (see the module header).
    pub(super) fn catching_up(&self, node: &NodeState, peers: &Peers) -> bool {
        if self.caught_up.load(Ordering::Acquire) {
            return false;
        }
        let settled = {
            let detector = node.detector();
            peers.ids().all(|peer| detector.settled(peer))
        };
        if settled && !self.caught_up.swap(true, Ordering::AcqRel) {
            info!(
                after_ms = node.now_ms().saturating_sub(self.started_ms),
                "caught up with every reachable peer"
            );
        }
        !settled
    }

    /// `Ok` once the node may serve clients, `Err(Starting)` until then.
    pub(super) fn check(&self, node: &NodeState, peers: &Peers) -> Result<(), ReplicationError> {
        if self.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let options = node.options();
        let elapsed_ms = node.now_ms().saturating_sub(self.started_ms);
        let ready =
            peers.is_empty() || elapsed_ms >= options.startup_sync_timeout.as_millis() as u64 || {
                let detector = node.detector();
                let settled = peers.ids().all(|peer| detector.settled(peer));
                detector.synced_with_all() || (settled && elapsed_ms >= options.max_clock_skew_ms)
            };
        if !ready {
            return Err(ReplicationError::Starting(node.id().clone()));
        }
        if !self.ready.swap(true, Ordering::AcqRel) {
            info!(
                after_ms = elapsed_ms,
                "caught up with peers; serving clients"
            );
        }
        Ok(())
    }
}
