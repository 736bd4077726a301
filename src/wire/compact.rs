//! The MessagePack layout of [`Message`]: what each message costs on the wire.
//!
//! Owns: the encoding of messages into rmp-serde's data model (arrays, integers,
//! strings, binaries) and the per-direction state that lets later frames refer to
//! earlier ones: the sender's node table and its last wall-clock value.
//! Knows nothing of: frames, tags, sockets.
//!
//! Every message is one array whose first element is an integer tag (0–15, one byte);
//! no field names, no variant names. Lists that end a message are not nested: a `Push`
//! is `[5, entry, entry, …]`. Within one direction of one connection:
//! * a node id is its index in the node table the sender sent in its `Hello` or
//!   `Welcome` (one byte), or its name if the table lacks it;
//! * a wall-clock value (a version's, a `Pong`'s, an HLC) is the signed difference to
//!   the previous one written in that direction (one byte for writes close in time),
//!   starting from 0, or from the `Welcome`'s clock, which is written in full; a
//!   replaced version's is the difference to its entry's version.
//!
//! So frames must be decoded in the order they were encoded, which a connection does;
//! any error ends the connection, and the state with it.

use std::cell::Cell;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, SerializeTuple};
use serde::{Deserializer, Serialize, Serializer};

use super::{Lineage, Message, Nonce};
use crate::clock::{NodeId, Timestamp, Version};
use crate::store::{BucketId, Entry};

/// The state of one direction of a connection that the layout depends on.
#[derive(Debug, Default)]
pub struct Direction {
    /// The writer's node table, from its `Hello` or `Welcome`.
    nodes: Vec<NodeId>,
    /// The last wall-clock value written in this direction.
    wall_ms: u64,
}

/// Most nodes a table may list: indices stay one-byte integers, and a handshake frame
/// small.
pub const MAX_TABLE: usize = 128;

const HELLO: u8 = 0;
const WELCOME: u8 = 1;
const REFUSE: u8 = 2;
const PING: u8 = 3;
const PONG: u8 = 4;
const PUSH: u8 = 5;
const PUSH_ACK: u8 = 6;
const SYNC_ROOT: u8 = 7;
const IN_SYNC: u8 = 8;
const SYNC_GROUPS: u8 = 9;
const SYNC_BUCKETS: u8 = 10;
const BUCKET_VERSIONS: u8 = 11;
const FETCH: u8 = 12;
const ENTRIES: u8 = 13;
const SUMMARIZE: u8 = 14;
const SUMMARY: u8 = 15;

/// `message` in MessagePack, as written in direction `state` (which it advances).
pub fn encode(
    message: &Message,
    state: &mut Direction,
) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    let writer = Writer {
        nodes: &state.nodes,
        wall_ms: Cell::new(state.wall_ms),
    };
    let bytes = rmp_serde::to_vec(&Out(message, &writer))?;
    state.wall_ms = writer.wall_ms.get();
    if let Message::Hello { nodes, .. } | Message::Welcome { nodes, .. } = message {
        state.nodes = nodes.clone();
    }
    Ok(bytes)
}

/// The message of `payload`, as read in direction `state` (which it advances).
pub fn decode(payload: &[u8], state: &mut Direction) -> Result<Message, rmp_serde::decode::Error> {
    let mut deserializer = rmp_serde::Deserializer::new(std::io::Cursor::new(payload));
    let message = MessageSeed(state).deserialize(&mut deserializer)?;
    if deserializer.position() != payload.len() as u64 {
        return Err(rmp_serde::decode::Error::Syntax(
            "bytes after the message".into(),
        ));
    }
    if let Message::Hello { nodes, .. } | Message::Welcome { nodes, .. } = &message {
        state.nodes = nodes.clone();
    }
    Ok(message)
}

// ---------------------------------------------------------------------------------
// Writing

struct Writer<'a> {
    nodes: &'a [NodeId],
    wall_ms: Cell<u64>,
}

