//! The client HTTP API, version 1 (API.md §3), and the dashboard page at `/`.
//!
//! Owns: routes, request parsing and validation, JSON shapes, request metrics. Every
//! input is checked before the replica sees it, so bad input changes nothing.
//! Knows nothing of: the wire format or peer links (it talks to [`Replica`] only).

pub mod error;
pub mod server;
pub mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::metrics::{RequestLabels, RouteLabels};
use crate::replication::{Consistency, Replica};
use crate::store::InputError;
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
}

impl ApiOptions {
    /// Options with `request_timeout` and no peer addresses.
    pub fn new(request_timeout: Duration) -> Self {
        Self {
            request_timeout,
            peer_http: BTreeMap::new(),
        }
    }
}

struct AppState {
    replica: Replica,
    peer_http: BTreeMap<String, SocketAddr>,
}

/// The router of the client API.
pub fn router(replica: Replica, options: ApiOptions) -> Router {
    let body_limit = replica.limits().max_value_bytes + 1;
    let request_timeout = options.request_timeout;
    let state = Arc::new(AppState {
        replica,
        peer_http: options.peer_http,
    });
    Router::new()
        .route("/", get(dashboard).fallback(method_not_allowed))
        .route("/ui", get(dashboard).fallback(method_not_allowed))
        .route("/v1/watch", get(watch::watch).fallback(method_not_allowed))
        .route("/v1/kv/{*key}", any(kv))
        .route("/v1/kv/", any(empty_key))
        .route("/v1/kv", get(list).fallback(method_not_allowed))
        .route(
            "/v1/convergence",
            get(convergence).fallback(method_not_allowed),
        )
        .route("/v1/cluster", get(cluster).fallback(method_not_allowed))
        .route("/health", get(health).fallback(method_not_allowed))
        .route("/metrics", get(metrics).fallback(method_not_allowed))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(request_timeout, deadline))
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .with_state(state)
}

/// Counts every request by route and status, and times it.
async fn record(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = route_name(
        request.method(),
        request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    // tokio's clock, not std's: it is the one a simulator (or `tokio::time::pause`)
    // drives, and it keeps sub-millisecond resolution for the histogram.
    let started = tokio::time::Instant::now();
    let response = next.run(request).await;
    let metrics = state.replica.metrics();
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            status: response.status().as_u16(),
        })
        .inc();
    metrics
        .request_seconds
        .get_or_create(&RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Answers 408 to a request (slow body included) not done within the deadline. A write
/// cut off while waiting for acks stays applied locally and replicates; the error
/// says so.
async fn deadline(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request did not complete within {timeout:?}; a write may have been applied"
            ),
        )
        .into_response(),
    }
}

fn route_name(method: &Method, path: Option<&str>) -> &'static str {
    match (path, method.as_str()) {
        (Some("/v1/kv/{*key}"), "GET") => "kv_get",
        (Some("/v1/kv/{*key}"), "PUT") => "kv_put",
        (Some("/v1/kv/{*key}"), "DELETE") => "kv_delete",
        (Some("/v1/kv/{*key}" | "/v1/kv/"), _) => "kv_other",
        (Some("/v1/kv"), _) => "kv_list",
        (Some("/v1/convergence"), _) => "convergence",
        (Some("/v1/cluster"), _) => "cluster",
        (Some("/health"), _) => "health",
        (Some("/metrics"), _) => "metrics",
        (Some("/v1/watch"), _) => "watch",
        (Some("/" | "/ui"), _) => "dashboard",
        _ => "unmatched",
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
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed here"),
    )
}

async fn empty_key() -> ApiError {
    ApiError::bad_request("the key is empty")
}

#[derive(Deserialize)]
struct KvParams {
    consistency: Option<String>,
}

fn consistency(params: &KvParams, default: Consistency) -> Result<Consistency, ApiError> {
    match &params.consistency {
        None => Ok(default),
        Some(name) => name
            .parse()
            .map_err(|e: crate::replication::UnknownConsistency| {
                ApiError::bad_request(e.to_string())
            }),
    }
}

