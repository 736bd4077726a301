//! The node-to-node protocol: every message two nodes exchange, and how it is framed.
//!
//! Owns: [`Message`] (one enum for the whole protocol), [`PROTOCOL_VERSION`], the
//! [`codec`] that turns messages into authenticated, length-prefixed frames, and the
//! [`compact`] MessagePack layout of their payloads.
//! Knows nothing of: sockets, the store's internals, HTTP.
//!
//! # Conversation
//! Every connection is opened by the node that wants something (the *initiator*) and
//! carries strict request → reply pairs, one at a time:
//!
//! | request | reply | purpose |
//! | --- | --- | --- |
//! | `Hello` | `Welcome` or `Refuse` | first frame: protocol version, cluster, both ids, each side's [`Lineage`] and fresh [`Nonce`] |
//! | `Ping` | `Pong` or `Refuse` | the initiator's first request: proves the connection fresh, after which the responder admits it |
//! | `Ping` | `Pong` | liveness when there is nothing else to say |
//! | `Push` | `PushAck` | new writes (and anti-entropy repairs) for the replier |
//! | `SyncRoot` | `InSync` or `SyncGroups` | anti-entropy, level 0: compare root hashes |
//! | `SyncBuckets` | `BucketVersions` | level 2: compare bucket hashes, list differing buckets' `(key, version)` |
//! | `Fetch` | `Entries` | pull entries: anti-entropy repairs, `quorum`/`all` reads |
//! | `Summarize` | `Summary` | the replier's counts and root hash, for cluster convergence |
//!
//! Each node dials every peer, so each pair of nodes has two connections, one per
//! initiator; replies never travel unasked.

pub mod codec;
pub mod compact;

use serde::{Deserialize, Serialize};

use crate::clock::{NodeId, Timestamp, Version};
use crate::store::{BucketId, Entry};

/// Bumped on every incompatible change of [`Message`] or the framing.
pub const PROTOCOL_VERSION: u16 = 4;

/// A handshake nonce: 16 random bytes drawn for one connection by each side, which every
/// later frame's tag covers (see [`codec`]).
pub type Nonce = u128;

/// Where a node's data comes from: the epoch its store began in, empty.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataEpoch {
    /// A random number drawn when the store began empty (each start of a memory-only
    /// node; the creation of a data directory).
    pub id: u64,
    /// When it began: wall-clock ms of the node.
    pub created_ms: u64,
}

/// What each side of a handshake says of its data, for tombstone collection: its
/// epoch, and the nodes whose older data it refuses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// The sender's data epoch.
    pub epoch: DataEpoch,
    /// `(node, at_ms)`: the sender (or a node it heard from) collected tombstones at
    /// `at_ms` while `node` was out of contact for longer than the grace, so data of
    /// `node` from an epoch created before `at_ms` must not rejoin. Usually empty.
    pub retired: Vec<(NodeId, u64)>,
}

/// Every frame of the protocol. Its layout on the wire is in [`compact`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// First frame from the initiator.
    Hello {
        /// The sender's [`PROTOCOL_VERSION`].
        protocol: u16,
        /// The cluster name both sides must share.
        cluster: String,
        /// The initiator's id.
        from: NodeId,
        /// The id the initiator expects to be talking to.
        to: NodeId,
        /// The initiator's data epoch and retirements.
        lineage: Lineage,
        /// The initiator's fresh nonce for this connection.
        nonce: Nonce,
        /// The initiator's node table: its later frames name a node by its index here.
        nodes: Vec<NodeId>,
    },
    /// The handshake succeeded.
    Welcome {
        /// The replier's data epoch and retirements.
        lineage: Lineage,
        /// The replier's wall clock (ms since the epoch): a clock-offset sample.
        wall_ms: u64,
        /// The replier's fresh nonce for this connection.
        nonce: Nonce,
        /// The replier's node table: its later frames name a node by its index here.
        nodes: Vec<NodeId>,
    },
    /// The handshake failed; the connection closes after this frame.
    Refuse {
        /// One sentence, logged by the initiator.
        reason: String,
    },
    /// Liveness probe.
    Ping,
    /// Answer to `Ping`.
    Pong {
        /// The replier's wall clock (ms since the epoch): a clock-offset sample.
        wall_ms: u64,
        /// The replier refuses client writes for clock skew (a commit-wait may leave it
        /// out for a while: see `skew`).
        fenced: bool,
    },
    /// Entries for the replier to merge.
    Push {
        /// The entries, each the sender's current register for its key.
        entries: Vec<Entry>,
    },
    /// The entries of a `Push` were handled.
    PushAck {
        /// Keys whose versions were refused as too far in the future (clock skew);
        /// the rest were merged (or were already known).
        refused: Vec<String>,
        /// The replier's wall clock (ms since the epoch): a clock-offset sample.
        wall_ms: u64,
        /// The replier refuses client writes for clock skew.
        fenced: bool,
    },
    /// Anti-entropy: the initiator's root hash.
    SyncRoot {
        /// Root of the initiator's digest.
        root: u64,
    },
    /// The roots are equal: nothing to do.
    InSync {
        /// The replier's HLC when it compared the roots: every write it stamped at or
        /// below this is in the state compared (a session watermark, see
        /// `replication::anti_entropy`).
        hlc: Timestamp,
    },
    /// The roots differ: the replier's group hashes, in group order.
    SyncGroups {
        /// One hash per group.
        groups: Vec<u64>,
        /// As in `InSync`: the replier's HLC when it hashed the groups.
        hlc: Timestamp,
    },
    /// The initiator's hashes of the buckets it wants compared.
    SyncBuckets {
        /// `(bucket, initiator's hash)`.
        buckets: Vec<(BucketId, u64)>,
    },
    /// The replier's `(key, version)` pairs of differing buckets.
    BucketVersions {
        /// The differing buckets covered by `versions`.
        covered: Vec<BucketId>,
        /// Every `(key, version)` the replier holds in the covered buckets.
        versions: Vec<(String, Version)>,
        /// Differing buckets left out to respect the reply budget.
        remaining: Vec<BucketId>,
    },
    /// Keys whose entries the initiator wants.
    Fetch {
        /// The keys.
        keys: Vec<String>,
    },
    /// Reply to `Fetch`.
    Entries {
        /// The replier's entries, for a prefix of the requested keys.
        entries: Vec<Entry>,
        /// How many of the requested keys this reply answers (absent keys included);
        /// the initiator asks again for the rest.
        served: u32,
    },
    /// Asks for the replier's counts and root hash.
    Summarize,
    /// Reply to `Summarize`.
    Summary {
        /// Keys holding a value.
        keys: u64,
        /// Keys holding a tombstone.
        tombstones: u64,
        /// Root hash of the replier's whole state.
        digest: u64,
    },
}

