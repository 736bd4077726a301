//! Anti-entropy: finding and repairing the differences between two replicas.
//!
//! Owns: [`SyncSession`] (the initiator's plan, a state machine that turns replies into
//! the next request) and the replier's pure answers ([`answer_root`],
//! [`answer_buckets`], [`answer_fetch`]). Knows nothing of: sockets, time, locks. The
//! caller passes the store in, sends what comes out, and merges the entries returned.
//!
//! # One round, initiator I, replier R
//! 1. I → `SyncRoot{root}`. Equal roots: R → `InSync`, and the round is over. This is
//!    the idle cost: one small frame each way per peer per interval.
//! 2. R → `SyncGroups` (its 64 group hashes). I lists the buckets of every group whose
//!    hash differs from its own.
//! 3. I → `SyncBuckets` (its hashes of those buckets, in chunks). R compares and
//!    answers `BucketVersions`: the `(key, version)` pairs it holds in the buckets that
//!    differ, cut to the byte budget (`remaining` says which differing buckets it left
//!    out; I asks for them next).
//! 4. I compares those pairs with its own: keys where I is newer (or R lacks them) are
//!    sent with `Push`; keys where R is newer (or I lacks them) are pulled with `Fetch`.
//!
//! Only differing buckets are ever listed and only differing entries are ever sent, so
//! the bytes exchanged follow the size of the difference, not of the store. A round
//! ends when every differing bucket has been handled; writes that land meanwhile are
//! left to the next round. Either side may initiate; both do, on their own timers.
//!
//! # What a clean round proves (tombstone collection)
//! When the initiator sends `SyncRoot`, it notes its store's change number `S`
//! ([`Store::seq`]). A round that finishes with every push accepted (no key refused for
//! clock skew) proves that the replier now holds, for every key the initiator held at
//! `S`, that version or a newer one, or has collected its tombstone: equal roots, equal
//! groups and equal buckets mean equal contents at the moment they were compared (which
//! is after `S`, and a store's registers only grow newer); differing buckets are listed
//! pair by pair, and every key where the replier was older or absent was pushed and
//! acknowledged. Writes after `S` are not covered. [`Outcome::covered`] carries `S` for
//! such a round; the caller turns it into the replier's watermark. (Tombstones the
//! initiator collected meanwhile were already held by every node, the replier included.)
//!
//! # What a clean round proves (session watermarks)
//! The other direction: what the initiator now holds of the replier's writes. The
//! replier answers `SyncRoot` with its HLC `h` read under the same lock as its store
//! (a write's stamp and its merge are one critical section there), so at that moment
//! its store holds every version it stamped at or below `h`, or a newer one of the same
//! key; every write it stamps later is stamped above `h`. Comparing the roots, the
//! groups, the buckets and the pairs then shows the initiator every key where the
//! replier is newer or where the initiator lacks the key, at the moment of the reply or
//! later (a store's registers only grow newer). A round that finishes with every such
//! key fetched and merged (none given up, none refused for clock skew) proves that the
//! initiator holds every version the replier stamped at or below `h`, or a newer one
//! of the same key, or remembers its tombstone as collected. [`Outcome::pulled`]
//! carries `h` for such a round; the caller raises the replier's session watermark to
//! it (see `replication::read`). `h` must be the HLC of the *first* reply: a write the
//! replier stamps during the round may land in a group or bucket already compared.
//!
//! The session's state is an explicit phase: `Start`, `Awaiting` the reply to one of
//! `Root`, `Buckets`, `Push` or `Fetch` (which carries the keys asked for), `Between`
//! two requests, `Finished`. A reply that does not fit the request in flight abandons
//! the round.

use std::collections::{BTreeMap, VecDeque};

use crate::clock::{Timestamp, Version};
use crate::store::digest::{self, BucketId, GROUPS};
use crate::store::{Entry, Seq, Store};
use crate::wire::Message;

/// Buckets whose hashes travel in one `SyncBuckets` request.
pub const BUCKETS_PER_REQUEST: usize = 1024;

/// Why a round was abandoned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// The replier answered something that does not fit the request.
    #[error("unexpected {got} in reply to {sent}")]
    Unexpected {
        /// What was sent.
        sent: &'static str,
        /// What came back.
        got: &'static str,
    },
}

