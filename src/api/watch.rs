//! `GET /v1/watch?prefix=P[&after=VERSION]`: the change feed as server-sent events
//! (API.md §3.5).
//!
//! Owns: the query, the event shapes (`data:` JSON per change, `event: overflow` last),
//! the resume snapshot's place before the live changes, keep-alive comments.
//! Knows nothing of: where changes come from or how they are buffered (the replica's
//! [`Watch`] does that), the wire format.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{insert_value, ApiError, AppState};
use crate::clock::{NodeId, Version};
use crate::replication::changes::{Origin, Watch, WatchEvent};
use crate::replication::{WatchStart, MAX_WATCH_SNAPSHOT};
use crate::store::Entry;

/// A comment line is sent this often on a quiet stream, so that proxies and clients
/// keep it open and notice a dead peer.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
pub(super) struct WatchParams {
    prefix: Option<String>,
    after: Option<String>,
}

/// The JSON of one change: `{"key","version","value"|"value_base64"|"deleted":true,
/// "origin"}`, plus `"snapshot":true` for the entries a resumed watch sends first.
pub fn change_json(entry: &Entry, origin: Origin, snapshot: bool) -> Value {
    let mut object = serde_json::Map::new();
    object.insert("key".into(), entry.key.clone().into());
    object.insert("version".into(), entry.version.to_string().into());
    match &entry.value {
        Some(value) => insert_value(&mut object, "value", Some(value)),
        None => {
            object.insert("deleted".into(), true.into());
        }
    }
    object.insert("origin".into(), origin.as_str().into());
    if snapshot {
        object.insert("snapshot".into(), true.into());
    }
    Value::Object(object)
}

fn data(value: &Value) -> Event {
    Event::default().data(value.to_string())
}

fn overflow(reason: String) -> Event {
    Event::default()
        .event("overflow")
        .data(json!({ "reason": reason }).to_string())
}

/// Where a stream is: the snapshot still to send, then the live watch.
struct Feed {
    me: NodeId,
    snapshot: VecDeque<Entry>,
    watch: Option<Watch>,
}

/// The events of one watch, snapshot first; ends after an overflow or when the node
/// stops.
fn events(start: WatchStart, me: NodeId) -> impl Stream<Item = Result<Event, Infallible>> {
    start.watch.count_sent(start.snapshot.len());
    let feed = Feed {
        me,
        snapshot: start.snapshot.into(),
        watch: Some(start.watch),
    };
    stream::unfold(feed, |mut feed| async move {
        if let Some(entry) = feed.snapshot.pop_front() {
            // The snapshot does not know how each entry arrived: its writer tells
            // whether it was written here.
            let origin = if entry.version.node == feed.me {
                Origin::Local
            } else {
                Origin::Replicated
            };
            let event = data(&change_json(&entry, origin, true));
            return Some((Ok(event), feed));
        }
        let event = match feed.watch.as_mut()?.next().await? {
            WatchEvent::Change(change) => data(&change_json(&change.entry, change.origin, false)),
            WatchEvent::Overflow { capacity } => {
                feed.watch = None;
                overflow(format!(
                    "this watcher fell more than {capacity} changes behind and missed some; \
                     re-read what you need (GET /v1/kv) and watch again"
                ))
            }
        };
        Some((Ok(event), feed))
    })
}

/// `GET /v1/watch`.
pub(super) async fn watch(
    State(state): State<Arc<AppState>>,
    params: Result<Query<WatchParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params
        .map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    let replica = &state.replica;
    let prefix = params.prefix.unwrap_or_default();
    if prefix.len() > replica.limits().max_key_bytes {
        return Err(ApiError::bad_request(format!(
            "the prefix is longer than the longest key ({} bytes)",
            replica.limits().max_key_bytes
        )));
    }
    let after = match params.after.as_deref() {
        None => None,
        Some(text) => Some(text.parse::<Version>().map_err(|_| {
            ApiError::bad_request(format!(
                "after={text:?} is not a version; use one from a reply, such as \
                 1795664594772-0000000000-n1"
            ))
        })?),
    };
    replica.check_ready()?;
    let start = replica
        .watch(&prefix, after.as_ref())
        .map_err(|error| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string()))?;
    let keep_alive = KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive");
    if start.snapshot_truncated {
        let reason = format!(
            "more than {MAX_WATCH_SNAPSHOT} entries under the prefix changed since {}; \
             list them (GET /v1/kv) and watch without after",
            after.map(|version| version.to_string()).unwrap_or_default()
        );
        let only = stream::iter([Ok::<_, Infallible>(overflow(reason))]);
        return Ok(Sse::new(only).keep_alive(keep_alive).into_response());
    }
    let me = replica.id().clone();
    Ok(Sse::new(events(start, me))
        .keep_alive(keep_alive)
        .into_response())
}