impl Writer<'_> {
    /// `wall_ms` written in full, which it becomes the last one written.
    fn absolute(&self, wall_ms: u64) -> u64 {
        self.wall_ms.set(wall_ms);
        wall_ms
    }

    /// The difference of `wall_ms` to the last one written, which it becomes.
    fn wall(&self, wall_ms: u64) -> i64 {
        let delta = difference(wall_ms, self.wall_ms.get());
        self.wall_ms.set(wall_ms);
        delta
    }
}

/// `a - b` as a signed number (wall clocks are far below 2^63 ms).
fn difference(a: u64, b: u64) -> i64 {
    (a as i64).wrapping_sub(b as i64)
}

struct Out<'a>(&'a Message, &'a Writer<'a>);
struct Node<'a>(&'a NodeId, &'a Writer<'a>);
struct EntryOut<'a>(&'a Entry, &'a Writer<'a>);
struct KeyVersion<'a>(&'a str, &'a Version, &'a Writer<'a>);

impl Serialize for Node<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.1.nodes.iter().position(|node| node == self.0) {
            Some(index) => serializer.serialize_u8(index as u8),
            None => serializer.serialize_str(self.0.as_str()),
        }
    }
}

impl Serialize for EntryOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Entry {
            key,
            version,
            value,
            replaces,
        } = self.0;
        let writer = self.1;
        let mut seq = serializer.serialize_tuple(if replaces.is_some() { 8 } else { 5 })?;
        seq.serialize_element(key)?;
        seq.serialize_element(value)?;
        seq.serialize_element(&writer.wall(version.timestamp.wall_ms))?;
        seq.serialize_element(&version.timestamp.logical)?;
        seq.serialize_element(&Node(&version.node, writer))?;
        if let Some(replaced) = replaces {
            let back = difference(version.timestamp.wall_ms, replaced.timestamp.wall_ms);
            seq.serialize_element(&back)?;
            seq.serialize_element(&replaced.timestamp.logical)?;
            seq.serialize_element(&Node(&replaced.node, writer))?;
        }
        seq.end()
    }
}

impl Serialize for KeyVersion<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_tuple(4)?;
        seq.serialize_element(self.0)?;
        seq.serialize_element(&self.2.wall(self.1.timestamp.wall_ms))?;
        seq.serialize_element(&self.1.timestamp.logical)?;
        seq.serialize_element(&Node(&self.1.node, self.2))?;
        seq.end()
    }
}

/// One, whatever the expression (not evaluated): counts a macro's fields.
macro_rules! one {
    ($field:expr) => {
        1
    };
}

impl Serialize for Out<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let writer = self.1;
        // The tag, the fields in order, then the items of `rest` (a list flattened
        // into the message).
        macro_rules! message {
            ($tag:expr, [$($field:expr),*], $rest:expr) => {{
                let rest = $rest;
                let mut seq = serializer.serialize_seq(Some(1 $(+ one!($field))* + rest.len()))?;
                seq.serialize_element(&$tag)?;
                $(seq.serialize_element(&$field)?;)*
                for item in rest {
                    seq.serialize_element(&item)?;
                }
                seq.end()
            }};
        }
        let none = std::iter::empty::<u8>;
        match self.0 {
            Message::Hello {
                protocol,
                cluster,
                from,
                to,
                lineage,
                nonce,
                nodes,
            } => message!(
                HELLO,
                [
                    protocol,
                    cluster,
                    from.as_str(),
                    to.as_str(),
                    lineage,
                    nonce,
                    nodes
                ],
                none()
            ),
            Message::Welcome {
                lineage,
                wall_ms,
                nonce,
                nodes,
            } => message!(
                WELCOME,
                // Absolute, and the reference of the next clock value.
                [lineage, writer.absolute(*wall_ms), nonce, nodes],
                none()
            ),
            Message::Refuse { reason } => message!(REFUSE, [reason], none()),
            Message::Ping => message!(PING, [], none()),
            Message::Pong { wall_ms, fenced } => {
                message!(PONG, [writer.wall(*wall_ms), fenced], none())
            }
            Message::Push { entries } => message!(
                PUSH,
                [],
                entries.iter().map(|entry| EntryOut(entry, writer))
            ),
            Message::PushAck {
                refused,
                wall_ms,
                fenced,
            } => message!(PUSH_ACK, [writer.wall(*wall_ms), fenced], refused.iter()),
            Message::SyncRoot { root } => message!(SYNC_ROOT, [root], none()),
            Message::InSync { hlc } => {
                message!(IN_SYNC, [writer.wall(hlc.wall_ms), hlc.logical], none())
            }
            Message::SyncGroups { groups, hlc } => message!(
                SYNC_GROUPS,
                [writer.wall(hlc.wall_ms), hlc.logical],
                groups.iter()
            ),
            Message::SyncBuckets { buckets } => message!(SYNC_BUCKETS, [], buckets.iter()),
            Message::BucketVersions {
                covered,
                versions,
                remaining,
            } => message!(
                BUCKET_VERSIONS,
                [covered, remaining],
                versions
                    .iter()
                    .map(|(key, version)| KeyVersion(key, version, writer))
            ),
            Message::Fetch { keys } => message!(FETCH, [], keys.iter()),
            Message::Entries { entries, served } => message!(
                ENTRIES,
                [served],
                entries.iter().map(|entry| EntryOut(entry, writer))
            ),
            Message::Summarize => message!(SUMMARIZE, [], none()),
            Message::Summary {
                keys,
                tombstones,
                digest,
            } => message!(SUMMARY, [keys, tombstones, digest], none()),
        }
    }
}

