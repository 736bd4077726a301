//! The driver of one peer: keeps a link open and decides what to send next.
//!
//! Owns: the reconnect loop with backoff (and quick redials while a partition drops
//! packets), the order of work on a link (queued pushes
//! first, then requests other tasks hand in as `Job`s, then the current
//! anti-entropy round, then a ping when idle), and feeding the failure detector with
//! what the link sees.
//! Knows nothing of: frames and sockets beyond [`Link`]; what a round compares (that is
//! [`SyncSession`]); the replica handle and the write and read paths. It gets what it
//! needs in a [`DriverPort`]: the node's shared state and its own peer's.
//!
//! A link carries one request at a time. While a push is in flight, new writes queue
//! up and leave together in the next batch: under load, batching happens by itself,
//! and at low load a write leaves at once. Jobs batch the same way: the `Fetch`
//! requests of the `quorum` reads queued while the link was busy leave as one.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::anti_entropy::SyncSession;
use super::peers::{Job, Peer};
use super::state::NodeState;
use crate::clock::NodeId;
use crate::metrics::PeerLabels;
use crate::peer::{connect, Identity, Link, LinkError, TransportOptions};
use crate::store::Entry;
use crate::transport::Transport;
use crate::wire::{Lineage, Message};

/// Timing of one peer's driver.
#[derive(Clone, Debug)]
pub struct DriverOptions {
    /// Between anti-entropy rounds.
    pub anti_entropy_interval: Duration,
    /// A link idle this long sends a ping.
    pub heartbeat_interval: Duration,
    /// Deadline for each reply.
    pub request_timeout: Duration,
    /// Longest pause between reconnection attempts.
    pub max_backoff: Duration,
}

/// Pause before the next round when the last one repaired something.
const REPAIR_FOLLOW_UP: Duration = Duration::from_millis(50);

/// While dials get no answer, a fresh one starts this often, each with the whole
/// connect timeout (see [`open_link`]).
const REDIAL: Duration = Duration::from_millis(100);

/// For this long after a link is lost, dials that get no answer follow each other
/// every [`REDIAL`]; later, one dial per connect timeout, with the backoff between.
const FAST_REDIAL_FOR: Duration = Duration::from_secs(30);

/// Where to reach one peer.
pub struct PeerTarget {
    /// The peer's node-to-node address.
    pub address: SocketAddr,
    /// Our own IP, which every outbound connection binds.
    pub local_ip: IpAddr,
}

/// What the driver of one peer works with: the node's shared state, the peer's own
/// (outbox, wake-up), and the peer's job queue, which only one driver can hold. Made by
/// `Replica::driver_port`.
pub struct DriverPort {
    node: Arc<NodeState>,
    peer: Arc<Peer>,
    jobs: mpsc::Receiver<Job>,
}

impl DriverPort {
    /// The port of `peer`; `None` if its job queue was taken already (a driver for it
    /// exists).
    pub(super) fn new(node: Arc<NodeState>, peer: Arc<Peer>) -> Option<Self> {
        let jobs = peer.take_jobs()?;
        Some(Self { node, peer, jobs })
    }

    /// The peer this port drives.
    pub fn peer(&self) -> &NodeId {
        self.peer.id()
    }
}

