//! The write path: a client's write, and the wait its consistency level asks for.
//!
//! Owns: [`write`] and [`WriteOutcome`]: which peers a write waits for, and how long.
//! Knows nothing of: links (it queues keys in outboxes; the drivers push them), HTTP.
//!
//! # A write
//! 1. A journal slot is reserved (waiting only while the journal's queue is full).
//!    Under the core lock: the HLC stamps a version (within the durable lease, else
//!    the write waits for the lease and retries), the entry is appended to the
//!    journal, the store merges it (a local stamp is larger than anything stored, so
//!    it always applies) and yields the value held before ([`NodeState::apply_local`]).
//! 2. The key is queued in every peer's outbox, with an ack waiter for each peer the
//!    level may wait on (at `one`, the live peers: their acks only shorten step 5).
//! 3. Each peer's driver pushes batches and releases the waiters on ack.
//! 4. Every level waits for the local copy to be durable (the fsync policy says
//!    when), together with the acks below; a peer acks only once durable there.
//!    `live` waits for the peers the failure detector holds alive, up to
//!    `live_timeout`; `quorum` and `all` wait for enough acks up to `strong_timeout`
//!    and answer [`ReplicationError::Unavailable`] if they do not come. A peer that
//!    refused the version for clock skew does not count; at `live`, such a refusal by
//!    a peer that is not itself fenced fails the write ([`ReplicationError::ClockSkew`]).
//! 5. Commit-wait: before answering, the node waits until its wall clock is past the
//!    write's stamp by how far each peer that did not acknowledge it may lag (see
//!    `skew`), so that no write that starts after this answer, on any node, can get a
//!    smaller version. Peers that acknowledged have folded the version into their HLC
//!    and need no wait: at `live` in a healthy cluster the wait is zero.
//!
//! A node fenced for clock skew refuses the write before step 1.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::sync::oneshot;