impl Message {
    /// Every [`Message::kind`], for metrics that exist before the first frame.
    pub const KINDS: [&'static str; 16] = [
        "hello",
        "welcome",
        "refuse",
        "ping",
        "pong",
        "push",
        "push_ack",
        "sync_root",
        "in_sync",
        "sync_groups",
        "sync_buckets",
        "bucket_versions",
        "fetch",
        "entries",
        "summarize",
        "summary",
    ];

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Welcome { .. } => "welcome",
            Message::Refuse { .. } => "refuse",
            Message::Ping => "ping",
            Message::Pong { .. } => "pong",
            Message::Push { .. } => "push",
            Message::PushAck { .. } => "push_ack",
            Message::SyncRoot { .. } => "sync_root",
            Message::InSync { .. } => "in_sync",
            Message::SyncGroups { .. } => "sync_groups",
            Message::SyncBuckets { .. } => "sync_buckets",
            Message::BucketVersions { .. } => "bucket_versions",
            Message::Fetch { .. } => "fetch",
            Message::Entries { .. } => "entries",
            Message::Summarize => "summarize",
            Message::Summary { .. } => "summary",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One message of every kind. The match has no wildcard, so a new variant does not
    /// compile until it is added here, and then to `KINDS`.
    fn one_of_each() -> Vec<Message> {
        let id = NodeId::new("n1").unwrap();
        let every = vec![
            Message::Hello {
                protocol: PROTOCOL_VERSION,
                cluster: String::new(),
                from: id.clone(),
                to: id,
                lineage: Lineage::default(),
                nonce: 0,
                nodes: vec![],
            },
            Message::Welcome {
                lineage: Lineage::default(),
                wall_ms: 0,
                nonce: 0,
                nodes: vec![],
            },
            Message::Refuse {
                reason: String::new(),
            },
            Message::Ping,
            Message::Pong {
                wall_ms: 0,
                fenced: false,
            },
            Message::Push { entries: vec![] },
            Message::PushAck {
                refused: vec![],
                wall_ms: 0,
                fenced: false,
            },
            Message::SyncRoot { root: 0 },
            Message::InSync {
                hlc: Timestamp::default(),
            },
            Message::SyncGroups {
                groups: vec![],
                hlc: Timestamp::default(),
            },
            Message::SyncBuckets { buckets: vec![] },
            Message::BucketVersions {
                covered: vec![],
                versions: vec![],
                remaining: vec![],
            },
            Message::Fetch { keys: vec![] },
            Message::Entries {
                entries: vec![],
                served: 0,
            },
            Message::Summarize,
            Message::Summary {
                keys: 0,
                tombstones: 0,
                digest: 0,
            },
        ];
        for message in &every {
            match message {
                Message::Hello { .. }
                | Message::Welcome { .. }
                | Message::Refuse { .. }
                | Message::Ping
                | Message::Pong { .. }
                | Message::Push { .. }
                | Message::PushAck { .. }
                | Message::SyncRoot { .. }
                | Message::InSync { .. }
                | Message::SyncGroups { .. }
                | Message::SyncBuckets { .. }
                | Message::BucketVersions { .. }
                | Message::Fetch { .. }
                | Message::Entries { .. }
                | Message::Summarize
                | Message::Summary { .. } => {}
            }
        }
        every
    }

    #[test]
    fn kinds_lists_every_kind_once() {
        let kinds: Vec<&str> = one_of_each().iter().map(Message::kind).collect();
        assert_eq!(kinds, Message::KINDS);
    }

    /// The HLC the first reply of a round carries (session watermarks) costs a few
    /// bytes: `cargo test --lib wire::tests::the_hlc -- --nocapture` prints them.
    #[test]
    fn the_hlc_in_a_rounds_first_reply_costs_a_few_bytes() {
        let hlc = Timestamp {
            wall_ms: 1_796_277_052_511,
            logical: 70_000,
        };
        let encode = |message: &Message| {
            compact::encode(message, &mut compact::Direction::default())
                .unwrap()
                .len()
        };
        let in_sync = encode(&Message::InSync { hlc });
        let groups = encode(&Message::SyncGroups {
            groups: vec![u64::MAX; 64],
            hlc,
        });
        let timestamp = rmp_serde::to_vec(&hlc).unwrap().len();
        println!("InSync: {in_sync} bytes, SyncGroups: {groups} bytes, the HLC: {timestamp} bytes");
        assert!(timestamp <= 15, "{timestamp}");
        assert!(in_sync <= 24, "{in_sync}");
    }
}