/// Runs the driver of one peer until `shutdown`.
pub async fn run(
    port: DriverPort,
    target: PeerTarget,
    network: Arc<dyn Transport>,
    identity: Arc<Identity>,
    transport: TransportOptions,
    options: DriverOptions,
    shutdown: CancellationToken,
) {
    let DriverPort {
        node,
        peer,
        mut jobs,
    } = port;
    let peer_id = peer.id();
    let mut jitter = Jitter::new(&identity.node, peer_id, node.wall_ms());
    let mut backoff = Duration::from_millis(50);
    let mut was_up = false;
    // When the link last went down (or the driver started): a fresh partition is
    // redialed quickly, a long-dead peer at the backoff's pace.
    let mut down_since = Instant::now();
    while !shutdown.is_cancelled() {
        let redial = if down_since.elapsed() < FAST_REDIAL_FOR {
            REDIAL
        } else {
            transport.connect_timeout
        };
        let opened = async {
            let link = open_link(
                &*network,
                &target,
                &identity,
                peer_id,
                &node.lineage(),
                &transport,
                redial,
            )
            .await?;
            // Our side of the admission: the peer's data may be retired (or ours).
            node.admit(peer_id, link.peer_lineage())
                .map_err(LinkError::Refused)?;
            Ok(link)
        };
        let result = tokio::select! {
            // In order: a stopping node starts nothing new.
            biased;
            _ = shutdown.cancelled() => return,
            opened = opened => opened,
        };
        let mut unanswered = false;
        match result {
            Ok(link) => {
                info!(peer = %peer_id, "peer link up");
                // The handshake's confirming Ping is the first clock sample.
                let sample = link.clock_sample();
                node.clock_sample(
                    peer_id,
                    sample.sent_wall_ms,
                    sample.sent_ms,
                    sample.peer_wall_ms,
                    Some(sample.peer_fenced),
                );
                backoff = Duration::from_millis(50);
                node.detector().link_up(peer_id, node.now_ms());
                was_up = true;
                let error = tokio::select! {
                    // In order: a stopping node starts nothing new.
                    biased;
                    _ = shutdown.cancelled() => return,
                    error = drive(&node, &peer, link, &mut jobs, &options) => error,
                };
                down_since = Instant::now();
                warn!(peer = %peer_id, %error, "peer link down");
                node.metrics()
                    .link_down
                    .get_or_create(&PeerLabels {
                        peer: peer_id.to_string(),
                    })
                    .inc();
            }
            Err(LinkError::Refused(reason)) => {
                if node.may_log(&format!("refused:{peer_id}")) {
                    warn!(peer = %peer_id, %reason, "peer refused our handshake");
                }
                backoff = options.max_backoff;
            }
            Err(LinkError::Tls(reason)) => {
                if node.may_log(&format!("tls:{peer_id}")) {
                    warn!(peer = %peer_id, %reason, "refused the peer's TLS certificate");
                }
                backoff = options.max_backoff;
            }
            Err(error) => {
                unanswered = matches!(error, LinkError::Timeout(_));
                if was_up {
                    info!(peer = %peer_id, %error, "peer unreachable");
                    was_up = false;
                } else {
                    debug!(peer = %peer_id, %error, "peer still unreachable");
                }
            }
        }
        node.detector().link_down(peer_id, node.now_ms());
        peer.outbox().fail_waiters();
        // Dials that got no answer at all (packets dropped: a partition) were paced by
        // `open_link` already; the next ones follow at the same pace.
        let pause = if unanswered && redial == REDIAL {
            Duration::from_millis(jitter.next_ms(20))
        } else {
            backoff + Duration::from_millis(jitter.next_ms(50))
        };
        let pause = tokio::time::sleep(pause);
        tokio::pin!(pause);
        let mut woken = false;
        loop {
            tokio::select! {
                // In order: shutdown; a wake-up (the peer is running, so the backoff
                // resets); the end of the pause (before jobs, so that a stream of jobs
                // cannot hold the reconnection back); jobs.
                biased;
                _ = shutdown.cancelled() => return,
                // The peer dialed us, or a write is waiting for it: it is running, so
                // try again now rather than at the end of the backoff.
                _ = peer.woken() => {
                    woken = true;
                    break;
                }
                _ = &mut pause => break,
                // Without a link, jobs fail at once rather than waiting for a timeout.
                Some(job) = jobs.recv() => {
                    let _ = job.reply.send(Err(LinkError::Closed));
                }
            }
        }
        backoff = if woken {
            Duration::from_millis(50)
        } else {
            (backoff * 2).min(options.max_backoff)
        };
    }
}

