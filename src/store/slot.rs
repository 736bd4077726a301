//! One register as the store keeps it: key, versions and value packed in one allocation.
//!
//! Owns: [`Slot`] (the packed register), [`Packed`] (a version whose node is an index)
//! and [`NodeTable`] (node ids as small integers).
//! Knows nothing of: the maps around the slots, the digest, merging rules, I/O.
//!
//! A store holds millions of registers, so their layout is its memory: the key, the
//! value and both versions live in a single `Arc<[u8]>` (one allocation, one header):
//!
//! | field | encoding |
//! | --- | --- |
//! | flags | 1 byte: bit 0 tombstone, bit 1 `replaces` present |
//! | key length, key | LEB128, then the UTF-8 bytes |
//! | version | `wall_ms`, `logical`, node index: LEB128 each |
//! | replaces (if flagged) | the same three |
//! | value | every byte after that (empty for a tombstone) |
//!
//! A version's node id is a [`NodeTable`] index (a cluster has a handful of nodes, so
//! it takes one byte), and LEB128 makes a current `wall_ms` 6 bytes: a version packs
//! into about 8 bytes instead of 32 (`Timestamp` plus an `Arc<str>`). The key comes
//! first so that ordering slots by key (the maps compare keys on every step) only
//! reads the flags and the length. A read hands out the value without copying it: a
//! `Bytes` that keeps the slot alive (`Bytes::from_owner`).
//!
//! Slots are only built here from validated parts and never decoded from outside
//! input, so decoding cannot fail.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::clock::{NodeId, Timestamp, Version};

const TOMBSTONE: u8 = 1;
const HAS_REPLACES: u8 = 2;

/// A version with its node id as a [`NodeTable`] index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Packed {
    pub(super) wall_ms: u64,
    pub(super) logical: u32,
    pub(super) node: u32,
}

/// Node ids seen in versions, each numbered once, in order of first appearance. Ids
/// are never forgotten: the table holds one entry per node that ever wrote a version
/// this store kept (the members of the cluster, past and present).
#[derive(Clone, Debug, Default)]
pub(super) struct NodeTable {
    ids: Vec<NodeId>,
    index: HashMap<NodeId, u32>,
}

impl NodeTable {
    /// `version` with its node numbered (a new node gets the next number).
    pub(super) fn pack(&mut self, version: &Version) -> Packed {
        let node = match self.index.get(&version.node) {
            Some(&index) => index,
            None => {
                let index = u32::try_from(self.ids.len()).expect("fewer than 2^32 node ids");
                self.ids.push(version.node.clone());
                self.index.insert(version.node.clone(), index);
                index
            }
        };
        Packed {
            wall_ms: version.timestamp.wall_ms,
            logical: version.timestamp.logical,
            node,
        }
    }

    /// The node id numbered `index`.
    pub(super) fn id(&self, index: u32) -> &NodeId {
        &self.ids[index as usize]
    }

    /// The version `packed` stands for.
    pub(super) fn unpack(&self, packed: Packed) -> Version {
        Version {
            timestamp: Timestamp {
                wall_ms: packed.wall_ms,
                logical: packed.logical,
            },
            node: self.id(packed.node).clone(),
        }
    }

    /// Orders a packed version against a version, as [`Version`]'s `Ord` does
    /// (timestamp, then node id), without unpacking it.
    pub(super) fn cmp(&self, packed: Packed, version: &Version) -> Ordering {
        (packed.wall_ms, packed.logical)
            .cmp(&(version.timestamp.wall_ms, version.timestamp.logical))
            .then_with(|| self.id(packed.node).cmp(&version.node))
    }
}

/// One key's register, packed (see the module header). Cloning shares it. Slots are
/// ordered, and compared, by key alone: a map of slots is a map by key.
#[derive(Clone)]
pub(super) struct Slot(Arc<[u8]>);

/// Where the fields of a slot are.
struct Layout {
    version: Packed,
    replaces: Option<Packed>,
    value_start: usize,
}

/// Builds slots through one reused buffer: a slot is then one allocation and one copy.
#[derive(Clone, Default)]
pub(super) struct Builder(Vec<u8>);

impl Builder {
    /// Buffers larger than this are not kept between slots.
    const KEEP_BYTES: usize = 4096;

