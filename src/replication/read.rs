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
use crate::clock::{NodeId, Timestamp, Version};
use crate::membership::PeerState;
use crate::session::{SessionToken, Watermarks};
use crate::store::Entry;
use crate::wire::Message;

/// Pause between two attempts of a session read to reach the peers it needs.
const SESSION_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

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
    let entry = read_entry(node, peers, key, level).await?;
    Ok(entry.filter(|entry| entry.value.is_some()))
}

/// Reads the register of `key` (`None`: absent; a tombstone is returned as such) as
/// `level` asks.
pub(super) async fn read_entry(
    node: &NodeState,
    peers: &Peers,
    key: &str,
    level: Consistency,
) -> Result<Option<Entry>, ReplicationError> {
    let local = node.with_store(|store| store.entry(key));
    let cluster = peers.len() + 1;
    let needed = match level {
        Consistency::One | Consistency::Live => return Ok(local),
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
            node.merge_remote(node.id(), vec![newest.clone()]).await;
            node.count_repaired("read_repair", 1);
        }
        for (peer_id, entry) in &answers {
            if entry.as_ref().map(|entry| &entry.version) < Some(&newest.version) {
                let queued = peers
                    .get(peer_id)
                    .map(|peer| peer.outbox().enqueue(&key.into(), None));
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
    Ok(newest)
}

/// Reads the register of `key` (tombstones included) as `level` asks, and then makes
/// sure it is as new as `token` covers (see [`crate::session`]). An origin is settled
/// by this node itself (its own writes), by a register at least its bound, or by this
/// node's watermark for it (a clean anti-entropy round proved that every write it
/// stamped up to there is held here). When that does not settle every origin, the key
/// is fetched from every peer not known down and from the origins in question, and the
/// read waits for answers that settle it, retrying, for at most `session_wait`. An
/// origin that answered holds every write of the key it stamped, so the newest register
/// among the answers covers it. What it could not settle in time is
/// [`ReplicationError::SessionBehind`]: never an older register. The newest register
/// found is merged here (read repair). A key whose tombstone was collected here counts
/// as a register at the tombstone's version.
pub(super) async fn read_session(
    node: &NodeState,
    peers: &Peers,
    key: &str,
    level: Consistency,
    token: &SessionToken,
) -> Result<Option<Entry>, ReplicationError> {
    let me = node.id();
    // Watermarks first: both they and the store only grow, so what a watermark read now
    // promises is already in the registers read after it.
    let mut marks = node.watermarks();
    let mut best = read_entry(node, peers, key, level).await?;
    let mut collected = node.with_store(|store| store.collected_version(key));
    // The version to compare with the token: the register's, or a collected tombstone's.
    let register = |best: &Option<Entry>, collected: &Option<Version>| {
        best.as_ref()
            .map(|entry| entry.version.clone())
            .max(collected.clone())
    };
    let settled_here =
        |marks: &Watermarks, id: &NodeId, bound: Timestamp| id == me || marks.covers(id, bound);
    // Nothing older than a tombstone collected here is an answer.
    let newer_than_collected = |best: Option<Entry>, collected: &Option<Version>| {
        best.filter(|entry| Some(&entry.version) >= collected.as_ref())
    };
    if token.covered_by(register(&best, &collected).as_ref(), |id, bound| {
        settled_here(&marks, id, bound)
    }) {
        return Ok(newer_than_collected(best, &collected));
    }
    node.metrics().session_fetches.inc();
    let wait = node.options().session_wait;
    let deadline = tokio::time::Instant::now() + wait;
    let mut answered: Vec<NodeId> = Vec::new();
    let request = Message::Fetch {
        keys: vec![key.to_owned()],
    };
    let settled = |marks: &Watermarks,
                   best: &Option<Entry>,
                   collected: &Option<Version>,
                   answered: &[NodeId]| {
        token.covered_by(register(best, collected).as_ref(), |id, bound| {
            settled_here(marks, id, bound) || answered.contains(id)
        })
    };
    loop {
        let mut targets = reachable_peers(node, peers);
        let version = register(&best, &collected);
        for origin in token.uncovered(version.as_ref(), |id, bound| {
            settled_here(&marks, id, bound)
        }) {
            if !targets.contains(origin) && peers.get(origin).is_some() {
                targets.push(origin.clone());
            }
        }
        targets.retain(|peer| !answered.contains(peer));
        let mut asks = peers.ask(node, &targets, &request);
        let collect = async {
            while let Some((peer, reply)) = asks.next().await {
                if let Some(Message::Entries { mut entries, .. }) = reply {
                    let entry = entries.pop().filter(|entry| entry.key == key);
                    if entry.as_ref().map(|entry| &entry.version)
                        > best.as_ref().map(|entry| &entry.version)
                    {
                        best = entry;
                    }
                    answered.push(peer);
                    if settled(&marks, &best, &collected, &answered) {
                        break;
                    }
                }
            }
        };
        let _ = tokio::time::timeout_at(deadline, collect).await;
        // A push or a round may have brought the key (or a watermark) meanwhile.
        marks = node.watermarks();
        let (local, now_collected) =
            node.with_store(|store| (store.entry(key), store.collected_version(key)));
        collected = collected.max(now_collected);
        if local.as_ref().map(|entry| &entry.version) > best.as_ref().map(|entry| &entry.version) {
            best = local.clone();
        }
        if settled(&marks, &best, &collected, &answered) {
            best = newer_than_collected(best, &collected);
            if let Some(newest) = &best {
                if local.as_ref().map(|entry| &entry.version) < Some(&newest.version) {
                    node.merge_remote(me, vec![newest.clone()]).await;
                    node.count_repaired("session_read", 1);
                }
            }
            return Ok(best);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            let missing = token
                .uncovered(register(&best, &collected).as_ref(), |id, bound| {
                    settled_here(&marks, id, bound) || answered.contains(id)
                })
                .cloned()
                .collect();
            node.metrics().session_behind.inc();
            return Err(ReplicationError::SessionBehind {
                node: me.clone(),
                missing,
                wait_ms: wait.as_millis() as u64,
            });
        }
        // The peers that did not answer are unreachable for now: try again shortly.
        tokio::time::sleep_until(deadline.min(now + SESSION_RETRY)).await;
    }
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
