//! The read path: a client's read at its consistency level, with read repair, and the
//! cluster-wide summaries.
//!
//! Owns: [`read`], [`cluster_summaries`] and [`NodeSummary`]: whom a read asks, how
//! many answers it needs, and which replicas it repairs.
//! Knows nothing of: links (requests go to the peers' drivers as jobs), HTTP.
//!
//! `one` and `live` answer from this node. `quorum` and `all` send `Fetch` to the
//! peers not known down, answer the newest version among enough replies, and repair
//! whoever is behind: this node by merging the newest entry, the peers by a push of it
//! through their outboxes.

use futures_util::stream::StreamExt;

use super::level::{Consistency, ReplicationError};
use super::outbox::Enqueued;
use super::peers::Peers;
use super::state::NodeState;
use crate::clock::NodeId;
use crate::membership::PeerState;
use crate::store::Entry;
use crate::wire::Message;

/// What one node reported of its state, for cluster-wide convergence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSummary {
    /// The node.
    pub id: NodeId,
    /// Its counts and digest, or `None` if it did not answer.
    pub summary: Option<(u64, u64, u64)>,
}

/// Peers not known to be down.
fn reachable_peers(node: &NodeState, peers: &Peers) -> Vec<NodeId> {
    let now = node.now_ms();
    let detector = node.detector();
    peers
        .ids()
        .filter(|peer| detector.state(peer, now) != PeerState::Down)
        .cloned()
        .collect()
}

/// Reads `key` (`None`: absent or deleted) as `level` asks.
pub(super) async fn read(
    node: &NodeState,
    peers: &Peers,
    key: &str,
    level: Consistency,
) -> Result<Option<Entry>, ReplicationError> {
    let local = node.with_store(|store| store.entry(key));
    let cluster = peers.len() + 1;
    let needed = match level {
        Consistency::One | Consistency::Live => {
            return Ok(local.filter(|entry| entry.value.is_some()))
        }
        Consistency::Quorum => cluster / 2 + 1,
        Consistency::All => cluster,
    };
    let unavailable = |reached| ReplicationError::Unavailable {
        level,
        needed,
        reached,
        applied_locally: None,
    };
    // Every reachable peer is asked even when they cannot be enough: the error then
    // counts the replicas that really answered, and the read still repairs them.
    let targets = reachable_peers(node, peers);
    let request = Message::Fetch {
        keys: vec![key.to_owned()],
    };
    let mut asks = peers.ask(node, &targets, &request);
    let mut answers: Vec<(NodeId, Option<Entry>)> = Vec::new();
    let collect = async {
        while 1 + answers.len() < needed {
            match asks.next().await {
                Some((peer, Some(Message::Entries { mut entries, .. }))) => {
                    answers.push((peer, entries.pop().filter(|entry| entry.key == key)))
                }
                Some(_) => {}
                None => break,
            }
        }
    };
    let _ = tokio::time::timeout(node.options().strong_timeout, collect).await;

    // The newest version among the answers and our own wins; whoever is behind is
    // repaired: us by merging it, the peers by a push of our (now newest) entry.
    let newest = answers
        .iter()
        .filter_map(|(_, entry)| entry.as_ref())
        .chain(local.as_ref())
        .max_by(|a, b| a.version.cmp(&b.version))
        .cloned();
    if let Some(newest) = &newest {
        if local.as_ref().map(|entry| &entry.version) < Some(&newest.version) {
            node.apply_remote(node.id(), vec![newest.clone()]);
            node.count_repaired("read_repair", 1);
        }
        for (peer_id, entry) in &answers {
            if entry.as_ref().map(|entry| &entry.version) < Some(&newest.version) {
                let queued = peers
                    .get(peer_id)
                    .map(|peer| peer.outbox().enqueue(key, None));
                if queued == Some(Enqueued::Dropped) {
                    node.outbox_full(peer_id);
                }
                node.count_repaired("read_repair", 1);
            }
        }
    }
    if 1 + answers.len() < needed {
        return Err(unavailable(1 + answers.len()));
    }
    Ok(newest.filter(|entry| entry.value.is_some()))
}

/// Every node's counts and digest, this one's included; nodes that do not answer
/// within the strong timeout are reported without a summary. Sorted by id.
pub(super) async fn cluster_summaries(node: &NodeState, peers: &Peers) -> Vec<NodeSummary> {
    let own = node.with_store(|store| store.summary());
    let mut nodes = vec![NodeSummary {
        id: node.id().clone(),
        summary: Some((own.keys as u64, own.tombstones as u64, own.digest)),
    }];
    let targets: Vec<NodeId> = peers.ids().cloned().collect();
    let mut asks = peers.ask(node, &targets, &Message::Summarize);
    let collect = async {
        while let Some((peer, reply)) = asks.next().await {
            let summary = match reply {
                Some(Message::Summary {
                    keys,
                    tombstones,
                    digest,
                }) => Some((keys, tombstones, digest)),
                _ => None,
            };
            nodes.push(NodeSummary { id: peer, summary });
        }
    };
    let _ = tokio::time::timeout(node.options().strong_timeout, collect).await;
    for peer in &targets {
        if !nodes.iter().any(|node| &node.id == peer) {
            nodes.push(NodeSummary {
                id: peer.clone(),
                summary: None,
            });
        }
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    nodes
}