/// Dials `target` and performs the handshake. While no attempt has an answer, a fresh
/// one starts every `redial` (at most one connect timeout's worth in flight), each
/// with the whole connect timeout, and the first to link wins.
///
/// Why: a SYN dropped by a partition is retransmitted by the kernel only after 1 s,
/// then 3 s, so a single dial that started during the partition stays blind to its
/// heal for up to its whole timeout. A fresh SYN every 100 ms gets through within
/// 100 ms of the heal, without shortening the timeout that slow networks need. Any
/// definite answer (refused, reset, a refused handshake) ends the attempts: the
/// peer's host answers, so more SYNs would not help, and the caller backs off.
#[allow(clippy::too_many_arguments)]
async fn open_link(
    network: &dyn Transport,
    target: &PeerTarget,
    identity: &Identity,
    peer: &NodeId,
    lineage: &Lineage,
    transport: &TransportOptions,
    redial: Duration,
) -> Result<Link, LinkError> {
    let attempt = || async {
        let stream = connect(network, target.local_ip, target.address, peer, transport).await?;
        Link::open(stream, identity, peer, lineage.clone(), transport).await
    };
    let limit = (transport.connect_timeout.as_millis() / redial.as_millis().max(1)).max(1);
    let mut attempts = FuturesUnordered::new();
    attempts.push(attempt());
    let mut started = 1;
    let mut next = Instant::now() + redial;
    loop {
        tokio::select! {
            // In order: an attempt's outcome before starting another one.
            biased;
            Some(result) = attempts.next() => match result {
                Ok(link) => return Ok(link),
                Err(LinkError::Timeout(_)) if !attempts.is_empty() => {}
                Err(error) => return Err(error),
            },
            _ = tokio::time::sleep_until(next), if started < limit => {
                attempts.push(attempt());
                started += 1;
                next += redial;
            }
            else => return Err(LinkError::Timeout(transport.connect_timeout)),
        }
    }
}

/// A few milliseconds of jitter added to each reconnect pause, so that nodes restarted
/// together do not reconnect in lockstep. A xorshift generator seeded from the two node
/// ids and the clock: deterministic given the node and its clock, so a simulation
/// replays the same pauses.
struct Jitter(u64);

impl Jitter {
    fn new(me: &NodeId, peer: &NodeId, wall_ms: u64) -> Self {
        // FNV-1a over both ids: stable across Rust versions, unlike `DefaultHasher`.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in me.as_str().bytes().chain([0]).chain(peer.as_str().bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        // Xorshift never leaves the all-zero state, so it must not start there.
        Self((hash ^ wall_ms).max(1))
    }

    /// The next pause in `0..below` milliseconds.
    fn next_ms(&mut self, below: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x % below
    }
}

