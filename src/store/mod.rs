//! The replicated state: a map from key to last-writer-wins register.
//!
//! Owns: [`Store`] (registers, tombstones, the incremental [`Digest`] and the bucket
//! index that anti-entropy reads), [`Entry`] (one register as it travels and as it is
//! written to disk) and the input [`Limits`].
//! Knows nothing of: clocks (versions arrive already stamped), the network, I/O.
//!
//! # Semantics
//! Each key holds a [`Register`]: `crdts::LWWReg` over a [`Cell`] (the value as bytes,
//! or `None` for a tombstone, and the version the writer replaced) with a [`Version`]
//! as its marker. Merging two registers keeps the one with the larger version, so merge
//! is commutative, associative and idempotent, and a store is just the pointwise merge
//! of its registers: any two stores that have merged the same entries, in any order and
//! grouping, are equal. Versions are unique per write, so two different cells never
//! carry the same marker.
//!
//! Deletes write tombstones, which are kept (and replicated, and hashed into the digest)
//! like values: a delete is never undone by a replica that missed it. Tombstones are
//! collected ([`Store::collect`]) only below a horizon the caller proves safe (every
//! node holds them or something newer; see DESIGN.md §2 and `replication::tombstones`).
//! The store numbers its changes ([`Store::seq`]) so the caller can name that horizon,
//! and remembers recently collected tombstones (see [`collect`]).
//!
//! The store hands registers out as [`Register`]s but keeps each one packed into a
//! single allocation (`slot`: key, versions with node ids as table indices, value),
//! because with every key in memory the per-key overhead is the node's size
//! (DESIGN.md §10, "Memory per key").
//!
//! `replaces` does not take part in the merge. It records what the writer had seen of
//! the key when it wrote (the version it overwrote), so that a node can tell an
//! overwrite that knew its predecessor from a concurrent one that did not.

pub mod collect;
pub mod conflict;
pub mod digest;
pub mod limits;
mod slot;

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use crdts::LWWReg;
use serde::{Deserialize, Serialize};

use crate::clock::Version;
pub use collect::Seq;
use collect::{CollectedMemory, TombstoneIndex};
pub use digest::{BucketId, Digest};
pub use limits::{InputError, Limits};
use slot::{Builder, NodeTable, Slot};

/// What a register holds besides its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell {
    /// The value, or `None` for a tombstone.
    pub value: Option<Bytes>,
    /// The version the writer overwrote (`None`: the key was absent there).
    pub replaces: Option<Version>,
}

/// One key's register: the cell and the version that wrote it.
pub type Register = LWWReg<Cell, Version>;

/// One register with its key: the unit of replication and of the on-disk log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// The version of the write that produced this state.
    pub version: Version,
    /// The value, or `None` for a tombstone. Any bytes.
    pub value: Option<Bytes>,
    /// The version the writer overwrote when it wrote (`None`: it held nothing).
    pub replaces: Option<Version>,
}

impl Entry {
    /// An upper bound of the entry's encoded size, for batching against byte budgets:
    /// the key and value plus their MessagePack headers (≤ 5 bytes each), two versions
    /// (≤ 14 bytes of timestamp each, plus the node ids) and the array headers.
    pub fn weight(&self) -> usize {
        self.key.len()
            + self.value.as_ref().map_or(0, Bytes::len)
            + self.version.node.as_str().len()
            + self
                .replaces
                .as_ref()
                .map_or(0, |version| version.node.as_str().len())
            + 56
    }

    #[cfg(test)]
    fn into_register(self) -> (String, Register) {
        let register = Register {
            val: Cell {
                value: self.value,
                replaces: self.replaces,
            },
            marker: self.version,
        };
        (self.key, register)
    }
}

/// The result of merging an entry into the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Merged {
    /// The entry was newer and replaced `previous` (`None`: the key was absent).
    Applied {
        /// The register the key held before, if any.
        previous: Option<Register>,
    },
    /// The store already held this version or a newer one; nothing changed.
    Stale,
}

/// Counts that describe the store, for `/v1/convergence` and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Keys holding a value.
    pub keys: usize,
    /// Keys holding a tombstone.
    pub tombstones: usize,
    /// Root hash of the whole state.
    pub digest: u64,
    /// The largest version stored, if any.
    pub max_version: Option<Version>,
}

