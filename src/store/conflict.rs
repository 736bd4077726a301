//! Concurrent writes that last-writer-wins discards: how a merge tells them apart from
//! ordinary overwrites, and the bounded record of the recent ones.
//!
//! Owns: [`detect`], the pure rule, and [`ConflictLog`], a ring of the last
//! [`ConflictLog::CAPACITY`] conflicts with their values cut to [`MAX_VALUE_BYTES`].
//! Knows nothing of: clocks (the caller passes the time), the network, I/O.
//!
//! # The rule
//! Every write records the version it replaced (`replaces`). Two writes are concurrent
//! when neither writer had seen the other's version. At a merge of an incoming entry
//! into the key's current register:
//! * the incoming one wins but replaced something *older* than the current version (or
//!   nothing): its writer never saw the current write, which is now discarded;
//! * the incoming one loses, and the current register replaced something older than the
//!   incoming version (or nothing): the current writer never saw it, and it is discarded.
//!
//! A write that replaced exactly the version it meets, or a newer one, knew it: that is
//! an overwrite, not a conflict. So sequential writes, each acknowledged and replicated
//! before the next, never conflict, whichever nodes take them. A register that replaced
//! a version newer than the one it meets knew a successor of it; whether *that* one was
//! concurrent is decided where the two meet.

use std::collections::VecDeque;

use bytes::Bytes;

use super::{Entry, Register};
use crate::clock::Version;

/// Values in the record are cut to this many bytes.
pub const MAX_VALUE_BYTES: usize = 256;

/// One side of a conflict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side {
    /// The write's version.
    pub version: Version,
    /// Its value (`None`: a delete), cut to [`MAX_VALUE_BYTES`].
    pub value: Option<Bytes>,
    /// True if the value was longer and was cut.
    pub truncated: bool,
}

impl Side {
    fn new(version: &Version, value: &Option<Bytes>) -> Self {
        let truncated = value.as_ref().is_some_and(|v| v.len() > MAX_VALUE_BYTES);
        Self {
            version: version.clone(),
            value: value
                .as_ref()
                .map(|v| v.slice(..v.len().min(MAX_VALUE_BYTES))),
            truncated,
        }
    }
}

/// Two concurrent writes to one key, of which LWW kept `winner`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The key.
    pub key: String,
    /// The write kept.
    pub winner: Side,
    /// The write discarded.
    pub loser: Side,
}

/// Whether merging `incoming` into `current` discards a concurrent write (see the
/// module header). Call it before the merge.
pub fn detect(current: Option<&Register>, incoming: &Entry) -> Option<Conflict> {
    let current = current?;
    let unaware = |replaces: &Option<Version>, of: &Version| replaces.as_ref() < Some(of);
    let (winner, loser) = if incoming.version > current.marker {
        if !unaware(&incoming.replaces, &current.marker) {
            return None;
        }
        (
            Side::new(&incoming.version, &incoming.value),
            Side::new(&current.marker, &current.val.value),
        )
    } else if incoming.version < current.marker {
        if !unaware(&current.val.replaces, &incoming.version) {
            return None;
        }
        (
            Side::new(&current.marker, &current.val.value),
            Side::new(&incoming.version, &incoming.value),
        )
    } else {
        return None;
    };
    Some(Conflict {
        key: incoming.key.clone(),
        winner,
        loser,
    })
}

/// A conflict as recorded: when (wall ms) it was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// The conflict.
    pub conflict: Conflict,
    /// Wall-clock milliseconds when this node discarded the loser.
    pub at_ms: u64,
}

/// The last [`ConflictLog::CAPACITY`] conflicts, oldest dropped first. A loser that
/// arrives twice (a push and an anti-entropy round may both carry it) is recorded once
/// while it is still in the ring.
#[derive(Debug, Default)]
pub struct ConflictLog {
    ring: VecDeque<Recorded>,
}

impl ConflictLog {
    /// How many conflicts are kept.
    pub const CAPACITY: usize = 256;

    /// Records `conflict` seen at `at_ms`; `false` if it was recorded already.
    pub fn record(&mut self, conflict: Conflict, at_ms: u64) -> bool {
        let seen = self.ring.iter().any(|r| {
            r.conflict.key == conflict.key && r.conflict.loser.version == conflict.loser.version
        });
        if seen {
            return false;
        }
        if self.ring.len() == Self::CAPACITY {
            self.ring.pop_front();
        }
        self.ring.push_back(Recorded { conflict, at_ms });
        true
    }