/// What a finished round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The roots were equal at the first step.
    pub in_sync: bool,
    /// Entries sent to the replier.
    pub pushed: usize,
    /// Entries received from the replier.
    pub fetched: usize,
    /// Set when the round finished with every push accepted: the initiator's change
    /// number when the round began. The replier then holds everything the initiator
    /// held at that point, or newer (see the module header).
    pub covered: Option<Seq>,
    /// Set when the round finished with every key the replier was newer for (or the
    /// initiator lacked) fetched and merged: the replier's HLC in its first reply. The
    /// initiator then holds every version the replier stamped at or below it, or a
    /// newer one (see the module header).
    pub pulled: Option<Timestamp>,
}

/// Where a round stands.
#[derive(Debug, Default)]
enum Phase {
    /// Nothing sent yet: the next request is `SyncRoot`.
    #[default]
    Start,
    /// A request is in flight; only a reply that fits it is accepted.
    Awaiting(Awaiting),
    /// Between two requests: the next one is planned from the queues.
    Between,
    /// The round is over: in sync, every difference handled, or abandoned.
    Finished,
}

/// The request in flight, and so the reply expected.
#[derive(Debug)]
enum Awaiting {
    /// `SyncRoot`: `InSync` or `SyncGroups`.
    Root,
    /// `SyncBuckets`: `BucketVersions`.
    Buckets,
    /// `Push`: `PushAck`.
    Push,
    /// `Fetch` of these keys: `Entries` for a prefix of them.
    Fetch {
        /// The keys asked for, in order.
        keys: Vec<String>,
    },
}

impl Awaiting {
    /// The kind of the request in flight, as [`Message::kind`] names it.
    fn sent(&self) -> &'static str {
        match self {
            Awaiting::Root => "sync_root",
            Awaiting::Buckets => "sync_buckets",
            Awaiting::Push => "push",
            Awaiting::Fetch { .. } => "fetch",
        }
    }
}

/// The initiator's side of one anti-entropy round.
#[derive(Debug, Default)]
pub struct SyncSession {
    phase: Phase,
    /// The initiator's change number when `SyncRoot` was sent.
    start_seq: Seq,
    /// Some pushed key was refused: the round proves nothing for the watermark.
    refused: bool,
    /// The replier's HLC in its reply to `SyncRoot`.
    replier_hlc: Option<Timestamp>,
    /// Some key to fetch was given up or not merged: the round proves nothing for the
    /// session watermark.
    pull_incomplete: bool,
    buckets: VecDeque<BucketId>,
    to_push: VecDeque<String>,
    to_fetch: VecDeque<String>,
    outcome: Outcome,
}

impl SyncSession {
    /// A round that has not sent anything yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// What the round has done so far.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// The next request to send, or `None` when the round is over. `budget` bounds the
    /// bytes of entries in one `Push`.
    pub fn next_request(&mut self, store: &Store, budget: usize) -> Option<Message> {
        debug_assert!(
            !matches!(self.phase, Phase::Awaiting(_)),
            "one request at a time"
        );
        let (request, awaiting) = match self.phase {
            Phase::Finished => return None,
            Phase::Start => {
                self.start_seq = store.seq();
                (
                    Message::SyncRoot {
                        root: store.digest().root(),
                    },
                    Awaiting::Root,
                )
            }
            Phase::Awaiting(_) | Phase::Between => {
                if !self.to_push.is_empty() {
                    let mut entries = Vec::new();
                    let mut bytes = 0;
                    while let Some(key) = self.to_push.front() {
                        let Some(entry) = store.entry(key) else {
                            self.to_push.pop_front();
                            continue;
                        };
                        if !entries.is_empty() && bytes + entry.weight() > budget {
                            break;
                        }
                        bytes += entry.weight();
                        entries.push(entry);
                        self.to_push.pop_front();
                    }
                    if entries.is_empty() {
                        return self.next_request(store, budget);
                    }
                    self.outcome.pushed += entries.len();
                    (Message::Push { entries }, Awaiting::Push)
                } else if !self.to_fetch.is_empty() {
                    let mut bytes = 0;
                    let mut keys = Vec::new();
                    while let Some(key) = self.to_fetch.front() {
                        if !keys.is_empty() && bytes + key.len() > budget / 4 {
                            break;
                        }
                        bytes += key.len();
                        keys.extend(self.to_fetch.pop_front());
                    }
                    let request = Message::Fetch { keys: keys.clone() };
                    (request, Awaiting::Fetch { keys })
                } else if !self.buckets.is_empty() {
                    let count = self.buckets.len().min(BUCKETS_PER_REQUEST);
                    let buckets = self
                        .buckets
                        .drain(..count)
                        .map(|bucket| (bucket, store.digest().bucket(bucket)))
                        .collect();
                    (Message::SyncBuckets { buckets }, Awaiting::Buckets)
                } else {
                    self.finish();
                    return None;
                }
            }
        };
        debug_assert_eq!(awaiting.sent(), request.kind());
        self.phase = Phase::Awaiting(awaiting);
        Some(request)
    }

