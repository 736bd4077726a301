//! The payload of a frame: one [`Message`] in the protocol's own compact binary form.
//!
//! Owns: [`encode`] and [`decode`], byte for byte the layout below.
//! Knows nothing of: framing and authentication (that is [`super::codec`]), sockets,
//! what the messages mean.
//!
//! # Layout
//! A payload is a one-byte message tag (the order of [`Message::KINDS`], from 0) and the
//! message's fields in declaration order, with:
//!
//! | field | bytes |
//! | --- | --- |
//! | counts, lengths, `u16`/`u32`/`u64` counters, bucket ids | LEB128 varint |
//! | hashes and digests (`u64`, uniformly spread) | 8, little-endian |
//! | strings, byte values | varint length, then the bytes |
//! | lists | varint count, then the items |
//!
//! Lists of versions (`Push` and `Entries` entries, `BucketVersions` versions) share
//! what their versions repeat: a table of the node ids they name, and the smallest
//! `wall_ms` among them. Each version is then `wall_ms - base`, `logical` and an index
//! into the table, three varints (about 4 bytes), and the version an entry replaced
//! is written relative to the entry's own (a zig-zag varint of the difference). An
//! entry is a flag byte (bit 0: a value, bit 1: a replaced version), its key, its
//! version, its value and its replaced version: about 10 bytes besides the key and
//! the value for a fresh write. (MessagePack through serde, with enum variants by
//! name and every version whole, spent about 36.)
//!
//! Decoding checks every length against the bytes left before allocating, every node
//! id and string, and that nothing is left over: a payload decodes to one message or
//! is refused.

use bytes::{BufMut, Bytes, BytesMut};

use super::Message;
use crate::clock::{NodeId, Timestamp, Version};
use crate::store::{BucketId, Entry};

/// Why a payload does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload ends inside a field.
    #[error("the payload ends early")]
    Truncated,
    /// The first byte names no message.
    #[error("unknown message tag {0:#04x}{hint}", hint = if *.0 == 0x81 { " (a MessagePack frame: the peer speaks protocol 2 or older)" } else { "" })]
    UnknownTag(u8),
    /// A field holds a value its type cannot take.
    #[error("bad {0}")]
    Invalid(&'static str),
    /// Bytes follow the message.
    #[error("{0} bytes after the message")]
    Trailing(usize),
}

const TAG_HELLO: u8 = 0;
const TAG_WELCOME: u8 = 1;
const TAG_REFUSE: u8 = 2;
const TAG_PING: u8 = 3;
const TAG_PONG: u8 = 4;
const TAG_PUSH: u8 = 5;
const TAG_PUSH_ACK: u8 = 6;
const TAG_SYNC_ROOT: u8 = 7;
const TAG_IN_SYNC: u8 = 8;
const TAG_SYNC_GROUPS: u8 = 9;
const TAG_SYNC_BUCKETS: u8 = 10;
const TAG_BUCKET_VERSIONS: u8 = 11;
const TAG_FETCH: u8 = 12;
const TAG_ENTRIES: u8 = 13;
const TAG_SUMMARIZE: u8 = 14;
const TAG_SUMMARY: u8 = 15;

const HAS_VALUE: u8 = 1;
const HAS_REPLACES: u8 = 2;

