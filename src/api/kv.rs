//! The key routes, `/v1/kv/{key}` (`GET`, `HEAD`, `PUT`, `DELETE`): the hot path of the
//! client API.
//!
//! Owns: reading and checking a key request, and writing its answer.
//! Knows nothing of: routing, deadlines and metrics (the [`super::Api`] service does
//! them around this), the wire format.
//!
//! Served straight from hyper's request, without axum's router and extractors: a key
//! request copies neither the headers nor the key (unless percent-decoded); it parses
//! a query string only when there is one, reads the store under its lock for two
//! handles (version and value) and nothing else, prints the version once into a stack
//! buffer, writes its JSON directly, and answers in the request's own header map. A
//! value is copied once, from the request body into an allocation of its own that the
//! store holds, and goes from the store into a response uncopied. Answers are byte for
//! byte those of the axum handlers they replace.

use std::borrow::Cow;

use axum::body::{Body, Bytes};
use axum::extract::Query;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use percent_encoding::percent_decode_str;
use serde::Deserialize;

use super::{method_not_allowed_error, ApiError, RequestBody, KV_PREFIX};
use crate::clock::{Version, VersionText};
use crate::replication::{Consistency, Replica};
use crate::session::{Binding, SessionToken};
use crate::store::InputError;

const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const OCTETS: HeaderValue = HeaderValue::from_static("application/octet-stream");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
/// The header that carries session tokens both ways (API.md §3.3).
pub(super) const SESSION: header::HeaderName =
    header::HeaderName::from_static(crate::session::HEADER);

#[derive(Deserialize)]
struct KvParams {
    consistency: Option<String>,
}

/// Why a request body could not be read.
enum BodyError {
    /// Longer than the limit (which is one byte over the largest value).
    TooLarge,
    /// The client sent a broken body or went away.
    Unreadable(String),
}

/// Answers one `/v1/kv/{key}` request whose key part is not empty (the caller checked).
pub(super) async fn serve<B: RequestBody>(
    replica: Replica,
    body_limit: usize,
    binding: Binding,
    parts: Parts,
    body: B,
) -> Result<Response, ApiError> {
    let replica = &replica;
    // The body is read first, whatever the method, as axum's extractors did; only a PUT
    // looks at the outcome. A request without a body skips this.
    let body = if body.is_end_stream() {
        Ok(Bytes::new())
    } else {
        read_body(body, body_limit).await
    };
    let params = params(&parts.uri)?;
    match parts.method {
        Method::GET | Method::HEAD => {
            let key = key_of(&parts.uri, replica)?;
            let level = consistency(params, Consistency::One)?;
            let session = session_of(&parts.headers, replica, binding)?;
            replica.check_ready()?;
            let register = match &session {
                None => replica.read_value(&key, level).await?,
                // Boxed: the session read's future is large; the common read should
                // not carry it.
                Some(token) => Box::pin(replica.read_session(&key, level, token)).await?,
            };
            let version = register.as_ref().map(|(version, _)| version);
            let token = session_header(binding, session, version);
            let Some((version, Some(value))) = register else {
                let mut response = ApiError::not_found(&key).into_response();
                response.headers_mut().insert(SESSION, token);
                return Ok(response);
            };
            let version = version.text();
            let json = wants_json(&parts.headers);
            // The request's header map, emptied, carries the answer: hyper hands the
            // answer's map back as the next request's, so no request allocates one.
            let mut headers = parts.headers;
            headers.clear();
            let body = if json {
                headers.insert(header::CONTENT_TYPE, JSON);
                read_reply(&key, replica.id().as_str(), &value, &version)
            } else {
                let content_type = if std::str::from_utf8(&value).is_ok() {
                    TEXT
                } else {
                    OCTETS
                };
                headers.insert(header::CONTENT_TYPE, content_type);
                Body::from(value)
            };
            headers.insert(header::ETAG, etag(&version));
            headers.insert(SESSION, token);
            let mut response = Response::new(body);
            *response.headers_mut() = headers;
            Ok(response)
        }
        Method::PUT | Method::DELETE => {
            let key = key_of(&parts.uri, replica)?;
            let level = consistency(params, Consistency::Live)?;
            let session = session_of(&parts.headers, replica, binding)?;
            let value = if parts.method == Method::PUT {
                let body = body.map_err(|error| match error {
                    BodyError::TooLarge => ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!(
                            "the value is larger than the limit of {} bytes",
                            replica.limits().max_value_bytes
                        ),
                    ),
                    BodyError::Unreadable(error) => {
                        ApiError::bad_request(format!("cannot read the request body: {error}"))
                    }
                })?;
                replica.limits().check_value(&body)?;
                // Copied into an allocation of its own size: the body is a slice of
                // the connection's read buffer (kilobytes), which a stored value would
                // otherwise keep alive as long as the store holds it (4.5 KB per key).
                Some(Bytes::copy_from_slice(&body))
            } else {
                None
            };
            replica.check_ready()?;
            // Boxed: the write's future is the largest of this one's; inline, it would
            // push every request's future past the allocator's small-size cache.
            let outcome = match &session {
                None => Box::pin(replica.write(&key, value, level)).await?,
                Some(token) => Box::pin(replica.write_session(&key, value, level, token)).await?,
            };
            let token = session_header(binding, session, Some(&outcome.version));
            let version = outcome.version.text();
            let mut headers = parts.headers;
            headers.clear();
            headers.insert(header::CONTENT_TYPE, JSON);
            headers.insert(SESSION, token);
            let mut response =
                Response::new(write_reply(&key, outcome.previous.as_deref(), &version));
            *response.headers_mut() = headers;
            Ok(response)
        }
        other => Err(method_not_allowed_error(&other)),
    }
}