// ---------------------------------------------------------------------------------
// Reading

/// `base` moved by `delta`, modulo 2^64: the inverse of [`difference`] for any pair.
fn moved(base: u64, delta: i64) -> u64 {
    base.wrapping_add_signed(delta)
}

/// The next element of a message, which must be there.
fn field<'de, T: de::Deserialize<'de>, A: SeqAccess<'de>>(
    seq: &mut A,
    what: &'static str,
) -> Result<T, A::Error> {
    seq.next_element()?
        .ok_or_else(|| de::Error::custom(format_args!("a message without its {what}")))
}

/// The remaining elements of a message.
fn rest<'de, T: de::Deserialize<'de>, A: SeqAccess<'de>>(seq: &mut A) -> Result<Vec<T>, A::Error> {
    let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
    while let Some(item) = seq.next_element()? {
        items.push(item);
    }
    Ok(items)
}

/// A node id: an index into the writer's table, or a name.
struct NodeSeed<'a>(&'a [NodeId]);

impl<'de> DeserializeSeed<'de> for NodeSeed<'_> {
    type Value = NodeId;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<NodeId, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_> {
    type Value = NodeId;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a node table index or a node id")
    }

    fn visit_u64<E: de::Error>(self, index: u64) -> Result<NodeId, E> {
        usize::try_from(index)
            .ok()
            .and_then(|index| self.0.get(index))
            .cloned()
            .ok_or_else(|| E::custom(format_args!("node index {index} outside the table")))
    }

    fn visit_str<E: de::Error>(self, id: &str) -> Result<NodeId, E> {
        NodeId::new(id).map_err(E::custom)
    }
}

/// A version written as `(wall difference, logical, node)`; `wall_ms` is what the
/// difference applies to.
fn version<'de, A: SeqAccess<'de>>(
    seq: &mut A,
    nodes: &[NodeId],
    wall_ms: u64,
    delta: i64,
) -> Result<Version, A::Error> {
    let logical = field(seq, "logical clock")?;
    let node = seq
        .next_element_seed(NodeSeed(nodes))?
        .ok_or_else(|| de::Error::custom("a version without its node"))?;
    Ok(Version {
        timestamp: Timestamp {
            wall_ms: moved(wall_ms, delta),
            logical,
        },
        node,
    })
}

/// An [`Entry`]: `[key, value or nil, wall, logical, node]`, then `[back, logical,
/// node]` of the replaced version if any.
struct EntrySeed<'a>(&'a mut Direction);

