//! The write path: a client's write, and the wait its consistency level asks for.
//!
//! Owns: [`write`] and [`WriteOutcome`]: which peers a write waits for, and how long.
//! Knows nothing of: links (it queues keys in outboxes; the drivers push them), HTTP.
//!
//! # A write
//! 1. Under the core lock: the HLC stamps a version, the store merges the entry (a
//!    local stamp is larger than anything stored, so it always applies) and yields the
//!    value held before ([`NodeState::apply_local`]).
//! 2. The key is queued in every peer's outbox; for the levels that wait, with an ack
//!    waiter.
//! 3. Each peer's driver pushes batches and releases the waiters on ack.
//! 4. `live` waits for the peers the failure detector holds alive, up to
//!    `live_timeout`; `quorum` and `all` wait for enough acks up to `strong_timeout`
//!    and answer [`ReplicationError::Unavailable`] if they do not come.

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::oneshot;

use super::level::{Consistency, ReplicationError};
use super::outbox::Enqueued;
use super::peers::Peers;
use super::state::NodeState;
use crate::clock::Version;
use crate::membership::PeerState;

/// A completed write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The version stamped on the write.
    pub version: Version,
    /// The value this node held just before (`None`: absent or deleted).
    pub previous: Option<Bytes>,
}

/// Writes `value` (`None`: a tombstone) under `key`, which the caller has checked
/// against the limits, and waits as `level` asks.
pub(super) async fn write(
    node: &NodeState,
    peers: &Peers,
    key: &str,
    value: Option<Bytes>,
    level: Consistency,
) -> Result<WriteOutcome, ReplicationError> {
    let (version, previous) = node.apply_local(key, value);
    let outcome = WriteOutcome { version, previous };

    let now = node.now_ms();
    let states: Vec<(PeerState, bool)> = {
        let detector = node.detector();
        peers
            .ids()
            .map(|peer| {
                (
                    detector.state(peer, now),
                    detector.recently_heard(peer, now),
                )
            })
            .collect()
    };
    let mut acks = FuturesUnordered::new();
    for (peer, (state, recently_heard)) in peers.iter().zip(states) {
        // A peer that dialed us but that our own link has not reached yet (it just
        // restarted) is running: it counts as alive, and its driver is woken to link
        // now. If that fails the waiter is dropped at once, so the write never waits
        // long on it.
        let joining = state == PeerState::Down && recently_heard;
        let wants_ack = match level {
            Consistency::One => false,
            Consistency::Live => state == PeerState::Alive || joining,
            Consistency::Quorum | Consistency::All => state != PeerState::Down || joining,
        };
        if wants_ack && joining {
            peer.wake();
        }
        let (waiter, ack) = if wants_ack {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        match peer.outbox().enqueue(key, waiter) {
            Enqueued::Queued => {}
            Enqueued::Coalesced => {
                node.metrics().pushes_coalesced.inc();
            }
            Enqueued::Dropped => {
                node.outbox_full(peer.id());
                continue;
            }
        }
        acks.extend(ack);
    }

    let options = node.options();
    let cluster = peers.len() + 1;
    let (needed, deadline) = match level {
        Consistency::One => return Ok(outcome),
        Consistency::Live => (1 + acks.len(), options.live_timeout),
        Consistency::Quorum => (cluster / 2 + 1, options.strong_timeout),
        Consistency::All => (cluster, options.strong_timeout),
    };
    // The acks are awaited even when too few peers are alive to meet the level: the
    // error then counts the replicas that really took the write (after a kill, `all`
    // on 3 nodes says 2, not 1), and the reply comes once they have it.
    let mut reached = 1;
    let wait = async {
        while reached < needed {
            match acks.next().await {
                Some(Ok(())) => reached += 1,
                Some(Err(_)) => {}
                None => break,
            }
        }
    };
    let _ = tokio::time::timeout(deadline, wait).await;
    if reached >= needed || level == Consistency::Live {
        Ok(outcome)
    } else {
        Err(ReplicationError::Unavailable {
            level,
            needed,
            reached,
            applied_locally: Some(true),
        })
    }
}