/// Works one link until it fails; returns why.
///
/// The order of work: pushes first (fresh writes that clients may wait on), then
/// queued jobs (reads, summaries), then the anti-entropy round, then a ping when idle.
/// Fairness: after each push batch, the others get a turn before the next push (one
/// batch of jobs, and one step of a round in progress), so sustained writes slow
/// `quorum` reads, `?cluster=true` and anti-entropy down but never starve them.
async fn drive(
    node: &NodeState,
    peer: &Peer,
    mut link: Link,
    jobs: &mut mpsc::Receiver<Job>,
    options: &DriverOptions,
) -> LinkError {
    let peer_id = peer.id();
    let outbox = peer.outbox();
    let budget = node.options().batch_bytes;
    let mut round = Round {
        session: None,
        // The first round starts at once: a restarted node catches up without waiting.
        next: Instant::now(),
        enabled: !options.anti_entropy_interval.is_zero(),
    };
    let mut last_request = Instant::now();
    // A push went last: the other work gets its turn first.
    let mut owed = false;
    loop {
        // 0. A peer retired since the link came up (or this node retired): drop it.
        if let Some(reason) = node.refused(peer_id) {
            return LinkError::Refused(reason);
        }
        if owed {
            owed = false;
            let mut worked = false;
            if let Ok(job) = jobs.try_recv() {
                if let Err(error) = run_jobs(node, peer_id, &mut link, job, jobs, options).await {
                    return error;
                }
                worked = true;
            }
            if round.session.is_some() {
                match round.step(node, peer_id, &mut link, options, budget).await {
                    Ok(_) => worked = true,
                    Err(error) => return error,
                }
            }
            if worked {
                last_request = Instant::now();
            }
        }

        // 1. Pushes: they carry fresh writes that clients may be waiting on.
        // One lock of the store for the whole batch (the outbox's lock nests inside it).
        let batch = node.with_store(|store| outbox.take(budget, |key| store.entry(key)));
        if let Some(mut batch) = batch {
            // The entries move into the frame: the batch keeps only its waiters.
            let entries = std::mem::take(&mut batch.entries);
            node.metrics().push_batches.inc();
            node.metrics().pushed_entries.inc_by(entries.len() as u64);
            let request = Message::Push { entries };
            match exchange(node, peer_id, &mut link, &request, options).await {
                Ok(Message::PushAck { refused, .. }) => outbox.acknowledge(batch, &refused),
                Ok(other) => {
                    outbox.give_back(batch);
                    return LinkError::Unexpected {
                        sent: "push",
                        got: other.kind(),
                    };
                }
                Err(error) => {
                    outbox.give_back(batch);
                    return error;
                }
            }
            last_request = Instant::now();
            owed = true;
            continue;
        }

        // 2. Then requests handed in by other tasks.
        if let Ok(job) = jobs.try_recv() {
            if let Err(error) = run_jobs(node, peer_id, &mut link, job, jobs, options).await {
                return error;
            }
            last_request = Instant::now();
            continue;
        }

        // 3. Then the anti-entropy round in progress, one step at a time.
        if round.session.is_some() {
            match round.step(node, peer_id, &mut link, options, budget).await {
                Ok(true) => last_request = Instant::now(),
                Ok(false) => {}
                Err(error) => return error,
            }
            continue;
        }
        if round.enabled && Instant::now() >= round.next {
            round.session = Some(SyncSession::new());
            continue;
        }

        // 4. Idle: wait for a write, a job, the next round, or the heartbeat.
        let heartbeat_at = last_request + options.heartbeat_interval;
        tokio::select! {
            // In order: a dead link first (nothing else can succeed on it), then the
            // order of the loop above: writes, jobs, the round timer, the heartbeat
            // (last: any other request proves the peer alive as well).
            biased;
            error = link.closed() => return error,
            _ = outbox.wait_for_work() => {}
            Some(job) = jobs.recv() => {
                if let Err(error) = run_jobs(node, peer_id, &mut link, job, jobs, options).await {
                    return error;
                }
                last_request = Instant::now();
            }
            _ = tokio::time::sleep_until(round.next), if round.enabled => {}
            _ = tokio::time::sleep_until(heartbeat_at) => {
                match exchange(node, peer_id, &mut link, &Message::Ping, options).await {
                    Ok(Message::Pong { .. }) => last_request = Instant::now(),
                    Ok(other) => return LinkError::Unexpected { sent: "ping", got: other.kind() },
                    Err(error) => return error,
                }
            }
        }
    }
}

/// The anti-entropy rounds of one link.
struct Round {
    /// The round in progress.
    session: Option<SyncSession>,
    /// When the next round starts.
    next: Instant,
    /// False when rounds are switched off (`anti_entropy_interval` 0).
    enabled: bool,
}

