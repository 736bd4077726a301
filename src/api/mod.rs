//! The client HTTP API, version 1 (API.md §3), and the dashboard page at `/`.
//!
//! Owns: routes, request parsing and validation, JSON shapes, request metrics. Every
//! input is checked before the replica sees it, so bad input changes nothing.
//! Knows nothing of: the wire format or peer links (it talks to [`Replica`] only).

pub mod access;
pub mod error;
mod kv;
pub mod server;
pub mod watch;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::BoxError;
use axum::Router;
use futures_util::future::Either;
use futures_util::FutureExt as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tower::ServiceExt as _;

use crate::metrics::Route;
use crate::replication::Replica;
use crate::session::Binding;
pub use error::ApiError;

/// Items returned by a listing when `limit` is not given.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// The largest `limit` a listing accepts.
pub const MAX_LIST_LIMIT: usize = 10_000;

const KV_PREFIX: &str = "/v1/kv/";

/// The dashboard: one static page, its script and style inline (see DESIGN.md).
const DASHBOARD: &str = include_str!("dashboard.html");

/// What the API needs besides the replica.
#[derive(Clone, Debug, Default)]
pub struct ApiOptions {
    /// Every request (up to its response headers) must finish within this time.
    pub request_timeout: Duration,
    /// Each peer's client HTTP address, which `/v1/cluster` gives so that the dashboard
    /// can ask every node for its own view.
    pub peer_http: BTreeMap<String, SocketAddr>,
    /// The cluster's name, which session tokens are bound to.
    pub cluster: String,
    /// Client tokens, when configured: every request but the open ones needs one.
    pub access: Option<access::Access>,
}

/// The client API as one hyper service. Cheap to clone.
///
/// Every request is timed, counted by route and status, and cut off with 408 at the
/// request deadline, right here rather than in middleware layers. Key requests
/// (`/v1/kv/{key}`, the hot path) are answered by the `kv` module directly; every other
/// route goes through an axum [`Router`].
#[derive(Clone)]
pub struct Api {
    shared: Arc<Shared>,
}

struct Shared {
    replica: Replica,
    request_timeout: Duration,
    /// One byte over the largest value, so that a value just over the limit is read
    /// whole and refused with its size.
    body_limit: usize,
    /// Session tokens are bound to the cluster's name.
    binding: Binding,
    /// Client tokens, if configured.
    access: Option<access::Access>,
    routes: Router,
}

impl ApiOptions {
    /// Options with `request_timeout`, no peer addresses, and the default cluster name.
    pub fn new(request_timeout: Duration) -> Self {
        Self {
            request_timeout,
            peer_http: BTreeMap::new(),
            cluster: "meshkv".to_owned(),
            access: None,
        }
    }
}

struct AppState {
    replica: Replica,
    peer_http: BTreeMap<String, SocketAddr>,
    binding: Binding,
}

/// The client API; every request must finish within `options.request_timeout`.
pub fn router(replica: Replica, options: ApiOptions) -> Api {
    let body_limit = replica.limits().max_value_bytes + 1;
    let request_timeout = options.request_timeout;
    let binding = Binding::of(&options.cluster);
    let state = Arc::new(AppState {
        replica: replica.clone(),
        peer_http: options.peer_http,
        binding,
    });
    let routes = Router::new()
        .route("/", get(dashboard).fallback(method_not_allowed))
        .route("/ui", get(dashboard).fallback(method_not_allowed))
        .route("/v1/watch", get(watch::watch).fallback(method_not_allowed))
        .route("/v1/kv/", any(empty_key))
        .route("/v1/kv", get(list).fallback(method_not_allowed))
        .route(
            "/v1/convergence",
            get(convergence).fallback(method_not_allowed),
        )
        .route(
            "/v1/cluster",
            get(cluster)
                .options(cluster_preflight)
                .fallback(method_not_allowed),
        )
        .route("/v1/conflicts", get(conflicts).fallback(method_not_allowed))
        .route("/health", get(health).fallback(method_not_allowed))
        .route("/metrics", get(metrics).fallback(method_not_allowed))
        .fallback(not_found)
        .with_state(state);
    Api {
        shared: Arc::new(Shared {
            replica,
            request_timeout,
            body_limit,
            binding,
            access: options.access,
            routes,
        }),
    }
}

/// What the service reads a request body from: hyper's `Incoming` when serving, any
/// in-memory body in tests and fuzzing.
pub trait RequestBody:
    hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> RequestBody for B where
    B: hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static
{
}

