//! An HTTP client of the public API (API.md §3), for the CLI and the test suites.
//!
//! Owns: [`Client`] (one base URL, timeouts on every call, HTTPS with a given CA,
//! optionally a session and a client token), [`Ca`], [`AccessToken`] (where a command
//! finds its token) and [`ClientError`].
//! Knows nothing of: the server's internals; it speaks only the documented API, so it
//! works against any implementation of the contract.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
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

/// The CA bundle a client trusts for HTTPS (PEM): a cluster file's `tls_ca_file`, or
/// the CLI's `--ca`. Only these certificates are trusted, not the system's.
#[derive(Clone, Debug)]
pub struct Ca(Vec<reqwest::Certificate>);

impl Ca {
    /// The certificates of the PEM file at `path`.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let bytes = std::fs::read(path)
            .map_err(|error| format!("cannot read the CA file {}: {error}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&bytes)
            .map_err(|error| format!("the CA file {} is not PEM: {error}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "the CA file {} holds no certificate (expected PEM)",
                path.display()
            ));
        }
        Ok(Self(certs))
    }

    /// The CA of `config`'s `tls_ca_file`, if the cluster has TLS.
    pub fn of_cluster(config: &crate::config::ClusterConfig) -> Result<Option<Self>, String> {
        config
            .tls_ca_path()
            .map(|path| Self::load(&path))
            .transpose()
    }
}

/// A client builder with the connection settings and, if given, the CA as the only
/// trusted root (HTTPS only then); without an overall deadline (a watch has none).
fn builder(connect_timeout: Duration, ca: Option<&Ca>) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_max_idle_per_host(16);
    match ca {
        None => builder,
        Some(ca) => ca.0.iter().fold(
            builder.use_rustls_tls().https_only(true),
            |builder, cert| builder.add_root_certificate(cert.clone()),
        ),
    }
}

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteReply {
    /// The key.
    pub key: String,
    /// The value the node held before the write, exactly as stored.
    pub previous: Option<Bytes>,
    /// The write's version.
    pub version: String,
}

impl WriteReply {
    /// The previous value as text (invalid UTF-8 replaced), for values known to be text.
    pub fn previous_text(&self) -> Option<Cow<'_, str>> {
        self.previous
            .as_ref()
            .map(|value| String::from_utf8_lossy(value))
    }
}

/// A value read with its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadReply {
    /// The key.
    pub key: String,
    /// The value, exactly as stored.
    pub value: Bytes,
    /// Its version.
    pub version: String,
    /// The node that answered.
    pub node: String,
}

impl ReadReply {
    /// The value as text (invalid UTF-8 replaced), for values known to be text.
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.value)
    }
}

/// A JSON object with a value under `name` (UTF-8) or `name_base64` (other bytes), as
/// API.md §3 gives them.
fn decode_value(object: &Value, name: &str) -> Result<Option<Bytes>, String> {
    use base64::Engine as _;
    if let Some(text) = object.get(name).and_then(Value::as_str) {
        return Ok(Some(Bytes::copy_from_slice(text.as_bytes())));
    }
    match object.get(format!("{name}_base64")).and_then(Value::as_str) {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map(|bytes| Some(Bytes::from(bytes)))
            .map_err(|error| format!("{name}_base64 is not base64: {error}")),
        None => Ok(None),
    }
}

fn string_field(object: &Value, name: &str) -> Result<String, String> {
    object
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("the reply has no {name:?} string"))
}

impl WriteReply {
    /// The reply as API.md §3 shapes it: `previous` as text when it is UTF-8, else
    /// `previous_base64`.
    pub fn to_json(&self) -> Value {
        use base64::Engine as _;
        let mut object = serde_json::Map::new();
        object.insert("key".into(), self.key.clone().into());
        match self.previous.as_deref().map(std::str::from_utf8) {
            None => {
                object.insert("previous".into(), Value::Null);
            }
            Some(Ok(text)) => {
                object.insert("previous".into(), text.into());
            }
            Some(Err(_)) => {
                let encoded = base64::engine::general_purpose::STANDARD
                    .encode(self.previous.as_deref().unwrap_or_default());
                object.insert("previous_base64".into(), encoded.into());
            }
        }
        object.insert("version".into(), self.version.clone().into());
        Value::Object(object)
    }

