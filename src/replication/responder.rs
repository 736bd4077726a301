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
use crate::wire::{Lineage, Message};

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

    fn lineage(&self) -> Lineage {
        self.node.lineage()
    }

    fn admit(&self, from: &NodeId, theirs: &Lineage) -> Result<(), String> {
        self.node.admit(from, theirs)
    }

    /// Every reply that tells the peer what this node holds (an ack, hashes, versions,
    /// entries, a summary) is sent only once that state is durable here, so `live`,
    /// `quorum` and `all` count durable copies and anti-entropy never takes a
    /// not-yet-durable copy for a replica. The state is read (or changed) at once; only
    /// the reply waits.
    fn respond(&self, from: &NodeId, request: Message) -> ReplyFuture {
        let node = self.node.clone();
        // A peer retired since its link was admitted (or this node retired): the
        // connection closes, and the next handshake says why.
        if let Some(reason) = node.refused(from) {
            return Box::pin(std::future::ready(Err(NoReply::Failed(reason))));
        }
        node.detector().heard_from(from, node.now_ms());
        let budget = node.options().batch_bytes;
        let (reply, barrier) = match request {
            Message::Ping => (
                Message::Pong {
                    wall_ms: node.wall_ms(),
                    fenced: node.reports_fenced(),
                },
                0,
            ),
            Message::Push { entries } => {
                let from = from.clone();
                // Merged at once when the journal's queue has room; otherwise the
                // reply waits for room first (backpressure on the pushing peer, which
                // is what the queue bound is for).
                let merged = match node.journal().try_reserve() {
                    Ok(slot) => Ok(node.apply_remote(slot, &from, entries)),
                    Err(_) => Err(entries),
                };
                return Box::pin(async move {
                    let (refused, lsn) = match merged {
                        Ok(merged) => merged,
                        Err(entries) => {
                            let slot = node.reserve().await.map_err(failed)?;
                            node.apply_remote(slot, &from, entries)
                        }
                    }
                    .map_err(failed)?;
                    node.wait_durable(lsn).await.map_err(failed)?;
                    // A clock sample: any moment between the request and the reply
                    // is one (the reply waited for the fsync, the round trip says so).
                    Ok(Message::PushAck {
                        refused,
                        wall_ms: node.wall_ms(),
                        fenced: node.reports_fenced(),
                    })
                });
            }
            Message::SyncRoot { root } => node.with_durable_store_and_hlc(|store, hlc| {
                anti_entropy::answer_root(store, root, hlc)
            }),
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use tokio::sync::watch;

    use super::*;
    use crate::clock::{ManualClock, Timestamp, Version};
    use crate::metrics::Metrics;
    use crate::persist::{
        CompactionReport, Journal, JournalFuture, JournalStats, Liveness, Lsn, RecordBatch, Slot,
    };
    use crate::replication::durable::Recovered;
    use crate::replication::ReplicationOptions;
    use crate::store::{Entry, Limits, Store};

    /// A journal whose appends become durable only when the test says so.
    struct Gated {
        appended: AtomicU64,
        durable: watch::Sender<Lsn>,
    }

    impl Journal for Gated {
        fn reserve(&self) -> JournalFuture<'_, Slot> {
            Box::pin(std::future::ready(Ok(Slot::unbounded())))
        }
        fn try_reserve(&self) -> Result<Slot, JournalError> {
            Ok(Slot::unbounded())
        }
        fn append(&self, _slot: Slot, _batch: RecordBatch) -> Result<Lsn, JournalError> {
            Ok(self.appended.fetch_add(1, Ordering::SeqCst) + 1)
        }
        fn wait_durable(&self, lsn: Lsn) -> JournalFuture<'_, ()> {
            let mut durable = self.durable.subscribe();
            Box::pin(async move {
                durable
                    .wait_for(|durable| *durable >= lsn)
                    .await
                    .map_err(|_| JournalError::Closed)?;
                Ok(())
            })
        }
        fn read_lease(&self) -> Option<u64> {
            None
        }
        fn extend_lease(&self, _bound_ms: u64) -> Result<(), JournalError> {
            Ok(())
        }
        fn set_liveness(&self, _liveness: Arc<dyn Liveness>) {}
        fn record_garbage(&self, _bytes: u64) {}
        fn compact_now(&self) -> Result<Option<CompactionReport>, JournalError> {
            Ok(None)
        }
        fn stats(&self) -> JournalStats {
            JournalStats::default()
        }
        fn shutdown(&self) -> Result<(), JournalError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn acks_and_digests_wait_until_the_entries_are_durable() {
        let journal = Arc::new(Gated {
            appended: AtomicU64::new(0),
            durable: watch::Sender::new(0),
        });
        let n1 = NodeId::new("n1").unwrap();
        let n2 = NodeId::new("n2").unwrap();
        let options = ReplicationOptions {
            outbox_max_keys: 100,
            ..ReplicationOptions::in_process(Limits::default())
        };

        let recovered = Recovered {
            store: Store::new(),
            journal: journal.clone(),
            recovery: None,
            durable: true,
            skipped: 0,
        };
        let node = NodeState::new(
            n1.clone(),
            std::slice::from_ref(&n2),
            Arc::new(ManualClock::new(10_000)),
            options,
            Metrics::new(),
            recovered,
        );
        let responder = PeerResponder::new(
            Arc::new(node),
            Arc::new(Peers::new(std::slice::from_ref(&n2), 100)),
        );
        let entry = Entry {
            key: "k".to_owned(),
            version: Version {
                timestamp: Timestamp {
                    wall_ms: 9_000,
                    logical: 0,
                },
                node: n2.clone(),
            },
            value: Some("v".into()),
            replaces: None,
        };
        let push = responder.respond(
            &n2,
            Message::Push {
                entries: vec![entry],
            },
        );
        let summary = responder.respond(&n2, Message::Summarize);
        let ping = responder.respond(&n2, Message::Ping);
        assert!(
            matches!(ping.await, Ok(Message::Pong { .. })),
            "a ping claims nothing"
        );
        let (push, summary) = (tokio::spawn(push), tokio::spawn(summary));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !push.is_finished(),
            "a push was acked before it was durable"
        );
        assert!(
            !summary.is_finished(),
            "a digest exposed data not yet durable"
        );
        journal.durable.send_replace(1);
        assert!(matches!(
            push.await.unwrap(),
            Ok(Message::PushAck { refused, .. }) if refused.is_empty()
        ));
        assert!(matches!(
            summary.await.unwrap(),
            Ok(Message::Summary { keys: 1, .. })
        ));
    }
}
