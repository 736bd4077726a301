//! Tombstone collection: when a tombstone may be dropped, and which returning nodes
//! must be refused because of it.
//!
//! Owns: [`Ledger`] (per peer: the data epoch it was admitted with, its watermark, the
//! last contact, its retirement), the [`Horizon`] it computes, and the admission rule
//! of the handshake.
//! Knows nothing of: the store (it deals in [`Seq`] numbers the caller reads from it),
//! sockets, clocks (times come in as wall-clock ms), tasks.
//!
//! # The rule
//! A tombstone may be dropped only when every node of the cluster file holds it, or a
//! newer version of its key. A clean anti-entropy round that this node initiated with
//! peer P proves that P holds everything this node held when the round began (change
//! number `S`), or newer (see `anti_entropy`): the round sets P's *watermark* to `S`.
//! Tombstones written by a change at or below the smallest watermark over all peers
//! are collected. A peer without a watermark (never synced since this node started, or
//! since it came back with a new epoch) blocks collection.
//!
//! # The grace
//! A peer out of contact (no admitted handshake, no clean round) for longer than
//! `tombstone_grace` is left out of the minimum, so one dead node does not stop
//! collection forever. Its data may then hold values older than tombstones the others
//! dropped; were it to come back with that data, those keys would come back to life.
//! So when a collection leaves a peer out, the peer is *retired*: from then on this
//! node refuses, in the handshake, any data epoch of that peer created before the
//! retirement ("wipe its data directory to rejoin"). An epoch is a random id drawn when
//! a node's store begins empty (every start of a memory-only node, the creation of a
//! data directory), so a node that returns empty is admitted, and one that returns
//! with its old data is refused. Retirements travel in every handshake (`Lineage`), so
//! the other nodes, and the retired node itself, learn them; a retired node refuses
//! every peer and says why. DESIGN.md §2 discusses the failure modes.

use std::collections::BTreeMap;

use crate::clock::NodeId;
use crate::store::Seq;
use crate::wire::{DataEpoch, Lineage};

/// What this node knows of one peer, for collection.
#[derive(Clone, Debug, Default)]
struct PeerRecord {
    /// The epoch the peer last presented in an admitted handshake.
    epoch: Option<DataEpoch>,
    /// The peer holds everything this node held at this change, or newer.
    watermark: Option<Seq>,
    /// Wall ms of the last admitted handshake or clean round.
    last_contact_ms: Option<u64>,
    /// Epochs of the peer created before this wall ms are refused.
    retired_at_ms: Option<u64>,
}

/// Where collection stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Horizon {
    /// Some peer in contact has no watermark yet: nothing may be collected.
    Blocked {
        /// The peers without a watermark.
        waiting: Vec<NodeId>,
    },
    /// Tombstones written at or below `seq` may be collected.
    At {
        /// The horizon.
        seq: Seq,
        /// Peers left out of the minimum: out of contact for longer than the grace, or
        /// refused. A collection that drops anything retires them.
        excluded: Vec<NodeId>,
    },
}

/// One peer as collection sees it, for `/v1/cluster`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectionView {
    /// The peer.
    pub id: NodeId,
    /// Its watermark (a change number of this node), if a clean round set one.
    pub watermark: Option<Seq>,
    /// Left out of collection: out of contact for longer than the grace.
    pub excluded: bool,
    /// Why this node refuses it, if it does.
    pub refused: Option<String>,
}

/// The collection bookkeeping of one node: see the module header.
#[derive(Clone, Debug)]
pub struct Ledger {
    me: NodeId,
    epoch: DataEpoch,
    grace_ms: u64,
    /// Wall ms of this node's start: the contact time of peers never heard from.
    started_ms: u64,
    peers: BTreeMap<NodeId, PeerRecord>,
    /// Set when a peer told us that our own data was retired: `(by whom, at_ms)`.
    self_retired: Option<(NodeId, u64)>,
}

impl Ledger {
    /// The ledger of node `me`, whose store began in `epoch`, with `peers`, started at
    /// `now_ms` (wall clock).
    pub fn new(
        me: NodeId,
        peers: impl IntoIterator<Item = NodeId>,
        epoch: DataEpoch,
        grace_ms: u64,
        now_ms: u64,
    ) -> Self {
        Self {
            me,
            epoch,
            grace_ms,
            started_ms: now_ms,
            peers: peers
                .into_iter()
                .map(|id| (id, PeerRecord::default()))
                .collect(),
            self_retired: None,
        }
    }