impl<'de> DeserializeSeed<'de> for EntrySeed<'_> {
    type Value = Entry;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Entry, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EntrySeed<'_> {
    type Value = Entry;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an entry")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Entry, A::Error> {
        let Direction { nodes, wall_ms } = self.0;
        let key: String = field(&mut seq, "key")?;
        let value: Option<Bytes> = field(&mut seq, "value")?;
        let delta = field(&mut seq, "wall clock")?;
        let written = version(&mut seq, nodes, *wall_ms, delta)?;
        *wall_ms = written.timestamp.wall_ms;
        let replaces = match seq.next_element::<i64>()? {
            None => None,
            Some(back) => Some(version(
                &mut seq,
                nodes,
                written.timestamp.wall_ms,
                back.wrapping_neg(),
            )?),
        };
        Ok(Entry {
            key,
            version: written,
            value,
            replaces,
        })
    }
}

/// A `(key, version)` of `BucketVersions`: `[key, wall, logical, node]`.
struct KeyVersionSeed<'a>(&'a mut Direction);

impl<'de> DeserializeSeed<'de> for KeyVersionSeed<'_> {
    type Value = (String, Version);

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for KeyVersionSeed<'_> {
    type Value = (String, Version);

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a key and its version")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let Direction { nodes, wall_ms } = self.0;
        let key: String = field(&mut seq, "key")?;
        let delta = field(&mut seq, "wall clock")?;
        let written = version(&mut seq, nodes, *wall_ms, delta)?;
        *wall_ms = written.timestamp.wall_ms;
        Ok((key, written))
    }
}

/// A whole message.
struct MessageSeed<'a>(&'a mut Direction);

impl<'de> DeserializeSeed<'de> for MessageSeed<'_> {
    type Value = Message;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Message, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for MessageSeed<'_> {
    type Value = Message;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a message: an array led by its tag")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Message, A::Error> {
        let state = self.0;
        let tag: u8 = field(&mut seq, "tag")?;
        let message = match tag {
            HELLO => {
                let protocol = field(&mut seq, "protocol")?;
                let cluster = field(&mut seq, "cluster")?;
                let from = field(&mut seq, "sender")?;
                let to = field(&mut seq, "addressee")?;
                let lineage: Lineage = field(&mut seq, "lineage")?;
                let nonce: Nonce = field(&mut seq, "nonce")?;
                let nodes = table(field(&mut seq, "node table")?)?;
                Message::Hello {
                    protocol,
                    cluster,
                    from,
                    to,
                    lineage,
                    nonce,
                    nodes,
                }
            }
            WELCOME => {
                let lineage = field(&mut seq, "lineage")?;
                let wall_ms = field(&mut seq, "wall clock")?;
                state.wall_ms = wall_ms;
                Message::Welcome {
                    lineage,
                    wall_ms,
                    nonce: field(&mut seq, "nonce")?,
                    nodes: table(field(&mut seq, "node table")?)?,
                }
            }
            REFUSE => Message::Refuse {
                reason: field(&mut seq, "reason")?,
            },
            PING => Message::Ping,
            PONG => Message::Pong {
                wall_ms: wall(state, &mut seq)?,
                fenced: field(&mut seq, "fence")?,
            },
            PUSH | ENTRIES => {
                let served = if tag == ENTRIES {
                    Some(field(&mut seq, "count served")?)
                } else {
                    None
                };
                let mut entries = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(entry) = seq.next_element_seed(EntrySeed(&mut *state))? {
                    entries.push(entry);
                }
                match served {
                    Some(served) => Message::Entries { entries, served },
                    None => Message::Push { entries },
                }
            }
            PUSH_ACK => Message::PushAck {
                wall_ms: wall(state, &mut seq)?,
                fenced: field(&mut seq, "fence")?,
                refused: rest(&mut seq)?,
            },
            SYNC_ROOT => Message::SyncRoot {
                root: field(&mut seq, "root")?,
            },
            IN_SYNC => Message::InSync {
                hlc: Timestamp {
                    wall_ms: wall(state, &mut seq)?,
                    logical: field(&mut seq, "logical clock")?,
                },
            },
            SYNC_GROUPS => Message::SyncGroups {
                hlc: Timestamp {
                    wall_ms: wall(state, &mut seq)?,
                    logical: field(&mut seq, "logical clock")?,
                },
                groups: rest(&mut seq)?,
            },
            SYNC_BUCKETS => Message::SyncBuckets {
                buckets: rest::<(BucketId, u64), _>(&mut seq)?,
            },
            BUCKET_VERSIONS => {
                let covered = field(&mut seq, "covered buckets")?;
                let remaining = field(&mut seq, "remaining buckets")?;
                let mut versions = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(pair) = seq.next_element_seed(KeyVersionSeed(&mut *state))? {
                    versions.push(pair);
                }
                Message::BucketVersions {
                    covered,
                    versions,
                    remaining,
                }
            }
            FETCH => Message::Fetch {
                keys: rest(&mut seq)?,
            },
            SUMMARIZE => Message::Summarize,
            SUMMARY => Message::Summary {
                keys: field(&mut seq, "key count")?,
                tombstones: field(&mut seq, "tombstone count")?,
                digest: field(&mut seq, "digest")?,
            },
            other => {
                return Err(de::Error::custom(format_args!(
                    "unknown message tag {other}"
                )))
            }
        };
        Ok(message)
    }
}