    /// Takes the reply to the last request. Returns entries to merge locally (only
    /// after a `Fetch`). A reply that does not fit the request abandons the round.
    pub fn on_reply(&mut self, reply: Message, store: &Store) -> Result<Vec<Entry>, SyncError> {
        let awaiting = match std::mem::replace(&mut self.phase, Phase::Between) {
            Phase::Awaiting(awaiting) => awaiting,
            other => {
                self.phase = other;
                return Err(SyncError::Unexpected {
                    sent: "nothing",
                    got: reply.kind(),
                });
            }
        };
        match (awaiting, reply) {
            (Awaiting::Root, Message::InSync { hlc }) => {
                self.replier_hlc = Some(hlc);
                self.outcome.in_sync = true;
                self.finish();
            }
            (Awaiting::Root, Message::SyncGroups { groups, hlc }) if groups.len() == GROUPS => {
                self.replier_hlc = Some(hlc);
                let local = store.digest();
                for (group, remote_hash) in groups.iter().enumerate() {
                    if local.groups()[group] != *remote_hash {
                        self.buckets
                            .extend(local.buckets_of_group(group).map(|(bucket, _)| bucket));
                    }
                }
            }
            (
                Awaiting::Buckets,
                Message::BucketVersions {
                    covered,
                    versions,
                    remaining,
                },
            ) => {
                for bucket in remaining.into_iter().rev() {
                    if (bucket as usize) < digest::BUCKETS {
                        self.buckets.push_front(bucket);
                    }
                }
                self.plan_repairs(store, &covered, versions);
            }
            (Awaiting::Push, Message::PushAck { refused, .. }) => {
                self.refused |= !refused.is_empty();
            }
            (Awaiting::Fetch { mut keys }, Message::Entries { entries, served }) => {
                let served = (served as usize).min(keys.len());
                // Keys asked for but not answered yet go back to the front of the queue.
                for key in keys.drain(served..).rev() {
                    self.to_fetch.push_front(key);
                }
                if served == 0 {
                    // No progress is possible; give up the rest of this round.
                    self.pull_incomplete |= !self.to_fetch.is_empty();
                    self.to_fetch.clear();
                }
                self.outcome.fetched += entries.len();
                return Ok(entries);
            }
            (awaiting, other) => {
                self.phase = Phase::Finished;
                return Err(SyncError::Unexpected {
                    sent: awaiting.sent(),
                    got: other.kind(),
                });
            }
        }
        Ok(Vec::new())
    }

    /// The caller could not merge (all of) the entries the last reply returned: the
    /// round no longer proves what the initiator holds of the replier's writes.
    pub fn merge_failed(&mut self) {
        self.pull_incomplete = true;
    }

    /// Ends the round that handled every difference.
    fn finish(&mut self) {
        self.phase = Phase::Finished;
        if !self.refused {
            self.outcome.covered = Some(self.start_seq);
        }
        if !self.pull_incomplete {
            self.outcome.pulled = self.replier_hlc;
        }
    }

