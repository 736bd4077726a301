//! Replication: the write and read paths, consistency levels, push and anti-entropy.
//!
//! Owns: [`Replica`], the cheap-clone handle through which the client API reaches the
//! node's replicated state, and the assembly of the parts below.
//! Knows nothing of: HTTP, the cluster file.
//!
//! # Parts, and which may use which
//! Imports point one way, from the top of this list down; nothing below `mod.rs` knows
//! [`Replica`] (`tests/layering.rs` checks it).
//!
//! | module | owns |
//! | --- | --- |
//! | `mod.rs` | [`Replica`]: builds the parts, hands out driver ports and the responder |
//! | `write`, `read` | the write path and its waits; the read path, read repair, summaries |
//! | `gate` | the startup gate: whether a node that just started may serve |
//! | `responder` | answers to peers' requests (the transport's `Responder`) |
//! | [`driver`] | one task per peer: its link, pushes, jobs, anti-entropy rounds |
//! | `peers` | one owned `Peer` per peer: outbox, job queue, wake-up |
//! | `state` | the node's shared state: HLC + store (the one merge point, which appends to the journal), detector, clock, metrics, the collection ledger |
//! | `durable` | the journal record codec, recovery into a store, the HLC lease and its keeper |
//! | [`changes`] | the change feed that watches read: per-watcher bounded buffers, fed by `state` |
//! | `level` | [`Consistency`], [`ReplicationError`] |
//! | [`outbox`], [`anti_entropy`], [`tombstones`] | pure mechanisms: the per-peer queue; the round planner; the tombstone collection rule |

pub mod anti_entropy;
pub mod changes;
pub mod driver;
pub mod durable;
mod gate;
mod level;
pub mod outbox;
mod peers;
mod read;
mod responder;
mod state;
pub mod tombstones;
mod write;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, NodeId, Timestamp, Version};
use crate::membership::PeerView;
use crate::metrics::Metrics;
use crate::peer::Responder;
use crate::persist::{JournalError, JournalStats, MemoryOnly};
use crate::session::SessionToken;
use crate::store::{Entry, Limits, Summary};
use crate::wire::Message;
use changes::{TooManyWatchers, Watch};
use driver::DriverPort;
use durable::Recovered;
use gate::StartupGate;
pub use level::{Consistency, ReplicationError, UnknownConsistency};
use peers::Peers;
pub use read::NodeSummary;
use responder::PeerResponder;
use state::NodeState;
pub use state::ReplicationOptions;
use tombstones::CollectionView;
pub use write::WriteOutcome;

/// Tombstones dropped per hold of the core lock.
pub const COLLECT_SLICE: usize = 1024;

/// Entries a resumed watch sends before its live changes, at most.
pub const MAX_WATCH_SNAPSHOT: usize = 10_000;

/// A watch as it starts: see [`Replica::watch`].
pub struct WatchStart {
    /// The live changes from now on.
    pub watch: Watch,
    /// The entries newer than `after` when the watch started, in key order.
    pub snapshot: Vec<Entry>,
    /// More than [`MAX_WATCH_SNAPSHOT`] entries were newer: the snapshot is cut short.
    pub snapshot_truncated: bool,
}

/// The node's replicated state. Clones share it.
#[derive(Clone)]
pub struct Replica {
    node: Arc<NodeState>,
    peers: Arc<Peers>,
    gate: Arc<StartupGate>,
}

impl Replica {
    /// A memory-only replica with an empty store; the node starts now (see
    /// [`Replica::check_ready`]).
    pub fn new(
        id: NodeId,
        peers: Vec<NodeId>,
        clock: Arc<dyn Clock>,
        options: ReplicationOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        let recovered = Recovered {
            store: crate::store::Store::new(),
            journal: Arc::new(MemoryOnly::new()),
            recovery: None,
            durable: false,
            skipped: 0,
        };
        Self::recovered(id, peers, clock, options, metrics, recovered)
    }

