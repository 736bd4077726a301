//! Stand-in stores for the fairness tests of `meshkv test`: small in-process HTTP
//! servers that serve the key API of API.md §3 (`/v1/kv`, `/health`) in front of
//! different storage designs, so that the suites can be judged against stores that
//! are not meshkv.
//!
//! Each stand-in has N front ends (`n1`..`nN`, each on its own 127.0.0.1 port, listed
//! in a cluster file with no `peer` address) and a control endpoint that the suites'
//! fault commands call with `curl`: `POST /partition` (body `n1,n2|n3,n4`), `POST
//! /heal`, `POST /kill/{node}`, `POST /restart/{node}`. A killed front end closes its
//! listener and every open connection, like a killed process; no root is needed.
//!
//! | kind | storage | partition | optional endpoints |
//! | --- | --- | --- | --- |
//! | [`Kind::Isolated`] | one map per front end: nothing replicates | no effect | none |
//! | [`Kind::Shared`] | one map behind every front end | no effect: consistent | `/v1/convergence` |
//! | [`Kind::MajorityOnly`] | one map | front ends outside a strict majority answer 503 to reads and writes | `/v1/cluster` |

#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// The storage design of a stand-in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Each front end keeps its own map and never replicates.
    Isolated,
    /// One map behind every front end: consistent through any partition.
    Shared,
    /// One map; while partitioned, the front ends outside a strict majority refuse
    /// reads and writes with 503 (what a strongly consistent store does).
    MajorityOnly,
}

/// key -> (value, version).
type Map = BTreeMap<String, (String, u64)>;

/// Everything the front ends and the control endpoint share.
struct Store {
    kind: Kind,
    ids: Vec<String>,
    addresses: Vec<SocketAddr>,
    shared: Mutex<Map>,
    own: Vec<Mutex<Map>>,
    groups: Mutex<Option<Vec<Vec<String>>>>,
    servers: Mutex<Vec<Option<JoinHandle<()>>>>,
    version: AtomicU64,
}

impl Store {
    /// The map front end `index` reads and writes.
    fn map(&self, index: usize) -> &Mutex<Map> {
        match self.kind {
            Kind::Isolated => &self.own[index],
            Kind::Shared | Kind::MajorityOnly => &self.shared,
        }
    }

    /// The partition group of node `id`, if a partition is in force.
    fn group_of(&self, id: &str) -> Option<Vec<String>> {
        let groups = self.groups.lock().unwrap();
        let groups = groups.as_ref()?;
        Some(
            groups
                .iter()
                .find(|group| group.iter().any(|g| g == id))
                .cloned()
                .unwrap_or_else(|| vec![id.to_owned()]),
        )
    }

    /// Whether front end `index` refuses requests now.
    fn refuses(&self, index: usize) -> bool {
        self.kind == Kind::MajorityOnly
            && self
                .group_of(&self.ids[index])
                .is_some_and(|group| group.len() * 2 <= self.ids.len())
    }

    fn running(&self, index: usize) -> bool {
        self.servers.lock().unwrap()[index].is_some()
    }
}

/// A running stand-in store; dropping it stops every server.
pub struct StandIn {
    store: Arc<Store>,
    control: SocketAddr,
    control_task: JoinHandle<()>,
    dir: PathBuf,
    cluster_file: PathBuf,
}

#[derive(Clone)]
struct FrontEnd {
    store: Arc<Store>,
    index: usize,
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn health() -> &'static str {
    "ok"
}

async fn read(
    State(front): State<FrontEnd>,
    UrlPath(key): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if front.store.refuses(front.index) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node is on the minority side of a partition",
        );
    }
    let entry = front
        .store
        .map(front.index)
        .lock()
        .unwrap()
        .get(&key)
        .cloned();
    let Some((value, version)) = entry else {
        return error(StatusCode::NOT_FOUND, "no such key");
    };
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json"));
    if wants_json {
        Json(json!({
            "key": key,
            "value": value,
            "version": version.to_string(),
            "node": front.store.ids[front.index],
        }))
        .into_response()
    } else {
        value.into_response()
    }
}

