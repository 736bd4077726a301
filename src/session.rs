//! Session tokens (API.md §3.3): what a client has seen, in a few dozen bytes.
//!
//! Owns: [`SessionToken`] (per origin node, the largest HLC timestamp of a version the
//! session has read or written that this node stamped), its text form, the cluster
//! [`Binding`] it carries, [`SessionToken::covered_by`], the rule a node uses to
//! decide whether a register is new enough for the session, and [`Watermarks`], what
//! a node knows it holds of each other node's writes.
//! Knows nothing of: HTTP, the store, peers (the read path asks them when a register is
//! not new enough), time.
//!
//! # What a token covers
//! A version is `(timestamp, origin)`. A token holds, for each origin `X`, the largest
//! timestamp `t_X` among the versions stamped by `X` that the session has seen (read or
//! written); so every version the session has seen is at most `(t_X, X)` for its
//! origin `X`. For a key `k`, the version the session last saw of `k` (if any) is
//! therefore at most `(t_X, X)` for *some* `X` in the token, and a register of `k` is
//! new enough when, for every `X` in the token, either it is at least `(t_X, X)`, or
//! it is known to hold every write of `k` stamped by `X` (the node `X` itself always
//! does, for its own writes, and so does any register at least as new as what `X`
//! answered). The read path checks this first against the local register (free), and
//! only when it fails asks the peers for `k` (see `replication::read`).
//!
//! # Watermarks
//! A node `Y` also knows, per other node `X`, a timestamp `W_Y[X]` such that it holds
//! every version `X` stamped at or below it, or a newer version of the same key (its
//! clean anti-entropy rounds with `X` prove it, see `replication::anti_entropy`). So
//! `Y` holds every write of `k` stamped by `X` that the session may have seen as soon
//! as `W_Y[X] ≥ t_X`, whatever `k`: the origin `X` is settled without asking anyone,
//! even when `X` is down. The rule for one origin `X` of the token, at node `Y`: settled
//! if `Y` is `X`, or the register is at least `(t_X, X)`, or `W_Y[X] ≥ t_X`, or a peer
//! that holds every write of `k` by `X` answered (`X` itself).
//!
//! A write with a token is stamped above the token's largest timestamp, so it is newer
//! than everything the session has seen (monotonic writes, writes-follow-reads).
//!
//! # Size
//! At most one entry per node of the cluster, whatever the data: a node id (at most 32
//! bytes) and a timestamp in hex. With 4 nodes named `n1`…`n4`, about 75 bytes.
//!
//! # Text form
//! `s1.<binding>.<entries>`: `binding` is 8 hex digits (the first 4 bytes of SHA-256
//! of the cluster name), `entries` is `<id>=<wall_ms hex>[+<logical hex>]` joined
//! with `,`, sorted by id, possibly empty. Clients treat it as opaque.

use std::fmt::Write as _;

use sha2::{Digest as _, Sha256};

use crate::clock::{NodeId, Timestamp, Version};

/// The longest token accepted, in bytes: far more than any cluster needs (64 nodes of
/// 32-byte ids), and small enough that parsing is cheap.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The name of the HTTP header that carries tokens both ways.
pub const HEADER: &str = "meshkv-session";

/// What binds a token to one cluster: a hash of its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding(u32);

impl Binding {
    /// The binding of the cluster named `cluster`.
    pub fn of(cluster: &str) -> Self {
        let hash = Sha256::digest(cluster.as_bytes());
        Self(u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]))
    }
}

/// Why a token is refused (a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not of the form this build writes.
    #[error("the Meshkv-Session token is malformed ({0}); send back a token exactly as a node of this cluster gave it, or none")]
    Malformed(&'static str),
    /// Issued by a cluster of another name.
    #[error(
        "the Meshkv-Session token was issued by another cluster; drop it and start a new session"
    )]
    OtherCluster,
    /// Names a node that is not in this cluster.
    #[error("the Meshkv-Session token names node {0:?}, which is not in this cluster; drop it and start a new session")]
    UnknownNode(String),
}

/// A session's token: per origin node, the largest timestamp seen. Sorted by node id,
/// one entry per node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionToken {
    entries: Vec<(NodeId, Timestamp)>,
}

impl SessionToken {
    /// The empty token: a session that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The token of a session that has seen exactly `version`.
    pub fn of(version: &Version) -> Self {
        Self {
            entries: vec![(version.node.clone(), version.timestamp)],
        }
    }