    /// A replica holding what [`durable::recover`] rebuilt, appending to its journal;
    /// the node starts now. A durable node runs [`Replica::keep_lease`] as a task.
    pub fn recovered(
        id: NodeId,
        peers: Vec<NodeId>,
        clock: Arc<dyn Clock>,
        options: ReplicationOptions,
        metrics: Arc<Metrics>,
        recovered: Recovered,
    ) -> Self {
        for peer in &peers {
            metrics.add_peer(peer.as_str(), &Message::KINDS);
        }
        let outbox_max_keys = options.outbox_max_keys;
        let node = Arc::new(NodeState::new(
            id, &peers, clock, options, metrics, recovered,
        ));
        node.install_liveness();
        Self {
            gate: Arc::new(StartupGate::new(&node)),
            node,
            peers: Arc::new(Peers::new(&peers, outbox_max_keys)),
        }
    }

    /// The task that keeps the HLC lease ahead of the clock (durable nodes; a
    /// memory-only node needs none and gets `None`). Runs until `shutdown`.
    pub fn keep_lease(
        &self,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        self.node.durable().then(|| {
            durable::keep_lease(
                self.node.journal().clone(),
                self.node.lease().clone(),
                self.node.clock().clone(),
                shutdown,
            )
        })
    }

    /// Whether this node keeps its data on disk.
    pub fn durable(&self) -> bool {
        self.node.durable()
    }

    /// Journal figures for metrics.
    pub fn journal_stats(&self) -> JournalStats {
        self.node.journal_stats()
    }

    /// Writes and syncs everything appended, and closes the journal. Blocking: call it
    /// once the tasks have stopped, from a blocking context.
    pub fn close_storage(&self) -> Result<(), JournalError> {
        self.node.journal().shutdown()
    }

    /// Whether the node is still catching up with its peers after its start: until
    /// every peer has completed an anti-entropy round with it or was found down.
    pub fn catching_up(&self) -> bool {
        self.gate.catching_up(&self.node, &self.peers)
    }

    /// What the driver of `peer` works with; `None` if `peer` is not a peer or its
    /// driver has its port already (there is one driver per peer).
    pub fn driver_port(&self, peer: &NodeId) -> Option<DriverPort> {
        DriverPort::new(self.node.clone(), self.peers.get(peer)?.clone())
    }

    /// The answers to peers' requests, for the transport's accept loop.
    pub fn responder(&self) -> Arc<dyn Responder> {
        Arc::new(PeerResponder::new(self.node.clone(), self.peers.clone()))
    }

    /// This node's id.
    pub fn id(&self) -> &NodeId {
        self.node.id()
    }

    /// Key and value limits.
    pub fn limits(&self) -> Limits {
        self.node.options().limits
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.node.metrics()
    }

    /// Whether the node may serve clients: `Err(Starting)` until it has caught up with
    /// its peers after its start (the rule is in `gate`).
    pub fn check_ready(&self) -> Result<(), ReplicationError> {
        self.gate.check(&self.node, &self.peers)
    }

    /// Writes `value` (`None`: a tombstone) under `key`, which the caller has checked
    /// against [`Replica::limits`], and waits as `level` asks.
    pub async fn write(
        &self,
        key: &str,
        value: Option<Bytes>,
        level: Consistency,
    ) -> Result<WriteOutcome, ReplicationError> {
        write::write(&self.node, &self.peers, key, value, level).await
    }

    /// Reads `key` (`None`: absent or deleted). `one` and `live` answer from this node;
    /// `quorum` and `all` ask the peers, answer the newest version among enough
    /// replicas, and repair the stale ones (read repair).
    pub async fn read(
        &self,
        key: &str,
        level: Consistency,
    ) -> Result<Option<Entry>, ReplicationError> {
        read::read(&self.node, &self.peers, key, level).await
    }

    /// [`Replica::read`] for a client: the version and value of the key's register
    /// (value `None`: a tombstone, whose version a session token records). At `one`
    /// and `live` it copies two handles under the lock and nothing else (no key, no
    /// predecessor), which is the whole cost of the common read.
    pub async fn read_value(
        &self,
        key: &str,
        level: Consistency,
    ) -> Result<Option<(Version, Option<Bytes>)>, ReplicationError> {
        if matches!(level, Consistency::One | Consistency::Live) {
            return Ok(self.node.with_store(|store| store.read(key)));
        }
        // Boxed: the cluster read's future is large; the common read should not carry it.
        let entry = Box::pin(read::read_entry(&self.node, &self.peers, key, level)).await?;
        Ok(entry.map(|entry| (entry.version, entry.value)))
    }