/// Appends the payload of `message` to `out`.
pub fn encode(message: &Message, out: &mut BytesMut) {
    match message {
        Message::Hello {
            protocol,
            cluster,
            from,
            to,
        } => {
            out.put_u8(TAG_HELLO);
            put_varint(out, u64::from(*protocol));
            put_str(out, cluster);
            put_str(out, from.as_str());
            put_str(out, to.as_str());
        }
        Message::Welcome => out.put_u8(TAG_WELCOME),
        Message::Refuse { reason } => {
            out.put_u8(TAG_REFUSE);
            put_str(out, reason);
        }
        Message::Ping => out.put_u8(TAG_PING),
        Message::Pong => out.put_u8(TAG_PONG),
        Message::Push { entries } => {
            out.put_u8(TAG_PUSH);
            put_entries(out, entries);
        }
        Message::PushAck { refused } => {
            out.put_u8(TAG_PUSH_ACK);
            put_strs(out, refused);
        }
        Message::SyncRoot { root } => {
            out.put_u8(TAG_SYNC_ROOT);
            out.put_u64_le(*root);
        }
        Message::InSync => out.put_u8(TAG_IN_SYNC),
        Message::SyncGroups { groups } => {
            out.put_u8(TAG_SYNC_GROUPS);
            put_varint(out, groups.len() as u64);
            for hash in groups {
                out.put_u64_le(*hash);
            }
        }
        Message::SyncBuckets { buckets } => {
            out.put_u8(TAG_SYNC_BUCKETS);
            put_varint(out, buckets.len() as u64);
            for (bucket, hash) in buckets {
                put_varint(out, u64::from(*bucket));
                out.put_u64_le(*hash);
            }
        }
        Message::BucketVersions {
            covered,
            versions,
            remaining,
        } => {
            out.put_u8(TAG_BUCKET_VERSIONS);
            put_buckets(out, covered);
            let table =
                VersionTable::of(versions.iter().map(|(_, version)| version), [].into_iter());
            table.put(out);
            put_varint(out, versions.len() as u64);
            for (key, version) in versions {
                put_str(out, key);
                table.put_version(out, version);
            }
            put_buckets(out, remaining);
        }
        Message::Fetch { keys } => {
            out.put_u8(TAG_FETCH);
            put_strs(out, keys);
        }
        Message::Entries { entries, served } => {
            out.put_u8(TAG_ENTRIES);
            put_entries(out, entries);
            put_varint(out, u64::from(*served));
        }
        Message::Summarize => out.put_u8(TAG_SUMMARIZE),
        Message::Summary {
            keys,
            tombstones,
            digest,
        } => {
            out.put_u8(TAG_SUMMARY);
            put_varint(out, *keys);
            put_varint(out, *tombstones);
            out.put_u64_le(*digest);
        }
    }
}

/// The message of a whole payload.
///
/// Values are copied out, each into an allocation of its own size: a value sliced out
/// of the frame would keep the connection's whole read buffer alive for as long as the
/// store holds it.
pub fn decode(payload: &[u8]) -> Result<Message, DecodeError> {
    let mut input = Reader { bytes: payload };
    let tag = input.u8()?;
    let message = match tag {
        TAG_HELLO => Message::Hello {
            protocol: u16::try_from(input.varint()?)
                .map_err(|_| DecodeError::Invalid("protocol version"))?,
            cluster: input.string()?,
            from: input.node_id()?,
            to: input.node_id()?,
        },
        TAG_WELCOME => Message::Welcome,
        TAG_REFUSE => Message::Refuse {
            reason: input.string()?,
        },
        TAG_PING => Message::Ping,
        TAG_PONG => Message::Pong,
        TAG_PUSH => Message::Push {
            entries: input.entries()?,
        },
        TAG_PUSH_ACK => Message::PushAck {
            refused: input.strings()?,
        },
        TAG_SYNC_ROOT => Message::SyncRoot {
            root: input.u64_le()?,
        },
        TAG_IN_SYNC => Message::InSync,
        TAG_SYNC_GROUPS => {
            let count = input.count(8)?;
            let mut groups = Vec::with_capacity(count);
            for _ in 0..count {
                groups.push(input.u64_le()?);
            }
            Message::SyncGroups { groups }
        }
        TAG_SYNC_BUCKETS => {
            let count = input.count(9)?;
            let mut buckets = Vec::with_capacity(count);
            for _ in 0..count {
                buckets.push((input.bucket()?, input.u64_le()?));
            }
            Message::SyncBuckets { buckets }
        }
        TAG_BUCKET_VERSIONS => {
            let covered = input.buckets()?;
            let table = input.version_table()?;
            let count = input.count(4)?;
            let mut versions = Vec::with_capacity(count);
            for _ in 0..count {
                versions.push((input.string()?, input.version(&table)?));
            }
            Message::BucketVersions {
                covered,
                versions,
                remaining: input.buckets()?,
            }
        }
        TAG_FETCH => Message::Fetch {
            keys: input.strings()?,
        },
        TAG_ENTRIES => Message::Entries {
            entries: input.entries()?,
            served: u32::try_from(input.varint()?).map_err(|_| DecodeError::Invalid("count"))?,
        },
        TAG_SUMMARIZE => Message::Summarize,
        TAG_SUMMARY => Message::Summary {
            keys: input.varint()?,
            tombstones: input.varint()?,
            digest: input.u64_le()?,
        },
        other => return Err(DecodeError::UnknownTag(other)),
    };
    match input.bytes.len() {
        0 => Ok(message),
        left => Err(DecodeError::Trailing(left)),
    }
}