use super::level::{Consistency, ReplicationError};
use super::outbox::{Ack, Enqueued};
use super::peers::Peers;
use super::state::{NodeState, Stamped};
use crate::clock::{NodeId, Version};
use crate::membership::PeerState;
use crate::persist::JournalError;
use crate::skew::Fenced;

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
    if let Err(fenced) = node.write_fence() {
        return Err(fenced_error(
            node.id(),
            &fenced,
            node.options().max_clock_skew_ms,
        ));
    }
    // A peer whose clock is certainly too far behind ours would refuse this write's
    // version, and the commit-wait could not cover it: refuse before applying.
    let behind = node.too_far_behind();
    if !behind.is_empty() {
        let fenced = Fenced {
            offsets: behind,
            releasing: false,
        };
        return Err(fenced_error(
            node.id(),
            &fenced,
            node.options().max_clock_skew_ms,
        ));
    }
    let storage_error = |error: JournalError| ReplicationError::Storage(error.to_string());
    // The slot is taken before the core lock: waiting for room in the journal's queue
    // (backpressure) never happens under the lock.
    let mut slot = node.reserve().await.map_err(storage_error)?;
    let (version, previous, lsn) = loop {
        match node
            .apply_local(slot, key, value.clone())
            .map_err(storage_error)?
        {
            Stamped::Done {
                version,
                previous,
                lsn,
            } => break (version, previous, lsn),
            Stamped::NeedsLease {
                slot: unused,
                wall_ms,
            } => {
                slot = unused;
                node.cover_lease(wall_ms).await.map_err(storage_error)?;
            }
        }
    };
    let outcome = WriteOutcome { version, previous };
    let durable = node.wait_durable(lsn);

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
    let shared_key: std::sync::Arc<str> = key.into();
    for (index, (peer, (state, recently_heard))) in peers.iter().zip(states).enumerate() {
        // A peer that dialed us but that our own link has not reached yet (it just
        // restarted) is running: it counts as alive, and its driver is woken to link
        // now. If that fails the waiter is dropped at once, so the write never waits
        // long on it.
        let joining = state == PeerState::Down && recently_heard;
        // At `one` the reply never waits for an ack, but asks for the live peers' all
        // the same: each ack takes its peer out of the commit-wait (step 5), which
        // otherwise sleeps out the peer's lag bound, rounded up to the timer's
        // millisecond.
        let wants_ack = match level {
            Consistency::One | Consistency::Live => state == PeerState::Alive || joining,
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
        match peer.outbox().enqueue(&shared_key, waiter) {
            Enqueued::Queued => {}
            Enqueued::Coalesced => {
                node.metrics().pushes_coalesced.inc();
            }
            Enqueued::Dropped => {
                node.outbox_full(peer.id());
                continue;
            }
        }
        acks.extend(ack.map(|rx| rx.map(move |answer| answer.map(|ack| (index, ack)))));
    }
    // Per peer: `Some(true)` applied, `Some(false)` refused for skew, `None` no answer.
    let mut answers: Vec<Option<bool>> = vec![None; peers.len()];

    let options = node.options();
    let cluster = peers.len() + 1;
    let (needed, deadline) = match level {
        Consistency::One => {
            durable.await.map_err(storage_error)?;
            commit_wait(node, peers, &outcome.version, &mut answers, &mut acks).await?;
            return Ok(outcome);
        }
        Consistency::Live => (1 + acks.len(), options.live_timeout),
        Consistency::Quorum => (cluster / 2 + 1, options.strong_timeout),
        Consistency::All => (cluster, options.strong_timeout),
    };
    // The local copy's fsync and the peers' acks (each sent once durable there) are
    // awaited together; the reply never precedes the local fsync. The acks are awaited
    // even when too few peers are alive to meet the level: the error then counts the
    // replicas that really took the write (after a kill, `all` on 3 nodes says 2, not
    // 1), and the reply comes once they have it.
    let mut reached = 1;
    let replicas = async {
        let wait = async {
            while reached < needed {
                match acks.next().await {
                    Some(Ok((index, Ack::Applied))) => {
                        answers[index] = Some(true);
                        reached += 1;
                    }
                    Some(Ok((index, Ack::RefusedForSkew))) => answers[index] = Some(false),
                    Some(Err(_)) => {}
                    None => break,
                }
            }
        };
        let _ = tokio::time::timeout(deadline, wait).await;
    };
    let (durable, ()) = tokio::join!(durable, replicas);
    durable.map_err(storage_error)?;
    if reached < needed && level != Consistency::Live {
        return Err(ReplicationError::Unavailable {
            level,
            needed,
            reached,
            applied_locally: Some(true),
        });
    }
    if level == Consistency::Live {
        // A live peer refused the version as too far in its future: our clock is ahead
        // of it, and the write would be acknowledged without that replica. A peer that
        // is fenced itself (its clock is the odd one) is left out.
        let refusers: Vec<&NodeId> = peers
            .ids()
            .zip(&answers)
            .filter(|(peer, answer)| **answer == Some(false) && node.lag_bound_ms(peer).is_some())
            .map(|(peer, _)| peer)
            .collect();
        if !refusers.is_empty() {
            return Err(refused_error(node, &refusers));
        }
    }
    commit_wait(node, peers, &outcome.version, &mut answers, &mut acks).await?;
    Ok(outcome)
}

/// The acks still to come: `(peer index, answer)`.
type PendingAcks<F> = FuturesUnordered<F>;