    /// [`Replica::read_value`] for a request with a session token: the register is at
    /// least as new as everything `token` covers, or the read fails with
    /// [`ReplicationError::SessionBehind`] after `session_wait` (API.md §3.3).
    pub async fn read_session(
        &self,
        key: &str,
        level: Consistency,
        token: &SessionToken,
    ) -> Result<Option<(Version, Option<Bytes>)>, ReplicationError> {
        let entry = read::read_session(&self.node, &self.peers, key, level, token).await?;
        Ok(entry.map(|entry| (entry.version, entry.value)))
    }

    /// [`Replica::write`] for a request with a session token: the write's version is
    /// larger than everything `token` covers (monotonic writes, writes-follow-reads).
    /// A token further ahead of this node's clock than `max_clock_skew_ms` is refused
    /// ([`ReplicationError::SessionAhead`]), as a peer's version would be.
    pub async fn write_session(
        &self,
        key: &str,
        value: Option<Bytes>,
        level: Consistency,
        token: &SessionToken,
    ) -> Result<WriteOutcome, ReplicationError> {
        if let Some(floor) = token.max_timestamp() {
            self.node
                .observe(floor)
                .map_err(|skew| ReplicationError::SessionAhead {
                    node: self.node.id().clone(),
                    ahead_ms: skew.ahead_ms,
                    max_skew_ms: skew.max_skew_ms,
                })?;
        }
        self.write(key, value, level).await
    }

    /// Whether `id` names this node or one of its peers.
    pub fn is_member(&self, id: &str) -> bool {
        self.node.id().as_str() == id || self.peers.ids().any(|peer| peer.as_str() == id)
    }

    /// Every node's counts and digest, this one's included; nodes that do not answer
    /// within the strong timeout are reported without a summary.
    pub async fn cluster_summaries(&self) -> Vec<NodeSummary> {
        read::cluster_summaries(&self.node, &self.peers).await
    }