    /// Compares the replier's versions of `covered` buckets with ours.
    fn plan_repairs(
        &mut self,
        store: &Store,
        covered: &[BucketId],
        remote: Vec<(String, Version)>,
    ) {
        let mut remote: BTreeMap<String, Version> = remote.into_iter().collect();
        for &bucket in covered {
            for (key, local_version) in store.bucket_versions(bucket) {
                match remote.remove(key) {
                    Some(remote_version) if remote_version > local_version => {
                        self.to_fetch.push_back(key.to_owned())
                    }
                    Some(remote_version) if remote_version == local_version => {}
                    _ => self.to_push.push_back(key.to_owned()),
                }
            }
        }
        // What is left, we lack entirely.
        self.to_fetch.extend(remote.into_keys());
    }
}

/// The replier's answer to `SyncRoot`; `hlc` is the replier's HLC, read under the
/// same lock as `store` (see the module header).
pub fn answer_root(store: &Store, root: u64, hlc: Timestamp) -> Message {
    if store.digest().root() == root {
        Message::InSync { hlc }
    } else {
        Message::SyncGroups {
            groups: store.digest().groups().to_vec(),
            hlc,
        }
    }
}

/// The replier's answer to `SyncBuckets`: versions of the buckets that differ, cut to
/// `budget` bytes (at least one bucket is always covered).
pub fn answer_buckets(store: &Store, buckets: &[(BucketId, u64)], budget: usize) -> Message {
    let mut covered = Vec::new();
    let mut versions = Vec::new();
    let mut remaining = Vec::new();
    let mut bytes = 0;
    for &(bucket, hash) in buckets {
        if bucket as usize >= digest::BUCKETS || store.digest().bucket(bucket) == hash {
            continue;
        }
        if !covered.is_empty() && bytes > budget {
            remaining.push(bucket);
            continue;
        }
        covered.push(bucket);
        for (key, version) in store.bucket_versions(bucket) {
            bytes += key.len() + 24;
            versions.push((key.to_owned(), version.clone()));
        }
    }
    Message::BucketVersions {
        covered,
        versions,
        remaining,
    }
}