/// The session token the request sent, if any (API.md §3.3); a malformed one, or one
/// of another cluster, is a 400. A request without the header costs one lookup.
pub(super) fn session_of(
    headers: &HeaderMap,
    replica: &Replica,
    binding: Binding,
) -> Result<Option<SessionToken>, ApiError> {
    let Some(text) = headers.get(SESSION) else {
        return Ok(None);
    };
    SessionToken::parse(text.as_bytes(), binding, |id| replica.is_member(id))
        .map(Some)
        .map_err(|error| ApiError::bad_request(error.to_string()))
}

/// The token of the answer: the request's, if any, with `seen` folded in.
pub(super) fn session_header(
    binding: Binding,
    session: Option<SessionToken>,
    seen: Option<&Version>,
) -> HeaderValue {
    let text = match session {
        None => SessionToken::encode_one(binding, seen),
        Some(mut token) => {
            if let Some(seen) = seen {
                token.observe(seen);
            }
            token.encode(binding)
        }
    };
    HeaderValue::from_maybe_shared(Bytes::from(text)).expect("a token is visible ASCII")
}

/// The whole body, at most `limit` bytes; a body of one chunk is not copied.
async fn read_body<B: RequestBody>(body: B, limit: usize) -> Result<Bytes, BodyError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(BodyError::TooLarge),
        Err(error) => Err(BodyError::Unreadable(error.to_string())),
    }
}

/// The query parameters; a request without a query string parses nothing.
fn params(uri: &Uri) -> Result<Option<KvParams>, ApiError> {
    if uri.query().is_none() {
        return Ok(None);
    }
    let Query(params) = Query::<KvParams>::try_from_uri(uri)
        .map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    Ok(Some(params))
}

fn consistency(params: Option<KvParams>, default: Consistency) -> Result<Consistency, ApiError> {
    match params.and_then(|params| params.consistency) {
        None => Ok(default),
        Some(name) => name
            .parse()
            .map_err(|e: crate::replication::UnknownConsistency| {
                ApiError::bad_request(e.to_string())
            }),
    }
}

/// The key of the request: percent-decoded (borrowed when there is nothing to decode),
/// UTF-8, within limits.
fn key_of<'a>(uri: &'a Uri, replica: &Replica) -> Result<Cow<'a, str>, ApiError> {
    let raw = uri.path().strip_prefix(KV_PREFIX).unwrap_or_default();
    let key = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| InputError::KeyNotUtf8)?;
    replica.limits().check_key(&key)?;
    Ok(key)
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json"))
}

/// `"<version>"`.
fn etag(version: &VersionText) -> HeaderValue {
    let mut quoted = [b'"'; VersionText::MAX_BYTES + 2];
    let text = version.as_bytes();
    quoted[1..=text.len()].copy_from_slice(text);
    HeaderValue::from_bytes(&quoted[..text.len() + 2]).expect("a version is visible ASCII")
}

/// The JSON answer to a read: `{"key","node","value"|"value_base64","version"}`, keys
/// in order like every JSON object of the API, ending with a newline like every JSON
/// reply.
fn read_reply(key: &str, node: &str, value: &[u8], version: &VersionText) -> Body {
    let mut json = Vec::with_capacity(64 + key.len() + node.len() + 2 * value.len());
    json.extend_from_slice(b"{\"key\":");
    push_str(&mut json, key);
    json.extend_from_slice(b",\"node\":");
    push_str(&mut json, node);
    push_value(&mut json, "value", Some(value));
    push_version(&mut json, version);
    Body::from(json)
}

/// The JSON answer to a write: `{"key","previous"|"previous_base64","version"}`.
fn write_reply(key: &str, previous: Option<&[u8]>, version: &VersionText) -> Body {
    let previous_len = previous.map_or(0, <[u8]>::len);
    let mut json = Vec::with_capacity(64 + key.len() + 2 * previous_len);
    json.extend_from_slice(b"{\"key\":");
    push_str(&mut json, key);
    push_value(&mut json, "previous", previous);
    push_version(&mut json, version);
    Body::from(json)
}

/// `,"version":"<version>"}` and the final newline.
fn push_version(json: &mut Vec<u8>, version: &VersionText) {
    json.extend_from_slice(b",\"version\":\"");
    json.extend_from_slice(version.as_bytes());
    json.extend_from_slice(b"\"}\n");
}

/// `,"<field>":` and a value: a string when it is valid UTF-8, else under
/// `<field>_base64` in standard base64 (API.md §3); `None` is `null`.
fn push_value(json: &mut Vec<u8>, field: &str, value: Option<&[u8]>) {
    json.extend_from_slice(b",\"");
    json.extend_from_slice(field.as_bytes());
    match value.map(|bytes| (bytes, std::str::from_utf8(bytes))) {
        None => json.extend_from_slice(b"\":null"),
        Some((_, Ok(text))) => {
            json.extend_from_slice(b"\":");
            push_str(json, text);
        }
        Some((bytes, Err(_))) => {
            json.extend_from_slice(b"_base64\":\"");
            json.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .as_bytes(),
            );
            json.push(b'"');
        }
    }
}

/// `text` as a JSON string. Most strings need no escape and are copied whole (the scan
/// has no early exit, so it vectorizes); serde_json escapes the others.
fn push_str(json: &mut Vec<u8>, text: &str) {
    let plain = text.bytes().fold(true, |plain, byte| {
        plain & (byte >= 0x20) & (byte != b'"') & (byte != b'\\')
    });
    if plain {
        json.push(b'"');
        json.extend_from_slice(text.as_bytes());
        json.push(b'"');
    } else {
        serde_json::to_writer(&mut *json, text).expect("writing to a Vec cannot fail");
    }
}