    /// Packs a register. `value` `None` is a tombstone.
    pub(super) fn slot(
        &mut self,
        key: &str,
        version: Packed,
        replaces: Option<Packed>,
        value: Option<&[u8]>,
    ) -> Slot {
        let mut bytes = std::mem::take(&mut self.0);
        bytes.clear();
        Slot::encode(&mut bytes, key, version, replaces, value);
        let slot = Slot(Arc::from(&bytes[..]));
        if bytes.capacity() <= Self::KEEP_BYTES {
            self.0 = bytes;
        }
        slot
    }
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Builder({} bytes)", self.0.capacity())
    }
}

impl Slot {
    /// Packs a register. `value` `None` is a tombstone.
    #[cfg(test)]
    pub(super) fn new(
        key: &str,
        version: Packed,
        replaces: Option<Packed>,
        value: Option<&[u8]>,
    ) -> Self {
        Builder::default().slot(key, version, replaces, value)
    }

    fn encode(
        bytes: &mut Vec<u8>,
        key: &str,
        version: Packed,
        replaces: Option<Packed>,
        value: Option<&[u8]>,
    ) {
        let value_len = value.map_or(0, <[u8]>::len);
        bytes.reserve(1 + 5 + key.len() + 2 * 21 + value_len);
        let flags = if value.is_none() { TOMBSTONE } else { 0 }
            | if replaces.is_some() { HAS_REPLACES } else { 0 };
        bytes.push(flags);
        put_varint(bytes, key.len() as u64);
        bytes.extend_from_slice(key.as_bytes());
        put_packed(bytes, version);
        if let Some(replaces) = replaces {
            put_packed(bytes, replaces);
        }
        bytes.extend_from_slice(value.unwrap_or_default());
    }

    fn flags(&self) -> u8 {
        self.0[0]
    }

    /// The key's bytes and the offset just after them.
    fn key_span(&self) -> (usize, usize) {
        let mut at = 1;
        let len = get_varint(&self.0, &mut at) as usize;
        (at, at + len)
    }

    /// The key, as bytes.
    pub(super) fn key_bytes(&self) -> &[u8] {
        let (start, end) = self.key_span();
        &self.0[start..end]
    }

    /// The key.
    pub(super) fn key(&self) -> &str {
        std::str::from_utf8(self.key_bytes()).expect("a slot's key was a str")
    }

    fn layout(&self) -> Layout {
        let mut at = self.key_span().1;
        let version = get_packed(&self.0, &mut at);
        let replaces = (self.flags() & HAS_REPLACES != 0).then(|| get_packed(&self.0, &mut at));
        Layout {
            version,
            replaces,
            value_start: at,
        }
    }

    /// The version that wrote this state.
    pub(super) fn version(&self) -> Packed {
        let mut at = self.key_span().1;
        get_packed(&self.0, &mut at)
    }

    /// The version the writer replaced.
    pub(super) fn replaces(&self) -> Option<Packed> {
        self.layout().replaces
    }

    /// Whether this is a tombstone.
    pub(super) fn is_tombstone(&self) -> bool {
        self.flags() & TOMBSTONE != 0
    }

    /// The value (`None`: a tombstone), sharing the slot's allocation: no copy.
    pub(super) fn value(&self) -> Option<Bytes> {
        if self.is_tombstone() {
            return None;
        }
        let start = self.layout().value_start;
        if start == self.0.len() {
            return Some(Bytes::new());
        }
        Some(Bytes::from_owner(ValueOf {
            slot: self.0.clone(),
            start,
        }))
    }

    /// The value's length (0 for a tombstone).
    pub(super) fn value_len(&self) -> usize {
        self.0.len() - self.layout().value_start
    }
}

/// The value part of a slot, as the owner of a `Bytes`.
struct ValueOf {
    slot: Arc<[u8]>,
    start: usize,
}

impl AsRef<[u8]> for ValueOf {
    fn as_ref(&self) -> &[u8] {
        &self.slot[self.start..]
    }
}

impl Borrow<[u8]> for Slot {
    fn borrow(&self) -> &[u8] {
        self.key_bytes()
    }
}

impl PartialEq for Slot {
    fn eq(&self, other: &Self) -> bool {
        self.key_bytes() == other.key_bytes()
    }
}

