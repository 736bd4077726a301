//! The one place where failures become HTTP status codes.
//!
//! Owns: [`ApiError`] and the mapping from every lower-layer error to a status and a
//! one-sentence JSON body `{"error": …}` (API.md §3).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::replication::ReplicationError;
use crate::store::InputError;

/// An error answer: a status, a sentence, and whether a write was applied locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// One plain sentence.
    pub message: String,
    /// For 503 on writes: whether this node applied the write.
    pub applied_locally: Option<bool>,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            applied_locally: None,
        }
    }

    /// 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404 for an absent key.
    pub fn not_found(key: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("key {key:?} not found"))
    }
}

impl From<InputError> for ApiError {
    fn from(error: InputError) -> Self {
        let status = match error {
            InputError::KeyTooLong { .. } => StatusCode::URI_TOO_LONG,
            InputError::ValueTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            InputError::EmptyKey | InputError::KeyControlCharacter | InputError::KeyNotUtf8 => {
                StatusCode::BAD_REQUEST
            }
        };
        Self::new(status, error.to_string())
    }
}

impl From<ReplicationError> for ApiError {
    fn from(error: ReplicationError) -> Self {
        match error {
            ReplicationError::Unavailable {
                applied_locally, ..
            } => Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: error.to_string(),
                applied_locally,
            },
            ReplicationError::ClockSkew {
                applied_locally, ..
            } => Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: error.to_string(),
                applied_locally: Some(applied_locally),
            },
            ReplicationError::SessionAhead { .. } => Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: error.to_string(),
                applied_locally: Some(false),
            },
            ReplicationError::Starting(_)
            | ReplicationError::Storage(_)
            | ReplicationError::SessionBehind { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.applied_locally {
            Some(applied) => json!({ "error": self.message, "applied_locally": applied }),
            None => json!({ "error": self.message }),
        };
        let mut response = (self.status, super::json_response(body)).into_response();
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of an oversized body is never read, so the connection cannot
            // carry another request: say so, or a pooling client would reuse it.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}
