//! Answers to peers' requests: this node's side of their pushes, anti-entropy rounds,
//! fetches and summaries.
//!
//! Owns: [`PeerResponder`], the [`Responder`] the transport's accept loop calls.
//! Knows nothing of: frames and connections (the transport owns them), what the
//! initiator of a round plans (that is `anti_entropy::SyncSession`).

use std::sync::Arc;

use super::anti_entropy;
use super::peers::Peers;
use super::state::NodeState;
use crate::clock::NodeId;
use crate::peer::Responder;
use crate::wire::Message;

/// Answers requests arriving on inbound links, and tells the failure detector (and the
/// peer's driver) that the peer is running.
pub(super) struct PeerResponder {
    node: Arc<NodeState>,
    peers: Arc<Peers>,
}

impl PeerResponder {
    /// A responder for the node's state.
    pub(super) fn new(node: Arc<NodeState>, peers: Arc<Peers>) -> Self {
        Self { node, peers }
    }
}

impl Responder for PeerResponder {
    fn connected(&self, from: &NodeId) {
        self.node.detector().heard_from(from, self.node.now_ms());
        if let Some(peer) = self.peers.get(from) {
            peer.wake();
        }
    }

    fn respond(&self, from: &NodeId, request: Message) -> Option<Message> {
        let node = &self.node;
        node.detector().heard_from(from, node.now_ms());
        let budget = node.options().batch_bytes;
        let reply = match request {
            Message::Ping => Message::Pong {
                wall_ms: node.wall_ms(),
                fenced: node.reports_fenced(),
            },
            Message::Push { entries } => {
                let refused = node.apply_remote(from, entries);
                Message::PushAck {
                    refused,
                    wall_ms: node.wall_ms(),
                    fenced: node.reports_fenced(),
                }
            }
            Message::SyncRoot { root } => {
                node.with_store(|store| anti_entropy::answer_root(store, root))
            }
            Message::SyncBuckets { buckets } => {
                node.with_store(|store| anti_entropy::answer_buckets(store, &buckets, budget))
            }
            Message::Fetch { keys } => {
                node.with_store(|store| anti_entropy::answer_fetch(store, &keys, budget))
            }
            Message::Summarize => {
                let summary = node.with_store(|store| store.summary());
                Message::Summary {
                    keys: summary.keys as u64,
                    tombstones: summary.tombstones as u64,
                    digest: summary.digest,
                }
            }
            _ => return None,
        };
        Some(reply)
    }
}
