//! Tombstone bookkeeping: which tombstones the store holds, in the order it applied
//! them, and which it has recently collected.
//!
//! Owns: [`Seq`] (the store's local change counter), `TombstoneIndex` (tombstones by
//! the sequence number of the change that wrote them) and `CollectedMemory` (a
//! bounded memory of `key → version` for tombstones dropped lately).
//! Knows nothing of: peers, watermarks and the rule that says when a tombstone may go
//! (the caller passes a horizon); time.
//!
//! Every change the store applies gets the next [`Seq`]. A tombstone is collectable
//! below a horizon `h` when the change that wrote it has `seq ≤ h`: the caller chooses
//! `h` so that every node of the cluster is known to hold each such tombstone or
//! something newer (see `replication::tombstones`). Sequence numbers are local and
//! restart with the process: they only order this store's changes.
//!
//! The memory of collected tombstones makes an older copy that is still travelling
//! (a peer that has not collected the same tombstone yet pushes it back; an old push
//! still in flight) a no-op instead of a re-insertion. Safety does not depend on it: the
//! rule guarantees that no node holds a value older than a collected tombstone, so what
//! can come back is at worst the tombstone itself, which is collected again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use crate::clock::Version;

/// The position of one applied change among this store's changes (0: none yet).
pub type Seq = u64;

/// Collected tombstones remembered by default.
pub const DEFAULT_COLLECTED_MEMORY: usize = 65_536;

/// The tombstones a store holds, by the sequence number of the change that wrote them.
#[derive(Debug, Default, Clone)]
pub(super) struct TombstoneIndex {
    by_seq: BTreeMap<Seq, Arc<str>>,
    seq_of: HashMap<Arc<str>, Seq>,
}

impl TombstoneIndex {
    /// `key` now holds a tombstone written by change `seq`.
    pub(super) fn insert(&mut self, key: Arc<str>, seq: Seq) {
        if let Some(old) = self.seq_of.insert(key.clone(), seq) {
            self.by_seq.remove(&old);
        }
        self.by_seq.insert(seq, key);
    }

    /// `key` no longer holds a tombstone.
    pub(super) fn remove(&mut self, key: &str) {
        if let Some(seq) = self.seq_of.remove(key) {
            self.by_seq.remove(&seq);
        }
    }

    /// Up to `max` keys whose tombstones were written at or below `horizon`, oldest
    /// first.
    pub(super) fn below(&self, horizon: Seq, max: usize) -> Vec<Arc<str>> {
        self.by_seq
            .range(..=horizon)
            .take(max)
            .map(|(_, key)| key.clone())
            .collect()
    }

    /// Whether any tombstone was written at or below `horizon`.
    pub(super) fn any_below(&self, horizon: Seq) -> bool {
        self.by_seq
            .first_key_value()
            .is_some_and(|(&seq, _)| seq <= horizon)
    }

    /// Tombstones indexed.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_seq.len()
    }
}

/// A bounded memory of recently collected tombstones: `key → version`, the oldest
/// forgotten first.
#[derive(Debug, Clone)]
pub(super) struct CollectedMemory {
    capacity: usize,
    /// The version collected, and the number of the `remember` call that set it.
    versions: HashMap<Arc<str>, (Version, u64)>,
    /// `(key, number of the remember call)`, oldest first; an item whose number no
    /// longer matches `versions` is stale and only waits for eviction.
    order: VecDeque<(Arc<str>, u64)>,
    calls: u64,
}

impl Default for CollectedMemory {
    fn default() -> Self {
        Self::new(DEFAULT_COLLECTED_MEMORY)
    }
}

impl CollectedMemory {
    /// A memory of at most `capacity` keys (0: remembers nothing).
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            versions: HashMap::new(),
            order: VecDeque::new(),
            calls: 0,
        }
    }

    /// The tombstone of `key` at `version` was collected.
    pub(super) fn remember(&mut self, key: Arc<str>, version: Version) {
        if self.capacity == 0 {
            return;
        }
        self.calls += 1;
        self.versions.insert(key.clone(), (version, self.calls));
        self.order.push_back((key, self.calls));
        while self.order.len() > self.capacity {
            if let Some((oldest, call)) = self.order.pop_front() {
                if self
                    .versions
                    .get(&oldest)
                    .is_some_and(|(_, at)| *at == call)
                {
                    self.versions.remove(&oldest);
                }
            }
        }
    }

    /// Whether an incoming `version` of the absent `key` is covered by a collected
    /// tombstone (so it is older than a delete every node has seen).
    pub(super) fn covers(&self, key: &str, version: &Version) -> bool {
        self.versions
            .get(key)
            .is_some_and(|(collected, _)| version <= collected)
    }

    /// The version of `key`'s collected tombstone, if it is remembered.
    pub(super) fn version(&self, key: &str) -> Option<&Version> {
        self.versions.get(key).map(|(version, _)| version)
    }

    /// A newer write of `key` arrived: the memory of its collection is moot.
    pub(super) fn forget(&mut self, key: &str) {
        self.versions.remove(key);
    }

    /// Keys remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.versions.len()
    }
}