impl Round {
    /// One step of the round in progress: a request and its reply, or the round's end.
    /// True if a request went out.
    async fn step(
        &mut self,
        node: &NodeState,
        peer_id: &NodeId,
        link: &mut Link,
        options: &DriverOptions,
        budget: usize,
    ) -> Result<bool, LinkError> {
        let Some(round) = self.session.as_mut() else {
            return Ok(false);
        };
        let request = node.with_store(|store| round.next_request(store, budget));
        let Some(request) = request else {
            let outcome = round.outcome();
            node.count_round(if outcome.in_sync {
                "in_sync"
            } else {
                "repaired"
            });
            node.count_repaired("pushed", outcome.pushed);
            node.count_repaired("fetched", outcome.fetched);
            if outcome.pushed + outcome.fetched > 0 {
                debug!(peer = %peer_id, pushed = outcome.pushed, fetched = outcome.fetched, "anti-entropy repaired");
            }
            node.detector().synced(peer_id, node.now_ms());
            if let Some(covered) = outcome.covered {
                node.round_clean(peer_id, covered);
            }
            if let Some(hlc) = outcome.pulled {
                node.raise_watermark(peer_id, hlc);
            }
            self.session = None;
            // A round that found differences is soon followed by another, until the
            // replicas agree; an idle one waits for the timer.
            self.next = Instant::now()
                + if outcome.in_sync {
                    options.anti_entropy_interval
                } else {
                    options.anti_entropy_interval.min(REPAIR_FOLLOW_UP)
                };
            return Ok(false);
        };
        let reply = match exchange(node, peer_id, link, &request, options).await {
            Ok(reply) => reply,
            Err(error) => {
                node.count_round("failed");
                return Err(error);
            }
        };
        let fetched = node.with_store(|store| round.on_reply(reply, store));
        match fetched {
            Ok(entries) if entries.is_empty() => {}
            Ok(entries) => {
                if !node.merge_remote(peer_id, entries).await {
                    round.merge_failed();
                }
            }
            Err(error) => {
                node.count_round("failed");
                if node.may_log(&format!("round:{peer_id}")) {
                    warn!(peer = %peer_id, %error, "anti-entropy round abandoned");
                }
                self.session = None;
                // Not at once: a peer that keeps answering wrongly would otherwise get
                // rounds back to back.
                self.next = Instant::now() + options.anti_entropy_interval;
            }
        }
        Ok(true)
    }
}

/// Most jobs taken off the queue together: their `Fetch` requests (single-key
/// `quorum` reads) leave as one.
const MAX_MERGED_JOBS: usize = 64;

/// Runs `first` and the jobs queued behind it (up to [`MAX_MERGED_JOBS`]): every
/// `Fetch` among them as one request for all their keys, the others one by one.
async fn run_jobs(
    node: &NodeState,
    peer: &NodeId,
    link: &mut Link,
    first: Job,
    jobs: &mut mpsc::Receiver<Job>,
    options: &DriverOptions,
) -> Result<(), LinkError> {
    let mut fetches = Vec::new();
    let mut others = Vec::new();
    let mut next = Some(first);
    while let Some(job) = next {
        if matches!(job.request, Message::Fetch { .. }) {
            fetches.push(job);
        } else {
            others.push(job);
        }
        next = if fetches.len() + others.len() < MAX_MERGED_JOBS {
            jobs.try_recv().ok()
        } else {
            None
        };
    }
    let mut outcome = match fetches.len() {
        0 => Ok(()),
        1 => run_job(node, peer, link, fetches.pop().expect("one fetch"), options).await,
        _ => run_fetches(node, peer, link, fetches, options).await,
    };
    for job in others {
        if outcome.is_err() {
            let _ = job.reply.send(Err(LinkError::Closed));
        } else {
            outcome = run_job(node, peer, link, job, options).await;
        }
    }
    outcome
}

