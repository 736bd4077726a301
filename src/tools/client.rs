//! An HTTP client of the public API (API.md §3), for the CLI and the test suites.
//!
//! Owns: [`Client`] (one base URL, timeouts on every call) and [`ClientError`].
//! Knows nothing of: the server's internals; it speaks only the documented API, so it
//! works against any implementation of the contract.

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::Value;

/// Characters escaped in a key path segment. `/` is kept: keys may contain it.
const KEY_ESCAPES: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'?')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'[')
    .add(b']')
    .add(b'^')
    .add(b'|')
    .add(b'\\')
    .add(b'+')
    .add(b'&')
    .add(b'=');

/// Default deadline for one request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node could not be reached or did not answer in time.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The node's base URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The node answered with an error status.
    #[error("{url} answered {status}: {message}")]
    Status {
        /// The node's base URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The error sentence from the JSON body (or the raw body).
        message: String,
    },
    /// The node answered something that is not what the API promises.
    #[error("{url} answered something unexpected: {reason}")]
    Protocol {
        /// The node's base URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

impl ClientError {
    /// The HTTP status, if the node answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The answer to a PUT or DELETE.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WriteReply {
    /// The key.
    pub key: String,
    /// The value the node held before the write.
    pub previous: Option<String>,
    /// The write's version.
    pub version: String,
}

/// A value read with its version.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReadReply {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// Its version.
    pub version: String,
    /// The node that answered.
    pub node: String,
}

/// A client of one node.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client of the node at `url` (`http://` is added if missing).
    pub fn new(url: &str, timeout: Duration) -> Self {
        let base = if url.starts_with("http://") || url.starts_with("https://") {
            url.trim_end_matches('/').to_owned()
        } else {
            format!("http://{}", url.trim_end_matches('/'))
        };
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(16)
            .build()
            .expect("a client without TLS always builds");
        Self { base, http }
    }

    /// The node's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn key_url(&self, key: &str, consistency: Option<&str>) -> String {
        let mut url = format!(
            "{}/v1/kv/{}",
            self.base,
            utf8_percent_encode(key, KEY_ESCAPES)
        );
        if let Some(level) = consistency {
            url.push_str("?consistency=");
            url.push_str(level);
        }
        url
    }

    fn unreachable(&self, error: reqwest::Error) -> ClientError {
        let reason = if error.is_timeout() {
            "timed out".to_owned()
        } else if error.is_connect() {
            "connection failed".to_owned()
        } else {
            error.to_string()
        };
        ClientError::Unreachable {
            url: self.base.clone(),
            reason,
        }
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, String), ClientError> {
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| self.unreachable(e))?;
        if status.is_success() {
            return Ok((status, body));
        }
        let message = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|json| json.get("error").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or(body);
        Err(ClientError::Status {
            url: self.base.clone(),
            status: status.as_u16(),
            message,
        })
    }

    fn parse<T: for<'de> Deserialize<'de>>(&self, body: &str) -> Result<T, ClientError> {
        serde_json::from_str(body).map_err(|error| ClientError::Protocol {
            url: self.base.clone(),
            reason: error.to_string(),
        })
    }

    /// Reads a key; `Ok(None)` when it is absent (404).
    pub async fn get(
        &self,
        key: &str,
        consistency: Option<&str>,
    ) -> Result<Option<ReadReply>, ClientError> {
        let request = self
            .http
            .get(self.key_url(key, consistency))
            .header(reqwest::header::ACCEPT, "application/json");
        match self.send(request).await {
            Ok((_, body)) => self.parse(&body).map(Some),
            Err(ClientError::Status { status: 404, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Writes a value.
    pub async fn put(
        &self,
        key: &str,
        value: &str,
        consistency: Option<&str>,
    ) -> Result<WriteReply, ClientError> {
        let request = self
            .http
            .put(self.key_url(key, consistency))
            .body(value.to_owned());
        let (_, body) = self.send(request).await?;
        self.parse(&body)
    }

    /// Deletes a key (writes a tombstone).
    pub async fn delete(
        &self,
        key: &str,
        consistency: Option<&str>,
    ) -> Result<WriteReply, ClientError> {
        let (_, body) = self
            .send(self.http.delete(self.key_url(key, consistency)))
            .await?;
        self.parse(&body)
    }

    /// `GET path` as JSON, e.g. `/v1/convergence`.
    pub async fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        let (_, body) = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?;
        self.parse(&body)
    }

    /// `GET /health` answered `ok`.
    pub async fn healthy(&self) -> bool {
        matches!(self.send(self.http.get(format!("{}/health", self.base))).await, Ok((_, body)) if body == "ok")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_escaped_but_slashes_kept() {
        let client = Client::new("127.0.0.1:7001", DEFAULT_TIMEOUT);
        assert_eq!(client.url(), "http://127.0.0.1:7001");
        assert_eq!(
            client.key_url("a/b c?d%", None),
            "http://127.0.0.1:7001/v1/kv/a/b%20c%3Fd%25"
        );
        assert_eq!(
            client.key_url("ü", Some("all")),
            "http://127.0.0.1:7001/v1/kv/%C3%BC?consistency=all"
        );
    }
}