    fn from_json(object: &Value) -> Result<Self, String> {
        Ok(Self {
            key: string_field(object, "key")?,
            previous: decode_value(object, "previous")?,
            version: string_field(object, "version")?,
        })
    }
}

impl ReadReply {
    fn from_json(object: &Value) -> Result<Self, String> {
        Ok(Self {
            key: string_field(object, "key")?,
            value: decode_value(object, "value")?
                .ok_or_else(|| "the reply has no value".to_owned())?,
            version: string_field(object, "version")?,
            node: string_field(object, "node")?,
        })
    }
}

/// How long a watch may go without a byte (a change or a keep-alive, which the server
/// sends every 15 s) before the connection counts as lost.
pub const WATCH_IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// One change from a watch (API.md §3.5).
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    /// The key.
    pub key: String,
    /// The version of the change.
    pub version: String,
    /// The new value, `None` for a deletion.
    pub value: Option<Bytes>,
    /// `local` or `replicated`.
    pub origin: String,
    /// Sent from the snapshot of a resumed watch (`after=`), not as it happened.
    pub snapshot: bool,
    /// The event exactly as the node sent it.
    pub json: Value,
}

impl ChangeEvent {
    fn from_json(json: Value) -> Result<Self, String> {
        let value = decode_value(&json, "value")?;
        let deleted = json.get("deleted").and_then(Value::as_bool) == Some(true);
        if value.is_none() && !deleted {
            return Err("the change has neither a value nor \"deleted\": true".to_owned());
        }
        Ok(Self {
            key: string_field(&json, "key")?,
            version: string_field(&json, "version")?,
            value,
            origin: string_field(&json, "origin")?,
            snapshot: json.get("snapshot").and_then(Value::as_bool) == Some(true),
            json,
        })
    }
}

/// What a watch yields.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// A change under the prefix.
    Change(ChangeEvent),
    /// The node cut the watch off because it fell behind; the stream ends after this.
    Overflow {
        /// The node's explanation.
        reason: String,
    },
}

/// The server-sent-events framing: lines in, complete `(event type, data)` pairs out.
#[derive(Debug, Default)]
struct SseParser {
    buffer: Vec<u8>,
    event: String,
    data: String,
}

