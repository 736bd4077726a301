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
use crate::peer::{NoReply, ReplyFuture, Responder};
use crate::persist::JournalError;
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

    /// Every reply that tells the peer what this node holds (an ack, hashes, versions,
    /// entries, a summary) is sent only once that state is durable here, so `live`,
    /// `quorum` and `all` count durable copies and anti-entropy never takes a
    /// not-yet-durable copy for a replica. The state is read (or changed) at once; only
    /// the reply waits.
    fn respond(&self, from: &NodeId, request: Message) -> ReplyFuture {
        let node = self.node.clone();
        node.detector().heard_from(from, node.now_ms());
        let budget = node.options().batch_bytes;
        let (reply, barrier) = match request {
            Message::Ping => (Message::Pong, 0),
            Message::Push { entries } => {
                // Rarely waits: only when the journal's queue is full (backpressure
                // on the pushing peer, which is what the queue bound is for).
                let from = from.clone();
                return Box::pin(async move {
                    let slot = node.reserve().await.map_err(failed)?;
                    let (refused, lsn) = node.apply_remote(slot, &from, entries).map_err(failed)?;
                    node.wait_durable(lsn).await.map_err(failed)?;
                    Ok(Message::PushAck { refused })
                });
            }
            Message::SyncRoot { root } => {
                node.with_durable_store(|store| anti_entropy::answer_root(store, root))
            }
            Message::SyncBuckets { buckets } => node
                .with_durable_store(|store| anti_entropy::answer_buckets(store, &buckets, budget)),
            Message::Fetch { keys } => {
                node.with_durable_store(|store| anti_entropy::answer_fetch(store, &keys, budget))
            }
            Message::Summarize => {
                let (summary, barrier) = node.with_durable_store(|store| store.summary());
                let reply = Message::Summary {
                    keys: summary.keys as u64,
                    tombstones: summary.tombstones as u64,
                    digest: summary.digest,
                };
                (reply, barrier)
            }
            _ => return Box::pin(std::future::ready(Err(NoReply::Unexpected))),
        };
        let durable = node.wait_durable(barrier);
        Box::pin(async move {
            durable.await.map_err(failed)?;
            Ok(reply)
        })
    }
}

fn failed(error: JournalError) -> NoReply {
    NoReply::Failed(error.to_string())
}