/// The replier's answer to `Fetch`: entries for a prefix of `keys` that fits `budget`.
pub fn answer_fetch(store: &Store, keys: &[String], budget: usize) -> Message {
    let mut entries = Vec::new();
    let mut bytes = 0;
    let mut served = 0;
    for key in keys {
        if let Some(entry) = store.entry(key) {
            if !entries.is_empty() && bytes + entry.weight() > budget {
                break;
            }
            bytes += entry.weight();
            entries.push(entry);
        }
        served += 1;
    }
    Message::Entries {
        entries,
        served: served as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{NodeId, Timestamp};

    fn entry(key: &str, wall_ms: u64, node: &str) -> Entry {
        Entry {
            key: key.into(),
            version: Version {
                timestamp: Timestamp {
                    wall_ms,
                    logical: 0,
                },
                node: NodeId::new(node).unwrap(),
            },
            value: Some(format!("{key}@{wall_ms}").into()),
            replaces: None,
        }
    }

    /// A stand-in for the replier's HLC: the largest timestamp in its store (a real HLC
    /// is at least that).
    fn hlc_of(store: &Store) -> Timestamp {
        store
            .entries()
            .map(|entry| entry.version.timestamp)
            .max()
            .unwrap_or_default()
    }

    /// Replier logic as the real responder runs it, minus clocks and locks.
    fn reply(replier: &mut Store, request: Message, budget: usize) -> Message {
        match request {
            Message::SyncRoot { root } => answer_root(replier, root, hlc_of(replier)),
            Message::SyncBuckets { buckets } => answer_buckets(replier, &buckets, budget),
            Message::Fetch { keys } => answer_fetch(replier, &keys, budget),
            Message::Push { entries } => {
                for entry in entries {
                    replier.merge(entry);
                }
                Message::PushAck {
                    refused: vec![],
                    wall_ms: 0,
                    fenced: false,
                }
            }
            other => panic!("unexpected request {other:?}"),
        }
    }

    /// Runs one whole round; returns the outcome and the number of requests sent.
    fn round(initiator: &mut Store, replier: &mut Store, budget: usize) -> (Outcome, usize) {
        let mut session = SyncSession::new();
        let mut requests = 0;
        while let Some(request) = session.next_request(initiator, budget) {
            requests += 1;
            assert!(requests < 10_000, "round does not terminate");
            let answer = reply(replier, request, budget);
            for entry in session.on_reply(answer, initiator).unwrap() {
                initiator.merge(entry);
            }
        }
        (session.outcome(), requests)
    }

    #[test]
    fn equal_stores_cost_one_request() {
        let mut a = Store::new();
        a.merge(entry("k", 1, "n1"));
        let mut b = a.clone();
        let (outcome, requests) = round(&mut a, &mut b, 1 << 20);
        assert!(outcome.in_sync);
        assert_eq!(requests, 1);
    }

    #[test]
    fn a_round_repairs_both_directions() {
        let mut a = Store::new();
        let mut b = Store::new();
        for i in 0..500 {
            let shared = entry(&format!("shared{i}"), 1, "n1");
            a.merge(shared.clone());
            b.merge(shared);
        }
        a.merge(entry("only_a", 1, "n1"));
        b.merge(entry("only_b", 1, "n2"));
        a.merge(entry("newer_on_a", 5, "n1"));
        b.merge(entry("newer_on_a", 4, "n2"));
        a.merge(entry("newer_on_b", 4, "n1"));
        b.merge(entry("newer_on_b", 5, "n2"));
        let (outcome, _) = round(&mut a, &mut b, 1 << 20);
        assert_eq!((outcome.pushed, outcome.fetched), (2, 2));
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.get("newer_on_b").unwrap().marker.timestamp.wall_ms, 5);
        assert_eq!(b.get("newer_on_a").unwrap().marker.timestamp.wall_ms, 5);
    }

    #[test]
    fn an_empty_replica_is_filled_within_a_small_budget_either_way() {
        let mut full = Store::new();
        for i in 0..3000 {
            full.merge(entry(&format!("key{i}"), i, "n1"));
        }
        // The empty side initiates (pulls everything)…
        let mut empty = Store::new();
        let (outcome, requests) = round(&mut empty, &mut full.clone(), 4096);
        assert_eq!(outcome.fetched, 3000);
        assert!(requests > 3, "the budget must split the work");
        assert_eq!(empty.digest(), full.digest());
        // …or the full side initiates (pushes everything).
        let mut empty = Store::new();
        let (outcome, _) = round(&mut full, &mut empty, 4096);
        assert_eq!(outcome.pushed, 3000);
        assert_eq!(empty.digest(), full.digest());
    }

    #[test]
    fn a_clean_round_covers_the_initiators_state_at_its_start() {
        let mut a = Store::new();
        let mut b = Store::new();
        a.merge(entry("only_a", 1, "n1"));
        b.merge(entry("only_b", 1, "n2"));
        let (outcome, _) = round(&mut a, &mut b, 1 << 20);
        // The start was after one change; the fetch of only_b came later.
        assert_eq!(outcome.covered, Some(1));
        assert_eq!(a.seq(), 2);
        let (outcome, requests) = round(&mut a, &mut b, 1 << 20);
        assert!(outcome.in_sync);
        assert_eq!((outcome.covered, requests), (Some(2), 1));
    }

    #[test]
    fn a_refused_push_or_an_abandoned_round_covers_nothing() {
        let mut a = Store::new();
        a.merge(entry("only_a", 1, "n1"));
        let b = Store::new();
        let mut session = session_awaiting(&a, &b, "push");
        session
            .on_reply(
                Message::PushAck {
                    refused: vec!["only_a".into()],
                    wall_ms: 0,
                    fenced: false,
                },
                &a,
            )
            .unwrap();
        assert!(session.next_request(&a, 1 << 20).is_none());
        assert_eq!(session.outcome().covered, None);
        let mut session = session_awaiting(&a, &b, "push");
        assert!(session
            .on_reply(
                Message::InSync {
                    hlc: Timestamp::default()
                },
                &a
            )
            .is_err());
        assert_eq!(session.outcome().covered, None);
    }

    #[test]
    fn a_wrong_reply_ends_the_round_with_an_error() {
        let store = Store::new();
        let mut session = SyncSession::new();
        session.next_request(&store, 1024).unwrap();
        let error = session
            .on_reply(
                Message::Pong {
                    wall_ms: 0,
                    fenced: false,
                },
                &store,
            )
            .unwrap_err();
        assert_eq!(
            error,
            SyncError::Unexpected {
                sent: "sync_root",
                got: "pong"
            }
        );
        let mut session = SyncSession::new();
        session.next_request(&store, 1024).unwrap();
        let error = session.on_reply(
            Message::SyncGroups {
                groups: vec![1, 2],
                hlc: Timestamp::default(),
            },
            &store,
        );
        assert!(error.is_err(), "a malformed group list is refused");
    }

    /// Runs a round between `initiator` and `replier` until the next request is of
    /// `kind`, and returns the session with that request in flight.
    fn session_awaiting(initiator: &Store, replier: &Store, kind: &str) -> SyncSession {
        let mut session = SyncSession::new();
        loop {
            let request = session
                .next_request(initiator, 1 << 20)
                .unwrap_or_else(|| panic!("the round ended before a {kind} request"));
            if request.kind() == kind {
                return session;
            }
            let answer = reply(&mut replier.clone(), request, 1 << 20);
            session.on_reply(answer, initiator).unwrap();
        }
    }

    #[test]
    fn a_reply_that_fits_another_state_abandons_the_round_in_every_state() {
        let mut a = Store::new();
        let mut b = Store::new();
        a.merge(entry("only_a", 1, "n1"));
        b.merge(entry("only_b", 1, "n2"));
        let entries = Message::Entries {
            entries: vec![],
            served: 0,
        };
        let bucket_versions = Message::BucketVersions {
            covered: vec![],
            versions: vec![],
            remaining: vec![],
        };
        // In each state, a reply that would be right in some other state.
        let cases = [
            ("sync_root", bucket_versions, "bucket_versions"),
            (
                "sync_buckets",
                Message::InSync {
                    hlc: Timestamp::default(),
                },
                "in_sync",
            ),
            ("push", entries, "entries"),
            (
                "fetch",
                Message::PushAck {
                    refused: vec![],
                    wall_ms: 0,
                    fenced: false,
                },
                "push_ack",
            ),
        ];
        for (state, wrong, got) in cases {
            let mut session = session_awaiting(&a, &b, state);
            let error = session.on_reply(wrong, &a).unwrap_err();
            assert_eq!(error, SyncError::Unexpected { sent: state, got });
            assert!(
                session.next_request(&a, 1 << 20).is_none(),
                "an abandoned round ({state}) is over"
            );
        }
    }

    #[test]
    fn a_reply_with_nothing_in_flight_is_unexpected() {
        let store = Store::new();
        let mut session = SyncSession::new();
        let error = session
            .on_reply(
                Message::InSync {
                    hlc: Timestamp::default(),
                },
                &store,
            )
            .unwrap_err();
        assert_eq!(
            error,
            SyncError::Unexpected {
                sent: "nothing",
                got: "in_sync"
            }
        );
        // Before the first request: the round can still start.
        assert!(matches!(
            session.next_request(&store, 1024),
            Some(Message::SyncRoot { .. })
        ));
        session
            .on_reply(
                Message::InSync {
                    hlc: Timestamp::default(),
                },
                &store,
            )
            .unwrap();
        // After the last reply: still nothing in flight.
        let error = session
            .on_reply(
                Message::InSync {
                    hlc: Timestamp::default(),
                },
                &store,
            )
            .unwrap_err();
        assert_eq!(error.to_string(), "unexpected in_sync in reply to nothing");
        assert!(session.next_request(&store, 1024).is_none());
    }

    /// The session-watermark claim, checked: every version `origin` stamped at or
    /// below `pulled` that `replier` holds, `initiator` holds too, or a newer one.
    fn holds_up_to(initiator: &Store, replier: &Store, origin: &str, pulled: Timestamp) -> bool {
        replier
            .entries()
            .filter(|entry| entry.version.node.as_str() == origin)
            .filter(|entry| entry.version.timestamp <= pulled)
            .all(|entry| {
                initiator
                    .version(&entry.key)
                    .is_some_and(|version| version >= entry.version)
            })
    }

    #[test]
    fn a_clean_round_pulls_the_repliers_writes_up_to_its_hlc_at_the_first_reply() {
        let mut a = Store::new();
        let mut b = Store::new();
        for i in 0..200 {
            let old = entry(&format!("old{i}"), 10 + i, "n2");
            a.merge(old.clone());
            b.merge(old);
        }
        a.merge(entry("only_a", 1, "n1"));
        b.merge(entry("only_b", 300, "n2"));
        // The round runs by hand: right after the replier's first reply, it stamps a
        // new write (above the HLC it reported), which lands in a group the initiator
        // then finds equal, so the round does not fetch it.
        let mut session = SyncSession::new();
        let mut first = true;
        let late = (0..)
            .map(|i| format!("late{i}"))
            .find(|key| {
                let group = |key: &str| digest::bucket_of(key) as usize / digest::GROUP_FANOUT;
                group(key) != group("only_a") && group(key) != group("only_b")
            })
            .unwrap();
        let mut late_hlc = Timestamp::default();
        while let Some(request) = session.next_request(&a, 1 << 20) {
            let answer = reply(&mut b, request, 1 << 20);
            if first {
                first = false;
                let Message::SyncGroups { hlc, .. } = &answer else {
                    panic!("the roots differ")
                };
                late_hlc = Timestamp {
                    wall_ms: hlc.wall_ms + 1,
                    logical: 0,
                };
                b.merge(entry(&late, late_hlc.wall_ms, "n2"));
            }
            for entry in session.on_reply(answer, &a).unwrap() {
                a.merge(entry);
            }
        }
        let pulled = session.outcome().pulled.expect("a clean round");
        assert!(
            pulled < late_hlc,
            "the HLC of the first reply, not a later one"
        );
        assert!(holds_up_to(&a, &b, "n2", pulled));
        // The late write is not held (it was stamped during the round): an HLC read at
        // the end of the round would claim it, wrongly.
        assert!(a.get(&late).is_none());
        assert!(!holds_up_to(&a, &b, "n2", hlc_of(&b)));
        // The next round finds it.
        let (outcome, _) = round(&mut a, &mut b, 1 << 20);
        assert!(holds_up_to(&a, &b, "n2", outcome.pulled.unwrap()));
        assert_eq!(outcome.pulled, Some(hlc_of(&b)));
    }

    #[test]
    fn a_round_with_a_fetch_not_merged_or_given_up_pulls_nothing() {
        let mut a = Store::new();
        let mut b = Store::new();
        b.merge(entry("only_b", 5, "n2"));
        // The caller could not merge what a fetch returned (say, refused for skew).
        let mut session = SyncSession::new();
        while let Some(request) = session.next_request(&a, 1 << 20) {
            let fetch = matches!(request, Message::Fetch { .. });
            let answer = reply(&mut b, request, 1 << 20);
            session.on_reply(answer, &a).unwrap();
            if fetch {
                session.merge_failed();
            }
        }
        assert!(
            session.outcome().covered.is_some(),
            "pushes were all accepted"
        );
        assert_eq!(session.outcome().pulled, None);
        assert!(!holds_up_to(&a, &b, "n2", hlc_of(&b)));
        // A replier that serves nothing of a fetch: given up, nothing pulled.
        let mut session = session_awaiting(&a, &b, "fetch");
        session
            .on_reply(
                Message::Entries {
                    entries: vec![],
                    served: 0,
                },
                &a,
            )
            .unwrap();
        assert!(session.next_request(&a, 1 << 20).is_none());
        assert_eq!(session.outcome().pulled, None);
        // An abandoned round pulls nothing either.
        let mut session = session_awaiting(&a, &b, "fetch");
        assert!(session
            .on_reply(Message::InSync { hlc: hlc_of(&b) }, &a)
            .is_err());
        assert_eq!(session.outcome().pulled, None);
        // A clean one does.
        let (outcome, _) = round(&mut a, &mut b, 1 << 20);
        assert_eq!(outcome.pulled, Some(hlc_of(&b)));
        assert!(holds_up_to(&a, &b, "n2", hlc_of(&b)));
    }
}