/// Several `Fetch` jobs as one request (asked again for the rest if the reply covers
/// only part of the keys); each job gets the `Entries` of its own keys.
async fn run_fetches(
    node: &NodeState,
    peer: &NodeId,
    link: &mut Link,
    fetches: Vec<Job>,
    options: &DriverOptions,
) -> Result<(), LinkError> {
    let mut keys = Vec::new();
    let mut spans = Vec::with_capacity(fetches.len());
    for job in &fetches {
        if let Message::Fetch { keys: asked } = &job.request {
            spans.push(keys.len()..keys.len() + asked.len());
            keys.extend(asked.iter().cloned());
        }
    }
    let mut found: HashMap<String, Entry> = HashMap::new();
    let mut served = 0;
    while served < keys.len() {
        let request = Message::Fetch {
            keys: keys[served..].to_vec(),
        };
        let failed = match exchange(node, peer, link, &request, options).await {
            Ok(Message::Entries {
                entries,
                served: answered,
            }) => {
                found.extend(entries.into_iter().map(|entry| (entry.key.clone(), entry)));
                if answered == 0 {
                    // No progress: the jobs get what was served (a prefix, as a reply
                    // to each of them would have been).
                    break;
                }
                served = (served + answered as usize).min(keys.len());
                continue;
            }
            Ok(other) => LinkError::Unexpected {
                sent: "fetch",
                got: other.kind(),
            },
            Err(error) => error,
        };
        for job in fetches {
            let _ = job.reply.send(Err(LinkError::Closed));
        }
        return Err(failed);
    }
    for (job, span) in fetches.into_iter().zip(spans) {
        let answered = served.clamp(span.start, span.end) - span.start;
        let entries = keys[span.start..span.start + answered]
            .iter()
            .filter_map(|key| found.get(key).cloned())
            .collect();
        let _ = job.reply.send(Ok(Message::Entries {
            entries,
            served: answered as u32,
        }));
    }
    Ok(())
}

/// Sends a job's request and hands the reply back. A failed link fails the job too.
async fn run_job(
    node: &NodeState,
    peer: &NodeId,
    link: &mut Link,
    job: Job,
    options: &DriverOptions,
) -> Result<(), LinkError> {
    match exchange(node, peer, link, &job.request, options).await {
        Ok(reply) => {
            let _ = job.reply.send(Ok(reply));
            Ok(())
        }
        Err(error) => {
            let _ = job.reply.send(Err(LinkError::Closed));
            Err(error)
        }
    }
}

/// One request → reply, with the failure detector told about both ends and the clock
/// sample of the reply recorded.
async fn exchange(
    node: &NodeState,
    peer: &NodeId,
    link: &mut Link,
    request: &Message,
    options: &DriverOptions,
) -> Result<Message, LinkError> {
    let (sent_wall_ms, sent_ms) = (node.wall_ms(), node.now_ms());
    node.detector().request_sent(peer, sent_ms);
    let reply = link.request(request, options.request_timeout).await?;
    node.detector().reply_received(peer, node.now_ms());
    // Replies that carry the peer's clock are offset samples (see `skew`).
    if let Message::Pong { wall_ms, fenced }
    | Message::PushAck {
        wall_ms, fenced, ..
    } = &reply
    {
        node.clock_sample(peer, sent_wall_ms, sent_ms, *wall_ms, Some(*fenced));
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_deterministic_per_node_pair_and_clock_and_stays_in_range() {
        let (n1, n2) = (NodeId::new("n1").unwrap(), NodeId::new("n2").unwrap());
        let draw = |me: &NodeId, peer: &NodeId, wall_ms| {
            let mut jitter = Jitter::new(me, peer, wall_ms);
            (0..32).map(|_| jitter.next_ms(50)).collect::<Vec<_>>()
        };
        let first = draw(&n1, &n2, 1_000);
        assert_eq!(first, draw(&n1, &n2, 1_000), "same seed, same pauses");
        assert_ne!(first, draw(&n2, &n1, 1_000), "another pair, other pauses");
        assert!(first.iter().all(|&ms| ms < 50));
        assert!(first.iter().any(|&ms| ms != first[0]), "the pauses vary");
    }
}