    /// This node's data epoch.
    pub fn epoch(&self) -> DataEpoch {
        self.epoch
    }

    /// What this node presents in a handshake: its epoch and every retirement it knows.
    pub fn lineage(&self) -> Lineage {
        let mut retired: Vec<(NodeId, u64)> = self
            .peers
            .iter()
            .filter_map(|(id, record)| record.retired_at_ms.map(|at| (id.clone(), at)))
            .collect();
        if let Some((_, at)) = &self.self_retired {
            retired.push((self.me.clone(), *at));
        }
        Lineage {
            epoch: self.epoch,
            retired,
        }
    }

    /// Why this node must not take part in the cluster any more, if it must not: a peer
    /// retired the epoch its data belongs to.
    pub fn self_refusal(&self) -> Option<String> {
        self.self_retired.as_ref().map(|(by, at_ms)| {
            format!(
                "the data of {me} (epoch {epoch:016x}, begun at {created} ms) was retired: \
                 {by} collected tombstones at {at_ms} ms while {me} was out of contact for \
                 longer than tombstone_grace_ms ({grace} ms), so its data may bring deleted \
                 keys back; wipe its data directory (a memory-only node: restart it) to rejoin",
                me = self.me,
                epoch = self.epoch.id,
                created = self.epoch.created_ms,
                grace = self.grace_ms,
            )
        })
    }

    /// Why `peer`, presenting `epoch`, is refused, if it is.
    fn refusal(&self, peer: &NodeId, epoch: &DataEpoch) -> Option<String> {
        let at_ms = self.peers.get(peer)?.retired_at_ms?;
        (epoch.created_ms < at_ms).then(|| {
            format!(
                "{peer} is refused: its data (epoch {id:016x}, begun at {created} ms) predates \
                 tombstones collected at {at_ms} ms while it was out of contact for longer \
                 than tombstone_grace_ms ({grace} ms), so it may bring deleted keys back; \
                 wipe its data directory (a memory-only node: restart it) to rejoin",
                id = epoch.id,
                created = epoch.created_ms,
                grace = self.grace_ms,
            )
        })
    }

    /// Folds in the retirements a peer told us of: ours (we stop), and other nodes'
    /// (we refuse their old data too).
    fn learn(&mut self, from: &NodeId, retired: &[(NodeId, u64)]) {
        for (node, at_ms) in retired {
            if *node == self.me {
                if self.epoch.created_ms < *at_ms && self.self_retired.is_none() {
                    self.self_retired = Some((from.clone(), *at_ms));
                }
            } else if let Some(record) = self.peers.get_mut(node) {
                record.retired_at_ms = record.retired_at_ms.max(Some(*at_ms));
            }
        }
    }

    /// A handshake with `peer` (either direction) presented `theirs`: admits it (it
    /// counts as contact) or says why not. A peer back with another epoch than before
    /// loses its watermark: what it held is not what it holds.
    pub fn admit(&mut self, peer: &NodeId, theirs: &Lineage, now_ms: u64) -> Result<(), String> {
        if !self.peers.contains_key(peer) {
            return Err(format!("{peer} is not a peer of {}", self.me));
        }
        self.learn(peer, &theirs.retired);
        if let Some(reason) = self.self_refusal() {
            return Err(reason);
        }
        if let Some(reason) = self.refusal(peer, &theirs.epoch) {
            return Err(reason);
        }
        let record = self.peers.get_mut(peer).expect("checked above");
        if record.epoch != Some(theirs.epoch) {
            record.epoch = Some(theirs.epoch);
            record.watermark = None;
        }
        record.last_contact_ms = record.last_contact_ms.max(Some(now_ms));
        Ok(())
    }

    /// Why the links to `peer` must be dropped now, if they must: this node's data was
    /// retired, or the peer's admitted epoch was retired since.
    pub fn refused(&self, peer: &NodeId) -> Option<String> {
        if let Some(reason) = self.self_refusal() {
            return Some(reason);
        }
        let epoch = self.peers.get(peer)?.epoch?;
        self.refusal(peer, &epoch)
    }

