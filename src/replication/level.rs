//! The vocabulary of a client request to the replication layer: [`Consistency`] levels
//! and the [`ReplicationError`]s they can end in.
//!
//! Owns: the level names of the API (API.md §3) and the errors' sentences.
//! Knows nothing of: how a level is reached (that is `write` and `read`).

use std::fmt;
use std::str::FromStr;

use crate::clock::NodeId;

/// How many replicas must hold a write before it is acknowledged, or how many answer a
/// read (API.md §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// This node only.
    One,
    /// This node and every peer the failure detector holds alive, or a short deadline.
    Live,
    /// A majority of the cluster, else unavailable.
    Quorum,
    /// Every node, else unavailable.
    All,
}

impl Consistency {
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::One => "one",
            Consistency::Live => "live",
            Consistency::Quorum => "quorum",
            Consistency::All => "all",
        }
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown consistency level name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("consistency level {0:?} is unknown; use one, live, quorum or all")]
pub struct UnknownConsistency(pub String);

impl FromStr for Consistency {
    type Err = UnknownConsistency;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "one" => Ok(Consistency::One),
            "live" => Ok(Consistency::Live),
            "quorum" => Ok(Consistency::Quorum),
            "all" => Ok(Consistency::All),
            other => Err(UnknownConsistency(other.to_owned())),
        }
    }
}

/// Why a write or read could not be done at the requested level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicationError {
    /// Too few replicas answered in time.
    #[error(
        "consistency level {level} needs {needed} replicas but only {reached} answered in time{}",
        match applied_locally {
            Some(true) => "; the write was applied on this node and will replicate when peers return",
            Some(false) => "; the write was not applied",
            None => "",
        }
    )]
    Unavailable {
        /// The requested level.
        level: Consistency,
        /// Replicas needed, this node included.
        needed: usize,
        /// Replicas that answered, this node included.
        reached: usize,
        /// For writes, whether this node applied the write; `None` for reads.
        applied_locally: Option<bool>,
    },
    /// The node has just started and has not caught up with its peers yet.
    #[error("node {0} is starting: it serves requests once it has caught up with its peers")]
    Starting(NodeId),
    /// The node's storage failed: the write may be applied in memory but is not
    /// durable, and the node accepts no more writes until restarted.
    #[error("the write could not be made durable on this node: {0}")]
    Storage(String),
    /// A write could not be acknowledged safely because of clock skew: this node is
    /// fenced (API.md §3.2), a peer refused the version as too far in its future, or a
    /// peer's clock lags too far for the commit-wait.
    #[error(
        "clock skew: {detail}{}",
        if *applied_locally {
            "; the write was applied on this node and will replicate, but is not acknowledged"
        } else {
            "; the write was not applied"
        }
    )]
    ClockSkew {
        /// What is off, with the measured offsets, in one clause.
        detail: String,
        /// Whether this node applied the write.
        applied_locally: bool,
    },
    /// A request with a session token: this node could not get, within
    /// `session_wait_ms`, a register of the key as new as the token covers (the peers
    /// that may hold it did not answer). It answers nothing older.
    #[error(
        "node {node} has not caught up with the session: it could not reach {} within session_wait_ms ({wait_ms} ms) to get the key as new as the Meshkv-Session token covers, and does not answer from an older state",
        missing.iter().map(NodeId::as_str).collect::<Vec<_>>().join(", ")
    )]
    SessionBehind {
        /// This node.
        node: NodeId,
        /// The nodes whose writes of the key it could not rule out.
        missing: Vec<NodeId>,
        /// `session_wait_ms`.
        wait_ms: u64,
    },
    /// A write with a session token that covers versions further ahead of this node's
    /// clock than `max_clock_skew_ms`: the node cannot stamp a version above them
    /// without dragging its clock that far (the rule it applies to peers' versions).
    #[error(
        "the Meshkv-Session token covers a version {ahead_ms} ms ahead of node {node}'s clock (max_clock_skew_ms {max_skew_ms}); retry once the clocks agree, or drop the token if no node of this cluster issued it; the write was not applied"
    )]
    SessionAhead {
        /// This node.
        node: NodeId,
        /// How far ahead.
        ahead_ms: u64,
        /// The limit.
        max_skew_ms: u64,
    },
}
