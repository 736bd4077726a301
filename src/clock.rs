//! Hybrid logical clock (HLC) and the versions it stamps.
//!
//! Owns: [`Timestamp`], [`Version`], [`NodeId`], the [`Hlc`] state machine and the
//! [`Clock`] seam through which time (wall and monotonic) enters the node, with
//! [`ManualClock`], a clock driven by hand for tests and simulations.
//! Knows nothing of: the store, the network, tokio (the production clock, which reads
//! tokio's time, lives in `node`).
//!
//! # The algorithm (Kulkarni et al., 2014)
//! A timestamp is `(wall_ms, logical)`. When the node stamps a local event it takes
//! `max(last.wall_ms, now)`; if that did not move forward it bumps `logical`. When it
//! observes a remote timestamp it folds it in the same way, so every stamp it issues
//! afterwards is larger than anything it has seen. Two properties follow:
//! * stamps issued by one node strictly increase, even if the wall clock jumps back;
//! * a write that causally follows another (the writer saw the first version, e.g.
//!   through replication) gets a larger stamp, whatever the wall clocks say.
//!
//! The node id is appended as a tie-break to make a [`Version`], so versions are unique
//! per write across the cluster and totally ordered: the basis of last-writer-wins.
//!
//! A remote stamp far in our future (a peer with a runaway clock) would drag our clock
//! with it and make every later local write lose to it. [`Hlc::observe`] therefore
//! refuses stamps more than `max_skew_ms` ahead of our wall clock; the caller counts and
//! logs the refusal and leaves the data to anti-entropy, which offers it again later and
//! succeeds once our wall clock has caught up. Refusal delays convergence, never
//! prevents it.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize, Serializer};

/// The identity of a node as written in the cluster file: `[a-z0-9_-]{1,32}`.
///
/// Shared, not owned: every stored version carries one, and versions are cloned on every
/// read and write, so a clone must not allocate.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct NodeId(Arc<str>);

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl TryFrom<String> for NodeId {
    type Error = InvalidNodeId;

    fn try_from(id: String) -> Result<Self, Self::Error> {
        Self::new(id)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> Self {
        id.0.as_ref().to_owned()
    }
}

/// Why a string is not a valid [`NodeId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node id {0:?} is invalid: use 1 to 32 characters from a-z, 0-9, '_' and '-'")]
pub struct InvalidNodeId(pub String);

impl NodeId {
    /// The longest id the cluster file accepts.
    pub const MAX_LEN: usize = 32;

    /// Validates and wraps an id.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidNodeId> {
        let id = id.into();
        let valid = !id.is_empty()
            && id.len() <= Self::MAX_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(Arc::from(id)))
        } else {
            Err(InvalidNodeId(id))
        }
    }

    /// The id as written in the cluster file.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A hybrid logical clock reading. Ordered by `wall_ms`, then `logical`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp {
    /// Milliseconds since the Unix epoch, never behind the largest stamp seen.
    pub wall_ms: u64,
    /// Counter that orders stamps within one `wall_ms`.
    pub logical: u32,
}

/// The version of one write: an HLC timestamp with the writing node as tie-break.
/// Unique per write in the cluster, totally ordered; the larger version wins.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    /// When the write happened, in HLC time.
    pub timestamp: Timestamp,
    /// The node that accepted the write.
    pub node: NodeId,
}

/// Why a version string from a client (e.g. an ETag) does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("version {0:?} is not of the form <wall_ms>-<logical>-<node>")]
pub struct InvalidVersion(pub String);

impl Version {
    /// The version as text, in a buffer on the stack: what `Display` prints, without
    /// the formatting machinery or an allocation (the API prints one per request).
    pub fn text(&self) -> VersionText {
        let mut text = VersionText {
            bytes: [0; VersionText::MAX_BYTES],
            len: 0,
        };
        text.push_padded(self.timestamp.wall_ms, 13);
        text.push(b"-");
        text.push_padded(self.timestamp.logical.into(), 10);
        text.push(b"-");
        text.push(self.node.as_str().as_bytes());
        text
    }
}

