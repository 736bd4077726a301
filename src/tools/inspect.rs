//! Operator tools: `meshkv status` (every node's view, as a table) and `meshkv check`
//! (are the replicas converged?).
//!
//! Owns: polling every node of a cluster file over the public HTTP API and judging
//! convergence from their `/v1/convergence` digests.
//! Knows nothing of: the server's internals; like the test suites, it works against any
//! implementation of API.md.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::config::ClusterConfig;
use crate::tools::client::{AccessToken, Ca, Client};

/// Between two polls of `check --wait`.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Deadline of each request to a node.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// One node's `/v1/convergence`, or why it could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    /// The node id.
    pub id: String,
    /// Its client address.
    pub http: String,
    /// `(digest, keys, tombstones)`, or the error.
    pub state: Result<(String, u64, u64), String>,
}

/// The verdict on a set of node states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Every reachable node reported the same digest (and, with `all`, every node was
    /// reachable).
    pub converged: bool,
    /// A human report of the differences (empty when converged).
    pub report: String,
}

/// Where the tools learn about a cluster.
pub enum Source {
    /// Every node of a cluster file is asked directly (over HTTPS with the CA, if the
    /// cluster has TLS), with the client token if any.
    Cluster(Box<ClusterConfig>, Option<Ca>, Option<AccessToken>),
    /// One node is asked, and it asks the others (`/v1/convergence?cluster=true`): for
    /// an operator who knows one address and not the cluster file.
    Node(Client),
}

fn clients(
    config: &ClusterConfig,
    ca: Option<&Ca>,
    token: &Option<AccessToken>,
) -> Vec<(String, Client)> {
    config
        .nodes
        .iter()
        .map(|node| {
            (
                node.id.to_string(),
                Client::new(&node.http.to_string(), REQUEST_TIMEOUT)
                    .with_ca(ca)
                    .with_token(token.clone()),
            )
        })
        .collect()
}

/// Reads every node's `/v1/convergence`, directly or through one node.
pub async fn poll(source: &Source) -> Vec<NodeState> {
    match source {
        Source::Cluster(config, ca, token) => poll_cluster(config, ca.as_ref(), token).await,
        Source::Node(client) => poll_through(client).await,
    }
}

/// Asks one node for every node's summary. A node the asked one could not reach is
/// unreachable; if the asked node itself does not answer, it is the only entry.
async fn poll_through(client: &Client) -> Vec<NodeState> {
    let json = match client.get_json("/v1/convergence?cluster=true").await {
        Ok(json) => json,
        Err(error) => {
            return vec![NodeState {
                id: client.url().to_owned(),
                http: client.url().to_owned(),
                state: Err(error.to_string()),
            }]
        }
    };
    let Some(nodes) = json["nodes"].as_array() else {
        return vec![NodeState {
            id: client.url().to_owned(),
            http: client.url().to_owned(),
            state: Err("answered /v1/convergence?cluster=true without a node list".to_owned()),
        }];
    };
    nodes
        .iter()
        .map(|node| NodeState {
            id: cell(&node["id"]),
            http: format!("via {}", client.url()),
            state: match (node["digest"].as_str(), node["keys"].as_u64()) {
                (Some(digest), Some(keys)) => Ok((
                    digest.to_owned(),
                    keys,
                    node["tombstones"].as_u64().unwrap_or(0),
                )),
                _ => Err(format!("{} could not reach it", client.url())),
            },
        })
        .collect()
}

/// Reads the `/v1/convergence` of every node of a cluster file.
async fn poll_cluster(
    config: &ClusterConfig,
    ca: Option<&Ca>,
    token: &Option<AccessToken>,
) -> Vec<NodeState> {
    let reads = clients(config, ca, token)
        .into_iter()
        .map(|(id, client)| async move {
            let state = match client.get_json("/v1/convergence").await {
                Ok(json) => match (json["digest"].as_str(), json["keys"].as_u64()) {
                    (Some(digest), Some(keys)) => Ok((
                        digest.to_owned(),
                        keys,
                        json["tombstones"].as_u64().unwrap_or(0),
                    )),
                    _ => Err("answered without digest and keys".to_owned()),
                },
                Err(error) => Err(error.to_string()),
            };
            NodeState {
                id,
                http: client.url().to_owned(),
                state,
            }
        });
    futures_util::future::join_all(reads).await
}