impl<B: RequestBody> hyper::service::Service<Request<B>> for Api {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    /// Answers one request within the deadline (408 past it, slow body included), and
    /// records it. A write cut off while waiting for acks stays applied locally and
    /// replicates; the error says so.
    ///
    /// Built from combinators rather than nested `async` blocks: each of those would
    /// hold its own copy of the request, and a future over 1 KiB misses glibc's cache of
    /// small blocks, which costs some 400 instructions per request to allocate and free.
    fn call(&self, request: Request<B>) -> Self::Future {
        // tokio's clock, not std's: it is the one a simulator (or `tokio::time::pause`)
        // drives, and it keeps sub-millisecond resolution for the histogram.
        let started = tokio::time::Instant::now();
        let route = route_of(request.method(), request.uri().path());
        // Before anything else reads the request: a refused one changes nothing and
        // costs a header lookup and a hash. Without tokens, one branch.
        if let Some(access) = &self.shared.access {
            if let Err(refusal) = access.admit(route, request.method(), request.headers()) {
                let metrics = self.shared.replica.metrics();
                let status = refusal.status().as_u16();
                metrics
                    .auth_refused
                    .get_or_create(&crate::metrics::StatusLabels { status })
                    .inc();
                metrics.record_request(route, status, started.elapsed());
                return Box::pin(std::future::ready(Ok(refusal.into_response())));
            }
        }
        let timeout = self.shared.request_timeout;
        let deadline = started + timeout;
        let shared = self.shared.clone();
        let answer = tokio::time::timeout_at(deadline, dispatch(&self.shared, request));
        Box::pin(answer.map(move |answer| {
            let response = answer.unwrap_or_else(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request did not complete within {timeout:?}; a write may have been applied"
                    ),
                )
                .into_response()
            });
            shared.replica.metrics().record_request(
                route,
                response.status().as_u16(),
                started.elapsed(),
            );
            Ok(response)
        }))
    }
}

/// Key requests to [`kv`], the others to the router.
fn dispatch<B: RequestBody>(
    shared: &Shared,
    request: Request<B>,
) -> impl Future<Output = Response> + Send + 'static {
    let is_key = request
        .uri()
        .path()
        .strip_prefix(KV_PREFIX)
        .is_some_and(|raw| !raw.is_empty());
    if is_key {
        let (parts, body) = request.into_parts();
        let answer = kv::serve(
            shared.replica.clone(),
            shared.body_limit,
            shared.binding,
            parts,
            body,
        );
        Either::Left(answer.map(|answer| answer.unwrap_or_else(IntoResponse::into_response)))
    } else {
        // Boxed: the router's future is large, and only the rare routes need it.
        let answer = Box::pin(shared.routes.clone().oneshot(request));
        Either::Right(answer.map(|answer| match answer {
            Ok(response) => response,
            Err(never) => match never {},
        }))
    }
}

/// The route of a request, as metrics name it.
fn route_of(method: &Method, path: &str) -> Route {
    match path.strip_prefix(KV_PREFIX) {
        Some("") => Route::KvOther,
        Some(_) => match *method {
            Method::GET => Route::KvGet,
            Method::PUT => Route::KvPut,
            Method::DELETE => Route::KvDelete,
            _ => Route::KvOther,
        },
        None => match path {
            "/v1/kv" => Route::KvList,
            "/v1/convergence" => Route::Convergence,
            "/v1/cluster" => Route::Cluster,
            "/v1/conflicts" => Route::Conflicts,
            "/v1/watch" => Route::Watch,
            "/" | "/ui" => Route::Dashboard,
            "/health" => Route::Health,
            "/metrics" => Route::Metrics,
            _ => Route::Unmatched,
        },
    }
}

/// `GET /health`: `ok`, or 503 while the node is catching up after its start.
async fn health(State(state): State<Arc<AppState>>) -> Result<&'static str, ApiError> {
    state.replica.check_ready()?;
    Ok("ok")
}

/// `GET /`: the dashboard page.
async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DASHBOARD,
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint; see /v1/kv/{key}")
}

async fn method_not_allowed(method: Method) -> ApiError {
    method_not_allowed_error(&method)
}

fn method_not_allowed_error(method: &Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed here"),
    )
}

async fn empty_key() -> ApiError {
    ApiError::bad_request("the key is empty")
}

#[derive(Deserialize)]
struct ListParams {
    prefix: Option<String>,
    limit: Option<String>,
    start_after: Option<String>,
}