impl SseParser {
    fn feed(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete event in what was fed, if any. Comments (keep-alives) and
    /// events without data are skipped.
    fn next_event(&mut self) -> Result<Option<(String, String)>, String> {
        while let Some(end) = self.buffer.iter().position(|&byte| byte == b'\n') {
            let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8(line).map_err(|_| "a line is not UTF-8".to_owned())?;
            if line.is_empty() {
                let event = std::mem::take(&mut self.event);
                let data = std::mem::take(&mut self.data);
                if !data.is_empty() {
                    return Ok(Some((event, data)));
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.event = value.to_owned(),
                "data" => {
                    if !self.data.is_empty() {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                }
                _ => {}
            }
        }
        Ok(None)
    }
}

/// One event of the watch API as a [`WatchEvent`]; `None` for event types of later
/// versions.
fn watch_event(event: &str, data: &str) -> Result<Option<WatchEvent>, String> {
    let json: Value =
        serde_json::from_str(data).map_err(|error| format!("an event is not JSON: {error}"))?;
    match event {
        "overflow" => Ok(Some(WatchEvent::Overflow {
            reason: json
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("the watcher fell behind")
                .to_owned(),
        })),
        "" | "message" => {
            ChangeEvent::from_json(json).map(|change| Some(WatchEvent::Change(change)))
        }
        _ => Ok(None),
    }
}

/// An open watch: server-sent events read one at a time.
pub struct WatchStream {
    url: String,
    response: reqwest::Response,
    parser: SseParser,
    ended: bool,
}

impl WatchStream {
    /// The next event; `Ok(None)` when the node ended the stream (it is stopping, or
    /// after an overflow). A connection lost, or silent for [`WATCH_IDLE_TIMEOUT`], is
    /// an error.
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, ClientError> {
        loop {
            while let Some((event, data)) =
                self.parser.next_event().map_err(|r| self.protocol(r))?
            {
                if let Some(event) = watch_event(&event, &data).map_err(|r| self.protocol(r))? {
                    return Ok(Some(event));
                }
            }
            if self.ended {
                return Ok(None);
            }
            let chunk = tokio::time::timeout(WATCH_IDLE_TIMEOUT, self.response.chunk())
                .await
                .map_err(|_| ClientError::Unreachable {
                    url: self.url.clone(),
                    reason: format!("the watch was silent for {WATCH_IDLE_TIMEOUT:?}"),
                })?
                .map_err(|error| ClientError::Unreachable {
                    url: self.url.clone(),
                    reason: format!("the watch connection was lost: {error}"),
                })?;
            match chunk {
                Some(bytes) => self.parser.feed(&bytes),
                // A last event without its blank line is incomplete: dropped.
                None => self.ended = true,
            }
        }
    }

    fn protocol(&self, reason: String) -> ClientError {
        ClientError::Protocol {
            url: self.url.clone(),
            reason,
        }
    }
}

/// The environment variable a command reads its client token from (API.md §3.6).
pub const TOKEN_VARIABLE: &str = "MESHKV_TOKEN";
/// The longest client token sent, in bytes.
const MAX_ACCESS_TOKEN_BYTES: usize = 4096;

/// Why a client token cannot be used. It never shows the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Empty, too long, or with a character a header cannot carry.
    #[error("the client token in {origin} must be 1 to 4096 visible ASCII characters")]
    Malformed {
        /// Where it came from: `$MESHKV_TOKEN` or the file.
        origin: String,
    },
    /// The token file could not be read.
    #[error("cannot read the token file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
}

/// A client token (API.md §3.6), sent as `Authorization: Bearer <token>` on every
/// request. Never taken from a command-line value (it would show in process
/// listings): from `$MESHKV_TOKEN` or a file. Its `Debug` hides it.
#[derive(Clone)]
pub struct AccessToken(reqwest::header::HeaderValue);

impl AccessToken {
    /// A token: 1 to 4096 visible ASCII characters; `source` names where it came from,
    /// for the error.
    pub fn new(token: &str, source: &str) -> Result<Self, TokenError> {
        let malformed = || TokenError::Malformed {
            origin: source.to_owned(),
        };
        let visible = token.bytes().all(|byte| (b'!'..=b'~').contains(&byte));
        if token.is_empty() || token.len() > MAX_ACCESS_TOKEN_BYTES || !visible {
            return Err(malformed());
        }
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| malformed())?;
        value.set_sensitive(true);
        Ok(Self(value))
    }

    /// The token in file `path` (surrounding whitespace, such as the last newline,
    /// trimmed).
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|error| TokenError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::new(text.trim(), &path.display().to_string())
    }

    /// The token of a command: from `file` if given, else from `$MESHKV_TOKEN` if it
    /// is set and not empty, else none.
    pub fn resolve(file: Option<&Path>) -> Result<Option<Self>, TokenError> {
        if let Some(path) = file {
            return Self::from_file(path).map(Some);
        }
        match std::env::var_os(TOKEN_VARIABLE) {
            None => Ok(None),
            Some(value) if value.is_empty() => Ok(None),
            Some(value) => {
                let source = format!("${TOKEN_VARIABLE}");
                let text = value.into_string().map_err(|_| TokenError::Malformed {
                    origin: source.clone(),
                })?;
                Self::new(&text, &source).map(Some)
            }
        }
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(<hidden>)")
    }
}

/// The header that carries session tokens (API.md §3.3).
pub const SESSION_HEADER: &str = "Meshkv-Session";

/// A client of one node.
///
/// A client made with [`Client::with_session`] carries a session (API.md §3.3): it
/// keeps the latest `Meshkv-Session` token a node gave and sends it with every
/// request, so that it reads its own writes and never goes back in time, whichever
/// node it talks to. Clones share the session. A plain [`Client::new`] sends no token:
/// the test suites use it to see the store as it is.
///
/// A client made with [`Client::with_token`] sends a client token with every request
/// (API.md §3.6); its `Debug` hides it.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    timeout: Duration,
    /// The CA trusted for HTTPS, if any.
    ca: Option<Ca>,
    session: Option<std::sync::Arc<std::sync::Mutex<Option<String>>>>,
    token: Option<AccessToken>,
}

impl Client {
    /// A client of the node at `url` (`http://` is added if missing).
    pub fn new(url: &str, timeout: Duration) -> Self {
        let base = if url.starts_with("http://") || url.starts_with("https://") {
            url.trim_end_matches('/').to_owned()
        } else {
            format!("http://{}", url.trim_end_matches('/'))
        };
        Self {
            base,
            http: builder(timeout, None)
                .timeout(timeout)
                .build()
                .expect("the client builds"),
            timeout,
            ca: None,
            session: None,
            token: None,
        }
    }