    /// Parses a token sent by a client. `member` says whether an id is a node of this
    /// cluster.
    pub fn parse(
        text: &[u8],
        binding: Binding,
        member: impl Fn(&str) -> bool,
    ) -> Result<Self, TokenError> {
        use TokenError::Malformed;
        if text.len() > MAX_TOKEN_BYTES {
            return Err(Malformed("too long"));
        }
        let text = std::str::from_utf8(text).map_err(|_| Malformed("not text"))?;
        let rest = text
            .strip_prefix("s1.")
            .ok_or(Malformed("unknown format"))?;
        let (tag, entries) = rest.split_once('.').ok_or(Malformed("no binding"))?;
        if tag.len() != 8 {
            return Err(Malformed("bad binding"));
        }
        let tag = u32::from_str_radix(tag, 16).map_err(|_| Malformed("bad binding"))?;
        if tag != binding.0 {
            return Err(TokenError::OtherCluster);
        }
        let mut token = Self::new();
        if entries.is_empty() {
            return Ok(token);
        }
        for entry in entries.split(',') {
            let (id, stamp) = entry.split_once('=').ok_or(Malformed("bad entry"))?;
            let node = NodeId::new(id).map_err(|_| Malformed("bad node id"))?;
            if !member(id) {
                return Err(TokenError::UnknownNode(id.to_owned()));
            }
            let (wall, logical) = match stamp.split_once('+') {
                Some((wall, logical)) => (wall, Some(logical)),
                None => (stamp, None),
            };
            let wall_ms = hex_u64(wall).ok_or(Malformed("bad timestamp"))?;
            let logical = match logical {
                None => 0,
                Some(text) => u32::try_from(hex_u64(text).ok_or(Malformed("bad timestamp"))?)
                    .map_err(|_| Malformed("bad timestamp"))?,
            };
            let timestamp = Timestamp { wall_ms, logical };
            match token.entries.binary_search_by(|(id, _)| id.cmp(&node)) {
                Ok(_) => return Err(Malformed("a node appears twice")),
                Err(at) => token.entries.insert(at, (node, timestamp)),
            }
        }
        Ok(token)
    }

    /// The token as a client sends it back.
    pub fn encode(&self, binding: Binding) -> String {
        let mut text = String::with_capacity(12 + 20 * self.entries.len());
        let _ = write!(text, "s1.{:08x}.", binding.0);
        for (index, (node, timestamp)) in self.entries.iter().enumerate() {
            if index > 0 {
                text.push(',');
            }
            push_entry(&mut text, node, *timestamp);
        }
        text
    }

    /// `SessionToken::of(version).encode(binding)`, without building the token: the
    /// answer to every request that sent none.
    pub fn encode_one(binding: Binding, version: Option<&Version>) -> String {
        let mut text = String::with_capacity(64);
        let _ = write!(text, "s1.{:08x}.", binding.0);
        if let Some(version) = version {
            push_entry(&mut text, &version.node, version.timestamp);
        }
        text
    }

    /// Folds in a version the session has now seen (read or written).
    pub fn observe(&mut self, version: &Version) {
        match self
            .entries
            .binary_search_by(|(id, _)| id.cmp(&version.node))
        {
            Ok(at) => {
                let seen = &mut self.entries[at].1;
                *seen = (*seen).max(version.timestamp);
            }
            Err(at) => self
                .entries
                .insert(at, (version.node.clone(), version.timestamp)),
        }
    }

    /// Folds in everything `other` covers.
    pub fn merge(&mut self, other: &SessionToken) {
        for (node, timestamp) in &other.entries {
            self.observe(&Version {
                timestamp: *timestamp,
                node: node.clone(),
            });
        }
    }

    /// The largest timestamp the token covers: a write with this token must be
    /// stamped above it.
    pub fn max_timestamp(&self) -> Option<Timestamp> {
        self.entries.iter().map(|(_, timestamp)| *timestamp).max()
    }

    /// The origins whose writes of one key a register of version `register` (`None`:
    /// no register) may miss, as far as this token can tell: those `X` with
    /// `(t_X, X)` newer than `register`, other than those `exempt(X, t_X)` settles
    /// (nodes known to have answered with their own register, this node for its own
    /// writes, origins whose watermark here reaches `t_X`).
    pub fn uncovered<'a>(
        &'a self,
        register: Option<&'a Version>,
        exempt: impl Fn(&NodeId, Timestamp) -> bool + 'a,
    ) -> impl Iterator<Item = &'a NodeId> + 'a {
        self.entries
            .iter()
            .filter(move |(node, timestamp)| {
                !exempt(node, *timestamp)
                    && register.is_none_or(|register| {
                        (*timestamp, node) > (register.timestamp, &register.node)
                    })
            })
            .map(|(node, _)| node)
    }

    /// Whether a register of version `register` is new enough for this session, with
    /// `exempt` as in [`SessionToken::uncovered`].
    pub fn covered_by(
        &self,
        register: Option<&Version>,
        exempt: impl Fn(&NodeId, Timestamp) -> bool,
    ) -> bool {
        self.uncovered(register, exempt).next().is_none()
    }

    /// The number of origins in the token.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the token covers nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Per origin node, a timestamp at or below which this node holds every version the