/// The key of a `/v1/kv/{key}` request: percent-decoded, UTF-8, within limits.
fn key_of(uri: &Uri, replica: &Replica) -> Result<String, ApiError> {
    let raw = uri.path().strip_prefix(KV_PREFIX).unwrap_or_default();
    let key = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| InputError::KeyNotUtf8)?
        .into_owned();
    replica.limits().check_key(&key)?;
    Ok(key)
}

/// `GET`, `PUT` and `DELETE` on one key.
async fn kv(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    params: Result<Query<KvParams>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let replica = &state.replica;
    let Query(params) = params
        .map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    match method {
        Method::GET | Method::HEAD => {
            let key = key_of(&uri, replica)?;
            let level = consistency(&params, Consistency::One)?;
            replica.check_ready()?;
            let entry = replica
                .read(&key, level)
                .await?
                .ok_or_else(|| ApiError::not_found(&key))?;
            let value = entry.value.unwrap_or_default();
            let etag = HeaderValue::from_str(&format!("\"{}\"", entry.version))
                .expect("versions are ASCII");
            let wants_json = headers
                .get(header::ACCEPT)
                .and_then(|accept| accept.to_str().ok())
                .is_some_and(|accept| accept.contains("application/json"));
            let mut response = if wants_json {
                let mut object = serde_json::Map::new();
                object.insert("key".into(), key.into());
                insert_value(&mut object, "value", Some(&value));
                object.insert("version".into(), entry.version.to_string().into());
                object.insert("node".into(), replica.id().as_str().into());
                json_response(Value::Object(object))
            } else {
                let content_type = if std::str::from_utf8(&value).is_ok() {
                    "text/plain; charset=utf-8"
                } else {
                    "application/octet-stream"
                };
                ([(header::CONTENT_TYPE, content_type)], value).into_response()
            };
            response.headers_mut().insert(header::ETAG, etag);
            Ok(response)
        }
        Method::PUT | Method::DELETE => {
            let key = key_of(&uri, replica)?;
            let level = consistency(&params, Consistency::Live)?;
            let value = if method == Method::PUT {
                let body = body.map_err(|rejection| {
                    let max = replica.limits().max_value_bytes;
                    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!("the value is larger than the limit of {max} bytes"),
                        )
                    } else {
                        ApiError::bad_request(format!(
                            "cannot read the request body: {}",
                            rejection.body_text()
                        ))
                    }
                })?;
                replica.limits().check_value(&body)?;
                Some(body)
            } else {
                None
            };
            replica.check_ready()?;
            let outcome = replica.write(&key, value, level).await?;
            let mut object = serde_json::Map::new();
            object.insert("key".into(), key.into());
            insert_value(&mut object, "previous", outcome.previous.as_deref());
            object.insert("version".into(), outcome.version.to_string().into());
            Ok(json_response(Value::Object(object)))
        }
        other => Err(method_not_allowed(other).await),
    }
}

#[derive(Deserialize)]
struct ListParams {
    prefix: Option<String>,
    limit: Option<String>,
    start_after: Option<String>,
}

/// `GET /v1/kv?prefix=P&limit=N&start_after=K`: one page of live keys in key order;
/// `next` is the `start_after` of the following page (`null` on the last one).
async fn list(
    State(state): State<Arc<AppState>>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params
        .map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
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
            let mut object = serde_json::Map::new();
            object.insert("key".into(), entry.key.into());
            insert_value(&mut object, "value", entry.value.as_deref());
            object.insert("version".into(), entry.version.to_string().into());
            Value::Object(object)
        })
        .collect();
    Ok(json_response(
        json!({ "items": items, "truncated": truncated, "next": next }),
    ))
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
/// client address. Any web page may read it (`Access-Control-Allow-Origin: *`), so that
/// the dashboard served by one node can show every node's view; it holds no data.
async fn cluster(State(state): State<Arc<AppState>>) -> Response {
    let peers: Vec<Value> = state
        .replica
        .peer_views()
        .into_iter()
        .map(|(view, pending)| {
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
            })
        })
        .collect();
    let mut response =
        json_response(json!({ "node": state.replica.id().as_str(), "peers": peers }));
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

/// `GET /metrics` in the Prometheus text format.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let replica = &state.replica;
    let summary = replica.summary();
    let metrics = replica.metrics();
    metrics.keys.set(summary.keys as i64);
    metrics.tombstones.set(summary.tombstones as i64);
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