fn put_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// Signed values as varints: 0, -1, 1, -2… become 0, 1, 2, 3…
fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.put_slice(bytes);
}

fn put_str(out: &mut BytesMut, text: &str) {
    put_bytes(out, text.as_bytes());
}

fn put_strs(out: &mut BytesMut, texts: &[String]) {
    put_varint(out, texts.len() as u64);
    for text in texts {
        put_str(out, text);
    }
}

fn put_buckets(out: &mut BytesMut, buckets: &[BucketId]) {
    put_varint(out, buckets.len() as u64);
    for bucket in buckets {
        put_varint(out, u64::from(*bucket));
    }
}

fn put_entries(out: &mut BytesMut, entries: &[Entry]) {
    let table = VersionTable::of(
        entries.iter().map(|entry| &entry.version),
        entries.iter().filter_map(|entry| entry.replaces.as_ref()),
    );
    table.put(out);
    put_varint(out, entries.len() as u64);
    for entry in entries {
        let flags = if entry.value.is_some() { HAS_VALUE } else { 0 }
            | if entry.replaces.is_some() {
                HAS_REPLACES
            } else {
                0
            };
        out.put_u8(flags);
        put_str(out, &entry.key);
        table.put_version(out, &entry.version);
        if let Some(value) = &entry.value {
            put_bytes(out, value);
        }
        if let Some(replaces) = &entry.replaces {
            table.put_relative(out, replaces, &entry.version);
        }
    }
}

/// What the versions of one list share: the node ids they name, and a base `wall_ms`.
struct VersionTable<'a> {
    nodes: Vec<&'a NodeId>,
    base_ms: u64,
}

impl<'a> VersionTable<'a> {
    /// The table of a list's `versions`, naming the nodes of `replaced` too (versions
    /// written relative to others, which do not move the base).
    fn of(
        versions: impl Iterator<Item = &'a Version>,
        replaced: impl Iterator<Item = &'a Version>,
    ) -> Self {
        let mut table = VersionTable {
            nodes: Vec::new(),
            base_ms: u64::MAX,
        };
        for version in versions {
            table.base_ms = table.base_ms.min(version.timestamp.wall_ms);
            table.name(&version.node);
        }
        if table.base_ms == u64::MAX {
            table.base_ms = 0;
        }
        for version in replaced {
            table.name(&version.node);
        }
        table
    }

    fn name(&mut self, node: &'a NodeId) {
        // A list names few nodes (at most the cluster's), so a scan beats a map.
        if !self.nodes.contains(&node) {
            self.nodes.push(node);
        }
    }

    fn put(&self, out: &mut BytesMut) {
        put_varint(out, self.nodes.len() as u64);
        for node in &self.nodes {
            put_str(out, node.as_str());
        }
        put_varint(out, self.base_ms);
    }

    /// The index of a node of the table (every version it was built from has one).
    fn index(&self, node: &NodeId) -> usize {
        self.nodes
            .iter()
            .position(|known| *known == node)
            .unwrap_or(0)
    }

    fn put_version(&self, out: &mut BytesMut, version: &Version) {
        put_varint(out, version.timestamp.wall_ms - self.base_ms);
        put_varint(out, u64::from(version.timestamp.logical));
        put_varint(out, self.index(&version.node) as u64);
    }

    /// `version` relative to `to`, whose `wall_ms` is usually close.
    fn put_relative(&self, out: &mut BytesMut, version: &Version, to: &Version) {
        let delta = version.timestamp.wall_ms.wrapping_sub(to.timestamp.wall_ms) as i64;
        put_varint(out, zigzag(delta));
        put_varint(out, u64::from(version.timestamp.logical));
        put_varint(out, self.index(&version.node) as u64);
    }
}

/// A decoded [`VersionTable`].
struct Table {
    nodes: Vec<NodeId>,
    base_ms: u64,
}

impl Table {
    fn node(&self, index: u64) -> Result<&NodeId, DecodeError> {
        usize::try_from(index)
            .ok()
            .and_then(|index| self.nodes.get(index))
            .ok_or(DecodeError::Invalid("node index"))
    }
}

