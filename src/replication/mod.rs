//! Replication: the write and read paths, consistency levels, push and anti-entropy.
//!
//! Owns: [`Replica`] (the node's state — clock, store, outboxes, failure detector —
//! behind one cheap-clone handle), [`Consistency`], the answers to peers' requests
//! ([`Replica`] is the transport's [`Responder`]) and the per-peer [`driver`] task.
//! Knows nothing of: HTTP, the cluster file.
//!
//! # A write
//! 1. Under the core lock: the HLC stamps a version, the store merges the entry (a
//!    local stamp is larger than anything stored, so it always applies) and yields the
//!    value held before. Stamp and apply are one critical section, so two writes on one
//!    node see each other in version order, and `previous` chains are exact.
//! 2. The key is queued in every peer's [`outbox::Outbox`]; for the levels that wait,
//!    with an ack waiter.
//! 3. Each peer's driver pushes batches and releases the waiters on ack.
//! 4. `live` waits for the peers the failure detector holds alive, up to
//!    `live_timeout`; `quorum` and `all` wait for enough acks up to `strong_timeout`
//!    and answer [`ReplicationError::Unavailable`] if they do not come.
//!
//! The core lock is a std mutex: it is held for microseconds and never across an
//! `.await`, which is exactly the case where tokio recommends it over its own.

pub mod anti_entropy;
pub mod driver;
pub mod outbox;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{info, warn};

use crate::clock::{Hlc, NodeId, Version, WallClock};
use crate::membership::{FailureDetector, PeerState, PeerView};
use crate::metrics::{Metrics, PeerLabels, ReasonLabels};
use crate::peer::{LogLimiter, Responder};
use crate::store::{Entry, Limits, Merged, Store, Summary};
use crate::wire::Message;
use outbox::{Enqueued, Outbox};

/// How many replicas must hold a write before it is acknowledged, or how many answer a
/// read (API.md §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// This node only.
    One,
    /// This node and every peer the failure detector holds alive, or a short deadline.
    Live,
    /// A majority of the cluster, else unavailable.
    Quorum,
    /// Every node, else unavailable.
    All,
}

impl Consistency {
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::One => "one",
            Consistency::Live => "live",
            Consistency::Quorum => "quorum",
            Consistency::All => "all",
        }
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown consistency level name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("consistency level {0:?} is unknown; use one, live, quorum or all")]
pub struct UnknownConsistency(pub String);

impl FromStr for Consistency {
    type Err = UnknownConsistency;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "one" => Ok(Consistency::One),
            "live" => Ok(Consistency::Live),
            "quorum" => Ok(Consistency::Quorum),
            "all" => Ok(Consistency::All),
            other => Err(UnknownConsistency(other.to_owned())),
        }
    }
}

/// Why a write or read could not be done at the requested level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicationError {
    /// Too few replicas answered in time.
    #[error(
        "consistency level {level} needs {needed} replicas but only {reached} answered in time{}",
        match applied_locally {
            Some(true) => "; the write was applied on this node and will replicate when peers return",
            Some(false) => "; the write was not applied",
            None => "",
        }
    )]
    Unavailable {
        /// The requested level.
        level: Consistency,
        /// Replicas needed, this node included.
        needed: usize,
        /// Replicas that answered, this node included.
        reached: usize,
        /// For writes, whether this node applied the write; `None` for reads.
        applied_locally: Option<bool>,
    },
    /// The node has just started and has not caught up with its peers yet.
    #[error("node {0} is starting: it serves requests once it has caught up with its peers")]
    Starting(NodeId),
}

/// What one node reported of its state, for cluster-wide convergence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSummary {
    /// The node.
    pub id: NodeId,
    /// Its counts and digest, or `None` if it did not answer.
    pub summary: Option<(u64, u64, u64)>,
}

/// A completed write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The version stamped on the write.
    pub version: Version,
    /// The value this node held just before (`None`: absent or deleted).
    pub previous: Option<Bytes>,
}

