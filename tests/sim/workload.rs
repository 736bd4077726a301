//! The simulated clients: random reads, writes and deletes of a few keys on random
//! nodes at every consistency level, over real HTTP; and the checker client, which
//! waits for the cluster to converge after the heal.
//!
//! Owns: [`client`], [`checker`], [`Convergence`].
//! Knows nothing of: the fault schedule (it only knows when to stop), the invariants.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use meshkv::clock::Version;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use super::history::{History, Level, Op, Outcome, Request};
use super::http::{call, CallError, Reply};
use super::observe::Observatory;

/// How long a client waits for any reply.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(2);

/// What the clients and the checker share.
#[derive(Clone)]
pub struct Shared {
    /// The HTTP address of every node.
    pub nodes: Rc<Vec<SocketAddr>>,
    /// Keys `k0`.. in use.
    pub keys: usize,
    /// When clients stop sending.
    pub stop_at: Duration,
    /// The ops, as they complete.
    pub history: Rc<RefCell<History>>,
    /// The nodes' states.
    pub observatory: Observatory,
    /// Clients still running.
    pub running: Rc<RefCell<usize>>,
}

/// Simulated time since the start of the run.
pub fn now() -> Duration {
    turmoil::sim_elapsed().expect("called inside the simulation")
}

fn weighted_level(rng: &mut ChaCha8Rng) -> Level {
    match rng.random_range(0..100) {
        0..25 => Level::One,
        25..50 => Level::Live,
        50..80 => Level::Quorum,
        _ => Level::All,
    }
}

/// One client: sends requests one at a time until `stop_at`. Its choices come from its
/// own generator, seeded from the run's seed and its index.
pub async fn client(shared: Shared, index: usize, seed: u64) -> turmoil::Result {
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut written = 0;
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..100))).await;
    while now() < shared.stop_at {
        let key = format!("k{}", rng.random_range(0..shared.keys));
        let node = rng.random_range(0..shared.nodes.len());
        let request = match rng.random_range(0..100) {
            0..45 => {
                written += 1;
                Request::Put(format!("c{}-{written}", index + 1))
            }
            45..55 => Request::Delete,
            _ => Request::Get,
        };
        let level = weighted_level(&mut rng);
        let id = perform(&shared, index, node, &key, request.clone(), level, None).await;
        // A write whose connection failed is sent again once, elsewhere, as a client
        // library with failover would: the same value may be applied twice.
        let failed = matches!(shared.history.borrow().ops[id].outcome, Outcome::Failed(_));
        if failed && request != Request::Get && rng.random_bool(0.5) {
            let other = (node + rng.random_range(1..shared.nodes.len())) % shared.nodes.len();
            perform(&shared, index, other, &key, request, level, Some(id)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..30))).await;
    }
    *shared.running.borrow_mut() -= 1;
    Ok(())
}

/// Sends one request, records it, and returns its id in the history.
async fn perform(
    shared: &Shared,
    client: usize,
    node: usize,
    key: &str,
    request: Request,
    level: Level,
    retry_of: Option<usize>,
) -> usize {
    let (method, body) = match &request {
        Request::Put(value) => (Method::PUT, Some(Bytes::from(value.clone()))),
        Request::Delete => (Method::DELETE, None),
        Request::Get => (Method::GET, None),
    };
    let path = format!("/v1/kv/{key}?consistency={}", level.as_str());
    let invoked = now();
    let reply = call(shared.nodes[node], method, &path, body, CLIENT_DEADLINE).await;
    let completed = now();
    let outcome = outcome_of(&request, reply);
    // Right after the acknowledgement, before anything else runs: who holds it.
    let holders_at_ack = match (&outcome, level) {
        (Outcome::Written { version, .. }, Level::Quorum | Level::All) => {
            let tombstone = request == Request::Delete;
            Some(shared.observatory.holders(key, version, tombstone))
        }
        _ => None,
    };
    shared.history.borrow_mut().push(Op {
        id: 0,
        client,
        node,
        key: key.to_owned(),
        request,
        level,
        invoked,
        completed,
        outcome,
        retry_of,
        holders_at_ack,
    })
}

fn json(body: &Bytes) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::Null)
}

fn version_of(body: &Value) -> Option<Version> {
    body.get("version")?.as_str()?.parse().ok()
}

fn outcome_of(request: &Request, reply: Result<Reply, CallError>) -> Outcome {
    let reply = match reply {
        Ok(reply) => reply,
        Err(error) => return Outcome::Failed(error.to_string()),
    };
    let body = json(&reply.body);
    let error = || {
        body.get("error")
            .and_then(Value::as_str)
            .unwrap_or("(no error sentence)")
            .to_owned()
    };
    match (reply.status, request) {
        (200, Request::Get) => match (body.get("value").and_then(Value::as_str), version_of(&body))
        {
            (Some(value), Some(version)) => Outcome::Found {
                value: value.to_owned(),
                version,
            },
            _ => Outcome::Failed(format!(
                "unreadable 200: {}",
                String::from_utf8_lossy(&reply.body)
            )),
        },
        (200, _) => match version_of(&body) {
            Some(version) => Outcome::Written {
                version,
                previous: body
                    .get("previous")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            },
            None => Outcome::Failed(format!(
                "unreadable 200: {}",
                String::from_utf8_lossy(&reply.body)
            )),
        },
        (404, Request::Get) => Outcome::NotFound,
        (503, _) => Outcome::Unavailable(error()),
        (status, _) => Outcome::Failed(format!("{status}: {}", error())),
    }
}

/// What the checker saw after the heal.
#[derive(Debug, Clone, Default)]
pub struct Convergence {
    /// How long after the heal every node first reported the same digest; `None` if
    /// they did not within the bound.
    pub after_heal: Option<Duration>,
    /// The digests of the last poll (`None`: no answer), by node.
    pub digests: Vec<Option<String>>,
}

/// Waits for the heal and for every client to finish, then polls every node's
/// `/v1/convergence` until the digests agree or `bound` has passed since the heal.
pub async fn checker(
    shared: Shared,
    heal_at: Duration,
    bound: Duration,
    result: Rc<RefCell<Convergence>>,
) -> turmoil::Result {
    while now() < heal_at || *shared.running.borrow() > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    loop {
        let mut digests = Vec::new();
        for &address in shared.nodes.iter() {
            let reply = call(
                address,
                Method::GET,
                "/v1/convergence",
                None,
                Duration::from_millis(500),
            )
            .await;
            let digest = reply
                .ok()
                .filter(|reply| reply.status == 200)
                .and_then(|reply| {
                    json(&reply.body)
                        .get("digest")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                });
            digests.push(digest);
        }
        let agreed = digests[0].is_some() && digests.iter().all(|digest| digest == &digests[0]);
        let elapsed = now().saturating_sub(heal_at);
        if agreed || elapsed > bound {
            *result.borrow_mut() = Convergence {
                after_heal: agreed.then_some(elapsed),
                digests,
            };
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