    /// This client, sending `token` (`None`: no token) with every request from now on.
    pub fn with_token(mut self, token: Option<AccessToken>) -> Self {
        self.token = token;
        self
    }

    /// Adds the client token, if any, to `request`.
    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(AccessToken(value)) => {
                request.header(reqwest::header::AUTHORIZATION, value.clone())
            }
            None => request,
        }
    }

    /// This client, speaking HTTPS and trusting `ca` alone, if `ca` is given (`None`
    /// leaves it as it is). An `http://` URL becomes `https://`.
    pub fn with_ca(mut self, ca: Option<&Ca>) -> Self {
        let Some(ca) = ca else {
            return self;
        };
        if let Some(rest) = self.base.strip_prefix("http://") {
            self.base = format!("https://{rest}");
        }
        self.http = builder(self.timeout, Some(ca))
            .timeout(self.timeout)
            .build()
            .expect("the client builds");
        self.ca = Some(ca.clone());
        self
    }

    /// This client, carrying a session from now on, starting from `token` (`None`: a
    /// new session).
    pub fn with_session(mut self, token: Option<String>) -> Self {
        self.session = Some(std::sync::Arc::new(std::sync::Mutex::new(token)));
        self
    }

    /// The session's latest token (`None`: no session, or no answer carried one yet).
    pub fn session_token(&self) -> Option<String> {
        self.session
            .as_ref()
            .and_then(|session| session.lock().expect("session lock poisoned").clone())
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
        // The innermost cause says what went wrong (refused, a certificate not from
        // the CA, a TLS alert); reqwest's own sentence only says where.
        let mut cause: &dyn std::error::Error = &error;
        while let Some(source) = cause.source() {
            cause = source;
        }
        let reason = if error.is_timeout() {
            "timed out".to_owned()
        } else if error.is_connect() {
            format!("connection failed: {cause}")
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
        let request = match self.session_token() {
            Some(token) => request.header(SESSION_HEADER, token),
            None => request,
        };
        let request = self.authorize(request);
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        if let Some(session) = &self.session {
            let token = response
                .headers()
                .get(SESSION_HEADER)
                .and_then(|token| token.to_str().ok());
            if let Some(token) = token {
                *session.lock().expect("session lock poisoned") = Some(token.to_owned());
            }
        }
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

    /// A JSON reply turned into `T` by `convert`.
    fn reply<T>(
        &self,
        body: &str,
        convert: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Result<T, ClientError> {
        let json: Value = self.parse(body)?;
        convert(&json).map_err(|reason| ClientError::Protocol {
            url: self.base.clone(),
            reason,
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
            Ok((_, body)) => self.reply(&body, ReadReply::from_json).map(Some),
            Err(ClientError::Status { status: 404, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Writes a value (any bytes).
    pub async fn put(
        &self,
        key: &str,
        value: impl AsRef<[u8]>,
        consistency: Option<&str>,
    ) -> Result<WriteReply, ClientError> {
        let request = self
            .http
            .put(self.key_url(key, consistency))
            .body(value.as_ref().to_vec());
        let (_, body) = self.send(request).await?;
        self.reply(&body, WriteReply::from_json)
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
        self.reply(&body, WriteReply::from_json)
    }

    /// `GET path` as JSON, e.g. `/v1/convergence`.
    pub async fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        let (_, body) = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?;
        self.parse(&body)
    }

    /// `GET path` as text, e.g. `/metrics`.
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let (_, body) = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await?;
        Ok(body)
    }

    /// Watches the changes under `prefix` (`GET /v1/watch`); with `after`, first the
    /// entries newer than that version. The stream has no overall deadline, only the
    /// idle one of [`WatchStream::next`].
    pub async fn watch(
        &self,
        prefix: &str,
        after: Option<&str>,
    ) -> Result<WatchStream, ClientError> {
        use percent_encoding::NON_ALPHANUMERIC;
        let mut url = format!(
            "{}/v1/watch?prefix={}",
            self.base,
            utf8_percent_encode(prefix, NON_ALPHANUMERIC)
        );
        if let Some(after) = after {
            url.push_str("&after=");
            url.push_str(&utf8_percent_encode(after, NON_ALPHANUMERIC).to_string());
        }
        let http = builder(self.timeout, self.ca.as_ref())
            .build()
            .expect("the client builds");
        let response = tokio::time::timeout(DEFAULT_TIMEOUT, self.authorize(http.get(url)).send())
            .await
            .map_err(|_| ClientError::Unreachable {
                url: self.base.clone(),
                reason: "timed out".to_owned(),
            })?
            .map_err(|e| self.unreachable(e))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|json| json.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or(body);
            return Err(ClientError::Status {
                url: self.base.clone(),
                status: status.as_u16(),
                message,
            });
        }
        Ok(WatchStream {
            url: self.base.clone(),
            response,
            parser: SseParser::default(),
            ended: false,
        })
    }

    /// `GET /health` answered `ok`.
    pub async fn healthy(&self) -> bool {
        matches!(self.send(self.http.get(format!("{}/health", self.base))).await, Ok((_, body)) if body == "ok")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_decode_from_text_or_base64() {
        let reply = ReadReply::from_json(
            &json!({"key": "k", "value_base64": "AP8=", "version": "1-0-n1", "node": "n1"}),
        )
        .unwrap();
        assert_eq!(&reply.value[..], &[0x00, 0xff]);
        let reply =
            WriteReply::from_json(&json!({"key": "k", "previous": "old", "version": "v"})).unwrap();
        assert_eq!(reply.previous_text().as_deref(), Some("old"));
        let reply =
            WriteReply::from_json(&json!({"key": "k", "previous": null, "version": "v"})).unwrap();
        assert_eq!(reply.previous, None);
        assert!(WriteReply::from_json(
            &json!({"key": "k", "previous_base64": "!!", "version": "v"})
        )
        .is_err());
        assert!(ReadReply::from_json(&json!({"key": "k", "version": "v", "node": "n1"})).is_err());
    }

    #[test]
    fn event_streams_parse_across_chunks() {
        let mut parser = SseParser::default();
        parser.feed(b": keep-alive\n\ndata: {\"key\":\"a\",\"version\":\"v1\",");
        assert_eq!(parser.next_event(), Ok(None));
        parser.feed(b"\"value\":\"x\",\"origin\":\"local\"}\r\n\r\nevent: overflow\ndata: {\"reason\":\"slow\"}\n\n");
        let (event, data) = parser.next_event().unwrap().unwrap();
        let Some(WatchEvent::Change(change)) = watch_event(&event, &data).unwrap() else {
            panic!("not a change: {event} {data}");
        };
        assert_eq!(
            (change.key.as_str(), change.value.as_deref()),
            ("a", Some(&b"x"[..]))
        );
        assert_eq!(change.origin, "local");
        let (event, data) = parser.next_event().unwrap().unwrap();
        assert_eq!(
            watch_event(&event, &data).unwrap(),
            Some(WatchEvent::Overflow {
                reason: "slow".into()
            })
        );
        assert_eq!(parser.next_event(), Ok(None));
        let deleted = watch_event(
            "",
            r#"{"key":"k","version":"v","deleted":true,"origin":"replicated"}"#,
        );
        assert!(matches!(
            deleted,
            Ok(Some(WatchEvent::Change(ChangeEvent { value: None, .. })))
        ));
        assert!(watch_event("", r#"{"key":"k","version":"v","origin":"local"}"#).is_err());
        assert_eq!(watch_event("later", "{}"), Ok(None));
    }

    #[test]
    fn tokens_are_visible_ascii_and_never_shown() {
        let token = AccessToken::new("s3cr3t-token", "$MESHKV_TOKEN").unwrap();
        assert_eq!(format!("{token:?}"), "AccessToken(<hidden>)");
        let client = Client::new("127.0.0.1:7001", DEFAULT_TIMEOUT).with_token(Some(token));
        assert!(!format!("{client:?}").contains("s3cr3t"), "{client:?}");
        for bad in ["", "two words", "line\nbreak", "caf\u{e9}"] {
            let error = AccessToken::new(bad, "the file t").unwrap_err().to_string();
            assert_eq!(
                error,
                "the client token in the file t must be 1 to 4096 visible ASCII characters"
            );
        }
        assert!(AccessToken::new(&"x".repeat(4097), "f").is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cr3t-token\n").unwrap();
        assert!(AccessToken::resolve(Some(&path)).unwrap().is_some());
        let missing = AccessToken::resolve(Some(&dir.path().join("none"))).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("cannot read the token file"),
            "{missing}"
        );
    }

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