impl Eq for Slot {}

impl PartialOrd for Slot {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Slot {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key_bytes().cmp(other.key_bytes())
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let layout = self.layout();
        f.debug_struct("Slot")
            .field("key", &self.key())
            .field("version", &layout.version)
            .field("replaces", &layout.replaces)
            .field("tombstone", &self.is_tombstone())
            .field("value_len", &self.value_len())
            .finish()
    }
}

fn put_varint(bytes: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        bytes.push(n as u8 | 0x80);
        n >>= 7;
    }
    bytes.push(n as u8);
}

fn get_varint(bytes: &[u8], at: &mut usize) -> u64 {
    let mut n = 0u64;
    let mut shift = 0;
    loop {
        let byte = bytes[*at];
        *at += 1;
        n |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return n;
        }
        shift += 7;
    }
}

fn put_packed(bytes: &mut Vec<u8>, packed: Packed) {
    put_varint(bytes, packed.wall_ms);
    put_varint(bytes, packed.logical.into());
    put_varint(bytes, packed.node.into());
}

fn get_packed(bytes: &[u8], at: &mut usize) -> Packed {
    Packed {
        wall_ms: get_varint(bytes, at),
        logical: get_varint(bytes, at) as u32,
        node: get_varint(bytes, at) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn packed(wall_ms: u64, logical: u32, node: u32) -> Packed {
        Packed {
            wall_ms,
            logical,
            node,
        }
    }

    proptest! {
        /// Whatever goes in comes out, at the extremes of every field too.
        #[test]
        fn a_slot_gives_back_what_it_was_built_from(
            key in "\\PC{0,40}",
            wall_ms in prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
            logical in prop_oneof![Just(0u32), Just(u32::MAX), any::<u32>()],
            node in prop_oneof![Just(0u32), Just(u32::MAX), any::<u32>()],
            replaces in proptest::option::of((any::<u64>(), any::<u32>(), any::<u32>())),
            value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        ) {
            let version = packed(wall_ms, logical, node);
            let replaces = replaces.map(|(w, l, n)| packed(w, l, n));
            let slot = Slot::new(&key, version, replaces, value.as_deref());
            prop_assert_eq!(slot.key(), key.as_str());
            prop_assert_eq!(slot.version(), version);
            prop_assert_eq!(slot.replaces(), replaces);
            prop_assert_eq!(slot.is_tombstone(), value.is_none());
            let held = slot.value();
            prop_assert_eq!(held.as_deref(), value.as_deref());
            prop_assert_eq!(slot.value_len(), value.map_or(0, |v| v.len()));
        }
    }

    #[test]
    fn slots_order_by_key_bytes_like_str() {
        let slot = |key| Slot::new(key, packed(1, 0, 0), None, Some(b"v"));
        let mut slots = [slot("b"), slot("ab"), slot("a"), slot("é"), slot("")];
        slots.sort();
        let keys: Vec<&str> = slots.iter().map(Slot::key).collect();
        let mut expected = ["b", "ab", "a", "é", ""];
        expected.sort();
        assert_eq!(keys, expected);
    }

    #[test]
    fn a_value_outlives_its_slot() {
        let slot = Slot::new("k", packed(1, 0, 0), None, Some(b"value"));
        let value = slot.value().unwrap();
        drop(slot);
        assert_eq!(&value[..], b"value");
    }

    #[test]
    fn packed_versions_order_like_versions() {
        let mut nodes = NodeTable::default();
        let version = |wall_ms, logical, node: &str| Version {
            timestamp: Timestamp { wall_ms, logical },
            node: NodeId::new(node).unwrap(),
        };
        // Numbered in the opposite order to their names: the index must not decide.
        let versions = [
            version(2, 0, "n2"),
            version(2, 0, "n1"),
            version(1, 5, "n3"),
            version(2, 1, "n1"),
        ];
        for a in &versions {
            let packed = nodes.pack(a);
            assert_eq!(&nodes.unpack(packed), a);
            for b in &versions {
                assert_eq!(nodes.cmp(packed, b), a.cmp(b), "{a} against {b}");
            }
        }
        assert_eq!(nodes.pack(&version(9, 9, "n2")).node, 0);
    }
}