/// Judges convergence: equal digests on every reachable node (every node, if `all`).
pub fn judge(states: &[NodeState], all: bool) -> Verdict {
    let mut report = String::new();
    let reachable: Vec<_> = states
        .iter()
        .filter_map(|node| node.state.as_ref().ok().map(|state| (node, state)))
        .collect();
    for node in states {
        if let Err(error) = &node.state {
            let _ = writeln!(report, "  {} is unreachable: {error}", node.id);
        }
    }
    let reference = reachable
        .iter()
        .map(|(_, (digest, _, _))| digest)
        .max_by_key(|digest| {
            reachable
                .iter()
                .filter(|(_, (other, _, _))| &other == digest)
                .count()
        });
    let mut differ = false;
    if let Some(reference) = reference {
        let holders: Vec<&str> = reachable
            .iter()
            .filter(|(_, (digest, _, _))| digest == reference)
            .map(|(node, _)| node.id.as_str())
            .collect();
        let reference_keys = reachable
            .iter()
            .find(|(_, (digest, _, _))| digest == reference)
            .map(|(_, (_, keys, _))| *keys)
            .unwrap_or(0);
        for (node, (digest, keys, tombstones)) in &reachable {
            if digest != reference {
                differ = true;
                let delta = *keys as i64 - reference_keys as i64;
                let _ = writeln!(
                    report,
                    "  {} differs from {}: digest {digest}, {keys} keys ({delta:+}), {tombstones} tombstones",
                    node.id,
                    holders.join(", ")
                );
            }
        }
    }
    let unreachable = reachable.len() < states.len();
    let converged = !(reachable.is_empty() || differ || (all && unreachable));
    Verdict { converged, report }
}

/// `meshkv check`: polls until converged or `wait` has passed. Prints the outcome;
/// returns whether the cluster converged.
pub async fn check(source: &Source, wait: Duration, all: bool) -> bool {
    let started = Instant::now();
    let mut polls = 0u64;
    loop {
        polls += 1;
        let states = poll(source).await;
        let verdict = judge(&states, all);
        if verdict.converged || started.elapsed() >= wait {
            let reachable = states.iter().filter(|node| node.state.is_ok()).count();
            if verdict.converged {
                let digest = states
                    .iter()
                    .find_map(|node| node.state.as_ref().ok())
                    .map(|s| s.0.clone());
                println!(
                    "converged: {reachable} of {} nodes hold digest {} (after {:.1} s, {polls} polls)",
                    states.len(),
                    digest.unwrap_or_default(),
                    started.elapsed().as_secs_f64()
                );
                print!("{}", verdict.report);
            } else {
                println!(
                    "not converged after {:.1} s ({reachable} of {} nodes reachable):",
                    started.elapsed().as_secs_f64(),
                    states.len()
                );
                print!("{}", verdict.report);
            }
            return verdict.converged;
        }
        tokio::time::sleep(POLL_INTERVAL.min(wait.saturating_sub(started.elapsed()))).await;
    }
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// `meshkv status`: every node's state and its view of its peers, as text. Through
/// one node (`Source::Node`), the rows come from that node's summary of the cluster and
/// the view of peers is its own.
pub async fn status(source: &Source) -> String {
    let clients = match source {
        Source::Cluster(config, ca, token) => clients(config, ca.as_ref(), token),
        Source::Node(client) => return status_through(client).await,
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:<24} {:<6} {:>8} {:>10}  {:<16}  max_version",
        "node", "http", "up", "keys", "tombstones", "digest"
    );
    let mut views = Vec::new();
    for (id, client) in clients {
        match client.get_json("/v1/convergence").await {
            Ok(json) => {
                let _ = writeln!(
                    out,
                    "{:<8} {:<24} {:<6} {:>8} {:>10}  {:<16}  {}",
                    id,
                    client.url(),
                    "yes",
                    cell(&json["keys"]),
                    cell(&json["tombstones"]),
                    cell(&json["digest"]),
                    cell(&json["max_version"])
                );
                let view = client.get_json("/v1/cluster").await;
                views.push((id, view.map_err(|error| error.to_string())));
            }
            Err(error) => {
                let _ = writeln!(out, "{:<8} {:<24} {:<6} {error}", id, client.url(), "NO");
            }
        }
    }
    write_views(&mut out, views);
    out
}

