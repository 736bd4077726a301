//! What the clients did and saw: one [`Op`] per request, in completion order.
//!
//! Owns: [`Op`], [`Request`], [`Outcome`], [`Level`] and [`History`].
//! Knows nothing of: how requests travel, what the invariants are.

use std::fmt;
use std::time::Duration;

use meshkv::clock::Version;

/// A consistency level of docs/API.md §3.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// `one`.
    One,
    /// `live`.
    Live,
    /// `quorum`.
    Quorum,
    /// `all`.
    All,
}

impl Level {
    /// The query-string name.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::One => "one",
            Level::Live => "live",
            Level::Quorum => "quorum",
            Level::All => "all",
        }
    }

    /// Replicas an acknowledgement at this level stands for, in a cluster of `nodes`
    /// (`one` and `live` promise only the node that answered).
    pub fn replicas(self, nodes: usize) -> usize {
        match self {
            Level::One | Level::Live => 1,
            Level::Quorum => nodes / 2 + 1,
            Level::All => nodes,
        }
    }
}

/// What a client asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `PUT` of a value.
    Put(String),
    /// `DELETE`.
    Delete,
    /// `GET`.
    Get,
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A write acknowledged (`200`): its version and the value the node held before.
    Written {
        /// The version stamped.
        version: Version,
        /// `previous`.
        previous: Option<String>,
    },
    /// A read answered `200`.
    Found {
        /// The value.
        value: String,
        /// Its version.
        version: Version,
    },
    /// A read answered `404`.
    NotFound,
    /// `503`: the level cannot be met, or the node is starting. A write may have been
    /// applied locally.
    Unavailable(String),
    /// Any other status, or no reply (connection refused or broken, timeout). A write
    /// may have been applied.
    Failed(String),
}

/// One request and its answer.
#[derive(Debug, Clone)]
pub struct Op {
    /// Position in the history.
    pub id: usize,
    /// The client (0-based).
    pub client: usize,
    /// The node asked (0-based).
    pub node: usize,
    /// The key.
    pub key: String,
    /// What was asked.
    pub request: Request,
    /// At which level.
    pub level: Level,
    /// When the client sent it, simulated time since the start.
    pub invoked: Duration,
    /// When the answer (or the failure) came.
    pub completed: Duration,
    /// What came back.
    pub outcome: Outcome,
    /// For a retried write: the op it retries.
    pub retry_of: Option<usize>,
    /// For an acknowledged `quorum`/`all` write: how many live nodes held that version
    /// (or a newer one) of the key the moment the client had the acknowledgement.
    pub holders_at_ack: Option<usize>,
}

impl Op {
    /// True for `PUT` and `DELETE`.
    pub fn is_write(&self) -> bool {
        !matches!(self.request, Request::Get)
    }

    /// The value a write puts (`None`: a delete).
    pub fn written_value(&self) -> Option<&str> {
        match &self.request {
            Request::Put(value) => Some(value),
            _ => None,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let request = match &self.request {
            Request::Put(value) => format!("PUT {}={value}", self.key),
            Request::Delete => format!("DEL {}", self.key),
            Request::Get => format!("GET {}", self.key),
        };
        let outcome = match &self.outcome {
            Outcome::Written { version, .. } => format!("ok {version}"),
            Outcome::Found { value, version } => format!("found {value} {version}"),
            Outcome::NotFound => "404".to_owned(),
            Outcome::Unavailable(reason) => format!("503 {reason}"),
            Outcome::Failed(reason) => format!("failed: {reason}"),
        };
        write!(
            f,
            "#{} c{} -> n{} {} [{}] {}..{} ms: {}{}",
            self.id,
            self.client + 1,
            self.node + 1,
            request,
            self.level.as_str(),
            self.invoked.as_micros() as f64 / 1000.0,
            self.completed.as_micros() as f64 / 1000.0,
            outcome,
            self.retry_of
                .map(|of| format!(" (retry of #{of})"))
                .unwrap_or_default(),
        )
    }
}

/// Every op of a run.
#[derive(Debug, Default)]
pub struct History {
    /// In completion order.
    pub ops: Vec<Op>,
}

impl History {
    /// Appends an op, giving it its id.
    pub fn push(&mut self, mut op: Op) -> usize {
        op.id = self.ops.len();
        self.ops.push(op);
        self.ops.len() - 1
    }
}