/// The map of registers with its digest and bucket index, kept in step on every change.
///
/// ```
/// use meshkv::clock::{NodeId, Timestamp, Version};
/// use meshkv::store::{Entry, Store};
///
/// let write = |wall_ms, node: &str, value: &str| Entry {
///     key: "k".into(),
///     version: Version { timestamp: Timestamp { wall_ms, logical: 0 }, node: NodeId::new(node).unwrap() },
///     value: Some(value.as_bytes().to_vec().into()),
///     replaces: None,
/// };
/// // Two replicas receive the same writes in opposite orders…
/// let (mut a, mut b) = (Store::new(), Store::new());
/// a.merge(write(1, "n1", "old"));
/// a.merge(write(2, "n2", "new"));
/// b.merge(write(2, "n2", "new"));
/// b.merge(write(1, "n1", "old"));
/// // …and end equal: the later write wins, and the digests agree.
/// assert_eq!(a.get("k").unwrap().val.value.as_deref(), Some(&b"new"[..]));
/// assert_eq!(a.summary(), b.summary());
/// ```
///
/// Each register is one slot (`store::slot`: key, versions and value in one allocation),
/// held twice by reference: in key order for lookups and scans, and in its digest
/// bucket's list for anti-entropy. See DESIGN.md §10 for what a key costs.
#[derive(Debug, Default, Clone)]
pub struct Store {
    /// Every register, in key order.
    slots: BTreeSet<Slot>,
    /// The registers of each digest bucket, so anti-entropy can list one bucket
    /// without a scan.
    buckets: BucketLists,
    /// The node ids of the packed versions.
    nodes: NodeTable,
    builder: Builder,
    digest: Digest,
    tombstones: usize,
    max_version: Option<Version>,
    /// The number of changes applied so far: each change's [`Seq`].
    seq: Seq,
    /// Tombstones by the seq of the change that wrote them.
    tombstone_index: TombstoneIndex,
    /// Tombstones collected lately, so that an older copy coming back is a no-op.
    collected: CollectedMemory,
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(&self, key: &str) -> Option<&Slot> {
        self.slots.get(key.as_bytes())
    }

    /// The register of `key`, tombstones included.
    pub fn get(&self, key: &str) -> Option<Register> {
        self.slot(key).map(|slot| self.register(slot))
    }

    /// The version of `key`'s register, tombstones included.
    pub fn version(&self, key: &str) -> Option<Version> {
        self.slot(key).map(|slot| self.nodes.unpack(slot.version()))
    }

    /// The version and value of `key` (value `None`: a tombstone): what a read returns.
    /// The value shares the store's allocation; nothing is copied.
    pub fn read(&self, key: &str) -> Option<(Version, Option<Bytes>)> {
        self.slot(key)
            .map(|slot| (self.nodes.unpack(slot.version()), slot.value()))
    }

    /// The key's current entry, tombstones included.
    pub fn entry(&self, key: &str) -> Option<Entry> {
        self.slot(key).map(|slot| self.entry_of(slot))
    }

    fn register(&self, slot: &Slot) -> Register {
        Register {
            val: Cell {
                value: slot.value(),
                replaces: slot.replaces().map(|packed| self.nodes.unpack(packed)),
            },
            marker: self.nodes.unpack(slot.version()),
        }
    }

    fn entry_of(&self, slot: &Slot) -> Entry {
        let (key, register) = (slot.key().to_owned(), self.register(slot));
        Entry {
            key,
            version: register.marker,
            value: register.val.value,
            replaces: register.val.replaces,
        }
    }

    /// The version of `key`'s tombstone if it was collected lately and nothing newer
    /// was written since (the key is then absent).
    pub fn collected_version(&self, key: &str) -> Option<Version> {
        self.collected.version(key).cloned()
    }

