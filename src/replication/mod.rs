//! Replication: the write and read paths, consistency levels, push and anti-entropy.
//!
//! Owns: [`Replica`], the cheap-clone handle through which the client API reaches the
//! node's replicated state, and the assembly of the parts below.
//! Knows nothing of: HTTP, the cluster file.
//!
//! # Parts, and which may use which
//! Imports point one way, from the top of this list down; nothing below `mod.rs` knows
//! [`Replica`] (`tests/layering.rs` checks it).
//!
//! | module | owns |
//! | --- | --- |
//! | `mod.rs` | [`Replica`]: builds the parts, hands out driver ports and the responder |
//! | `write`, `read` | the write path and its waits; the read path, read repair, summaries |
//! | `gate` | the startup gate: whether a node that just started may serve |
//! | `responder` | answers to peers' requests (the transport's `Responder`) |
//! | [`driver`] | one task per peer: its link, pushes, jobs, anti-entropy rounds |
//! | `peers` | one owned `Peer` per peer: outbox, job queue, wake-up |
//! | `state` | the node's shared state: HLC + store (the one merge point), detector, clock, metrics |
//! | `level` | [`Consistency`], [`ReplicationError`] |
//! | [`outbox`], [`anti_entropy`] | pure mechanisms: the per-peer queue; the round planner |

pub mod anti_entropy;
pub mod driver;
mod gate;
mod level;
pub mod outbox;
mod peers;
mod read;
mod responder;
mod state;
mod write;

use std::sync::Arc;

use bytes::Bytes;

use crate::clock::{Clock, NodeId, Timestamp};
use crate::membership::PeerView;
use crate::metrics::Metrics;
use crate::peer::Responder;
use crate::store::{Entry, Limits, Summary};
use driver::DriverPort;
use gate::StartupGate;
pub use level::{Consistency, ReplicationError, UnknownConsistency};
use peers::Peers;
pub use read::NodeSummary;
use responder::PeerResponder;
use state::NodeState;
pub use state::ReplicationOptions;
pub use write::WriteOutcome;

/// The node's replicated state. Clones share it.
#[derive(Clone)]
pub struct Replica {
    node: Arc<NodeState>,
    peers: Arc<Peers>,
    gate: Arc<StartupGate>,
}

impl Replica {
    /// A replica with an empty store; the node starts now (see [`Replica::check_ready`]).
    pub fn new(
        id: NodeId,
        peers: Vec<NodeId>,
        clock: Arc<dyn Clock>,
        options: ReplicationOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        let outbox_max_keys = options.outbox_max_keys;
        let node = NodeState::new(id, &peers, clock, options, metrics);
        Self {
            gate: Arc::new(StartupGate::new(&node)),
            node: Arc::new(node),
            peers: Arc::new(Peers::new(&peers, outbox_max_keys)),
        }
    }

    /// What the driver of `peer` works with; `None` if `peer` is not a peer or its
    /// driver has its port already (there is one driver per peer).
    pub fn driver_port(&self, peer: &NodeId) -> Option<DriverPort> {
        DriverPort::new(self.node.clone(), self.peers.get(peer)?.clone())
    }

    /// The answers to peers' requests, for the transport's accept loop.
    pub fn responder(&self) -> Arc<dyn Responder> {
        Arc::new(PeerResponder::new(self.node.clone(), self.peers.clone()))
    }

    /// This node's id.
    pub fn id(&self) -> &NodeId {
        self.node.id()
    }

    /// Key and value limits.
    pub fn limits(&self) -> Limits {
        self.node.options().limits
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.node.metrics()
    }

    /// Whether the node may serve clients: `Err(Starting)` until it has caught up with
    /// its peers after its start (the rule is in `gate`).
    pub fn check_ready(&self) -> Result<(), ReplicationError> {
        self.gate.check(&self.node, &self.peers)
    }

    /// Writes `value` (`None`: a tombstone) under `key`, which the caller has checked
    /// against [`Replica::limits`], and waits as `level` asks.
    pub async fn write(
        &self,
        key: &str,
        value: Option<Bytes>,
        level: Consistency,
    ) -> Result<WriteOutcome, ReplicationError> {
        write::write(&self.node, &self.peers, key, value, level).await
    }

    /// Reads `key` (`None`: absent or deleted). `one` and `live` answer from this node;
    /// `quorum` and `all` ask the peers, answer the newest version among enough
    /// replicas, and repair the stale ones (read repair).
    pub async fn read(
        &self,
        key: &str,
        level: Consistency,
    ) -> Result<Option<Entry>, ReplicationError> {
        read::read(&self.node, &self.peers, key, level).await
    }

    /// Every node's counts and digest, this one's included; nodes that do not answer
    /// within the strong timeout are reported without a summary.
    pub async fn cluster_summaries(&self) -> Vec<NodeSummary> {
        read::cluster_summaries(&self.node, &self.peers).await
    }

    /// Live keys under `prefix` after `start_after`, at most `limit`; the flag says
    /// whether more matched.
    pub fn scan(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> (Vec<Entry>, bool) {
        self.node
            .with_store(|store| store.scan(prefix, start_after, limit))
    }

    /// The register this node holds for `key` now, tombstone included, without asking
    /// any peer (a simulator's view of one replica).
    pub fn local_entry(&self, key: &str) -> Option<Entry> {
        self.node.with_store(|store| store.entry(key))
    }

    /// The largest HLC timestamp this node has issued or observed (a simulator checks
    /// that it never goes back).
    pub fn hlc_last(&self) -> Timestamp {
        self.node.hlc_last()
    }

    /// Counts and digest of the local state.
    pub fn summary(&self) -> Summary {
        self.node.with_store(|store| store.summary())
    }

    /// The failure detector's view of every peer, with its outbox size.
    pub fn peer_views(&self) -> Vec<(PeerView, usize)> {
        let views = self.node.detector().views(self.node.now_ms());
        views
            .into_iter()
            .map(|view| {
                let pending = self
                    .peers
                    .get(&view.id)
                    .map_or(0, |peer| peer.outbox().pending());
                (view, pending)
            })
            .collect()
    }

    /// Merges entries from `from`, refusing versions too far in the future. Returns the
    /// keys refused.
    pub fn apply_remote(&self, from: &NodeId, entries: Vec<Entry>) -> Vec<String> {
        self.node.apply_remote(from, entries)
    }
}