/// The unread rest of a payload.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&first, rest) = self.bytes.split_first().ok_or(DecodeError::Truncated)?;
        self.bytes = rest;
        Ok(first)
    }

    fn u64_le(&mut self) -> Result<u64, DecodeError> {
        let (head, rest) = self
            .bytes
            .split_first_chunk::<8>()
            .ok_or(DecodeError::Truncated)?;
        self.bytes = rest;
        Ok(u64::from_le_bytes(*head))
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(DecodeError::Invalid("varint"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::Invalid("varint"))
    }

    /// A list's count, checked against the bytes left (each item takes at least
    /// `min_item_bytes`), so that a forged count cannot make us allocate.
    fn count(&mut self, min_item_bytes: usize) -> Result<usize, DecodeError> {
        let count = self.varint()?;
        if count > (self.bytes.len() / min_item_bytes) as u64 {
            return Err(DecodeError::Truncated);
        }
        Ok(count as usize)
    }

    fn slice(&mut self) -> Result<&[u8], DecodeError> {
        let len = self.varint()?;
        if len > self.bytes.len() as u64 {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(len as usize);
        self.bytes = rest;
        Ok(head)
    }

    fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        Ok(Bytes::copy_from_slice(self.slice()?))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let slice = self.slice()?;
        let text = std::str::from_utf8(slice).map_err(|_| DecodeError::Invalid("string"))?;
        Ok(text.to_owned())
    }

    fn strings(&mut self) -> Result<Vec<String>, DecodeError> {
        let count = self.count(1)?;
        let mut texts = Vec::with_capacity(count);
        for _ in 0..count {
            texts.push(self.string()?);
        }
        Ok(texts)
    }

    fn node_id(&mut self) -> Result<NodeId, DecodeError> {
        NodeId::try_from(self.string()?).map_err(|_| DecodeError::Invalid("node id"))
    }

    fn bucket(&mut self) -> Result<BucketId, DecodeError> {
        BucketId::try_from(self.varint()?).map_err(|_| DecodeError::Invalid("bucket"))
    }

    fn buckets(&mut self) -> Result<Vec<BucketId>, DecodeError> {
        let count = self.count(1)?;
        let mut buckets = Vec::with_capacity(count);
        for _ in 0..count {
            buckets.push(self.bucket()?);
        }
        Ok(buckets)
    }

    fn version_table(&mut self) -> Result<Table, DecodeError> {
        let count = self.count(2)?;
        let mut nodes = Vec::with_capacity(count);
        for _ in 0..count {
            nodes.push(self.node_id()?);
        }
        Ok(Table {
            nodes,
            base_ms: self.varint()?,
        })
    }

    fn logical(&mut self) -> Result<u32, DecodeError> {
        u32::try_from(self.varint()?).map_err(|_| DecodeError::Invalid("logical clock"))
    }

    fn version(&mut self, table: &Table) -> Result<Version, DecodeError> {
        let wall_ms = table
            .base_ms
            .checked_add(self.varint()?)
            .ok_or(DecodeError::Invalid("wall clock"))?;
        let logical = self.logical()?;
        Ok(Version {
            timestamp: Timestamp { wall_ms, logical },
            node: table.node(self.varint()?)?.clone(),
        })
    }

    fn relative_version(&mut self, table: &Table, to: &Version) -> Result<Version, DecodeError> {
        let delta = unzigzag(self.varint()?);
        let wall_ms = to.timestamp.wall_ms.wrapping_add(delta as u64);
        let logical = self.logical()?;
        Ok(Version {
            timestamp: Timestamp { wall_ms, logical },
            node: table.node(self.varint()?)?.clone(),
        })
    }

    fn entries(&mut self) -> Result<Vec<Entry>, DecodeError> {
        let table = self.version_table()?;
        let count = self.count(5)?;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let flags = self.u8()?;
            if flags & !(HAS_VALUE | HAS_REPLACES) != 0 {
                return Err(DecodeError::Invalid("entry flags"));
            }
            let key = self.string()?;
            let version = self.version(&table)?;
            let value = if flags & HAS_VALUE != 0 {
                Some(self.bytes()?)
            } else {
                None
            };
            let replaces = if flags & HAS_REPLACES != 0 {
                Some(self.relative_version(&table, &version)?)
            } else {
                None
            };
            entries.push(Entry {
                key,
                version,
                value,
                replaces,
            });
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(wall_ms: u64, logical: u32, node: &str) -> Version {
        Version {
            timestamp: Timestamp { wall_ms, logical },
            node: NodeId::new(node).unwrap(),
        }
    }

    fn entry(key: &str, wall_ms: u64, value: Option<&[u8]>, replaces: Option<Version>) -> Entry {
        Entry {
            key: key.into(),
            version: version(wall_ms, 0, "n1"),
            value: value.map(Bytes::copy_from_slice),
            replaces,
        }
    }

    fn roundtrip(message: &Message) -> usize {
        let mut out = BytesMut::new();
        encode(message, &mut out);
        let len = out.len();
        assert_eq!(decode(&out).as_ref(), Ok(message));
        len
    }

    #[test]
    fn every_kind_roundtrips_and_its_tag_is_its_place_in_kinds() {
        for message in super::super::tests::one_of_each() {
            let mut out = BytesMut::new();
            encode(&message, &mut out);
            assert_eq!(
                Message::KINDS[usize::from(out[0])],
                message.kind(),
                "{message:?}"
            );
            roundtrip(&message);
        }
    }

    #[test]
    fn entries_with_extreme_and_foreign_versions_roundtrip() {
        let mut far = entry("a", u64::MAX, Some(b"x"), Some(version(0, u32::MAX, "n9")));
        far.version.timestamp.logical = u32::MAX;
        let message = Message::Push {
            entries: vec![
                far,
                entry("b", 0, None, Some(version(u64::MAX, 0, "n1"))),
                entry("", 5, Some(b""), None),
                Entry {
                    version: version(7, 3, "n2"),
                    ..entry("c\u{e9}", 7, Some(&[0xff, 0]), Some(version(6, 0, "n2")))
                },
            ],
        };
        roundtrip(&message);
        roundtrip(&Message::BucketVersions {
            covered: vec![0, BucketId::MAX],
            versions: vec![
                ("k".into(), version(9, 1, "n3")),
                ("j".into(), version(3, 0, "n1")),
            ],
            remaining: vec![17],
        });
    }

    #[test]
    fn a_replicated_write_costs_its_key_and_value_and_ten_bytes_in_a_batch() {
        let now = 1_764_127_282_000;
        let write = |key: &str, wall_ms| {
            entry(
                key,
                wall_ms,
                Some(&[b'v'; 100]),
                Some(version(wall_ms - 150, 0, "n2")),
            )
        };
        let one = roundtrip(&Message::Push {
            entries: vec![write("k123", now)],
        });
        let two = roundtrip(&Message::Push {
            entries: vec![write("k123", now), write("k124", now + 3)],
        });
        assert_eq!(two - one, 4 + 100 + 10, "one more entry in a batch");
        assert_eq!(one, 4 + 100 + 25, "a batch of one");
    }

    #[test]
    fn bad_payloads_are_refused() {
        let cases: &[(&[u8], DecodeError)] = &[
            (&[], DecodeError::Truncated),
            (&[99], DecodeError::UnknownTag(99)),
            (&[TAG_PING, 0], DecodeError::Trailing(1)),
            (
                &[TAG_FETCH, 0xff, 0xff, 0xff, 0xff, 0x0f],
                DecodeError::Truncated,
            ),
            (&[TAG_FETCH, 1, 1, 0xff], DecodeError::Invalid("string")),
            (&[TAG_SUMMARY, 0x80], DecodeError::Truncated),
            (
                &[
                    TAG_SUMMARY,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                    0x7f,
                ],
                DecodeError::Invalid("varint"),
            ),
            // An entry naming node 1 of a table of one.
            (
                &[TAG_PUSH, 1, 2, b'n', b'1', 0, 1, 0, 1, b'k', 0, 0, 1],
                DecodeError::Invalid("node index"),
            ),
            (
                &[TAG_PUSH, 1, 2, b'n', b'1', 0, 1, 4, 1, b'k', 0, 0, 0],
                DecodeError::Invalid("entry flags"),
            ),
            (
                &[TAG_HELLO, 3, 0, 2, b'N', b'1'],
                DecodeError::Invalid("node id"),
            ),
        ];
        for (bytes, error) in cases {
            assert_eq!(decode(bytes).as_ref(), Err(error), "{bytes:?}");
        }
        let old = decode(&[0x81, 0xa4]).unwrap_err();
        assert!(old.to_string().contains("protocol 2"), "{old}");
    }
}