    /// A round this node initiated with `peer` finished cleanly; it began at change
    /// `covered` (see `anti_entropy::Outcome::covered`).
    pub fn round_clean(&mut self, peer: &NodeId, covered: Seq, now_ms: u64) {
        if let Some(record) = self.peers.get_mut(peer) {
            record.watermark = record.watermark.max(Some(covered));
            record.last_contact_ms = record.last_contact_ms.max(Some(now_ms));
        }
    }

    /// Whether `peer` is left out of collection at `now_ms`: out of contact for longer
    /// than the grace, or refused.
    fn excluded(&self, peer: &NodeId, record: &PeerRecord, now_ms: u64) -> bool {
        let contact = record.last_contact_ms.unwrap_or(self.started_ms);
        now_ms.saturating_sub(contact) > self.grace_ms || self.refused(peer).is_some()
    }

    /// The collection horizon at `now_ms`, when this node's last change is `seq`.
    pub fn horizon(&self, now_ms: u64, seq: Seq) -> Horizon {
        if self.self_retired.is_some() {
            return Horizon::Blocked {
                waiting: Vec::new(),
            };
        }
        let mut horizon = seq;
        let mut waiting = Vec::new();
        let mut excluded = Vec::new();
        for (id, record) in &self.peers {
            if self.excluded(id, record, now_ms) {
                excluded.push(id.clone());
            } else if let Some(watermark) = record.watermark {
                horizon = horizon.min(watermark);
            } else {
                waiting.push(id.clone());
            }
        }
        if !waiting.is_empty() {
            return Horizon::Blocked { waiting };
        }
        if !excluded.is_empty() && !self.in_majority(&excluded) {
            // Only a majority may leave the others out: in a clean partition that lasts
            // longer than the grace, the minority side must not retire the majority.
            return Horizon::Blocked { waiting: excluded };
        }
        Horizon::At {
            seq: horizon,
            excluded,
        }
    }

    /// Whether this node and the peers not `excluded` are a majority of the cluster;
    /// exactly half counts when it holds the smallest node id (so of two halves, one).
    fn in_majority(&self, excluded: &[NodeId]) -> bool {
        let cluster = self.peers.len() + 1;
        let included = cluster - excluded.len();
        if included * 2 != cluster {
            return included * 2 > cluster;
        }
        let smallest = self.peers.keys().chain([&self.me]).min();
        smallest.is_some_and(|smallest| !excluded.contains(smallest))
    }

    /// A collection at `now_ms` is about to drop tombstones that `excluded` peers may
    /// lack: their data from epochs created before now is refused from now on. A peer
    /// already retired and not admitted since keeps its first retirement, so that a
    /// node restarted empty meanwhile is not refused for collections it did not miss.
    /// Returns the peers retired by this call.
    pub fn retire(&mut self, excluded: &[NodeId], now_ms: u64) -> Vec<NodeId> {
        let mut retired = Vec::new();
        for peer in excluded {
            let Some(record) = self.peers.get_mut(peer) else {
                continue;
            };
            let admitted_since = match (record.retired_at_ms, record.epoch) {
                (None, _) => true,
                (Some(at_ms), Some(epoch)) => epoch.created_ms >= at_ms,
                (Some(_), None) => false,
            };
            if admitted_since {
                record.retired_at_ms = Some(now_ms);
                retired.push(peer.clone());
            }
        }
        retired
    }