    /// Merges one entry: it replaces the key's register if its version is larger. An
    /// entry for an absent key whose tombstone was collected lately, at this version or
    /// a newer one, is [`Merged::Stale`] too.
    pub fn merge(&mut self, entry: Entry) -> Merged {
        let Entry {
            key,
            version,
            value,
            replaces,
        } = entry;
        let previous = match self.slot(&key) {
            Some(current) if self.nodes.cmp(current.version(), &version).is_ge() => {
                return Merged::Stale
            }
            Some(current) => Some(current.clone()),
            None => {
                if self.collected.covers(&key, &version) {
                    return Merged::Stale;
                }
                self.collected.forget(&key);
                None
            }
        };
        let (bucket, tag) = digest::bucket_and_tag(&key);
        if let Some(previous) = &previous {
            self.forget(bucket, previous);
            if previous.is_tombstone() {
                self.tombstone_index.remove(&key);
            }
        }
        let packed = self.nodes.pack(&version);
        let replaces = replaces.map(|replaces| self.nodes.pack(&replaces));
        let slot = self.builder.slot(&key, packed, replaces, value.as_deref());
        self.slots.replace(slot.clone());
        self.buckets.put(bucket, tag, slot);
        self.seq += 1;
        let tombstone = value.is_none();
        if tombstone {
            self.tombstone_index
                .insert(Arc::from(key.as_str()), self.seq);
        }
        self.digest
            .toggle(bucket, digest::entry_hash(&key, &version, tombstone));
        self.tombstones += tombstone as usize;
        if self.max_version.as_ref() < Some(&version) {
            self.max_version = Some(version);
        }
        Merged::Applied {
            previous: previous.map(|slot| self.register(&slot)),
        }
    }

    /// The [`Seq`] of the last change applied (0: none). Every tombstone held now was
    /// written at or below it.
    pub fn seq(&self) -> Seq {
        self.seq
    }

    /// Whether some tombstone was written at or below `horizon`.
    pub fn has_collectable(&self, horizon: Seq) -> bool {
        self.tombstone_index.any_below(horizon)
    }

    /// Drops up to `max` tombstones written at or below `horizon`, oldest first, and
    /// remembers them (see [`collect`]); returns how many it dropped. The caller
    /// guarantees that every node holds each of them or a newer version of its key.
    pub fn collect(&mut self, horizon: Seq, max: usize) -> usize {
        let keys = self.tombstone_index.below(horizon, max);
        for key in &keys {
            let Some(slot) = self.slots.take(key.as_bytes()) else {
                continue;
            };
            let (bucket, tag) = digest::bucket_and_tag(key);
            self.forget(bucket, &slot);
            self.buckets.remove(bucket, tag, key);
            self.tombstone_index.remove(key);
            let version = self.nodes.unpack(slot.version());
            self.collected.remember(key.clone(), version);
        }
        keys.len()
    }

    /// An empty store that remembers at most `capacity` collected tombstones (tests use
    /// 0 to show that safety does not rest on that memory).
    pub fn with_collected_memory(capacity: usize) -> Self {
        Self {
            collected: CollectedMemory::new(capacity),
            ..Self::default()
        }
    }

    /// The digest hash of a held register.
    fn hash_of(&self, slot: &Slot) -> u64 {
        let version = slot.version();
        digest::entry_hash_parts(
            slot.key(),
            version.wall_ms,
            version.logical,
            self.nodes.id(version.node).as_str(),
            slot.is_tombstone(),
        )
    }

    /// Counts a register out of the digest and the counters.
    fn forget(&mut self, bucket: BucketId, slot: &Slot) {
        self.digest.toggle(bucket, self.hash_of(slot));
        self.tombstones -= slot.is_tombstone() as usize;
    }

    /// Merges every register of `other` into `self` (state-based merge of whole stores).
    pub fn merge_store(&mut self, other: &Store) {
        for entry in other.entries() {
            self.merge(entry);
        }
    }