/// origin stamped (or a newer one of the same key): see the module header. Only grows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Watermarks {
    entries: Vec<(NodeId, Timestamp)>,
}

impl Watermarks {
    /// Raises `origin`'s watermark to `timestamp` (a lower one changes nothing).
    pub fn raise(&mut self, origin: &NodeId, timestamp: Timestamp) {
        match self.entries.binary_search_by(|(id, _)| id.cmp(origin)) {
            Ok(at) => {
                let mark = &mut self.entries[at].1;
                *mark = (*mark).max(timestamp);
            }
            Err(at) => self.entries.insert(at, (origin.clone(), timestamp)),
        }
    }

    /// `origin`'s watermark, if a clean round set one.
    pub fn get(&self, origin: &NodeId) -> Option<Timestamp> {
        self.entries
            .binary_search_by(|(id, _)| id.cmp(origin))
            .ok()
            .map(|at| self.entries[at].1)
    }

    /// Whether every version `origin` stamped at or below `timestamp` is held here.
    pub fn covers(&self, origin: &NodeId, timestamp: Timestamp) -> bool {
        self.get(origin).is_some_and(|mark| mark >= timestamp)
    }
}

/// `<id>=<wall_ms hex>[+<logical hex>]`.
fn push_entry(text: &mut String, node: &NodeId, timestamp: Timestamp) {
    let _ = write!(text, "{node}={:x}", timestamp.wall_ms);
    if timestamp.logical != 0 {
        let _ = write!(text, "+{:x}", timestamp.logical);
    }
}