async fn write(
    State(front): State<FrontEnd>,
    UrlPath(key): UrlPath<String>,
    body: Bytes,
) -> Response {
    if front.store.refuses(front.index) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node is on the minority side of a partition; the write was not applied",
        );
    }
    let Ok(value) = String::from_utf8(body.to_vec()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "this stand-in stores UTF-8 values only",
        );
    };
    let version = front.store.version.fetch_add(1, Ordering::SeqCst) + 1;
    let previous = front
        .store
        .map(front.index)
        .lock()
        .unwrap()
        .insert(key.clone(), (value, version))
        .map(|(value, _)| value);
    Json(json!({ "key": key, "previous": previous, "version": version.to_string() }))
        .into_response()
}

/// `GET /v1/cluster` of [`Kind::MajorityOnly`]: peers across the cut or killed are down.
async fn cluster_view(State(front): State<FrontEnd>) -> Response {
    let me = &front.store.ids[front.index];
    let mine = front.store.group_of(me);
    let peers: Vec<Value> = front
        .store
        .ids
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != front.index)
        .map(|(index, id)| {
            let cut = mine.as_ref().is_some_and(|group| !group.contains(id));
            let state = if cut || !front.store.running(index) {
                "down"
            } else {
                "alive"
            };
            json!({ "id": id, "state": state })
        })
        .collect();
    Json(json!({ "node": me, "fenced": false, "peers": peers })).into_response()
}

/// `GET /v1/convergence` of [`Kind::Shared`]: a digest of the map this node serves.
async fn convergence(State(front): State<FrontEnd>) -> Response {
    let map = front.store.map(front.index).lock().unwrap().clone();
    let mut hasher = DefaultHasher::new();
    map.hash(&mut hasher);
    Json(json!({
        "node": front.store.ids[front.index],
        "keys": map.len(),
        "tombstones": 0,
        "digest": format!("{:016x}", hasher.finish()),
        "max_version": map.values().map(|(_, v)| *v).max().unwrap_or(0).to_string(),
    }))
    .into_response()
}

fn front_end_router(store: Arc<Store>, index: usize) -> Router {
    let mut router = Router::new()
        .route("/health", get(health))
        .route("/v1/kv/{*key}", get(read).put(write));
    match store.kind {
        Kind::Isolated => {}
        Kind::Shared => router = router.route("/v1/convergence", get(convergence)),
        Kind::MajorityOnly => router = router.route("/v1/cluster", get(cluster_view)),
    }
    router.with_state(FrontEnd { store, index })
}

/// Serves `router` on `listener`. Every connection is a task of this one, so aborting
/// it closes the listener and every open connection at once, like a killed process.
async fn serve(listener: TcpListener, router: Router) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        connections.spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn start_front_end(store: &Arc<Store>, index: usize) -> Result<(), String> {
    let listener = TcpListener::bind(store.addresses[index])
        .await
        .map_err(|e| format!("cannot bind {}: {e}", store.addresses[index]))?;
    let task = tokio::spawn(serve(listener, front_end_router(store.clone(), index)));
    store.servers.lock().unwrap()[index] = Some(task);
    Ok(())
}

fn index_of(store: &Store, node: &str) -> Option<usize> {
    store.ids.iter().position(|id| id == node)
}

async fn control_partition(State(store): State<Arc<Store>>, body: String) -> Response {
    let groups: Vec<Vec<String>> = body
        .trim()
        .split('|')
        .map(|group| group.split(',').map(str::to_owned).collect())
        .collect();
    let known = groups
        .iter()
        .flatten()
        .all(|id| index_of(&store, id).is_some());
    if groups.len() < 2 || !known {
        return error(StatusCode::BAD_REQUEST, "expected groups like n1,n2|n3,n4");
    }
    *store.groups.lock().unwrap() = Some(groups);
    "partitioned".into_response()
}

async fn control_heal(State(store): State<Arc<Store>>) -> Response {
    *store.groups.lock().unwrap() = None;
    "healed".into_response()
}

