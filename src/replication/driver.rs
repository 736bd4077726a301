//! The driver of one peer: keeps a link open and decides what to send next.
//!
//! Owns: the reconnect loop with backoff, the order of work on a link (queued pushes
//! first, then requests other tasks hand in as `Job`s, then the current
//! anti-entropy round, then a ping when idle), and feeding the failure detector with
//! what the link sees.
//! Knows nothing of: frames and sockets beyond [`Link`]; what a round compares (that is
//! [`SyncSession`]); the replica handle and the write and read paths. It gets what it
//! needs in a [`DriverPort`]: the node's shared state and its own peer's.
//!
//! A link carries one request at a time. While a push is in flight, new writes queue
//! up and leave together in the next batch: under load, batching happens by itself,
//! and at low load a write leaves at once.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::anti_entropy::SyncSession;
use super::peers::{Job, Peer};
use super::state::NodeState;
use crate::clock::NodeId;
use crate::metrics::PeerLabels;
use crate::peer::{dial, Identity, Link, LinkError, TransportOptions};
use crate::transport::Transport;
use crate::wire::Message;

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
    while !shutdown.is_cancelled() {
        let opened = async {
            let stream = dial(
                &*network,
                target.local_ip,
                target.address,
                transport.connect_timeout,
            )
            .await?;
            // The handshake is timed: its `Welcome` is the first clock sample.
            let sent = (node.wall_ms(), node.now_ms());
            let link = Link::open(stream, &identity, peer_id, &transport).await?;
            Ok::<_, LinkError>((link, sent))
        };
        let result = tokio::select! {
            // In order: a stopping node starts nothing new.
            biased;
            _ = shutdown.cancelled() => return,
            opened = opened => opened,
        };
        match result {
            Ok((link, (sent_wall_ms, sent_ms))) => {
                info!(peer = %peer_id, "peer link up");
                node.clock_sample(peer_id, sent_wall_ms, sent_ms, link.welcome_wall_ms(), None);
                backoff = Duration::from_millis(50);
                node.detector().link_up(peer_id, node.now_ms());
                was_up = true;
                let error = tokio::select! {
                    // In order: a stopping node starts nothing new.
                    biased;
                    _ = shutdown.cancelled() => return,
                    error = drive(&node, &peer, link, &mut jobs, &options) => error,
                };
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
            Err(error) => {
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
        let pause = tokio::time::sleep(backoff + Duration::from_millis(jitter.next_ms(50)));
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
    let mut session: Option<SyncSession> = None;
    let anti_entropy = !options.anti_entropy_interval.is_zero();
    // The first round starts at once: a restarted node catches up without waiting.
    let mut next_round = Instant::now();
    let mut last_request = Instant::now();
    loop {
        // 1. Pushes come first: they carry fresh writes that clients may be waiting on.
        let batch = outbox.take(budget, |key| node.with_store(|store| store.entry(key)));
        if let Some(batch) = batch {
            let request = Message::Push {
                entries: batch.entries.clone(),
            };
            node.metrics().push_batches.inc();
            node.metrics()
                .pushed_entries
                .inc_by(batch.entries.len() as u64);
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
            continue;
        }

        // 2. Then requests handed in by other tasks.
        if let Ok(job) = jobs.try_recv() {
            if let Err(error) = run_job(node, peer_id, &mut link, job, options).await {
                return error;
            }
            last_request = Instant::now();
            continue;
        }

        // 3. Then the anti-entropy round in progress, one step at a time.
        if let Some(round) = session.as_mut() {
            let request = node.with_store(|store| round.next_request(store, budget));
            match request {
                Some(request) => {
                    let reply = match exchange(node, peer_id, &mut link, &request, options).await {
                        Ok(reply) => reply,
                        Err(error) => {
                            node.count_round("failed");
                            return error;
                        }
                    };
                    let fetched = node.with_store(|store| round.on_reply(reply, store));
                    match fetched {
                        Ok(entries) if entries.is_empty() => {}
                        Ok(entries) => {
                            node.apply_remote(peer_id, entries);
                        }
                        Err(error) => {
                            node.count_round("failed");
                            if node.may_log(&format!("round:{peer_id}")) {
                                warn!(peer = %peer_id, %error, "anti-entropy round abandoned");
                            }
                            session = None;
                            // Not at once: a peer that keeps answering wrongly would
                            // otherwise get rounds back to back.
                            next_round = Instant::now() + options.anti_entropy_interval;
                        }
                    }
                    last_request = Instant::now();
                }
                None => {
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
                    session = None;
                    // A round that found differences is soon followed by another, until
                    // the replicas agree; an idle one waits for the timer.
                    next_round = Instant::now()
                        + if outcome.in_sync {
                            options.anti_entropy_interval
                        } else {
                            options.anti_entropy_interval.min(REPAIR_FOLLOW_UP)
                        };
                }
            }
            continue;
        }
        if anti_entropy && Instant::now() >= next_round {
            session = Some(SyncSession::new());
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
                if let Err(error) = run_job(node, peer_id, &mut link, job, options).await {
                    return error;
                }
                last_request = Instant::now();
            }
            _ = tokio::time::sleep_until(next_round), if anti_entropy => {}
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