/// `GET /v1/kv?prefix=P&limit=N&start_after=K`: one page of live keys in key order;
/// `next` is the `start_after` of the following page (`null` on the last one).
///
/// A session token is checked and answered with the listed versions folded in, but
/// the listing itself is this node's state: it does not wait for the token (API.md
/// §3.3).
async fn list(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params
        .map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    let mut session = kv::session_of(&headers, &state.replica, state.binding)?.unwrap_or_default();
    let limit = match params.limit.as_deref() {
        None => DEFAULT_LIST_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(limit) if limit <= MAX_LIST_LIMIT => limit,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "limit must be a whole number from 0 to {MAX_LIST_LIMIT}"
                )))
            }
        },
    };
    state.replica.check_ready()?;
    let (items, truncated) = state.replica.scan(
        params.prefix.as_deref().unwrap_or(""),
        params.start_after.as_deref(),
        limit,
    );
    let next = match items.last() {
        Some(last) if truncated => Value::from(last.key.as_str()),
        _ => Value::Null,
    };
    let items: Vec<Value> = items
        .into_iter()
        .map(|entry| {
            session.observe(&entry.version);
            let mut object = serde_json::Map::new();
            object.insert("key".into(), entry.key.into());
            insert_value(&mut object, "value", entry.value.as_deref());
            object.insert("version".into(), entry.version.to_string().into());
            Value::Object(object)
        })
        .collect();
    let mut response =
        json_response(json!({ "items": items, "truncated": truncated, "next": next }));
    response.headers_mut().insert(
        kv::SESSION,
        kv::session_header(state.binding, Some(session), None),
    );
    Ok(response)
}

#[derive(Deserialize)]
struct ConvergenceParams {
    cluster: Option<String>,
}

/// `GET /v1/convergence`: this node's counts and digest; with `?cluster=true`, every
/// configured node's, and whether they all agree.
async fn convergence(
    State(state): State<Arc<AppState>>,
    params: Result<Query<ConvergenceParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params
        .map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    let cluster = match params.cluster.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::bad_request("cluster must be true or false")),
    };
    if !cluster {
        let summary = state.replica.summary();
        return Ok(json_response(json!({
            "node": state.replica.id().as_str(),
            "keys": summary.keys,
            "tombstones": summary.tombstones,
            "digest": format!("{:016x}", summary.digest),
            "max_version": summary.max_version.map(|version| version.to_string()),
        })));
    }
    let nodes = state.replica.cluster_summaries().await;
    let first = nodes
        .first()
        .and_then(|node| node.summary)
        .map(|(_, _, digest)| digest);
    let converged = nodes
        .iter()
        .all(|node| node.summary.is_some() && node.summary.map(|(_, _, digest)| digest) == first);
    let nodes: Vec<Value> = nodes
        .into_iter()
        .map(|node| {
            json!({
                "id": node.id.as_str(),
                "reachable": node.summary.is_some(),
                "digest": node.summary.map(|(_, _, digest)| format!("{digest:016x}")),
                "keys": node.summary.map(|(keys, _, _)| keys),
                "tombstones": node.summary.map(|(_, tombstones, _)| tombstones),
            })
        })
        .collect();
    Ok(json_response(
        json!({ "converged": converged, "nodes": nodes }),
    ))
}

/// `GET /v1/cluster`: this node's failure-detector view of its peers, with each peer's
/// client address, and how tombstone collection sees each (`tombstones`: `synced` when
/// a clean round set its watermark (it holds the tombstones this node held then),
/// `waiting` for a first clean round, `excluded` for silence longer than the grace;
/// `refused` says why a retired peer's data is refused). `retired` says why this node's
/// own data was retired, if it was. Any web page may read it
/// (`Access-Control-Allow-Origin: *`), so that the dashboard served by one node can
/// show every node's view; it holds no data.
async fn cluster(State(state): State<Arc<AppState>>) -> Response {
    let collection = state.replica.collection_views();
    let peers: Vec<Value> = state
        .replica
        .peer_views()
        .into_iter()
        .map(|(view, pending)| {
            let gc = collection.iter().find(|gc| gc.id == view.id);
            let tombstones = match gc {
                Some(gc) if gc.excluded => "excluded",
                Some(gc) if gc.watermark.is_some() => "synced",
                _ => "waiting",
            };
            let offset = state.replica.clock_offset(&view.id);
            let http = state
                .peer_http
                .get(view.id.as_str())
                .map(|address| address.to_string());
            json!({
                "id": view.id.as_str(),
                "http": http,
                "state": view.state.as_str(),
                "last_seen_ms": view.last_seen_ms,
                "pending": pending,
                "last_sync_ms": view.last_sync_ms,
                "tombstones": tombstones,
                "refused": gc.and_then(|gc| gc.refused.clone()),
                "clock_offset_ms": offset.map(|(offset, _)| offset.round() as i64),
                "clock_error_ms": offset.map(|(_, error)| error.ceil() as i64),
                "fenced": state.replica.peer_fenced(&view.id),
                "session_watermark": state.replica.session_watermark(&view.id).map(
                    |mark| json!({"wall_ms": mark.wall_ms, "logical": mark.logical})
                ),
            })
        })
        .collect();
    let mut response = json_response(json!({
        "node": state.replica.id().as_str(),
        "durable": state.replica.durable(),
        "catching_up": state.replica.catching_up(),
        "fenced": state.replica.fenced(),
        "peers": peers,
        "retired": state.replica.retired(),
    }));
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

/// `OPTIONS /v1/cluster`: the CORS preflight a browser sends before a cross-origin
/// `GET /v1/cluster` that carries an `Authorization` header (the dashboard asking a
/// peer for its view, with client tokens on). Open: it says only which header may be
/// sent.
async fn cluster_preflight() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::ACCESS_CONTROL_ALLOW_METHODS, "GET"),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, "authorization"),
            (header::ACCESS_CONTROL_MAX_AGE, "600"),
        ],
    )
        .into_response()
}