/// A hexadecimal number of 1 to 16 digits, lower case.
fn hex_u64(text: &str) -> Option<u64> {
    let plain = !text.is_empty()
        && text.len() <= 16
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    plain.then(|| u64::from_str_radix(text, 16).ok()).flatten()
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

    fn members(id: &str) -> bool {
        ["n1", "n2", "n3", "n4"].contains(&id)
    }

    #[test]
    fn a_token_round_trips_and_stays_small() {
        let binding = Binding::of("meshkv");
        let mut token = SessionToken::new();
        for (i, node) in ["n3", "n1", "n4", "n2"].iter().enumerate() {
            token.observe(&version(1_795_664_594_772 + i as u64, i as u32, node));
        }
        token.observe(&version(1_795_664_594_000, 0, "n1"));
        let text = token.encode(binding);
        assert!(text.len() < 90, "{text} is {} bytes", text.len());
        let parsed = SessionToken::parse(text.as_bytes(), binding, members).unwrap();
        assert_eq!(parsed, token);
        assert_eq!(parsed.len(), 4);
        let one = version(7, 3, "n2");
        assert_eq!(
            SessionToken::encode_one(binding, Some(&one)),
            SessionToken::of(&one).encode(binding)
        );
        assert_eq!(
            SessionToken::encode_one(binding, None),
            SessionToken::new().encode(binding)
        );
        let empty = SessionToken::new().encode(binding);
        assert_eq!(
            SessionToken::parse(empty.as_bytes(), binding, members).unwrap(),
            SessionToken::new()
        );
    }

    #[test]
    fn bad_tokens_are_refused_with_a_reason() {
        let binding = Binding::of("meshkv");
        let good = SessionToken::of(&version(5, 0, "n1")).encode(binding);
        let other = SessionToken::of(&version(5, 0, "n1")).encode(Binding::of("other"));
        assert_eq!(
            SessionToken::parse(other.as_bytes(), binding, members),
            Err(TokenError::OtherCluster)
        );
        let unknown = SessionToken::of(&version(5, 0, "n9")).encode(binding);
        assert!(matches!(
            SessionToken::parse(unknown.as_bytes(), binding, members),
            Err(TokenError::UnknownNode(_))
        ));
        let tag = &good[..12];
        for bad in [
            String::new(),
            "garbage".to_owned(),
            "s1.".to_owned(),
            "s1.xyz.".to_owned(),
            format!("{tag}n1"),
            format!("{tag}n1="),
            format!("{tag}n1=5,n1=6"),
            format!("{tag}n1=5+"),
            format!("{tag}n1=5+100000000"),
            format!("{tag}n1=5,"),
            format!("{tag}N1=5"),
            format!("{tag}n1=-5"),
            format!("{tag}n1=+5"),
            format!("{tag}n1=FF"),
            format!("{tag}n1=11111111111111111"),
            format!("{tag}{}", "n1=5,".repeat(1000)),
        ] {
            assert!(
                matches!(
                    SessionToken::parse(bad.as_bytes(), binding, members),
                    Err(TokenError::Malformed(_))
                ),
                "{bad:?} was accepted"
            );
        }
        assert!(SessionToken::parse(&[0xff, 0xfe], binding, members).is_err());
    }

    #[test]
    fn a_register_covers_a_token_when_it_is_at_least_each_origin_bound() {
        let mut token = SessionToken::new();
        token.observe(&version(100, 0, "n1"));
        token.observe(&version(50, 0, "n2"));
        let none = |_: &NodeId, _: Timestamp| false;
        assert!(!token.covered_by(None, none));
        assert!(!token.covered_by(Some(&version(99, 5, "n3")), none));
        assert!(token.covered_by(Some(&version(100, 0, "n1")), none));
        assert!(token.covered_by(Some(&version(100, 0, "n2")), none));
        // n1's bound is not met; n1 itself answered (or is this node): covered.
        let n1 = NodeId::new("n1").unwrap();
        assert!(token.covered_by(Some(&version(60, 0, "n3")), |node, _| *node == n1));
        let old = version(40, 0, "n3");
        let missing: Vec<_> = token.uncovered(Some(&old), none).collect();
        assert_eq!(missing.len(), 2);
        assert_eq!(token.max_timestamp().unwrap().wall_ms, 100);
    }

    #[test]
    fn a_watermark_settles_its_origin_whatever_the_register() {
        let mut token = SessionToken::new();
        token.observe(&version(100, 2, "n1"));
        token.observe(&version(50, 0, "n2"));
        let (n1, n2, n3) = (
            NodeId::new("n1").unwrap(),
            NodeId::new("n2").unwrap(),
            NodeId::new("n3").unwrap(),
        );
        let mut marks = Watermarks::default();
        let old = version(40, 0, "n3");
        let rule = |marks: &Watermarks, me: &NodeId| {
            let marks = marks.clone();
            let me = me.clone();
            move |node: &NodeId, t: Timestamp| *node == me || marks.covers(node, t)
        };
        // This node is n3: nothing settles n1 or n2 yet.
        let missing: Vec<_> = token.uncovered(Some(&old), rule(&marks, &n3)).collect();
        assert_eq!(missing, [&n1, &n2]);
        // A watermark just below n1's bound settles nothing; at the bound, it settles n1.
        marks.raise(
            &n1,
            Timestamp {
                wall_ms: 100,
                logical: 1,
            },
        );
        assert!(!marks.covers(
            &n1,
            Timestamp {
                wall_ms: 100,
                logical: 2
            }
        ));
        marks.raise(
            &n1,
            Timestamp {
                wall_ms: 100,
                logical: 2,
            },
        );
        let missing: Vec<_> = token.uncovered(Some(&old), rule(&marks, &n3)).collect();
        assert_eq!(missing, [&n2]);
        // Watermarks never go down.
        marks.raise(
            &n1,
            Timestamp {
                wall_ms: 1,
                logical: 0,
            },
        );
        assert_eq!(
            marks.get(&n1),
            Some(Timestamp {
                wall_ms: 100,
                logical: 2
            })
        );
        // Absent key, n2 above its bound: settled with no register at all.
        marks.raise(
            &n2,
            Timestamp {
                wall_ms: 70,
                logical: 0,
            },
        );
        assert!(token.covered_by(None, rule(&marks, &n3)));
        // On n2 itself, only n1's watermark matters.
        let marks = {
            let mut marks = Watermarks::default();
            marks.raise(
                &n1,
                Timestamp {
                    wall_ms: 99,
                    logical: 0,
                },
            );
            marks
        };
        assert!(!token.covered_by(None, rule(&marks, &n2)));
        assert!(token.covered_by(Some(&version(100, 2, "n1")), rule(&marks, &n2)));
        assert!(marks.get(&n3).is_none() && !marks.covers(&n3, Timestamp::default()));
    }
}