    /// Every peer as collection sees it at `now_ms`, in id order.
    pub fn views(&self, now_ms: u64) -> Vec<CollectionView> {
        self.peers
            .iter()
            .map(|(id, record)| CollectionView {
                id: id.clone(),
                watermark: record.watermark,
                excluded: self.excluded(id, record, now_ms),
                refused: self.refused(id),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: u64 = 10_000;

    fn id(name: &str) -> NodeId {
        NodeId::new(name).unwrap()
    }

    fn epoch(id: u64, created_ms: u64) -> DataEpoch {
        DataEpoch { id, created_ms }
    }

    fn lineage(epoch: DataEpoch) -> Lineage {
        Lineage {
            epoch,
            retired: Vec::new(),
        }
    }

    /// n1's ledger with peers n2 and n3, started at 1 000 ms.
    fn ledger() -> Ledger {
        Ledger::new(
            id("n1"),
            [id("n2"), id("n3")],
            epoch(1, 1_000),
            GRACE,
            1_000,
        )
    }

    #[test]
    fn collection_waits_for_a_clean_round_with_every_peer_and_takes_the_minimum() {
        let mut ledger = ledger();
        assert_eq!(
            ledger.horizon(1_500, 40),
            Horizon::Blocked {
                waiting: vec![id("n2"), id("n3")]
            }
        );
        ledger.round_clean(&id("n2"), 30, 1_600);
        assert_eq!(
            ledger.horizon(1_700, 40),
            Horizon::Blocked {
                waiting: vec![id("n3")]
            }
        );
        ledger.round_clean(&id("n3"), 25, 1_800);
        let at = |seq| Horizon::At {
            seq,
            excluded: vec![],
        };
        assert_eq!(ledger.horizon(1_900, 40), at(25));
        // Watermarks only move forward (a slow round finishing late changes nothing).
        ledger.round_clean(&id("n3"), 20, 1_950);
        assert_eq!(ledger.horizon(1_960, 40), at(25));
        ledger.round_clean(&id("n3"), 35, 2_000);
        assert_eq!(ledger.horizon(2_100, 40), at(30));
        // Never above this node's own last change.
        ledger.round_clean(&id("n2"), 90, 2_100);
        ledger.round_clean(&id("n3"), 90, 2_100);
        assert_eq!(ledger.horizon(2_200, 40), at(40));
    }

    #[test]
    fn a_single_node_collects_at_once() {
        let ledger = Ledger::new(id("n1"), [], epoch(1, 0), GRACE, 0);
        assert_eq!(
            ledger.horizon(1, 7),
            Horizon::At {
                seq: 7,
                excluded: vec![]
            }
        );
    }

    #[test]
    fn a_peer_silent_longer_than_the_grace_is_left_out() {
        let mut ledger = ledger();
        ledger.round_clean(&id("n2"), 10, 2_000);
        // n3 never answered; within the grace (counted from our start) it blocks.
        assert!(matches!(
            ledger.horizon(1_000 + GRACE, 50),
            Horizon::Blocked { .. }
        ));
        // Past the grace, it is excluded. n2's contact (at 2 000) is still fresh.
        assert_eq!(
            ledger.horizon(1_001 + GRACE, 50),
            Horizon::At {
                seq: 10,
                excluded: vec![id("n3")]
            }
        );
        // A peer whose last contact is older than the grace is excluded too, but a
        // node alone is no majority: it leaves no one out.
        assert_eq!(
            ledger.horizon(2_001 + GRACE, 50),
            Horizon::Blocked {
                waiting: vec![id("n2"), id("n3")]
            }
        );
    }

    #[test]
    fn only_a_majority_leaves_peers_out() {
        let at = |ledger: &Ledger| matches!(ledger.horizon(GRACE * 2, 1), Horizon::At { .. });
        // Two nodes: of the two halves, the one with the smallest id.
        let mut n1 = Ledger::new(id("n1"), [id("n2")], epoch(1, 0), GRACE, 0);
        let mut n2 = Ledger::new(id("n2"), [id("n1")], epoch(2, 0), GRACE, 0);
        n1.round_clean(&id("n2"), 1, 0);
        n2.round_clean(&id("n1"), 1, 0);
        assert!(at(&n1));
        assert!(!at(&n2));
        // Five nodes: three may leave two out, two may not leave three out.
        let peers = |me: &'static str| {
            ["a", "b", "c", "d", "e"]
                .into_iter()
                .filter(move |p| *p != me)
                .map(id)
        };
        let mut c = Ledger::new(id("c"), peers("c"), epoch(3, 0), GRACE, 0);
        let mut e = Ledger::new(id("e"), peers("e"), epoch(4, 0), GRACE, 0);
        for peer in ["d", "e"] {
            c.round_clean(&id(peer), 1, GRACE * 2);
        }
        e.round_clean(&id("d"), 1, GRACE * 2);
        assert!(at(&c), "c, d, e are three of five");
        assert!(!at(&e), "d, e are two of five");
    }

    #[test]
    fn a_retired_peer_is_refused_with_its_old_data_and_admitted_empty() {
        let mut ledger = ledger();
        let old = epoch(77, 500);
        ledger.admit(&id("n3"), &lineage(old), 1_100).unwrap();
        ledger.round_clean(&id("n3"), 5, 1_200);
        ledger.round_clean(&id("n2"), 5, 1_200);
        // n3 goes silent; past the grace a collection leaves it out and retires it.
        let now = 1_201 + GRACE;
        ledger.round_clean(&id("n2"), 9, now);
        let Horizon::At { excluded, .. } = ledger.horizon(now, 9) else {
            panic!("collection should proceed without n3");
        };
        assert_eq!(excluded, [id("n3")]);
        ledger.retire(&excluded, now);
        // Its old epoch (its data directory) is refused, with a reason to act on…
        let refusal = ledger.admit(&id("n3"), &lineage(old), now + 5).unwrap_err();
        assert!(refusal.contains("n3 is refused"), "{refusal}");
        assert!(refusal.contains("wipe its data directory"), "{refusal}");
        assert!(
            ledger.refused(&id("n3")).is_some(),
            "its open links are cut"
        );
        // …and so is any epoch begun before the retirement.
        assert!(ledger
            .admit(&id("n3"), &lineage(epoch(78, now - 1)), now + 6)
            .is_err());
        // A node back empty (a new epoch, begun after) is admitted, without the old
        // watermark: it blocks collection until a clean round.
        ledger
            .admit(&id("n3"), &lineage(epoch(79, now + 7)), now + 8)
            .unwrap();
        assert!(ledger.refused(&id("n3")).is_none());
        assert_eq!(
            ledger.horizon(now + 9, 9),
            Horizon::Blocked {
                waiting: vec![id("n3")]
            }
        );
        let views = ledger.views(now + 9);
        assert_eq!(views[1].id, id("n3"));
        assert_eq!((views[1].watermark, views[1].excluded), (None, false));
    }

    #[test]
    fn retirements_travel_in_handshakes_to_other_nodes_and_to_the_retired_node() {
        let mut n1 = ledger();
        n1.retire(&[id("n3")], 5_000);
        let told = n1.lineage();
        assert_eq!(told.retired, [(id("n3"), 5_000)]);
        // n2 learns it from n1's handshake and refuses n3's old data too.
        let mut n2 = Ledger::new(id("n2"), [id("n1"), id("n3")], epoch(2, 0), GRACE, 0);
        n2.admit(&id("n1"), &told, 5_100).unwrap();
        assert!(n2
            .admit(&id("n3"), &lineage(epoch(3, 100)), 5_200)
            .unwrap_err()
            .contains("n3 is refused"));
        // n3 itself, with data from before, learns it and stops: it refuses everyone,
        // says why, collects nothing, and passes the news on.
        let mut n3 = Ledger::new(id("n3"), [id("n1"), id("n2")], epoch(3, 100), GRACE, 100);
        let refusal = n3.admit(&id("n1"), &told, 5_300).unwrap_err();
        assert!(refusal.contains("data of n3"), "{refusal}");
        assert!(n3.self_refusal().is_some());
        assert!(n3.admit(&id("n2"), &lineage(epoch(2, 0)), 5_400).is_err());
        assert!(n3.refused(&id("n2")).is_some());
        assert!(matches!(n3.horizon(6_000, 10), Horizon::Blocked { .. }));
        assert!(n3.lineage().retired.contains(&(id("n3"), 5_000)));
        // A fresh n3 (begun after the retirement) is not concerned.
        let mut fresh = Ledger::new(
            id("n3"),
            [id("n1"), id("n2")],
            epoch(4, 5_500),
            GRACE,
            5_500,
        );
        fresh.admit(&id("n1"), &told, 5_600).unwrap();
        assert!(fresh.self_refusal().is_none());
    }

    #[test]
    fn a_retirement_is_not_moved_until_the_peer_is_admitted_again() {
        let mut ledger = ledger();
        assert_eq!(ledger.retire(&[id("n3")], 20_000), [id("n3")]);
        // Later collections without n3 keep the first retirement: n3 restarted empty
        // at 25 000 is admitted even if collections went on until it got through.
        assert!(ledger.retire(&[id("n3")], 30_000).is_empty());
        ledger
            .admit(&id("n3"), &lineage(epoch(5, 25_000)), 31_000)
            .unwrap();
        // Admitted, then silent again past the grace: a new exclusion, a new retirement.
        assert_eq!(ledger.retire(&[id("n3")], 50_000), [id("n3")]);
        assert!(ledger.refused(&id("n3")).is_some());
    }

    #[test]
    fn strangers_are_not_admitted() {
        let mut ledger = ledger();
        assert!(ledger.admit(&id("n9"), &lineage(epoch(1, 0)), 1).is_err());
    }

    // ---- The whole mechanism, property-tested --------------------------------------

    use crate::clock::{Timestamp, Version};
    use crate::replication::anti_entropy::{
        answer_buckets, answer_fetch, answer_root, SyncSession,
    };
    use crate::store::{Entry, Store};
    use crate::wire::Message;
    use proptest::prelude::*;

    /// One simulated node: a store and its ledger.
    struct Sim {
        id: NodeId,
        store: Store,
        ledger: Ledger,
    }

    /// What can happen in a run.
    #[derive(Clone, Debug)]
    enum Action {
        /// Node writes key (a tombstone when `delete`).
        Write { node: usize, key: u8, delete: bool },
        /// Node `from` advances its anti-entropy round with `to` (starting one if none
        /// is in progress) by up to `steps` requests, so other actions interleave with
        /// rounds; `fail` then breaks the link, abandoning the round.
        Round {
            from: usize,
            to: usize,
            steps: u8,
            fail: bool,
        },
        /// A push of `from`'s current entry of `key` to `to`.
        Push { from: usize, to: usize, key: u8 },
        /// Node collects at most `slice` tombstones under its ledger's horizon.
        Collect { node: usize, slice: u8 },
        /// Node restarts empty (a memory-only node): a new store and epoch. It first
        /// hands what it holds to every peer (a complete round with each), so that no
        /// write is lost: the check then needs no record of what a crash lost.
        Restart { node: usize },
    }

    fn arb_action(nodes: usize) -> impl Strategy<Value = Action> {
        prop_oneof![
            3 => (0..nodes, 0..6u8, any::<bool>())
                .prop_map(|(node, key, delete)| Action::Write { node, key, delete }),
            5 => (0..nodes, 0..nodes, 1..4u8, proptest::bool::weighted(0.1))
                .prop_map(|(from, to, steps, fail)| Action::Round { from, to, steps, fail }),
            2 => (0..nodes, 0..nodes, 0..6u8).prop_map(|(from, to, key)| Action::Push { from, to, key }),
            4 => (0..nodes, 1..4u8).prop_map(|(node, slice)| Action::Collect { node, slice }),
            1 => (0..nodes).prop_map(|node| Action::Restart { node }),
        ]
    }

    struct World {
        nodes: Vec<Sim>,
        now: u64,
        /// Every write ever made, to check the end state against.
        writes: Vec<Entry>,
        collected: usize,
        memory: usize,
        /// Rounds in progress, by (initiator, replier).
        sessions: BTreeMap<(usize, usize), SyncSession>,
    }

    impl World {
        fn new(count: usize, memory: usize) -> Self {
            let ids: Vec<NodeId> = (1..=count).map(|i| id(&format!("n{i}"))).collect();
            let nodes = ids
                .iter()
                .map(|me| Sim {
                    id: me.clone(),
                    store: Store::with_collected_memory(memory),
                    ledger: Ledger::new(
                        me.clone(),
                        ids.iter().filter(|peer| *peer != me).cloned(),
                        epoch(0, 0),
                        u64::MAX / 2,
                        0,
                    ),
                })
                .collect();
            Self {
                nodes,
                now: 1,
                writes: Vec::new(),
                collected: 0,
                memory,
                sessions: BTreeMap::new(),
            }
        }

        fn pair(&mut self, a: usize, b: usize) -> (&mut Sim, &mut Sim) {
            assert_ne!(a, b);
            if a < b {
                let (left, right) = self.nodes.split_at_mut(b);
                (&mut left[a], &mut right[0])
            } else {
                let (left, right) = self.nodes.split_at_mut(a);
                (&mut right[0], &mut left[b])
            }
        }

        fn run(&mut self, action: &Action) {
            self.now += 1;
            let now = self.now;
            match *action {
                Action::Write { node, key, delete } => {
                    let sim = &mut self.nodes[node];
                    let entry = Entry {
                        key: format!("k{key}"),
                        version: Version {
                            timestamp: Timestamp {
                                wall_ms: now,
                                logical: 0,
                            },
                            node: sim.id.clone(),
                        },
                        value: (!delete).then(|| format!("v{now}").into()),
                        replaces: None,
                    };
                    sim.store.merge(entry.clone());
                    self.writes.push(entry);
                }
                Action::Round {
                    from,
                    to,
                    steps,
                    fail,
                } if from != to => {
                    let mut session = self.sessions.remove(&(from, to));
                    let (a, b) = self.pair(from, to);
                    let session = session.get_or_insert_with(|| {
                        // A new link: the handshake, where both sides admit each other
                        // (no one is retired with an infinite grace).
                        a.ledger.admit(&b.id, &b.ledger.lineage(), now).unwrap();
                        b.ledger.admit(&a.id, &a.ledger.lineage(), now).unwrap();
                        SyncSession::new()
                    });
                    for _ in 0..steps {
                        let Some(request) = session.next_request(&a.store, 64) else {
                            // The round is over.
                            if let Some(covered) = session.outcome().covered {
                                a.ledger.round_clean(&b.id, covered, now);
                            }
                            return;
                        };
                        if fail {
                            // The link breaks with the request in flight.
                            return;
                        }
                        let reply = match request {
                            Message::SyncRoot { root } => {
                                answer_root(&b.store, root, Default::default())
                            }
                            Message::SyncBuckets { buckets } => {
                                answer_buckets(&b.store, &buckets, 64)
                            }
                            Message::Fetch { keys } => answer_fetch(&b.store, &keys, 64),
                            Message::Push { entries } => {
                                for entry in entries {
                                    b.store.merge(entry);
                                }
                                Message::PushAck {
                                    refused: vec![],
                                    wall_ms: 0,
                                    fenced: false,
                                }
                            }
                            other => panic!("unexpected {other:?}"),
                        };
                        for entry in session.on_reply(reply, &a.store).unwrap() {
                            a.store.merge(entry);
                        }
                    }
                    let session = std::mem::take(session);
                    self.sessions.insert((from, to), session);
                }
                Action::Round { .. } => {}
                Action::Push { from, to, key } if from != to => {
                    let (a, b) = self.pair(from, to);
                    if let Some(entry) = a.store.entry(&format!("k{key}")) {
                        b.store.merge(entry);
                    }
                }
                Action::Push { .. } => {}
                Action::Collect { node, slice } => {
                    let sim = &mut self.nodes[node];
                    let Horizon::At { seq, excluded } = sim.ledger.horizon(now, sim.store.seq())
                    else {
                        return;
                    };
                    assert!(excluded.is_empty(), "nobody is silent that long here");
                    let before: Vec<Entry> = sim.store.entries().collect();
                    self.collected += sim.store.collect(seq, slice as usize);
                    // The rule itself, checked with the view no node has: at the moment
                    // a tombstone is dropped, no node holds an older version of its key.
                    let dropped: Vec<&Entry> = before
                        .iter()
                        .filter(|e| sim.store.get(&e.key).is_none())
                        .collect();
                    for dropped in dropped {
                        for other in &self.nodes {
                            let held = other.store.version(&dropped.key);
                            assert!(
                                held.as_ref()
                                    .is_none_or(|version| *version >= dropped.version),
                                "{} dropped {}@{} while {} held {:?}",
                                self.nodes[node].id,
                                dropped.key,
                                dropped.version,
                                other.id,
                                held
                            );
                        }
                    }
                }
                Action::Restart { node } => {
                    for to in (0..self.nodes.len()).filter(|to| *to != node) {
                        // The round in progress, then a fresh one that covers it all.
                        self.complete_round(node, to);
                        self.complete_round(node, to);
                    }
                    // Its links break: every round in progress with it is abandoned.
                    self.sessions.retain(|(a, b), _| *a != node && *b != node);
                    let sim = &mut self.nodes[node];
                    let peers: Vec<NodeId> = sim.ledger.peers.keys().cloned().collect();
                    sim.store = Store::with_collected_memory(self.memory);
                    sim.ledger =
                        Ledger::new(sim.id.clone(), peers, epoch(now, now), u64::MAX / 2, now);
                }
            }
        }

        /// Runs the round of `from` with `to` (the one in progress, or a new one) to
        /// its end.
        fn complete_round(&mut self, from: usize, to: usize) {
            for _ in 0..1000 {
                self.run(&Action::Round {
                    from,
                    to,
                    steps: 1,
                    fail: false,
                });
                if !self.sessions.contains_key(&(from, to)) {
                    return;
                }
            }
            panic!("a round does not end");
        }

        /// Complete rounds between every pair, a few times over.
        fn settle(&mut self) {
            for _ in 0..4 {
                for from in 0..self.nodes.len() {
                    for to in (0..self.nodes.len()).filter(|to| *to != from) {
                        self.complete_round(from, to);
                        // A second, fresh round: the first may have been one that
                        // started before the last actions.
                        self.complete_round(from, to);
                    }
                }
            }
        }

        /// Every node ends with each key's latest write, a delete being absent or a
        /// tombstone: no older value came back.
        fn check(&self) -> Result<(), TestCaseError> {
            let mut latest: BTreeMap<&str, &Entry> = BTreeMap::new();
            for write in &self.writes {
                let slot = latest.entry(write.key.as_str()).or_insert(write);
                if write.version > slot.version {
                    *slot = write;
                }
            }
            for sim in &self.nodes {
                for (key, write) in &latest {
                    let held = sim.store.entry(key);
                    match &write.value {
                        Some(_) => prop_assert_eq!(
                            held.as_ref().map(|e| &e.version),
                            Some(&write.version),
                            "{} lost the latest value of {}",
                            sim.id,
                            key
                        ),
                        None => prop_assert!(
                            held.as_ref().is_none_or(|e| e.value.is_none()),
                            "{} brought {} back to life: {:?}",
                            sim.id,
                            key,
                            held
                        ),
                    }
                }
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the interleaving of writes, deletes, pushes, rounds (complete or
        /// cut), collections and empty restarts, no deleted key comes back with an older
        /// value, with or without the memory of collected tombstones.
        #[test]
        fn collection_never_lets_an_older_value_win(
            actions in proptest::collection::vec(arb_action(3), 1..120),
            memory in prop_oneof![Just(0usize), Just(1024usize)],
        ) {
            let mut world = World::new(3, memory);
            for action in &actions {
                world.run(action);
            }
            world.settle();
            for node in 0..3 {
                world.run(&Action::Collect { node, slice: 255 });
            }
            world.settle();
            world.check()?;
        }
    }

    #[test]
    fn the_simulation_collects_and_its_check_catches_a_careless_rule() {
        // Deletes that reach everyone are collected everywhere.
        let mut world = World::new(3, 0);
        for key in 0..4 {
            world.run(&Action::Write {
                node: 0,
                key,
                delete: false,
            });
            world.run(&Action::Write {
                node: 1,
                key,
                delete: true,
            });
        }
        world.settle();
        world.settle();
        for node in 0..3 {
            world.run(&Action::Collect { node, slice: 255 });
        }
        assert_eq!(
            world.collected, 12,
            "four tombstones on each of three nodes"
        );
        assert!(world
            .nodes
            .iter()
            .all(|sim| sim.store.summary().tombstones == 0));
        world.check().unwrap();

        // Control: n2 drops its tombstone while n3 still holds the older value, as a
        // rule that ignored watermarks would; the check sees the key come back.
        let mut world = World::new(3, 0);
        world.run(&Action::Write {
            node: 0,
            key: 0,
            delete: false,
        });
        world.settle();
        world.run(&Action::Write {
            node: 1,
            key: 0,
            delete: true,
        });
        world.complete_round(1, 0);
        let careless = &mut world.nodes[1].store;
        let seq = careless.seq();
        assert_eq!(careless.collect(seq, 10), 1);
        world.nodes[0].store.collect(seq, 10);
        world.settle();
        assert!(world.check().is_err(), "n3's old value came back");
    }
}