    /// Live keys under `prefix` after `start_after`, at most `limit`; the flag says
    /// whether more matched.
    pub fn scan(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> (Vec<Entry>, bool) {
        self.node
            .with_store(|store| store.scan(prefix, start_after, limit))
    }

    /// The register this node holds for `key` now, tombstone included, without asking
    /// any peer (a simulator's view of one replica).
    pub fn local_entry(&self, key: &str) -> Option<Entry> {
        self.node.with_store(|store| store.entry(key))
    }

    /// The version of `key`'s tombstone if this node collected it lately and holds
    /// nothing newer (a simulator's view: the key is absent, and was deleted at that
    /// version).
    pub fn collected_version(&self, key: &str) -> Option<Version> {
        self.node.with_store(|store| store.collected_version(key))
    }

    /// The largest HLC timestamp this node has issued or observed (a simulator checks
    /// that it never goes back).
    pub fn hlc_last(&self) -> Timestamp {
        self.node.hlc_last()
    }

    /// This node's session watermark for `peer`: it holds every version `peer`
    /// stamped at or below it (see [`crate::session::Watermarks`]); `None` before the
    /// first clean anti-entropy round with the peer.
    pub fn session_watermark(&self, peer: &NodeId) -> Option<Timestamp> {
        self.node.watermarks().get(peer)
    }

    /// Counts and digest of the local state.
    pub fn summary(&self) -> Summary {
        self.node.with_store(|store| store.summary())
    }

    /// The failure detector's view of every peer, with its outbox size.
    pub fn peer_views(&self) -> Vec<(PeerView, usize)> {
        let views = self.node.detector().views(self.node.now_ms());
        views
            .into_iter()
            .map(|view| {
                let pending = self
                    .peers
                    .get(&view.id)
                    .map_or(0, |peer| peer.outbox().pending());
                (view, pending)
            })
            .collect()
    }

    /// Every peer as tombstone collection sees it.
    pub fn collection_views(&self) -> Vec<CollectionView> {
        self.node.collection_views()
    }

    /// Why this node's data no longer takes part in the cluster, if a peer retired it
    /// (see [`tombstones`]).
    pub fn retired(&self) -> Option<String> {
        self.node.self_refusal()
    }

    /// Collects tombstones every `interval` until `shutdown`: as many as the rule
    /// allows, [`COLLECT_SLICE`] per hold of the core lock, yielding in between, so
    /// collection never stalls requests.
    pub async fn collect_tombstones(&self, interval: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                // In order: a stopping node starts nothing new.
                biased;
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            while self.node.collect_tombstones(COLLECT_SLICE) == COLLECT_SLICE {
                if shutdown.is_cancelled() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        }
    }

    /// True while this node refuses client writes for clock skew (API.md §3.2).
    pub fn fenced(&self) -> bool {
        self.node.fenced()
    }

    /// `peer`'s measured clock offset (its clock minus ours) and the bound of the
    /// measurement's error, in ms; `None` until measured.
    pub fn clock_offset(&self, peer: &NodeId) -> Option<(f64, f64)> {
        self.node
            .clock_offset(peer)
            .map(|estimate| (estimate.offset_ms, estimate.error_ms))
    }

    /// The most recent `limit` conflicts this node's merges found, newest first.
    pub fn conflicts(&self, limit: usize) -> Vec<crate::store::conflict::Recorded> {
        self.node.conflicts(limit)
    }

    /// Whether `peer` told us, recently, that it is fenced for clock skew.
    pub fn peer_fenced(&self, peer: &NodeId) -> bool {
        self.node.peer_fenced(peer)
    }

    /// Watches the changes this node applies under `prefix` from now on; with `after`,
    /// also the entries under it newer than that version now (tombstones included), so
    /// that a watcher can resume without a gap. Refused past `max_watchers`.
    pub fn watch(
        &self,
        prefix: &str,
        after: Option<&Version>,
    ) -> Result<WatchStart, TooManyWatchers> {
        let (watch, snapshot, snapshot_truncated) =
            self.node.watch(prefix, after, MAX_WATCH_SNAPSHOT)?;
        Ok(WatchStart {
            watch,
            snapshot,
            snapshot_truncated,
        })
    }

    /// Ends every watch: each drains what it holds, then its stream ends (the node is
    /// stopping, and open streams must not hold up its shutdown).
    pub fn close_watches(&self) {
        self.node.close_watches();
    }

    /// Merges entries from `from`, refusing versions too far in the future. Returns the
    /// keys refused.
    /// Does not wait: if the journal's queue is full (or the journal failed), every key
    /// is refused.
    pub fn apply_remote(&self, from: &NodeId, entries: Vec<Entry>) -> Vec<String> {
        let keys = || entries.iter().map(|entry| entry.key.clone()).collect();
        let Ok(slot) = self.node.journal().try_reserve() else {
            return keys();
        };
        let all = keys();
        self.node
            .apply_remote(slot, from, entries)
            .map_or(all, |(refused, _)| refused)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::clock::{ManualClock, Timestamp, Version};
    use crate::persist::{DirStorage, FsyncPolicy, Owner};
    use crate::store::Limits;

    const HOUR_MS: u64 = 3_600_000;

    fn options() -> ReplicationOptions {
        ReplicationOptions::in_process(Limits::default())
    }

    /// One life of a durable single node on `clock`: recovers `dir`, runs the lease
    /// keeper, writes `writes` and returns their versions and what it read back.
    async fn life(
        dir: &std::path::Path,
        clock: Arc<ManualClock>,
        writes: &[(&str, &str)],
    ) -> (Vec<Version>, Vec<Option<Bytes>>, Option<u64>) {
        let id = NodeId::new("n1").unwrap();
        let storage = DirStorage {
            dir: dir.to_owned(),
            fsync: FsyncPolicy::Batch,
            repair: false,
            clock: clock.clone(),
        };
        let owner = Owner {
            cluster: "test".to_owned(),
            node: id.clone(),
        };
        let recovered = durable::recover(&storage, &owner, false).unwrap();
        let old_lease = recovered.journal.read_lease();
        let replica =
            Replica::recovered(id, Vec::new(), clock, options(), Metrics::new(), recovered);
        replica.check_ready().unwrap();
        let shutdown = CancellationToken::new();
        let keeper = tokio::spawn(replica.keep_lease(shutdown.clone()).unwrap());
        let mut versions = Vec::new();
        for (key, value) in writes {
            let outcome = replica
                .write(key, Some(Bytes::from(value.to_string())), Consistency::One)
                .await
                .unwrap();
            versions.push(outcome.version);
        }
        let mut values = Vec::new();
        for (key, _) in writes {
            let entry = replica.read(key, Consistency::One).await.unwrap();
            values.push(entry.and_then(|entry| entry.value));
        }
        shutdown.cancel();
        keeper.await.unwrap();
        replica.close_storage().unwrap();
        (versions, values, old_lease)
    }

    /// Wall time that moves with tokio's clock, `offset_ms` ahead of the others.
    struct TickingClock {
        origin: tokio::time::Instant,
        offset_ms: u64,
    }

    impl Clock for TickingClock {
        fn wall_ms(&self) -> u64 {
            1_800_000_000_000 + self.offset_ms + self.origin.elapsed().as_millis() as u64
        }

        fn monotonic_ms(&self) -> u64 {
            self.origin.elapsed().as_millis() as u64
        }
    }

    /// One anti-entropy round of `initiator` with `replier`, as the driver and the
    /// responder run it, minus links; a clean round raises the initiator's watermark.
    /// With `during`, the replier takes a write of `session` (key, step) right after
    /// its first reply, stamped above the HLC that reply carried.
    async fn round_by_hand(
        initiator: &Replica,
        replier: &Replica,
        mut during: Option<(String, usize)>,
        session: &mut Seen,
    ) {
        use super::anti_entropy::{answer_buckets, answer_fetch, answer_root, SyncSession};
        let mut round = SyncSession::new();
        while let Some(request) = initiator
            .node
            .with_store(|store| round.next_request(store, 4096))
        {
            let reply = match request {
                Message::SyncRoot { root } => {
                    replier
                        .node
                        .with_durable_store_and_hlc(|store, hlc| answer_root(store, root, hlc))
                        .0
                }
                Message::SyncBuckets { buckets } => replier
                    .node
                    .with_store(|store| answer_buckets(store, &buckets, 4096)),
                Message::Fetch { keys } => replier
                    .node
                    .with_store(|store| answer_fetch(store, &keys, 4096)),
                Message::Push { entries } => Message::PushAck {
                    refused: replier.apply_remote(initiator.id(), entries),
                    wall_ms: 0,
                    fenced: false,
                },
                other => panic!("unexpected request {other:?}"),
            };
            let entries = initiator
                .node
                .with_store(|store| round.on_reply(reply, store))
                .unwrap();
            if !entries.is_empty() && !initiator.apply_remote(replier.id(), entries).is_empty() {
                round.merge_failed();
            }
            if let Some((key, step)) = during.take() {
                let value = Some(Bytes::from(format!("during{step}")));
                let outcome = replier
                    .write_session(&key, value, Consistency::One, &session.token)
                    .await
                    .unwrap();
                session.saw(&key, &outcome.version);
            }
        }
        if let Some(hlc) = round.outcome().pulled {
            initiator.node.raise_watermark(replier.id(), hlc);
        }
    }

    /// What one session has seen, to check its answers against.
    #[derive(Default)]
    struct Seen {
        token: crate::session::SessionToken,
        /// Per key, the newest version the session read or wrote (tombstones too).
        keys: std::collections::HashMap<String, Version>,
        /// The newest version it read or wrote, of any key.
        newest: Option<Version>,
    }

    impl Seen {
        fn saw(&mut self, key: &str, version: &Version) {
            self.token.observe(version);
            let held = self.keys.entry(key.to_owned()).or_insert(version.clone());
            if *held < *version {
                *held = version.clone();
            }
            if self.newest.as_ref() < Some(version) {
                self.newest = Some(version.clone());
            }
        }
    }

    /// Randomized histories on three replicas whose replication the test does by hand,
    /// at random, out of order and incompletely (no drivers: a session read that the
    /// local register cannot settle finds no peer and answers `SessionBehind`). Three
    /// sessions read, write and delete a few keys through random nodes at `one` and
    /// `live`, carrying tokens; every answer is checked against what the session saw
    /// before: read-your-writes and monotonic reads (a read's register is at least the
    /// session's newest version of that key), monotonic writes and writes-follow-reads
    /// (a write's version is above every version the session saw). The same reads
    /// without a token are counted when stale, to show that the histories do test
    /// something.
    #[tokio::test(flavor = "current_thread")]
    async fn randomized_histories_keep_the_four_session_guarantees() {
        use rand::{Rng, SeedableRng};
        let ids = ["n1", "n2", "n3"];
        let mut stale_without_token = 0;
        let mut behind = 0;
        let mut served = 0;
        for seed in 0..6u64 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let origin = tokio::time::Instant::now();
            let replicas: Vec<Replica> = ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    let peers = ids
                        .iter()
                        .filter(|peer| *peer != id)
                        .map(|peer| NodeId::new(*peer).unwrap())
                        .collect();
                    let mut options = options();
                    // Small: a write at `one` waits this long for the unmeasured peers
                    // (commit-wait), on the real clock.
                    options.max_clock_skew_ms = 20;
                    options.session_wait = Duration::from_millis(1);
                    let clock = Arc::new(TickingClock {
                        origin,
                        offset_ms: i as u64,
                    });
                    Replica::new(
                        NodeId::new(*id).unwrap(),
                        peers,
                        clock,
                        options,
                        Metrics::new(),
                    )
                })
                .collect();
            // Each node measures the others' clocks once, as a handshake would: the
            // commit-wait then knows how far each may lag.
            for a in &replicas {
                for b in &replicas {
                    if a.id() != b.id() {
                        let (wall, mono) = (a.node.wall_ms(), a.node.now_ms());
                        a.node
                            .clock_sample(b.id(), wall, mono, b.node.wall_ms(), Some(false));
                    }
                }
            }
            let mut sessions: Vec<Seen> = (0..3).map(|_| Seen::default()).collect();
            for step in 0..150 {
                let key = format!("k{}", rng.random_range(0..4));
                let at = rng.random_range(0..replicas.len());
                let replica = &replicas[at];
                let session = &mut sessions[rng.random_range(0..3)];
                let level = if rng.random_bool(0.5) {
                    Consistency::One
                } else {
                    Consistency::Live
                };
                match rng.random_range(0..100) {
                    // An anti-entropy round by hand, which raises a watermark; now and
                    // then the replier takes a session's write in the middle of it.
                    0..8 => {
                        let to = (at + rng.random_range(1..replicas.len())) % replicas.len();
                        let during = rng
                            .random_bool(0.5)
                            .then(|| (format!("k{}", rng.random_range(0..4)), step));
                        round_by_hand(&replicas[to], replica, during, session).await;
                    }
                    // Replication by hand: one key from one node to another.
                    8..40 => {
                        let to = rng.random_range(0..replicas.len());
                        if let (Some(entry), true) = (replica.local_entry(&key), to != at) {
                            replicas[to].apply_remote(replica.id(), vec![entry]);
                        }
                    }
                    40..75 => {
                        let plain = replica.read_value(&key, level).await.unwrap();
                        let newest = session.keys.get(&key);
                        if newest.is_some() && plain.as_ref().map(|(v, _)| v) < newest {
                            stale_without_token += 1;
                        }
                        match replica.read_session(&key, level, &session.token).await {
                            Ok(register) => {
                                served += 1;
                                let version = register.as_ref().map(|(v, _)| v);
                                assert!(
                                    version >= session.keys.get(&key),
                                    "seed {seed} step {step}: {key} read at {} as {version:?}, older than {:?} which the session saw",
                                    ids[at],
                                    session.keys.get(&key)
                                );
                                if let Some(version) = version {
                                    session.saw(&key, version);
                                }
                            }
                            Err(ReplicationError::SessionBehind { .. }) => behind += 1,
                            Err(other) => panic!("seed {seed} step {step}: {other}"),
                        }
                    }
                    draw => {
                        let value = (draw < 92).then(|| Bytes::from(format!("s{step}")));
                        let outcome = replica
                            .write_session(&key, value, level, &session.token)
                            .await
                            .unwrap_or_else(|e| panic!("seed {seed} step {step}: {e}"));
                        assert!(
                            Some(&outcome.version) > session.newest.as_ref(),
                            "seed {seed} step {step}: write {} not above {:?} which the session saw",
                            outcome.version,
                            session.newest
                        );
                        session.saw(&key, &outcome.version);
                    }
                }
            }
        }
        eprintln!("session reads: {served} answered, {behind} behind; {stale_without_token} reads without a token were stale");
        assert!(served > 50, "only {served} session reads were answered");
        assert!(
            behind > 0,
            "no session read had to wait: the histories are too tame"
        );
        assert!(
            stale_without_token > 0,
            "no read without a token was stale: the histories test nothing"
        );
    }

    /// A key whose tombstone was collected here counts, for a session, as a register
    /// at the tombstone's version; a watermark settles its origin whatever the key.
    #[tokio::test]
    async fn a_collected_tombstone_or_a_watermark_settles_a_session_read_locally() {
        let wall_ms = 1_800_000_000_000;
        let clock = Arc::new(ManualClock::new(wall_ms));
        let (n1, n2) = (NodeId::new("n1").unwrap(), NodeId::new("n2").unwrap());
        let mut options = options();
        options.session_wait = Duration::from_millis(1);
        let replica = Replica::new(n2, vec![n1.clone()], clock, options, Metrics::new());
        let entry = |key: &str, wall_ms: u64, value: Option<&'static str>| Entry {
            key: key.into(),
            version: Version {
                timestamp: Timestamp {
                    wall_ms,
                    logical: 0,
                },
                node: n1.clone(),
            },
            value: value.map(Bytes::from),
            replaces: None,
        };
        let put = entry("k", wall_ms - 20, Some("v"));
        let delete = entry("k", wall_ms - 10, None);
        let other = entry("other", wall_ms - 30, Some("o"));
        for entry in [put, delete.clone(), other.clone()] {
            assert!(replica.apply_remote(&n1, vec![entry]).is_empty());
        }
        // n1 is unreachable (no links here): only the local state can settle.
        let token = SessionToken::of(&delete.version);
        let read = replica.read_session("k", Consistency::One, &token).await;
        assert_eq!(
            read.unwrap().map(|(version, _)| version),
            Some(delete.version.clone())
        );
        let seq = replica.node.with_store(crate::store::Store::seq);
        replica.node.round_clean(&n1, seq);
        assert_eq!(replica.node.collect_tombstones(10), 1);
        assert_eq!(replica.collected_version("k"), Some(delete.version.clone()));
        let read = replica.read_session("k", Consistency::One, &token).await;
        assert_eq!(
            read.unwrap(),
            None,
            "collected at the token's bound: absent"
        );
        // An older key is behind the token's bound for n1, until a watermark says that
        // every write of n1 up to that bound is here.
        let read = replica
            .read_session("other", Consistency::One, &token)
            .await;
        assert!(
            matches!(read, Err(ReplicationError::SessionBehind { .. })),
            "{read:?}"
        );
        let mut below = delete.version.timestamp;
        below.wall_ms -= 1;
        replica.node.raise_watermark(&n1, below);
        let read = replica
            .read_session("other", Consistency::One, &token)
            .await;
        assert!(
            matches!(read, Err(ReplicationError::SessionBehind { .. })),
            "{read:?}"
        );
        replica.node.raise_watermark(&n1, delete.version.timestamp);
        assert_eq!(
            replica.session_watermark(&n1),
            Some(delete.version.timestamp)
        );
        let read = replica
            .read_session("other", Consistency::One, &token)
            .await;
        assert_eq!(
            read.unwrap().map(|(version, _)| version),
            Some(other.version)
        );
    }

    /// A write with a token is stamped above it even when the token comes from a clock
    /// ahead of this node's (within the skew limit); a token further ahead is refused
    /// and changes nothing.
    #[tokio::test]
    async fn a_write_with_a_token_is_stamped_above_it() {
        let wall_ms = 1_800_000_000_000;
        let clock = Arc::new(ManualClock::new(wall_ms));
        let n1 = NodeId::new("n1").unwrap();
        let replica = Replica::new(n1, Vec::new(), clock, options(), Metrics::new());
        let ahead = Version {
            timestamp: Timestamp {
                wall_ms: wall_ms + 900,
                logical: 7,
            },
            node: NodeId::new("n2").unwrap(),
        };
        let token = crate::session::SessionToken::of(&ahead);
        let outcome = replica
            .write_session("k", Some(Bytes::from("v")), Consistency::One, &token)
            .await
            .unwrap();
        assert!(
            outcome.version > ahead,
            "{} is not above {ahead}",
            outcome.version
        );
        let plain = replica
            .write("j", Some(Bytes::from("v")), Consistency::One)
            .await
            .unwrap();
        assert!(plain.version > outcome.version);

        let far = Version {
            timestamp: Timestamp {
                wall_ms: wall_ms + 5_000,
                logical: 0,
            },
            node: NodeId::new("n2").unwrap(),
        };
        let refused = replica
            .write_session(
                "k",
                Some(Bytes::from("w")),
                Consistency::One,
                &crate::session::SessionToken::of(&far),
            )
            .await;
        assert!(
            matches!(refused, Err(ReplicationError::SessionAhead { .. })),
            "{refused:?}"
        );
        let held = replica.local_entry("k").unwrap();
        assert_eq!(
            held.value,
            Some(Bytes::from("v")),
            "a refused write changed k"
        );
        assert!(
            replica.hlc_last() < far.timestamp,
            "the HLC followed a refused token"
        );
    }

    #[tokio::test]
    async fn a_clock_set_back_across_a_restart_reuses_no_version_and_new_writes_win() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_800_000_000_000));
        let (first, _, lease) = life(dir.path(), clock.clone(), &[("a", "1"), ("b", "1")]).await;
        assert_eq!(lease, None, "a new directory has no lease");

        // The wall clock is set back an hour while the node is down.
        clock.set_wall_ms(1_800_000_000_000 - HOUR_MS);
        let (second, values, lease) =
            life(dir.path(), clock.clone(), &[("a", "2"), ("c", "2")]).await;
        let lease = lease.expect("the first life leased ahead");
        assert!(lease >= first.iter().map(|v| v.timestamp.wall_ms).max().unwrap());
        let newest_before = first.iter().max().unwrap();
        for version in &second {
            assert!(
                version > newest_before,
                "{version} was stamped at or below {newest_before}, issued before the restart"
            );
            assert!(
                version.timestamp.wall_ms > lease,
                "stamped within the old lease"
            );
            assert!(!first.contains(version), "version {version} reused");
        }
        assert_eq!(
            values,
            [Some(Bytes::from("2")), Some(Bytes::from("2"))],
            "the new write of a wins over the old one"
        );

        // A third life, the clock still behind: the data of both is there, and the
        // stamps still only go up.
        let (third, values, _) = life(dir.path(), clock, &[("b", "3")]).await;
        assert!(third[0] > *second.iter().max().unwrap());
        assert_eq!(values, [Some(Bytes::from("3"))]);
    }

    /// A write at `one` does not wait for acks, but an ack ends its commit-wait. With a
    /// wall clock that never moves, the wait can only end by the peer taking the write:
    /// without the ack the write fails for clock skew; with it, it succeeds.
    #[tokio::test(start_paused = true)]
    async fn an_ack_ends_the_commit_wait_of_a_write_at_one() {
        let clock = Arc::new(ManualClock::new(HOUR_MS));
        let n2 = NodeId::new("n2").unwrap();
        let replica = Replica::new(
            NodeId::new("n1").unwrap(),
            vec![n2.clone()],
            clock,
            options(),
            Metrics::new(),
        );
        let now = replica.node.now_ms();
        replica.node.detector().link_up(&n2, now);
        let wall = replica.node.wall_ms();
        replica.node.clock_sample(&n2, wall, now, wall, Some(false));

        let unacknowledged = replica
            .write("a", Some(Bytes::from("1")), Consistency::One)
            .await;
        assert!(
            matches!(unacknowledged, Err(ReplicationError::ClockSkew { .. })),
            "{unacknowledged:?}"
        );

        let write = tokio::spawn({
            let replica = replica.clone();
            async move {
                replica
                    .write("b", Some(Bytes::from("2")), Consistency::One)
                    .await
            }
        });
        let outbox = replica.peers.get(&n2).unwrap().outbox();
        let mut acknowledged = false;
        for _ in 0..100 {
            tokio::task::yield_now().await;
            let batch = outbox.take(1 << 20, |key| replica.local_entry(key));
            if let Some(batch) = batch {
                let keys: Vec<&str> = batch.entries.iter().map(|e| e.key.as_str()).collect();
                acknowledged = keys.contains(&"b");
                outbox.acknowledge(batch, &[]);
                if acknowledged {
                    break;
                }
            }
        }
        assert!(acknowledged, "the write to b was never queued for n2");
        let outcome = write.await.unwrap().expect("the ack ends the commit-wait");
        assert_eq!(replica.local_entry("b").unwrap().version, outcome.version);
    }
}