/// `status` through one node: every node's summary as that node reports it, and that
/// node's view of its peers.
async fn status_through(client: &Client) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:<32} {:<6} {:>8} {:>10}  digest",
        "node", "asked", "up", "keys", "tombstones"
    );
    for node in poll_through(client).await {
        match node.state {
            Ok((digest, keys, tombstones)) => {
                let _ = writeln!(
                    out,
                    "{:<8} {:<32} {:<6} {:>8} {:>10}  {digest}",
                    node.id, node.http, "yes", keys, tombstones
                );
            }
            Err(error) => {
                let _ = writeln!(out, "{:<8} {:<32} {:<6} {error}", node.id, node.http, "NO");
            }
        }
    }
    let own = client.get_json("/v1/convergence").await.ok();
    let id = own
        .as_ref()
        .map_or_else(|| client.url().to_owned(), |json| cell(&json["node"]));
    let view = client.get_json("/v1/cluster").await;
    write_views(
        &mut out,
        vec![(id, view.map_err(|error| error.to_string()))],
    );
    out
}

/// The table of each node's view of its peers (`/v1/cluster`).
fn write_views(out: &mut String, views: Vec<(String, Result<Value, String>)>) {
    let _ = writeln!(
        out,
        "\n{:<8} {:<8} {:<8} {:>12} {:>8} {:>12} {:>15}",
        "view of", "peer", "state", "last_seen_ms", "pending", "last_sync_ms", "clock_offset_ms"
    );
    let mut fenced = Vec::new();
    for (id, view) in views {
        let view = match view {
            Ok(view) => view,
            Err(error) => {
                let _ = writeln!(out, "{id:<8} (no /v1/cluster answer: {error})");
                continue;
            }
        };
        if view["fenced"] == Value::Bool(true) {
            fenced.push(id.clone());
        }
        for peer in view["peers"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "{:<8} {:<8} {:<8} {:>12} {:>8} {:>12} {:>15}",
                id,
                cell(&peer["id"]),
                cell(&peer["state"]),
                cell(&peer["last_seen_ms"]),
                cell(&peer["pending"]),
                cell(&peer["last_sync_ms"]),
                offset_cell(&peer["clock_offset_ms"], &peer["clock_error_ms"])
            );
        }
    }
    for id in fenced {
        let _ = writeln!(
            out,
            "{id} is FENCED: its clock is too far from the cluster's; it refuses writes"
        );
    }
}

/// A peer's clock offset as `+12±1` (its clock minus the viewer's), `-` if unknown.
fn offset_cell(offset: &Value, error: &Value) -> String {
    match (offset.as_i64(), error.as_i64()) {
        (Some(offset), Some(error)) => format!("{offset:+}±{error}"),
        (Some(offset), None) => format!("{offset:+}"),
        _ => "-".to_owned(),
    }
}

/// Parses `500ms`, `2s`, `1.5s`, `3m` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else if let Some(m) = text.strip_suffix('m') {
        (m, 60.0)
    } else {
        (text, 1.0)
    };
    match number.trim().parse::<f64>() {
        Ok(value) if value >= 0.0 && value.is_finite() && value * scale < 1e9 => {
            Ok(Duration::from_secs_f64(value * scale))
        }
        _ => Err(format!(
            "{text:?} is not a duration (examples: 500ms, 10s, 2m)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, state: Result<(&str, u64), &str>) -> NodeState {
        NodeState {
            id: id.into(),
            http: String::new(),
            state: state
                .map(|(digest, keys)| (digest.to_owned(), keys, 0))
                .map_err(str::to_owned),
        }
    }

    #[test]
    fn equal_digests_converge_and_unreachable_nodes_fail_only_with_all() {
        let states = [
            node("n1", Ok(("aa", 3))),
            node("n2", Ok(("aa", 3))),
            node("n3", Err("down")),
        ];
        assert!(judge(&states, false).converged);
        let strict = judge(&states, true);
        assert!(!strict.converged);
        assert!(strict.report.contains("n3 is unreachable"));
    }

    #[test]
    fn a_differing_node_is_named_with_its_key_delta() {
        let states = [
            node("n1", Ok(("aa", 3))),
            node("n2", Ok(("aa", 3))),
            node("n3", Ok(("bb", 1))),
        ];
        let verdict = judge(&states, false);
        assert!(!verdict.converged);
        assert!(
            verdict.report.contains("n3 differs from n1, n2"),
            "{}",
            verdict.report
        );
        assert!(verdict.report.contains("(-2)"), "{}", verdict.report);
        assert!(
            !judge(&[node("n1", Err("down"))], false).converged,
            "nothing reachable is not convergence"
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