/// Settings of the replication layer.
#[derive(Clone, Debug)]
pub struct ReplicationOptions {
    /// Key and value limits.
    pub limits: Limits,
    /// Remote versions further ahead are refused for now.
    pub max_clock_skew_ms: u64,
    /// How long `live` writes wait for acks.
    pub live_timeout: Duration,
    /// How long `quorum`/`all` requests wait.
    pub strong_timeout: Duration,
    /// Bytes per push batch or anti-entropy reply.
    pub batch_bytes: usize,
    /// Distinct keys per outbox.
    pub outbox_max_keys: usize,
    /// Unanswered this long: suspect.
    pub suspect_after: Duration,
    /// Longest wait after start before serving clients, caught up or not.
    pub startup_sync_timeout: Duration,
}

struct Core {
    hlc: Hlc,
    store: Store,
}

struct Shared {
    id: NodeId,
    peers: Vec<NodeId>,
    core: Mutex<Core>,
    outboxes: HashMap<NodeId, Outbox>,
    detector: Mutex<FailureDetector>,
    clock: Arc<dyn WallClock>,
    started: Instant,
    options: ReplicationOptions,
    metrics: Arc<Metrics>,
    log_limiter: LogLimiter,
    jobs: HashMap<NodeId, mpsc::Sender<driver::Job>>,
    /// Set once the node has caught up after its start; never cleared.
    ready: AtomicBool,
    /// Wakes a peer's driver out of its reconnect backoff.
    wake: HashMap<NodeId, Notify>,
    job_receivers: Mutex<HashMap<NodeId, mpsc::Receiver<driver::Job>>>,
}

/// The node's replicated state. Clones share it.
#[derive(Clone)]
pub struct Replica {
    shared: Arc<Shared>,
}

impl Replica {
    /// A replica with an empty store.
    pub fn new(
        id: NodeId,
        peers: Vec<NodeId>,
        clock: Arc<dyn WallClock>,
        options: ReplicationOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        for peer in &peers {
            metrics.add_peer(peer.as_str(), &Message::KINDS);
        }
        let outboxes = peers
            .iter()
            .map(|peer| (peer.clone(), Outbox::new(options.outbox_max_keys)))
            .collect();
        let detector = FailureDetector::new(
            peers.iter().cloned(),
            options.suspect_after.as_millis() as u64,
        );
        let (jobs, job_receivers) = peers
            .iter()
            .map(|peer| {
                let (tx, rx) = mpsc::channel(driver::JOB_QUEUE);
                ((peer.clone(), tx), (peer.clone(), rx))
            })
            .unzip();
        let wake = peers
            .iter()
            .map(|peer| (peer.clone(), Notify::new()))
            .collect();
        Self {
            shared: Arc::new(Shared {
                wake,
                ready: AtomicBool::new(false),
                core: Mutex::new(Core {
                    hlc: Hlc::new(options.max_clock_skew_ms),
                    store: Store::new(),
                }),
                id,
                peers,
                outboxes,
                detector: Mutex::new(detector),
                clock,
                started: Instant::now(),
                options,
                metrics,
                log_limiter: LogLimiter::default(),
                jobs,
                job_receivers: Mutex::new(job_receivers),
            }),
        }
    }

    /// The job queue of `peer`'s driver; taken once, by that driver.
    fn take_jobs(&self, peer: &NodeId) -> Option<mpsc::Receiver<driver::Job>> {
        self.shared
            .job_receivers
            .lock()
            .expect("jobs lock poisoned")
            .remove(peer)
    }

    /// Sends `request` to every peer in `targets` through their drivers; the stream
    /// yields each peer's reply as it comes (failures and full queues as errors).
    fn ask(
        &self,
        targets: &[NodeId],
        request: &Message,
    ) -> FuturesUnordered<impl std::future::Future<Output = (NodeId, Option<Message>)>> {
        let asks = FuturesUnordered::new();
        for peer in targets {
            let (reply_tx, reply_rx) = oneshot::channel();
            let job = driver::Job {
                request: request.clone(),
                reply: reply_tx,
            };
            let queued = self
                .shared
                .jobs
                .get(peer)
                .is_some_and(|jobs| jobs.try_send(job).is_ok());
            if !queued {
                self.bound_hit("job_queue", peer);
            }
            let peer = peer.clone();
            asks.push(async move {
                let reply = if queued {
                    reply_rx.await.ok().and_then(Result::ok)
                } else {
                    None
                };
                (peer, reply)
            });
        }
        asks
    }