/// A wall-clock value written as the difference to the direction's last one.
fn wall<'de, A: SeqAccess<'de>>(state: &mut Direction, seq: &mut A) -> Result<u64, A::Error> {
    let delta = field(seq, "wall clock")?;
    state.wall_ms = moved(state.wall_ms, delta);
    Ok(state.wall_ms)
}

/// A node table read from a handshake, within its bound.
fn table<E: de::Error>(nodes: Vec<NodeId>) -> Result<Vec<NodeId>, E> {
    if nodes.len() > MAX_TABLE {
        return Err(E::custom(format_args!(
            "a node table of {} nodes (at most {MAX_TABLE})",
            nodes.len()
        )));
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(node: &str) -> NodeId {
        NodeId::new(node).unwrap()
    }

    fn version(wall_ms: u64, logical: u32, node: &str) -> Version {
        Version {
            timestamp: Timestamp { wall_ms, logical },
            node: id(node),
        }
    }

    const WALL_MS: u64 = 1_796_277_052_511;

    /// A conversation of every kind of message, in one direction, through one pair of
    /// states, with nodes in and out of the table and clocks going both ways.
    fn conversation() -> Vec<Message> {
        let entry = |key: &str, value: Option<&[u8]>, version: Version, replaces| Entry {
            key: key.into(),
            version,
            value: value.map(Bytes::copy_from_slice),
            replaces,
        };
        vec![
            Message::Welcome {
                lineage: Lineage::default(),
                wall_ms: WALL_MS,
                nonce: u128::MAX,
                nodes: vec![id("n1"), id("n2"), id("n3")],
            },
            Message::Ping,
            Message::Pong {
                wall_ms: WALL_MS + 1000,
                fenced: true,
            },
            Message::Push {
                entries: vec![
                    entry(
                        "k1",
                        Some(b"v"),
                        version(WALL_MS + 1001, 3, "n2"),
                        Some(version(WALL_MS - 86_400_000, 0, "gone")),
                    ),
                    entry("k2", None, version(WALL_MS + 900, 0, "n9"), None),
                    entry("k3", Some(b""), version(u64::MAX, u32::MAX, "n1"), None),
                    entry(
                        "k4",
                        Some(b"x"),
                        version(0, 0, "n3"),
                        Some(version(u64::MAX, 1, "n1")),
                    ),
                ],
            },
            Message::PushAck {
                refused: vec!["k1".into()],
                wall_ms: WALL_MS,
                fenced: false,
            },
            Message::InSync {
                hlc: Timestamp {
                    wall_ms: WALL_MS + 5,
                    logical: 70_000,
                },
            },
            Message::SyncGroups {
                groups: vec![1, u64::MAX],
                hlc: Timestamp {
                    wall_ms: WALL_MS,
                    logical: 0,
                },
            },
            Message::SyncBuckets {
                buckets: vec![(0, 1), (4095, u64::MAX)],
            },
            Message::BucketVersions {
                covered: vec![1, 2],
                versions: vec![
                    ("a".into(), version(WALL_MS, 0, "n1")),
                    ("b".into(), version(WALL_MS - 3, 2, "elsewhere")),
                ],
                remaining: vec![3],
            },
            Message::Fetch {
                keys: vec!["a".into(), "b".into()],
            },
            Message::Entries {
                entries: vec![entry("a", Some(b"va"), version(WALL_MS, 0, "n3"), None)],
                served: 2,
            },
            Message::Summarize,
            Message::Summary {
                keys: 1,
                tombstones: 2,
                digest: 3,
            },
            Message::Refuse {
                reason: "no".into(),
            },
        ]
    }

    #[test]
    fn every_message_round_trips_through_a_directions_state() {
        let (mut writer, mut reader) = (Direction::default(), Direction::default());
        for message in conversation() {
            let bytes = encode(&message, &mut writer).unwrap();
            assert_eq!(decode(&bytes, &mut reader).unwrap(), message);
        }
        assert_eq!(reader.nodes, writer.nodes);
        assert_eq!(reader.wall_ms, writer.wall_ms);
    }

    #[test]
    fn bad_payloads_are_errors() {
        let welcome = encode(&conversation()[0], &mut Direction::default()).unwrap();
        for bad in [
            &[0x91, 16][..],                                // an unknown tag
            &[0x90],                                        // no tag
            &[0x92, PING, 0],                               // a field too many
            &[0x92, PONG, 0],                               // a field missing
            &[0x92, PUSH, 0x95, 0xa1, b'k', 0xc0, 0, 0, 7], // node index outside the table
            &[0x91, PING, 0x91],                            // bytes after the message
            &welcome[..welcome.len() - 1],                  // cut short
        ] {
            assert!(decode(bad, &mut Direction::default()).is_err(), "{bad:?}");
        }
        let long = Message::Hello {
            protocol: 4,
            cluster: String::new(),
            from: id("n1"),
            to: id("n2"),
            lineage: Lineage::default(),
            nonce: 0,
            nodes: (0..=MAX_TABLE).map(|i| id(&format!("n{i}"))).collect(),
        };
        let bytes = encode(&long, &mut Direction::default()).unwrap();
        assert!(decode(&bytes, &mut Direction::default()).is_err());
    }

    /// The bytes of one replicated write (DESIGN.md §7 shows them):
    /// `cargo test --lib wire::compact::tests::one_replicated_write -- --nocapture`.
    #[test]
    fn one_replicated_write_costs_key_and_value_and_a_few_bytes() {
        let mut state = Direction::default();
        encode(&conversation()[0], &mut state).unwrap();
        let push = |wall_ms: u64| Message::Push {
            entries: vec![Entry {
                key: "k123".into(),
                version: version(wall_ms, 0, "n2"),
                value: Some(Bytes::from(vec![b'v'; 100])),
                replaces: Some(version(wall_ms - 250, 1, "n1")),
            }],
        };
        let bytes = encode(&push(WALL_MS + 3), &mut state).unwrap();
        let hex: Vec<String> = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        println!("{} bytes: {}", bytes.len(), hex.join(" "));
        // [5, ["k123", bin 100, Δwall 3, 0, node 1, back 250, 1, node 0]]
        assert_eq!(bytes.len(), 1 + 1 + 1 + 5 + 2 + 100 + 1 + 1 + 1 + 2 + 1 + 1);
        let ack = encode(
            &Message::PushAck {
                refused: vec![],
                wall_ms: WALL_MS + 4,
                fenced: false,
            },
            &mut state,
        )
        .unwrap();
        println!("ack {} bytes", ack.len());
        assert_eq!(ack.len(), 4);
    }
}