    /// Every entry, in key order. Walks the map: for tests and tools, not request paths.
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        self.slots.iter().map(|slot| self.entry_of(slot))
    }

    /// Slots from `start` on, in key order, while their keys start with `prefix`.
    fn slots_from<'a>(
        &'a self,
        start: Bound<&'a str>,
        prefix: &'a str,
    ) -> impl Iterator<Item = &'a Slot> + 'a {
        let start = start.map(str::as_bytes);
        self.slots
            .range::<[u8], _>((start, Bound::Unbounded))
            .take_while(move |slot| slot.key_bytes().starts_with(prefix.as_bytes()))
    }

    /// Live keys (tombstones skipped) starting with `prefix` and, if given, strictly
    /// after `start_after`, in key order, at most `limit` of them; the flag says whether
    /// more matched.
    pub fn scan(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> (Vec<Entry>, bool) {
        let start = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let mut items = Vec::new();
        let live = self
            .slots_from(start, prefix)
            .filter(|slot| !slot.is_tombstone());
        for slot in live {
            if items.len() == limit {
                return (items, true);
            }
            items.push(self.entry_of(slot));
        }
        (items, false)
    }

    /// Entries under `prefix` (tombstones included) whose version is newer than
    /// `after`, in key order, at most `limit` of them; the flag says whether more
    /// matched. Walks every key under the prefix: for resuming a watch, not hot paths.
    pub fn newer_than(&self, prefix: &str, after: &Version, limit: usize) -> (Vec<Entry>, bool) {
        let mut items = Vec::new();
        let newer = self
            .slots_from(Bound::Included(prefix), prefix)
            .filter(|slot| self.nodes.cmp(slot.version(), after).is_gt());
        for slot in newer {
            if items.len() == limit {
                return (items, true);
            }
            items.push(self.entry_of(slot));
        }
        (items, false)
    }

    /// The digest tree.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// `(key, version)` for every register in `bucket`, in no particular order.
    pub fn bucket_versions(&self, bucket: BucketId) -> impl Iterator<Item = (&str, Version)> + '_ {
        self.buckets
            .list(bucket)
            .map(|slot| (slot.key(), self.nodes.unpack(slot.version())))
    }

    /// Counts and root hash.
    pub fn summary(&self) -> Summary {
        Summary {
            keys: self.slots.len() - self.tombstones,
            tombstones: self.tombstones,
            digest: self.digest.root(),
            max_version: self.max_version.clone(),
        }
    }

    /// The root hash, recomputed from scratch. For tests of the incremental digest.
    pub fn recompute_root(&self) -> u64 {
        self.slots
            .iter()
            .fold(0, |root, slot| root ^ self.hash_of(slot))
    }
}

/// The slots of each digest bucket, each list ordered by the keys' tags
/// ([`digest::bucket_and_tag`]), then keys: finding a key compares integers held in the
/// list, and reads a slot only for the key whose tag matches.
#[derive(Debug, Default, Clone)]
struct BucketLists(Vec<Vec<(u32, Slot)>>);

impl BucketLists {
    /// Where `key` (tagged `tag`) is in `list`, or would go. Tags are uniform over
    /// `u32` (hash bits), so the search starts where the tag's share of the list puts
    /// it and gallops from there: a few neighbouring cache lines instead of a binary
    /// search's jumps across the whole list.
    fn find(list: &[(u32, Slot)], tag: u32, key: &[u8]) -> Result<usize, usize> {
        let order =
            |(held, slot): &(u32, Slot)| held.cmp(&tag).then_with(|| slot.key_bytes().cmp(key));
        let guess = ((u64::from(tag) * list.len() as u64) >> 32) as usize;
        let (mut low, mut high) = (0, list.len());
        if guess < list.len() && order(&list[guess]).is_lt() {
            // The key is after `guess`: double the step until an element is not less.
            let mut step = 1;
            low = guess + 1;
            while low + step <= list.len() && order(&list[low + step - 1]).is_lt() {
                low += step;
                step *= 2;
            }
            high = (low + step).min(list.len());
        } else if guess < list.len() {
            // At or before `guess`: double the step back until an element is less.
            let mut step = 1;
            high = guess + 1;
            while high > step && !order(&list[high - step - 1]).is_lt() {
                high -= step;
                step *= 2;
            }
            low = high.saturating_sub(step);
        }
        list[low..high]
            .binary_search_by(order)
            .map(|at| low + at)
            .map_err(|at| low + at)
    }

    /// Holds `slot` (whose key has `tag`) in `bucket`, in place of its key's old slot.
    fn put(&mut self, bucket: BucketId, tag: u32, slot: Slot) {
        if self.0.is_empty() {
            self.0.resize_with(digest::BUCKETS, Vec::new);
        }
        let list = &mut self.0[bucket as usize];
        match Self::find(list, tag, slot.key_bytes()) {
            Ok(at) => list[at].1 = slot,
            Err(at) => {
                // Grow by an eighth, not by doubling: together these lists hold every key.
                if list.len() == list.capacity() {
                    list.reserve_exact((list.len() / 8).max(4));
                }
                list.insert(at, (tag, slot));
            }
        }
    }