/// Waits until no peer that has not applied the write can stamp a smaller version: our
/// wall clock must pass `version` by each such peer's lag bound (module header, step 5).
/// Acks that arrive meanwhile take their peer out of the wait. Fails if the wait would
/// exceed `max_clock_skew_ms`.
async fn commit_wait<F>(
    node: &NodeState,
    peers: &Peers,
    version: &Version,
    answers: &mut [Option<bool>],
    acks: &mut PendingAcks<F>,
) -> Result<(), ReplicationError>
where
    F: std::future::Future<Output = Result<(usize, Ack), oneshot::error::RecvError>>,
{
    let max_skew = node.options().max_clock_skew_ms;
    let stamp = version.timestamp.wall_ms;
    let waiting = async {
        loop {
            let lagging = peers
                .ids()
                .zip(answers.iter())
                .filter(|(_, answer)| **answer != Some(true))
                .filter_map(|(peer, _)| Some((peer, node.lag_bound_ms(peer)?)))
                .max_by_key(|(_, lag)| *lag);
            let Some((peer, lag)) = lagging else {
                return Ok(());
            };
            let now = node.wall_ms();
            let target = stamp + 1 + lag;
            if now >= target {
                return Ok(());
            }
            // `+ 1`: the stamp's own millisecond. A peer never measured is assumed
            // `max_skew` behind, which a write checked in the millisecond it was stamped
            // must still be allowed to wait out (it used to be refused).
            if target - now > max_skew + 1 {
                return Err(lag_error(node, peer, lag, target - now));
            }
            tokio::select! {
                // In order: an ack may end the wait early; else the clock passes.
                biased;
                Some(Ok((index, ack))) = acks.next() => answers[index] = Some(ack == Ack::Applied),
                _ = tokio::time::sleep(Duration::from_millis(target - now)) => {}
            }
        }
    };
    // The clock is read again after every sleep; a wall clock that stalls (or a manual
    // one nobody advances) must not hold the write forever.
    match tokio::time::timeout(Duration::from_millis(2 * max_skew + 100), waiting).await {
        Ok(result) => result,
        Err(_) => Err(ReplicationError::ClockSkew {
            detail: format!(
                "node {}'s wall clock did not pass the write's stamp within {} ms",
                node.id(),
                2 * max_skew + 100
            ),
            applied_locally: true,
        }),
    }
}

/// The refusal of a fenced node, naming the offsets that fence it.
fn fenced_error(me: &NodeId, fenced: &Fenced, max_skew_ms: u64) -> ReplicationError {
    let offsets: Vec<String> = fenced
        .offsets
        .iter()
        .map(|(peer, offset)| {
            let offset = offset.round() as i64;
            let side = if offset < 0 { "ahead of" } else { "behind" };
            format!("{} ms {side} {peer}", offset.abs())
        })
        .collect();
    let detail = if fenced.releasing {
        format!(
            "node {me}'s clock is back within max_clock_skew_ms ({max_skew_ms} ms) of the cluster; \
             it accepts writes again in a moment, once its peers know it"
        )
    } else {
        format!(
            "node {me}'s clock is {} (max_clock_skew_ms {max_skew_ms}); it refuses writes until \
             its clock is back within bounds",
            offsets.join(" and ")
        )
    };
    ReplicationError::ClockSkew {
        detail,
        applied_locally: false,
    }
}

/// Live peers refused the version as too far in their future.
fn refused_error(node: &NodeState, refusers: &[&NodeId]) -> ReplicationError {
    let parts: Vec<String> = refusers
        .iter()
        .map(|peer| match node.clock_offset(peer) {
            Some(estimate) => format!(
                "{peer} (its clock is {:.0} ms behind ours)",
                -estimate.offset_ms
            ),
            None => format!("{peer}"),
        })
        .collect();
    ReplicationError::ClockSkew {
        detail: format!(
            "{} refused the write's version as too far in the future (max_clock_skew_ms {})",
            parts.join(" and "),
            node.options().max_clock_skew_ms
        ),
        applied_locally: true,
    }
}

/// A peer that did not take the write lags too far for the commit-wait.
fn lag_error(node: &NodeState, peer: &NodeId, lag: u64, wait: u64) -> ReplicationError {
    ReplicationError::ClockSkew {
        detail: format!(
            "{peer} did not take the write and its clock may be up to {lag} ms behind ours; \
             acknowledging safely would take {wait} ms, more than max_clock_skew_ms ({})",
            node.options().max_clock_skew_ms
        ),
        applied_locally: true,
    }
}