/// Query of `GET /v1/conflicts`.
#[derive(Deserialize)]
struct ConflictParams {
    limit: Option<String>,
}

/// `GET /v1/conflicts?limit=N`: the recent concurrent writes LWW discarded here, newest
/// first (API.md §3.4).
async fn conflicts(
    State(state): State<Arc<AppState>>,
    params: Result<Query<ConflictParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    use crate::store::conflict::{ConflictLog, Side};
    let Query(params) = params
        .map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    let max = ConflictLog::CAPACITY;
    let limit = match params.limit.as_deref() {
        None => 100,
        Some(text) => match text.parse::<usize>() {
            Ok(limit) if limit <= max => limit,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "limit must be a whole number from 0 to {max}"
                )))
            }
        },
    };
    let side = |side: &Side| {
        let mut object = serde_json::Map::new();
        object.insert("version".into(), side.version.to_string().into());
        insert_value(&mut object, "value", side.value.as_deref());
        if side.value.is_none() {
            object.insert("deleted".into(), true.into());
        }
        if side.truncated {
            object.insert("truncated".into(), true.into());
        }
        Value::Object(object)
    };
    let node = state.replica.id().as_str();
    let items: Vec<Value> = state
        .replica
        .conflicts(limit)
        .iter()
        .map(|recorded| {
            let conflict = &recorded.conflict;
            json!({
                "key": conflict.key,
                "winner": side(&conflict.winner),
                "loser": side(&conflict.loser),
                "at_ms": recorded.at_ms,
                "node": node,
            })
        })
        .collect();
    Ok(json_response(json!({ "conflicts": items })))
}

/// `GET /metrics` in the Prometheus text format.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let replica = &state.replica;
    let summary = replica.summary();
    let metrics = replica.metrics();
    metrics.keys.set(summary.keys as i64);
    metrics.tombstones.set(summary.tombstones as i64);
    metrics.catching_up.set(i64::from(replica.catching_up()));
    let journal = replica.journal_stats();
    // The journal counts; the counters take its totals (never backwards, even when
    // two scrapes race).
    let catch_up = |counter: &prometheus_client::metrics::counter::Counter, total: u64| {
        counter
            .inner()
            .fetch_max(total, std::sync::atomic::Ordering::Relaxed);
    };
    catch_up(&metrics.journal_written_bytes, journal.written_bytes);
    catch_up(&metrics.journal_fsyncs, journal.fsyncs);
    catch_up(&metrics.journal_compactions, journal.compactions);
    let lag = journal.appended.saturating_sub(journal.durable);
    metrics.journal_durable_lag.set(lag as i64);
    metrics.journal_disk_bytes.set(journal.disk_bytes as i64);
    metrics
        .journal_garbage_bytes
        .set(journal.garbage_bytes as i64);
    metrics.fenced.set(replica.fenced() as i64);
    for (view, _) in replica.peer_views() {
        metrics
            .peer_state
            .get_or_create(&crate::metrics::PeerLabels {
                peer: view.id.to_string(),
            })
            .set(view.state.gauge());
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

/// A JSON reply, ending with a newline so that a shell prompt after `curl` starts on a
/// line of its own.
pub(crate) fn json_response(value: Value) -> Response {
    let mut body = serde_json::to_vec(&value).expect("a JSON value always serializes");
    body.push(b'\n');
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Puts `value` into a JSON object under `field` as a string when it is valid UTF-8, else
/// under `<field>_base64` in standard base64 (API.md §3); `None` is `field: null`.
fn insert_value(object: &mut serde_json::Map<String, Value>, field: &str, value: Option<&[u8]>) {
    use base64::Engine as _;
    match value.map(std::str::from_utf8) {
        None => {
            object.insert(field.to_owned(), Value::Null);
        }
        Some(Ok(text)) => {
            object.insert(field.to_owned(), text.into());
        }
        Some(Err(_)) => {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(value.unwrap_or_default());
            object.insert(format!("{field}_base64"), encoded.into());
        }
    }
}