async fn control_kill(State(store): State<Arc<Store>>, UrlPath(node): UrlPath<String>) -> Response {
    let Some(index) = index_of(&store, &node) else {
        return error(StatusCode::NOT_FOUND, "no such node");
    };
    let Some(task) = store.servers.lock().unwrap()[index].take() else {
        return error(StatusCode::CONFLICT, "the node is not running");
    };
    task.abort();
    let _ = task.await;
    "killed".into_response()
}

async fn control_restart(
    State(store): State<Arc<Store>>,
    UrlPath(node): UrlPath<String>,
) -> Response {
    let Some(index) = index_of(&store, &node) else {
        return error(StatusCode::NOT_FOUND, "no such node");
    };
    if store.running(index) {
        return error(StatusCode::CONFLICT, "the node is running");
    }
    // A restarted front end of a store that keeps its data per node comes back empty.
    store.own[index].lock().unwrap().clear();
    match start_front_end(&store, index).await {
        Ok(()) => "restarted".into_response(),
        Err(message) => error(StatusCode::INTERNAL_SERVER_ERROR, &message),
    }
}

impl StandIn {
    /// Starts a stand-in of `kind` with `nodes` front ends, and writes its cluster file
    /// under a fresh temporary directory.
    pub async fn start(kind: Kind, nodes: usize) -> StandIn {
        let mut listeners = Vec::new();
        for _ in 0..nodes {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind a port"));
        }
        let addresses: Vec<SocketAddr> = listeners
            .iter()
            .map(|l| l.local_addr().expect("bound"))
            .collect();
        let store = Arc::new(Store {
            kind,
            ids: (1..=nodes).map(|i| format!("n{i}")).collect(),
            addresses: addresses.clone(),
            shared: Mutex::new(Map::new()),
            own: (0..nodes).map(|_| Mutex::new(Map::new())).collect(),
            groups: Mutex::new(None),
            servers: Mutex::new((0..nodes).map(|_| None).collect()),
            version: AtomicU64::new(0),
        });
        for (index, listener) in listeners.into_iter().enumerate() {
            let task = tokio::spawn(serve(listener, front_end_router(store.clone(), index)));
            store.servers.lock().unwrap()[index] = Some(task);
        }
        let control_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a port");
        let control = control_listener.local_addr().expect("bound");
        let control_router = Router::new()
            .route("/partition", post(control_partition))
            .route("/heal", post(control_heal))
            .route("/kill/{node}", post(control_kill))
            .route("/restart/{node}", post(control_restart))
            .with_state(store.clone());
        let control_task = tokio::spawn(serve(control_listener, control_router));

        let dir = std::env::temp_dir().join(format!(
            "meshkv-standin-{}-{}",
            std::process::id(),
            addresses[0].port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the stand-in's directory");
        // No `peer` addresses: a store under test needs only its client API.
        let mut text = String::new();
        for (id, address) in store.ids.iter().zip(&addresses) {
            text.push_str(&format!(
                "[[nodes]]\nid = \"{id}\"\nhttp = \"{address}\"\n\n"
            ));
        }
        let cluster_file = dir.join("cluster.toml");
        std::fs::write(&cluster_file, text).expect("write the cluster file");
        StandIn {
            store,
            control,
            control_task,
            dir,
            cluster_file,
        }
    }

    /// The cluster file (ids and HTTP addresses only).
    pub fn cluster_file(&self) -> &Path {
        &self.cluster_file
    }

    /// A directory for the test's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `--kill-cmd`, `--restart-cmd`, `--partition-cmd` and `--heal-cmd` arguments
    /// that act on this stand-in through its control endpoint.
    pub fn fault_args(&self) -> Vec<String> {
        let url = format!("http://{}", self.control);
        vec![
            "--kill-cmd".into(),
            format!("curl -sSf -X POST {url}/kill/{{node}}"),
            "--restart-cmd".into(),
            format!("curl -sSf -X POST {url}/restart/{{node}}"),
            "--partition-cmd".into(),
            format!("curl -sSf -X POST --data-binary {{groups}} {url}/partition"),
            "--heal-cmd".into(),
            format!("curl -sSf -X POST {url}/heal"),
        ]
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.control_task.abort();
        for task in self.store.servers.lock().unwrap().iter_mut() {
            if let Some(task) = task.take() {
                task.abort();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