impl fmt::Display for Version {
    /// Zero-padded so that the strings sort like the versions they print:
    /// `1764127282000-0000000003-n1` (`{wall_ms:013}-{logical:010}-{node}`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

/// A printed [`Version`], held on the stack.
#[derive(Clone, Copy)]
pub struct VersionText {
    bytes: [u8; VersionText::MAX_BYTES],
    len: usize,
}

impl VersionText {
    /// The longest printed version: a 20-digit `wall_ms`, a 10-digit `logical`, two
    /// dashes and the longest node id.
    pub const MAX_BYTES: usize = 20 + 1 + 10 + 1 + NodeId::MAX_LEN;

    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("digits, dashes and a node id are ASCII")
    }

    /// The text as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn push(&mut self, bytes: &[u8]) {
        self.bytes[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// `number` in decimal, zero-padded to `width` digits.
    fn push_padded(&mut self, number: u64, width: usize) {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(number).as_bytes();
        let zeros = width.saturating_sub(digits.len());
        self.bytes[self.len..self.len + zeros].fill(b'0');
        self.len += zeros;
        self.push(digits);
    }
}

impl fmt::Debug for VersionText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl FromStr for Version {
    type Err = InvalidVersion;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidVersion(text.to_owned());
        let mut parts = text.splitn(3, '-');
        let wall_ms = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(invalid)?;
        let logical = parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(invalid)?;
        let node = parts
            .next()
            .and_then(|p| NodeId::new(p).ok())
            .ok_or_else(invalid)?;
        Ok(Version {
            timestamp: Timestamp { wall_ms, logical },
            node,
        })
    }
}

/// The one source of time of a node: every reading of the wall or the monotonic clock
/// in the server goes through it (or through tokio's timers, which a simulator drives
/// too). Injected, so that tests and a deterministic simulator can drive time.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch, for HLC stamps. May jump in either direction.
    fn wall_ms(&self) -> u64;

    /// Milliseconds since an arbitrary origin fixed for the clock's life; never goes
    /// back. For durations: the failure detector, the startup gate, log rate limits.
    fn monotonic_ms(&self) -> u64;
}

/// A [`Clock`] that moves only when told to: for unit tests and simulations.
///
/// ```
/// use meshkv::clock::{Clock, ManualClock};
///
/// let clock = ManualClock::new(1_000);
/// clock.advance_ms(250);
/// assert_eq!((clock.wall_ms(), clock.monotonic_ms()), (1_250, 250));
/// clock.set_wall_ms(900); // a wall clock may jump back; the monotonic one may not
/// assert_eq!((clock.wall_ms(), clock.monotonic_ms()), (900, 250));
/// ```
#[derive(Debug, Default)]
pub struct ManualClock {
    wall_ms: AtomicU64,
    monotonic_ms: AtomicU64,
}

impl ManualClock {
    /// A clock whose wall time reads `wall_ms` and whose monotonic time reads 0.
    pub fn new(wall_ms: u64) -> Self {
        Self {
            wall_ms: AtomicU64::new(wall_ms),
            monotonic_ms: AtomicU64::new(0),
        }
    }