    /// Drops `key` (whose tag is `tag`) from `bucket`.
    fn remove(&mut self, bucket: BucketId, tag: u32, key: &str) {
        let Some(list) = self.0.get_mut(bucket as usize) else {
            return;
        };
        if let Ok(at) = Self::find(list, tag, key.as_bytes()) {
            list.remove(at);
            if list.capacity() > 2 * list.len() + 8 {
                list.shrink_to(list.len() + list.len() / 8);
            }
        }
    }

    /// The slots of `bucket`.
    fn list(&self, bucket: BucketId) -> impl Iterator<Item = &Slot> + '_ {
        self.0
            .get(bucket as usize)
            .into_iter()
            .flatten()
            .map(|(_, slot)| slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{NodeId, Timestamp};
    use crdts::CvRDT;
    use proptest::prelude::*;

    fn version(wall_ms: u64, node: &str) -> Version {
        Version {
            timestamp: Timestamp {
                wall_ms,
                logical: 0,
            },
            node: NodeId::new(node).unwrap(),
        }
    }

    fn put(key: &str, wall_ms: u64, node: &str, value: Option<&str>) -> Entry {
        Entry {
            key: key.into(),
            version: version(wall_ms, node),
            value: value.map(|text| Bytes::copy_from_slice(text.as_bytes())),
            replaces: None,
        }
    }

    fn value_of(store: &Store, key: &str) -> Option<Bytes> {
        store
            .get(key)
            .and_then(|register| register.val.value.clone())
    }

    #[test]
    fn newer_than_keeps_tombstones_and_the_prefix() {
        let mut store = Store::new();
        store.merge(put("a/1", 1, "n1", Some("old")));
        store.merge(put("a/2", 3, "n1", None));
        store.merge(put("a/3", 4, "n2", Some("new")));
        store.merge(put("b/1", 5, "n1", Some("other")));
        let (items, more) = store.newer_than("a/", &version(2, "n1"), 10);
        let keys: Vec<_> = items.iter().map(|entry| entry.key.as_str()).collect();
        assert_eq!((keys, more), (vec!["a/2", "a/3"], false));
        assert_eq!(items[0].value, None);
        let (items, more) = store.newer_than("a/", &version(0, "n1"), 2);
        assert_eq!((items.len(), more), (2, true));
    }

    #[test]
    fn later_version_wins_regardless_of_arrival_order() {
        let mut store = Store::new();
        assert_eq!(
            store.merge(put("k", 2, "n1", Some("new"))),
            Merged::Applied { previous: None }
        );
        assert_eq!(store.merge(put("k", 1, "n2", Some("old"))), Merged::Stale);
        assert_eq!(value_of(&store, "k").as_deref(), Some(&b"new"[..]));
        // Same timestamp: the node id breaks the tie.
        let merged = store.merge(put("k", 2, "n2", Some("tie")));
        assert!(
            matches!(merged, Merged::Applied { previous: Some(ref p) } if p.val.value.as_deref() == Some(&b"new"[..]))
        );
        assert_eq!(value_of(&store, "k").as_deref(), Some(&b"tie"[..]));
    }

    #[test]
    fn merging_the_same_entry_twice_is_a_no_op() {
        let mut store = Store::new();
        store.merge(put("k", 1, "n1", Some("v")));
        let before = store.summary();
        assert_eq!(store.merge(put("k", 1, "n1", Some("v"))), Merged::Stale);
        assert_eq!(store.summary(), before);
    }

    #[test]
    fn tombstones_hide_values_and_are_counted() {
        let mut store = Store::new();
        store.merge(put("a", 1, "n1", Some("1")));
        store.merge(put("b", 1, "n1", Some("2")));
        store.merge(put("a", 2, "n1", None));
        let summary = store.summary();
        assert_eq!((summary.keys, summary.tombstones), (1, 1));
        assert_eq!(summary.max_version, Some(version(2, "n1")));
        let (items, truncated) = store.scan("", None, 10);
        assert_eq!(
            items.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        assert!(!truncated);
        // A stale value cannot resurrect the deleted key.
        assert_eq!(
            store.merge(put("a", 1, "n2", Some("zombie"))),
            Merged::Stale
        );
        // A newer write can.
        store.merge(put("a", 3, "n2", Some("back")));
        assert_eq!(store.summary().tombstones, 0);
    }

    #[test]
    fn scan_honours_prefix_order_and_limit() {
        let mut store = Store::new();
        for key in ["user/2", "user/1", "users", "admin", "user/3"] {
            store.merge(put(key, 1, "n1", Some("v")));
        }
        let keys = |items: &[Entry]| items.iter().map(|e| e.key.clone()).collect::<Vec<_>>();
        let (items, truncated) = store.scan("user/", None, 2);
        assert_eq!(keys(&items), ["user/1", "user/2"]);
        assert!(truncated);
        // The next page starts strictly after the last key of this one.
        let (items, truncated) = store.scan("user/", Some("user/2"), 2);
        assert_eq!(keys(&items), ["user/3"]);
        assert!(!truncated);
        let (items, truncated) = store.scan("user/", None, 3);
        assert_eq!(items.len(), 3);
        assert!(!truncated);
        // A cursor before the prefix starts at the prefix; one past it yields nothing.
        assert_eq!(keys(&store.scan("user/", Some("a"), 10).0).len(), 3);
        assert!(store.scan("user/", Some("user/9"), 10).0.is_empty());
    }

    #[test]
    fn bucket_index_lists_exactly_the_bucket() {
        let mut store = Store::new();
        for i in 0..200 {
            store.merge(put(&format!("k{i}"), 1, "n1", Some("v")));
        }
        let bucket = digest::bucket_of("k7");
        let listed: Vec<&str> = store.bucket_versions(bucket).map(|(key, _)| key).collect();
        assert!(listed.contains(&"k7"));
        assert!(listed.iter().all(|key| digest::bucket_of(key) == bucket));
    }

    #[test]
    fn changes_are_numbered_and_tombstones_indexed_by_their_change() {
        let mut store = Store::new();
        assert_eq!(store.seq(), 0);
        store.merge(put("a", 1, "n1", Some("1")));
        store.merge(put("b", 1, "n1", None));
        assert_eq!(store.seq(), 2);
        // A stale merge is no change.
        store.merge(put("a", 0, "n1", Some("0")));
        assert_eq!(store.seq(), 2);
        store.merge(put("a", 2, "n1", None));
        assert_eq!(store.seq(), 3);
        assert_eq!(store.tombstone_index.len(), 2);
        assert!(!store.has_collectable(1));
        assert!(store.has_collectable(2));
        // Below horizon 2 only b's tombstone (change 2) is collectable.
        assert_eq!(store.collect(2, 100), 1);
        assert!(store.get("b").is_none());
        assert!(store.get("a").is_some());
        // A value written over a tombstone takes it out of the index.
        store.merge(put("a", 3, "n1", Some("back")));
        assert_eq!(store.tombstone_index.len(), 0);
        assert_eq!(store.collect(u64::MAX, 100), 0);
        assert_eq!(store.summary().tombstones, 0);
    }

    #[test]
    fn collection_keeps_digest_index_and_counts_exact_and_works_in_slices() {
        let mut store = Store::new();
        for i in 0..50 {
            store.merge(put(&format!("k{i}"), 1, "n1", Some("v")));
        }
        for i in 0..30 {
            store.merge(put(&format!("k{i}"), 2, "n1", None));
        }
        let horizon = store.seq();
        assert_eq!(store.collect(horizon, 8), 8, "one slice");
        assert_eq!(store.summary().tombstones, 22);
        let mut rounds = 1;
        while store.collect(horizon, 8) > 0 {
            rounds += 1;
        }
        assert_eq!(rounds, 4);
        let summary = store.summary();
        assert_eq!((summary.keys, summary.tombstones), (20, 0));
        assert_eq!(summary.digest, store.recompute_root());
        // The result is the store that never held the deleted keys.
        let mut fresh = Store::new();
        for i in 30..50 {
            fresh.merge(put(&format!("k{i}"), 1, "n1", Some("v")));
        }
        assert_eq!(store.digest(), fresh.digest());
        for bucket in 0..digest::BUCKETS as BucketId {
            let mut ours: Vec<_> = store.bucket_versions(bucket).collect();
            let mut theirs: Vec<_> = fresh.bucket_versions(bucket).collect();
            ours.sort();
            theirs.sort();
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn a_collected_tombstone_turns_older_copies_away_but_not_newer_writes() {
        let mut store = Store::new();
        store.merge(put("k", 1, "n1", Some("old")));
        store.merge(put("k", 5, "n2", None));
        store.collect(store.seq(), 10);
        assert_eq!(store.collected.len(), 1);
        // The same tombstone pushed back by a peer that still holds it, or an older
        // value still in flight: no-ops.
        assert_eq!(store.merge(put("k", 5, "n2", None)), Merged::Stale);
        assert_eq!(store.merge(put("k", 1, "n1", Some("old"))), Merged::Stale);
        assert!(store.get("k").is_none());
        // A newer write is a write.
        assert!(matches!(
            store.merge(put("k", 6, "n3", Some("new"))),
            Merged::Applied { previous: None }
        ));
        assert_eq!(store.collected.len(), 0);
    }

    #[test]
    fn the_memory_of_collected_tombstones_is_bounded_oldest_first() {
        let mut store = Store::with_collected_memory(2);
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            store.merge(put(key, 1, "n1", None));
            store.collect(store.seq(), 10);
            assert_eq!(store.collected.len(), (i + 1).min(2));
        }
        // `a` was forgotten: its old tombstone comes back as a tombstone (harmless,
        // and collected again later); `b` and `c` are still remembered.
        assert!(matches!(
            store.merge(put("a", 1, "n1", None)),
            Merged::Applied { .. }
        ));
        assert_eq!(store.merge(put("b", 1, "n1", None)), Merged::Stale);
        assert_eq!(store.merge(put("c", 1, "n1", None)), Merged::Stale);
        let mut none = Store::with_collected_memory(0);
        none.merge(put("k", 1, "n1", None));
        none.collect(1, 1);
        assert!(matches!(
            none.merge(put("k", 1, "n1", None)),
            Merged::Applied { .. }
        ));
    }

    // ---- CRDT laws, property-tested -------------------------------------------------

    fn arb_entry() -> impl Strategy<Value = Entry> {
        // Few keys, timestamps and nodes, so that collisions and ties are frequent.
        // A real node never reuses a version for another value, so the value (or
        // tombstone) is a function of the version here too.
        (0..6u8, 0..8u64, 0..3u32, 0..3u8).prop_map(|(key, wall_ms, logical, node)| {
            let version = Version {
                timestamp: Timestamp { wall_ms, logical },
                node: NodeId::new(format!("n{node}")).unwrap(),
            };
            let value = (logical != 0).then(|| Bytes::from(format!("v{version}")));
            // What the writer had seen is a function of the write, like its value.
            let replaces = (wall_ms > 0).then(|| Version {
                timestamp: Timestamp {
                    wall_ms: wall_ms - 1,
                    logical,
                },
                node: version.node.clone(),
            });
            Entry {
                key: format!("k{key}"),
                version,
                value,
                replaces,
            }
        })
    }

    fn register(entry: &Entry) -> Register {
        entry.clone().into_register().1
    }

    fn merged(mut a: Register, b: Register) -> Register {
        a.merge(b);
        a
    }

    fn store_of(entries: &[Entry]) -> Store {
        let mut store = Store::new();
        for entry in entries {
            store.merge(entry.clone());
        }
        store
    }

    fn contents(store: &Store) -> Vec<Entry> {
        store.entries().collect()
    }

    proptest! {
        #[test]
        fn register_merge_is_commutative(a in arb_entry(), b in arb_entry()) {
            let (a, b) = (register(&a), register(&b));
            prop_assert_eq!(merged(a.clone(), b.clone()), merged(b, a));
        }

        #[test]
        fn register_merge_is_associative(a in arb_entry(), b in arb_entry(), c in arb_entry()) {
            let (a, b, c) = (register(&a), register(&b), register(&c));
            prop_assert_eq!(
                merged(merged(a.clone(), b.clone()), c.clone()),
                merged(a, merged(b, c))
            );
        }

        #[test]
        fn register_merge_is_idempotent(a in arb_entry()) {
            let a = register(&a);
            prop_assert_eq!(merged(a.clone(), a.clone()), a);
        }

        /// Random writes delivered to replicas in different orders and groupings
        /// (some merged entry by entry, some as whole stores) end in equal states.
        #[test]
        fn stores_converge_whatever_the_order_and_grouping(
            entries in proptest::collection::vec(arb_entry(), 0..40),
            seed in any::<u64>(),
            split in 0usize..40,
        ) {
                        // Replica 1: in order.
            let one = store_of(&entries);
            // Replica 2: reversed.
            let mut reversed = entries.clone();
            reversed.reverse();
            let two = store_of(&reversed);
            // Replica 3: shuffled, then split in two stores merged as wholes, one of
            // them fed some entries twice.
            let mut shuffled = entries.clone();
            let mut state = seed | 1;
            for i in (1..shuffled.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                shuffled.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let split = split.min(shuffled.len());
            let mut left = store_of(&shuffled[..split]);
            let mut right = store_of(&shuffled[split..]);
            right.merge_store(&store_of(&shuffled[..split / 2]));
            left.merge_store(&right);
            let three = left;

            prop_assert_eq!(contents(&one), contents(&two));
            prop_assert_eq!(contents(&one), contents(&three));
            prop_assert_eq!(one.summary(), two.summary());
            prop_assert_eq!(one.summary(), three.summary());
            prop_assert_eq!(one.digest(), three.digest());
        }

        /// The galloping search finds what a linear search finds, wherever the tags
        /// put the start (skewed and equal tags included).
        #[test]
        fn bucket_lists_find_like_a_linear_search(
            mut tags in proptest::collection::vec(
                prop_oneof![Just(0u32), Just(u32::MAX), Just(7u32), any::<u32>()], 0..80),
            probe_tag in prop_oneof![Just(0u32), Just(u32::MAX), Just(7u32), any::<u32>()],
            probe_key in 0..100u32,
        ) {
            tags.sort_unstable();
            let slot = |n: u32| Slot::new(&format!("k{n:03}"), slot::Packed { wall_ms: 1, logical: 0, node: 0 }, None, None);
            let list: Vec<(u32, Slot)> = tags.iter().enumerate().map(|(n, &tag)| (tag, slot(n as u32))).collect();
            // Make (tag, key) strictly increasing, as the store keeps it.
            let key = slot(probe_key);
            let expected = match list.iter().position(|(tag, held)| (*tag, held.key_bytes()) >= (probe_tag, key.key_bytes())) {
                Some(at) if (list[at].0, list[at].1.key_bytes()) == (probe_tag, key.key_bytes()) => Ok(at),
                Some(at) => Err(at),
                None => Err(list.len()),
            };
            prop_assert_eq!(BucketLists::find(&list, probe_tag, key.key_bytes()), expected);
        }

        /// Every register is listed once, in its bucket, at its version.
        #[test]
        fn bucket_lists_hold_every_register_once(
            entries in proptest::collection::vec(arb_entry(), 0..60),
            collect in any::<bool>(),
        ) {
            let mut store = store_of(&entries);
            if collect {
                store.collect(store.seq(), usize::MAX);
            }
            let mut listed: Vec<(String, Version)> = (0..digest::BUCKETS as BucketId)
                .flat_map(|bucket| {
                    store.bucket_versions(bucket).map(move |(key, version)| {
                        assert_eq!(digest::bucket_of(key), bucket);
                        (key.to_owned(), version)
                    }).collect::<Vec<_>>()
                })
                .collect();
            listed.sort();
            let held: Vec<(String, Version)> = store.entries().map(|e| (e.key, e.version)).collect();
            prop_assert_eq!(listed, held);
        }

        /// The incrementally maintained digest and counters equal a fresh computation.
        #[test]
        fn incremental_digest_matches_recomputation(
            entries in proptest::collection::vec(arb_entry(), 0..60),
        ) {
            let store = store_of(&entries);
            prop_assert_eq!(store.summary().digest, store.recompute_root());
            let tombstones = store.entries().filter(|e| e.value.is_none()).count();
            prop_assert_eq!(store.summary().tombstones, tombstones);
            prop_assert_eq!(store.tombstone_index.len(), tombstones);
            let fresh = store_of(&contents(&store));
            prop_assert_eq!(fresh.digest(), store.digest());
        }
    }
}
