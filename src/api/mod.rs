//! The client HTTP API, version 1 (API.md §3).
//!
//! Owns: routes, request parsing and validation, JSON shapes, request metrics. Every
//! input is checked before the replica sees it, so bad input changes nothing.
//! Knows nothing of: the wire format or peer links (it talks to [`Replica`] only).

pub mod error;
pub mod server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::metrics::{RequestLabels, RouteLabels};
use crate::replication::{Consistency, Replica};
pub use error::ApiError;

/// Items returned by a listing when `limit` is not given.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// The largest `limit` a listing accepts.
pub const MAX_LIST_LIMIT: usize = 10_000;

const KV_PREFIX: &str = "/v1/kv/";

#[derive(Clone)]
struct AppState {
    replica: Replica,
}

/// The router of the client API; every request must finish within `request_timeout`.
pub fn router(replica: Replica, request_timeout: Duration) -> Router {
    let body_limit = replica.limits().max_value_bytes + 1;
    let state = Arc::new(AppState { replica });
    Router::new()
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
    let started = Instant::now();
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
        _ => "unmatched",
    }
}

/// `GET /health`: `ok`, or 503 while the node is catching up after its start.
async fn health(State(state): State<Arc<AppState>>) -> Result<&'static str, ApiError> {
    state.replica.check_ready()?;
    Ok("ok")
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
        .map_err(|_| ApiError::bad_request("the key is not valid UTF-8"))?
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
                Json(json!({
                    "key": key,
                    "value": value,
                    "version": entry.version.to_string(),
                    "node": replica.id().as_str(),
                }))
                .into_response()
            } else {
                ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], value).into_response()
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
                Some(replica.limits().check_value(&body)?)
            } else {
                None
            };
            replica.check_ready()?;
            let outcome = replica.write(&key, value, level).await?;
            Ok(Json(json!({
                "key": key,
                "previous": outcome.previous,
                "version": outcome.version.to_string(),
            }))
            .into_response())
        }
        other => Err(method_not_allowed(other).await),
    }
}

#[derive(Deserialize)]
struct ListParams {
    prefix: Option<String>,
    limit: Option<String>,
}

/// `GET /v1/kv?prefix=P&limit=N`.
async fn list(
    State(state): State<Arc<AppState>>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
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
    let (items, truncated) = state
        .replica
        .scan(params.prefix.as_deref().unwrap_or(""), limit);
    let items: Vec<Value> = items
        .into_iter()
        .map(|entry| json!({"key": entry.key, "value": entry.value, "version": entry.version.to_string()}))
        .collect();
    Ok(Json(json!({ "items": items, "truncated": truncated })))
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
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params
        .map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    let cluster = match params.cluster.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::bad_request("cluster must be true or false")),
    };
    if !cluster {
        let summary = state.replica.summary();
        return Ok(Json(json!({
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
    Ok(Json(json!({ "converged": converged, "nodes": nodes })))
}

/// `GET /v1/cluster`: this node's failure-detector view of its peers.
async fn cluster(State(state): State<Arc<AppState>>) -> Json<Value> {
    let peers: Vec<Value> = state
        .replica
        .peer_views()
        .into_iter()
        .map(|(view, pending)| {
            json!({
                "id": view.id.as_str(),
                "state": view.state.as_str(),
                "last_seen_ms": view.last_seen_ms,
                "pending": pending,
                "last_sync_ms": view.last_sync_ms,
            })
        })
        .collect();
    Json(json!({ "node": state.replica.id().as_str(), "peers": peers }))
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