    /// Moves both clocks forward by `ms`.
    pub fn advance_ms(&self, ms: u64) {
        self.wall_ms.fetch_add(ms, Ordering::Relaxed);
        self.monotonic_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// Sets the wall clock alone (it may jump back, as a real one can).
    pub fn set_wall_ms(&self, wall_ms: u64) {
        self.wall_ms.store(wall_ms, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn wall_ms(&self) -> u64 {
        self.wall_ms.load(Ordering::Relaxed)
    }

    fn monotonic_ms(&self) -> u64 {
        self.monotonic_ms.load(Ordering::Relaxed)
    }
}

/// A remote timestamp was too far in the future to be folded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("remote timestamp is {ahead_ms} ms ahead of the local clock (limit {max_skew_ms} ms)")]
pub struct SkewError {
    /// How far ahead of our wall clock the remote stamp was.
    pub ahead_ms: u64,
    /// The configured limit.
    pub max_skew_ms: u64,
}

/// The hybrid logical clock of one node. Pure state: wall time is passed in.
///
/// ```
/// use meshkv::clock::{Hlc, Timestamp};
///
/// let mut hlc = Hlc::new(1000);
/// let first = hlc.tick(5_000);
/// // The wall clock jumps back 3 s: stamps still increase.
/// let second = hlc.tick(2_000);
/// assert!(second > first);
/// // A remote stamp more than 1 s ahead is refused; within the limit it is folded in.
/// assert!(hlc.observe(Timestamp { wall_ms: 9_000, logical: 0 }, 5_000).is_err());
/// hlc.observe(Timestamp { wall_ms: 5_900, logical: 0 }, 5_000).unwrap();
/// assert!(hlc.tick(5_000) > Timestamp { wall_ms: 5_900, logical: 0 });
/// ```
#[derive(Debug, Clone)]
pub struct Hlc {
    last: Timestamp,
    max_skew_ms: u64,
}

impl Hlc {
    /// A clock that refuses remote stamps more than `max_skew_ms` ahead of wall time.
    pub fn new(max_skew_ms: u64) -> Self {
        Self {
            last: Timestamp::default(),
            max_skew_ms,
        }
    }

    /// The largest timestamp issued or observed so far.
    pub fn last(&self) -> Timestamp {
        self.last
    }

    /// Stamps a local event at wall time `now_ms`. Strictly larger than every stamp
    /// issued or observed before.
    pub fn tick(&mut self, now_ms: u64) -> Timestamp {
        self.last = self.peek(now_ms);
        self.last
    }

    /// The stamp [`Hlc::tick`] would issue at `now_ms`, without issuing it.
    pub fn peek(&self, now_ms: u64) -> Timestamp {
        if now_ms > self.last.wall_ms {
            Timestamp {
                wall_ms: now_ms,
                logical: 0,
            }
        } else {
            self.successor(self.last)
        }
    }

    /// Makes every later stamp larger than `floor`, with no skew check: for state this
    /// node vouches for itself (its own durable data, its lease after a restart).
    pub fn resume_after(&mut self, floor: Timestamp) {
        if floor > self.last {
            self.last = floor;
        }
    }

    /// Folds a remote timestamp in, so later local stamps are larger than it.
    /// Refuses (and changes nothing) if it is more than the allowed skew ahead of
    /// `now_ms`.
    pub fn observe(&mut self, remote: Timestamp, now_ms: u64) -> Result<(), SkewError> {
        let ahead_ms = remote.wall_ms.saturating_sub(now_ms);
        if ahead_ms > self.max_skew_ms {
            return Err(SkewError {
                ahead_ms,
                max_skew_ms: self.max_skew_ms,
            });
        }
        if remote > self.last {
            self.last = remote;
        }
        Ok(())
    }

    /// The next stamp after `ts` within the same millisecond, or the next millisecond
    /// if the logical counter is exhausted (it never is in practice: 2^32 events/ms).
    fn successor(&self, ts: Timestamp) -> Timestamp {
        match ts.logical.checked_add(1) {
            Some(logical) => Timestamp {
                wall_ms: ts.wall_ms,
                logical,
            },
            None => Timestamp {
                wall_ms: ts.wall_ms + 1,
                logical: 0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(wall_ms: u64, logical: u32) -> Timestamp {
        Timestamp { wall_ms, logical }
    }

    #[test]
    fn tick_follows_wall_clock_when_it_advances() {
        let mut hlc = Hlc::new(1000);
        assert_eq!(hlc.tick(100), ts(100, 0));
        assert_eq!(hlc.tick(105), ts(105, 0));
    }

    #[test]
    fn tick_is_strictly_monotonic_when_wall_clock_stalls_or_jumps_back() {
        let mut hlc = Hlc::new(1000);
        assert_eq!(hlc.tick(100), ts(100, 0));
        assert_eq!(hlc.tick(100), ts(100, 1));
        // The wall clock jumps back by 50 ms: stamps keep increasing.
        assert_eq!(hlc.tick(50), ts(100, 2));
        assert_eq!(hlc.tick(99), ts(100, 3));
        // Once the wall clock passes the last stamp, it takes over again.
        assert_eq!(hlc.tick(101), ts(101, 0));
    }

    #[test]
    fn observe_folds_remote_stamps_in() {
        let mut hlc = Hlc::new(1000);
        hlc.tick(100);
        hlc.observe(ts(500, 7), 100).unwrap();
        assert_eq!(hlc.tick(100), ts(500, 8));
        // An older remote stamp changes nothing.
        hlc.observe(ts(10, 0), 100).unwrap();
        assert_eq!(hlc.tick(100), ts(500, 9));
    }

    #[test]
    fn observe_refuses_stamps_beyond_the_skew_limit_until_wall_clock_catches_up() {
        let mut hlc = Hlc::new(1000);
        hlc.tick(100);
        let far = ts(5000, 0);
        let refused = hlc.observe(far, 100).unwrap_err();
        assert_eq!(refused.ahead_ms, 4900);
        assert_eq!(
            hlc.last(),
            ts(100, 0),
            "a refused stamp must not move the clock"
        );
        // Exactly at the limit is accepted.
        hlc.observe(far, 4000).unwrap();
        assert_eq!(hlc.tick(4000), ts(5000, 1));
    }

    #[test]
    fn resuming_after_a_lease_stamps_above_it_even_with_the_wall_clock_behind() {
        let mut hlc = Hlc::new(1000);
        // The previous life leased up to 10_000; the wall clock now reads 4_000.
        hlc.resume_after(ts(10_000, u32::MAX));
        assert_eq!(hlc.peek(4_000), ts(10_001, 0));
        assert_eq!(hlc.tick(4_000), ts(10_001, 0));
        assert_eq!(hlc.tick(4_000), ts(10_001, 1));
        // A lower floor changes nothing.
        hlc.resume_after(ts(5, 0));
        assert_eq!(hlc.tick(20_000), ts(20_000, 0));
    }

    #[test]
    fn logical_overflow_carries_into_wall_time() {
        let mut hlc = Hlc::new(1000);
        hlc.observe(ts(100, u32::MAX), 100).unwrap();
        assert_eq!(hlc.tick(100), ts(101, 0));
    }

    #[test]
    fn versions_order_by_time_then_node_and_print_sortably() {
        let a = Version {
            timestamp: ts(1_764_127_282_000, 3),
            node: NodeId::new("n1").unwrap(),
        };
        let b = Version {
            timestamp: ts(1_764_127_282_000, 3),
            node: NodeId::new("n2").unwrap(),
        };
        let c = Version {
            timestamp: ts(1_764_127_282_001, 0),
            node: NodeId::new("n1").unwrap(),
        };
        assert!(a < b && b < c);
        assert!(a.to_string() < b.to_string() && b.to_string() < c.to_string());
        assert_eq!(a.to_string(), "1764127282000-0000000003-n1");
        let widest = Version {
            timestamp: ts(u64::MAX, u32::MAX),
            node: NodeId::new("x".repeat(NodeId::MAX_LEN)).unwrap(),
        };
        assert_eq!(
            widest.text().as_str(),
            format!("{}-{}-{}", u64::MAX, u32::MAX, widest.node)
        );
        let small = Version {
            timestamp: ts(7, 0),
            node: NodeId::new("n1").unwrap(),
        };
        assert_eq!(small.to_string(), "0000000000007-0000000000-n1");
        assert_eq!(a.to_string().parse::<Version>().unwrap(), a);
        assert!("12-x-n1".parse::<Version>().is_err());
        assert!("12-3-N1".parse::<Version>().is_err());
    }

    #[test]
    fn node_ids_are_validated() {
        assert!(NodeId::new("n1").is_ok());
        assert!(NodeId::new("node_a-7").is_ok());
        assert!(NodeId::new("").is_err());
        assert!(NodeId::new("N1").is_err());
        assert!(NodeId::new("a b").is_err());
        assert!(NodeId::new("x".repeat(33)).is_err());
    }
}