    /// Peers not known to be down.
    fn reachable_peers(&self) -> Vec<NodeId> {
        let now = self.mono_ms();
        let detector = self.detector();
        self.shared
            .peers
            .iter()
            .filter(|peer| detector.state(peer, now) != PeerState::Down)
            .cloned()
            .collect()
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        self.shared.core.lock().expect("core lock poisoned")
    }

    fn detector(&self) -> MutexGuard<'_, FailureDetector> {
        self.shared.detector.lock().expect("detector lock poisoned")
    }

    /// Milliseconds on the monotonic clock the failure detector uses.
    fn mono_ms(&self) -> u64 {
        self.shared.started.elapsed().as_millis() as u64
    }

    /// This node's id.
    pub fn id(&self) -> &NodeId {
        &self.shared.id
    }

    /// Key and value limits.
    pub fn limits(&self) -> Limits {
        self.shared.options.limits
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// Whether the node may serve clients: `Err(Starting)` until it has caught up.
    ///
    /// A node that starts (or restarts, empty) has an empty store and an HLC that knows
    /// nothing of the versions it issued before. Serving at once would answer stale
    /// reads, stamp writes lower than versions already in the cluster (so an
    /// acknowledged write could lose to an older one), and, within the clock-skew
    /// window, could even reissue a version of its previous life for another value. So
    /// it waits until every peer has completed an anti-entropy round with it (its HLC
    /// has then seen every version they hold), or, if some peer cannot be reached,
    /// until every peer was tried and `max_clock_skew_ms` has passed since the start
    /// (no version of its previous life can be ahead of its wall clock any more), and
    /// at most `startup_sync_timeout`.
    pub fn check_ready(&self) -> Result<(), ReplicationError> {
        if self.shared.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let elapsed_ms = self.mono_ms();
        let ready = self.shared.peers.is_empty()
            || elapsed_ms >= self.shared.options.startup_sync_timeout.as_millis() as u64
            || {
                let detector = self.detector();
                let settled = self.shared.peers.iter().all(|peer| detector.settled(peer));
                detector.synced_with_all()
                    || (settled && elapsed_ms >= self.shared.options.max_clock_skew_ms)
            };
        if !ready {
            return Err(ReplicationError::Starting(self.id().clone()));
        }
        if !self.shared.ready.swap(true, Ordering::AcqRel) {
            info!(
                after_ms = elapsed_ms,
                "caught up with peers; serving clients"
            );
        }
        Ok(())
    }

    /// Writes `value` (`None`: a tombstone) under `key`, which the caller has checked
    /// against [`Replica::limits`], and waits as `level` asks.
    pub async fn write(
        &self,
        key: &str,
        value: Option<Bytes>,
        level: Consistency,
    ) -> Result<WriteOutcome, ReplicationError> {
        let (version, previous) = {
            let mut core = self.core();
            let now = self.shared.clock.now_ms();
            let version = Version {
                timestamp: core.hlc.tick(now),
                node: self.shared.id.clone(),
            };
            let entry = Entry {
                key: key.to_owned(),
                version: version.clone(),
                value,
                replaces: core.store.get(key).map(|register| register.marker.clone()),
            };
            let previous = match core.store.merge(entry) {
                Merged::Applied { previous } => previous.and_then(|register| register.val.value),
                // Cannot happen: every stored version went through the HLC, so a fresh
                // stamp is larger. Were it to, the write is lost to a newer one, as
                // LWW says; panicking here would poison the lock and stop the node.
                Merged::Stale => {
                    debug_assert!(
                        false,
                        "a fresh HLC stamp is larger than every stored version"
                    );
                    core.store
                        .get(key)
                        .and_then(|register| register.val.value.clone())
                }
            };
            (version, previous)
        };
        let outcome = WriteOutcome { version, previous };

        let now = self.mono_ms();
        let states: Vec<(NodeId, PeerState, bool)> = {
            let detector = self.detector();
            self.shared
                .peers
                .iter()
                .map(|peer| {
                    (
                        peer.clone(),
                        detector.state(peer, now),
                        detector.recently_heard(peer, now),
                    )
                })
                .collect()
        };
        let mut acks = FuturesUnordered::new();
        for (peer, state, recently_heard) in states {
            // A peer that dialed us but that our own link has not reached yet (it just
            // restarted) is running: it counts as alive, and its driver is woken to link
            // now. If that fails the waiter is dropped at once, so the write never
            // waits long on it.
            let joining = state == PeerState::Down && recently_heard;
            let wants_ack = match level {
                Consistency::One => false,
                Consistency::Live => state == PeerState::Alive || joining,
                Consistency::Quorum | Consistency::All => state != PeerState::Down || joining,
            };
            if wants_ack && joining {
                self.shared.wake[&peer].notify_one();
            }
            let (waiter, ack) = if wants_ack {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            match self.shared.outboxes[&peer].enqueue(key, waiter) {
                Enqueued::Queued => {}
                Enqueued::Coalesced => {
                    self.shared.metrics.pushes_coalesced.inc();
                }
                Enqueued::Dropped => {
                    self.outbox_full(&peer);
                    continue;
                }
            }
            acks.extend(ack);
        }

        let cluster = self.shared.peers.len() + 1;
        let (needed, deadline) = match level {
            Consistency::One => return Ok(outcome),
            Consistency::Live => (1 + acks.len(), self.shared.options.live_timeout),
            Consistency::Quorum => (cluster / 2 + 1, self.shared.options.strong_timeout),
            Consistency::All => (cluster, self.shared.options.strong_timeout),
        };
        let mut reached = 1;
        if reached + acks.len() >= needed {
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
        }
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

    /// Reads `key` (`None`: absent or deleted). `one` and `live` answer from this node;
    /// `quorum` and `all` ask the peers, answer the newest version among enough
    /// replicas, and repair the stale ones (read repair).
    pub async fn read(
        &self,
        key: &str,
        level: Consistency,
    ) -> Result<Option<Entry>, ReplicationError> {
        let local = self.core().store.entry(key);
        let cluster = self.shared.peers.len() + 1;
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
        let targets = self.reachable_peers();
        if 1 + targets.len() < needed {
            return Err(unavailable(1));
        }
        let request = Message::Fetch {
            keys: vec![key.to_owned()],
        };
        let mut asks = self.ask(&targets, &request);
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
        let _ = tokio::time::timeout(self.shared.options.strong_timeout, collect).await;

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
                self.apply_remote(self.id(), vec![newest.clone()]);
                self.count_repaired("read_repair", 1);
            }
            for (peer, entry) in &answers {
                if entry.as_ref().map(|entry| &entry.version) < Some(&newest.version) {
                    if self.shared.outboxes[peer].enqueue(key, None) == Enqueued::Dropped {
                        self.outbox_full(peer);
                    }
                    self.count_repaired("read_repair", 1);
                }
            }
        }
        if 1 + answers.len() < needed {
            return Err(unavailable(1 + answers.len()));
        }
        Ok(newest.filter(|entry| entry.value.is_some()))
    }

    /// [`Replica::read`] for a client: the version and value of a live key. At `one` and
    /// `live` it copies two handles under the lock and nothing else (no key, no
    /// predecessor), which is the whole cost of the common read.
    pub async fn read_value(
        &self,
        key: &str,
        level: Consistency,
    ) -> Result<Option<(Version, Bytes)>, ReplicationError> {
        if matches!(level, Consistency::One | Consistency::Live) {
            let core = self.core();
            return Ok(core.store.get(key).and_then(|register| {
                let value = register.val.value.clone()?;
                Some((register.marker.clone(), value))
            }));
        }
        // Boxed: the cluster read's future is large; the common read should not carry it.
        let entry = Box::pin(self.read(key, level)).await?;
        Ok(entry.and_then(|entry| Some((entry.version, entry.value?))))
    }

    /// Every node's counts and digest, this one's included; nodes that do not answer
    /// within the strong timeout are reported without a summary.
    pub async fn cluster_summaries(&self) -> Vec<NodeSummary> {
        let own = self.summary();
        let mut nodes = vec![NodeSummary {
            id: self.id().clone(),
            summary: Some((own.keys as u64, own.tombstones as u64, own.digest)),
        }];
        let mut asks = self.ask(&self.shared.peers, &Message::Summarize);
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
        let _ = tokio::time::timeout(self.shared.options.strong_timeout, collect).await;
        for peer in &self.shared.peers {
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

    /// Live keys under `prefix` after `start_after`, at most `limit`; the flag says
    /// whether more matched.
    pub fn scan(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> (Vec<Entry>, bool) {
        self.core().store.scan(prefix, start_after, limit)
    }

    /// Counts and digest of the local state.
    pub fn summary(&self) -> Summary {
        self.core().store.summary()
    }

    /// The failure detector's view of every peer, with its outbox size.
    pub fn peer_views(&self) -> Vec<(PeerView, usize)> {
        let views = self.detector().views(self.mono_ms());
        views
            .into_iter()
            .map(|view| {
                let pending = self
                    .shared
                    .outboxes
                    .get(&view.id)
                    .map_or(0, Outbox::pending);
                (view, pending)
            })
            .collect()
    }

    /// Merges entries from `from`, refusing versions too far in the future. Returns the
    /// keys refused.
    pub fn apply_remote(&self, from: &NodeId, entries: Vec<Entry>) -> Vec<String> {
        let mut refused = Vec::new();
        let mut worst_skew = None;
        {
            let mut core = self.core();
            let now = self.shared.clock.now_ms();
            for entry in entries {
                if let Err(skew) = core.hlc.observe(entry.version.timestamp, now) {
                    worst_skew = Some(skew);
                    refused.push(entry.key);
                    continue;
                }
                core.store.merge(entry);
            }
        }
        if let Some(skew) = worst_skew {
            self.shared
                .metrics
                .skew_refusals
                .inc_by(refused.len() as u64);
            if self.shared.log_limiter.allow(&format!("skew:{from}")) {
                warn!(peer = %from, refused = refused.len(), "refused remote versions: {skew}; anti-entropy will offer them again");
            }
        }
        refused
    }

    /// A write could not be queued for `peer`: its outbox is full. Anti-entropy will
    /// carry it instead.
    fn outbox_full(&self, peer: &NodeId) {
        self.shared
            .metrics
            .pushes_dropped
            .get_or_create(&PeerLabels {
                peer: peer.to_string(),
            })
            .inc();
        if self.shared.log_limiter.allow(&format!("outbox:{peer}")) {
            warn!(%peer, limit = self.shared.options.outbox_max_keys, "outbox full: writes left to anti-entropy");
        }
    }

    /// A bound other than the outbox was hit for `peer`: counted and logged.
    fn bound_hit(&self, bound: &'static str, peer: &NodeId) {
        self.shared
            .metrics
            .bounds_hit
            .get_or_create(&ReasonLabels { reason: bound })
            .inc();
        if self.shared.log_limiter.allow(&format!("{bound}:{peer}")) {
            warn!(%peer, bound, "bound reached: request to the peer dropped");
        }
    }

    /// Records an anti-entropy outcome in the metrics.
    fn count_round(&self, reason: &'static str) {
        self.shared
            .metrics
            .anti_entropy_rounds
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    fn count_repaired(&self, reason: &'static str, count: usize) {
        if count > 0 {
            self.shared
                .metrics
                .keys_repaired
                .get_or_create(&ReasonLabels { reason })
                .inc_by(count as u64);
        }
    }
}

impl Responder for Replica {
    fn connected(&self, from: &NodeId) {
        self.detector().heard_from(from, self.mono_ms());
        if let Some(wake) = self.shared.wake.get(from) {
            wake.notify_one();
        }
    }

    fn respond(&self, from: &NodeId, request: Message) -> Option<Message> {
        self.detector().heard_from(from, self.mono_ms());
        let budget = self.shared.options.batch_bytes;
        let reply = match request {
            Message::Ping => Message::Pong,
            Message::Push { entries } => Message::PushAck {
                refused: self.apply_remote(from, entries),
            },
            Message::SyncRoot { root } => anti_entropy::answer_root(&self.core().store, root),
            Message::SyncBuckets { buckets } => {
                anti_entropy::answer_buckets(&self.core().store, &buckets, budget)
            }
            Message::Fetch { keys } => {
                anti_entropy::answer_fetch(&self.core().store, &keys, budget)
            }
            Message::Summarize => {
                let summary = self.summary();
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
