//! What a store tells about itself, for the stores that do, and the suites' waits
//! built on it.
//!
//! Owns: reading a node's failure-detector view (`GET /v1/cluster`) and state digest
//! (`GET /v1/convergence`); telling "not offered" (404, 405, 501, an answer that is not
//! the JSON of API.md §3) from a failure; waiting until every node answers the key API
//! ([`wait_until_answering`]), until every peer is alive ([`wait_for_peers_alive`]), and
//! until a partition shows in the views ([`watch_cut`]).
//! Knows nothing of: what the suites conclude. A store that serves only `/v1/kv`
//! (API.md §6 allows it) gets [`Seen::NotOffered`], never a failure, from here.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::Node;
use crate::tools::client::{Client, ClientError};

/// Interval between two polls of the views.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What a bounded wait on the views found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// No node offers the endpoint: nothing to wait for.
    NotOffered,
    /// Every node that offers it showed it, after this long.
    After(Duration),
    /// Not within the bound; the last view that was not right.
    Never(String),
}

impl Seen {
    /// Milliseconds until seen, as a JSON figure: a number, `null` when never seen,
    /// `"not offered"`.
    pub fn figure(&self) -> Value {
        match self {
            Seen::NotOffered => Value::from("not offered"),
            Seen::After(took) => Value::from(super::report::ms(*took)),
            Seen::Never(_) => Value::Null,
        }
    }

    /// True unless the views were offered and never showed it.
    pub fn ok(&self) -> bool {
        !matches!(self, Seen::Never(_))
    }
}

/// Whether an error means that the store does not offer this endpoint at all.
fn not_offered(error: &ClientError) -> bool {
    matches!(error.status(), Some(404 | 405 | 501)) || matches!(error, ClientError::Protocol { .. })
}

/// A node's view of its peers (id, state), `Ok(None)` when it offers none.
pub async fn peer_view(client: &Client) -> Result<Option<Vec<(String, String)>>, String> {
    match client.get_json("/v1/cluster").await {
        Ok(view) => Ok(view.get("peers").and_then(Value::as_array).map(|peers| {
            peers
                .iter()
                .map(|peer| {
                    let field = |name: &str| {
                        peer.get(name)
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                            .to_owned()
                    };
                    (field("id"), field("state"))
                })
                .collect()
        })),
        Err(error) if not_offered(&error) => Ok(None),
        Err(error) => Err(error.to_string()),
    }
}

/// A node's state digest, `Ok(None)` when it offers none.
pub async fn digest(client: &Client) -> Result<Option<String>, ClientError> {
    match client.get_json("/v1/convergence").await {
        Ok(json) => Ok(json
            .get("digest")
            .and_then(Value::as_str)
            .map(str::to_owned)),
        Err(error) if not_offered(&error) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Polls every node with a read of `probe_key` until each answers it (200 or 404),
/// bounded by `timeout`. `Err` names the nodes that did not.
pub async fn wait_until_answering(
    nodes: &[Node],
    probe_key: &str,
    timeout: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let mut silent = Vec::new();
        for node in nodes {
            if let Err(error) = node.client.get(probe_key, None).await {
                silent.push(format!("{}: {error}", node.id));
            }
        }
        if silent.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= timeout {
            return Err(silent.join("; "));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Polls the views of `nodes` until each node that offers one holds every peer
/// `alive`, bounded by `timeout`.
pub async fn wait_for_peers_alive(nodes: &[Node], timeout: Duration) -> Seen {
    let started = Instant::now();
    loop {
        let mut problems = Vec::new();
        let mut offered = false;
        for node in nodes {
            match peer_view(&node.client).await {
                Ok(Some(peers)) => {
                    offered = true;
                    for (id, state) in peers {
                        if state != "alive" {
                            problems.push(format!("{} holds {id} {state}", node.id));
                        }
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    // Unreachable: it may offer a view once it answers.
                    offered = true;
                    problems.push(error);
                }
            }
        }
        if !offered {
            return Seen::NotOffered;
        }
        if problems.is_empty() {
            return Seen::After(started.elapsed());
        }
        if started.elapsed() >= timeout {
            return Seen::Never(problems.join(", "));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Polls the views of `nodes` until each node that offers one holds every peer on
/// the other side of `groups` `suspect` or `down` (the fault-level sign that a
/// partition took effect), until `deadline`.
pub async fn watch_cut(nodes: Vec<Node>, groups: Vec<Vec<String>>, deadline: Instant) -> Seen {
    let started = Instant::now();
    let group_of = |id: &str| {
        groups
            .iter()
            .position(|group| group.iter().any(|g| g == id))
    };
    loop {
        let mut problems = Vec::new();
        let mut offered = false;
        for node in &nodes {
            let Some(mine) = group_of(&node.id) else {
                continue;
            };
            match peer_view(&node.client).await {
                Ok(Some(peers)) => {
                    offered = true;
                    for (id, state) in peers {
                        let across = group_of(&id).is_some_and(|theirs| theirs != mine);
                        if across && state == "alive" {
                            problems.push(format!("{} still holds {id} alive", node.id));
                        }
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    offered = true;
                    problems.push(error);
                }
            }
        }
        if !offered {
            return Seen::NotOffered;
        }
        if problems.is_empty() {
            return Seen::After(started.elapsed());
        }
        if Instant::now() >= deadline {
            return Seen::Never(problems.join(", "));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// One read of `node` right after a kill command: `true` when it no longer answers.
pub async fn stopped_answering(node: &Node, probe_key: &str) -> bool {
    node.client.get(probe_key, None).await.is_err()
}