    /// The most recent `limit` conflicts, newest first.
    pub fn recent(&self, limit: usize) -> Vec<Recorded> {
        self.ring.iter().rev().take(limit).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::clock::{NodeId, Timestamp};
    use crate::store::Store;

    fn version(wall_ms: u64, node: &str) -> Version {
        Version {
            timestamp: Timestamp {
                wall_ms,
                logical: 0,
            },
            node: NodeId::new(node).unwrap(),
        }
    }

    fn write(wall_ms: u64, node: &str, replaces: Option<Version>) -> Entry {
        Entry {
            key: "k".into(),
            version: version(wall_ms, node),
            value: Some(Bytes::from(format!("{node}@{wall_ms}"))),
            replaces,
        }
    }

    /// Merges `entry` into `store`, returning the conflict it discards, if any.
    fn merge(store: &mut Store, entry: Entry) -> Option<Conflict> {
        let conflict = detect(store.get(&entry.key).as_ref(), &entry);
        store.merge(entry);
        conflict
    }

    #[test]
    fn an_overwrite_that_knew_its_predecessor_is_no_conflict_in_either_order() {
        let a = write(1, "n1", None);
        let b = write(2, "n2", Some(a.version.clone()));
        let mut forward = Store::new();
        assert_eq!(merge(&mut forward, a.clone()), None);
        assert_eq!(merge(&mut forward, b.clone()), None);
        let mut backward = Store::new();
        assert_eq!(merge(&mut backward, b), None);
        assert_eq!(
            merge(&mut backward, a),
            None,
            "the late predecessor was known"
        );
    }

    #[test]
    fn concurrent_writes_conflict_in_either_order_and_name_the_same_winner() {
        let base = write(1, "n1", None);
        let left = write(2, "n1", Some(base.version.clone()));
        let right = write(3, "n2", Some(base.version.clone()));
        let mut one = Store::new();
        merge(&mut one, base.clone());
        merge(&mut one, left.clone());
        let seen = merge(&mut one, right.clone()).expect("right did not know left");
        assert_eq!(seen.winner.version, right.version);
        assert_eq!(seen.loser.version, left.version);
        let mut other = Store::new();
        merge(&mut other, base);
        merge(&mut other, right.clone());
        let seen = merge(&mut other, left.clone()).expect("right did not know left");
        assert_eq!(seen.winner.version, right.version);
        assert_eq!(seen.loser.version, left.version);
        // Arriving again changes nothing, and the ring keeps it once.
        assert!(merge(&mut other, left).is_some());
        let mut log = ConflictLog::default();
        assert!(log.record(seen.clone(), 10));
        assert!(!log.record(seen, 11));
        assert_eq!(log.recent(10).len(), 1);
    }

    #[test]
    fn values_are_cut_and_the_ring_is_bounded() {
        let long = Bytes::from(vec![b'x'; 1000]);
        let side = Side::new(&version(1, "n1"), &Some(long));
        assert!(side.truncated);
        assert_eq!(side.value.unwrap().len(), MAX_VALUE_BYTES);
        let mut log = ConflictLog::default();
        for i in 0..(ConflictLog::CAPACITY as u64 + 10) {
            let conflict = Conflict {
                key: format!("k{i}"),
                winner: Side::new(&version(i + 1, "n2"), &None),
                loser: Side::new(&version(i, "n1"), &None),
            };
            log.record(conflict, i);
        }
        let recent = log.recent(usize::MAX);
        assert_eq!(recent.len(), ConflictLog::CAPACITY);
        assert_eq!(
            recent[0].at_ms,
            ConflictLog::CAPACITY as u64 + 9,
            "newest first"
        );
    }

    proptest! {
        /// Writes made one after another, each writer having seen the previous one
        /// (whichever node wrote it), never conflict, in any delivery order.
        #[test]
        fn sequential_histories_never_conflict(
            writers in proptest::collection::vec(0usize..4, 1..20),
            order in any::<proptest::sample::Index>(),
            seed in any::<u64>(),
        ) {
            let mut history = Vec::new();
            let mut last: Option<Version> = None;
            for (i, writer) in writers.iter().enumerate() {
                let entry = write(i as u64 + 1, &format!("n{writer}"), last.clone());
                last = Some(entry.version.clone());
                history.push(entry);
            }
            // A deterministic shuffle of the deliveries.
            let mut rng = seed | 1;
            let start = order.index(history.len());
            history.rotate_left(start);
            for i in (1..history.len()).rev() {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                history.swap(i, (rng % (i as u64 + 1)) as usize);
            }
            let mut store = Store::new();
            for entry in history {
                prop_assert!(merge(&mut store, entry).is_none());
            }
        }

        /// Two writers that each wrote without seeing the other conflict on every
        /// replica that receives both, in either order, with the same winner.
        #[test]
        fn concurrent_pairs_always_conflict(a in 1u64..100, b in 1u64..100, shared in any::<bool>()) {
            let base = write(0, "n0", None);
            let replaces = shared.then(|| base.version.clone());
            let x = write(a, "n1", replaces.clone());
            let y = write(b, "n2", replaces);
            for (first, second) in [(x.clone(), y.clone()), (y.clone(), x.clone())] {
                let mut store = Store::new();
                if shared {
                    merge(&mut store, base.clone());
                }
                merge(&mut store, first);
                let conflict = merge(&mut store, second);
                let conflict = conflict.expect("concurrent writes conflict");
                prop_assert_eq!(conflict.winner.version, x.version.clone().max(y.version.clone()));
            }
        }
    }
}
