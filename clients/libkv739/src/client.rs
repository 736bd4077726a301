//! The client proper: blocking HTTP calls to meshkv with failover.
//!
//! Owns: [`Client`] (the server list, which server is current, the HTTP agent, the
//! session and access tokens) and [`ClientError`]. One call talks to the current
//! server; on a connection error, a timeout, a 408 or a 5xx it moves on to the next
//! server round-robin, trying each at most once, and the server that answered becomes
//! current for the next call.
//! Knows nothing of: C pointers or the global state (src/ffi.rs); the meshkv server's
//! internals (it speaks only API.md §3).
//!
//! A PUT that fails over may already have been applied by the server that failed (it
//! may have died after applying it, or timed out while waiting for acks); the next
//! server then applies it again, and its "previous" can be the value just written. The
//! course's interface has no idempotency key to tell the two apart.

use std::fmt;
use std::time::Duration;

use ureq::http::{HeaderValue, Response};
use ureq::{Agent, Body};

use crate::protocol::{
    attempt_order, check_value, error_message, fails_over, key_path, parse_put_reply, ReplyError,
    Server, ValueError,
};

/// How long connecting to one server may take before the next one is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one request to one server may take in all (connect, send, answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Idle pooled connections are dropped sooner than meshkv closes them (it closes a
/// keep-alive connection idle for `http_header_timeout_ms`, 5 s by default), so that a
/// request never goes out on a connection the server has already closed, which would
/// look like a dead server and fail over for nothing.
const MAX_IDLE_AGE: Duration = Duration::from_secs(2);
/// The largest PUT reply read: a JSON object around a previous value of up to
/// KV739_MAX_VALUE bytes, escaped. A larger one holds a value the caller cannot take.
const MAX_PUT_REPLY_BYTES: u64 = 64 * 1024;
/// The largest error body read.
const MAX_ERROR_BYTES: u64 = 4 * 1024;
/// The longest session or access token kept, in bytes.
const MAX_TOKEN_BYTES: usize = 4096;
/// The header a meshkv node puts its session token in, and takes it back from (§3.3).
const SESSION_HEADER: &str = "Meshkv-Session";

/// The words of a meshkv node's 503 for a session it cannot catch up with (§3.3).
const SESSION_BEHIND: &str = "has not caught up with the session";
/// The environment variable holding the access token (API.md §3.6).
pub const TOKEN_VARIABLE: &str = "MESHKV_TOKEN";

/// Why a call failed; the sentence goes to stderr, the caller gets -1.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Every server was tried and none could serve.
    #[error("no server could serve the request: {0}")]
    NoServer(String),
    /// A server answered with a definite refusal (4xx), which another would repeat.
    #[error("{server} refused the request ({status}): {message}")]
    Refused {
        /// The server that answered.
        server: String,
        /// Its HTTP status.
        status: u16,
        /// The error sentence of its body.
        message: String,
    },
    /// A server answered 200 with a reply that does not follow the API.
    #[error("{server} answered a malformed reply: {error}")]
    Reply {
        /// The server that answered.
        server: String,
        /// What was wrong.
        error: ReplyError,
    },
    /// The stored value cannot be returned to the caller's buffer.
    #[error("{0}")]
    Value(ValueError),
    /// A PUT was applied, but the old value cannot be returned to the caller's buffer.
    #[error("the write was applied, but the old value cannot be returned: {0}")]
    OldValue(ValueError),
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Empty, too long, or with a byte outside visible ASCII. The token itself is
    /// never shown.
    #[error("the access token must be 1 to {MAX_TOKEN_BYTES} visible ASCII characters")]
    Malformed,
}

/// An access token, sent as `Authorization: Bearer <token>`. Its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Checks a token: 1 to 4096 bytes of visible ASCII (what a header can carry).
    pub fn new(bytes: &[u8]) -> Result<Token, TokenError> {
        let visible = bytes.iter().all(|b| (0x21..=0x7e).contains(b));
        if bytes.is_empty() || bytes.len() > MAX_TOKEN_BYTES || !visible {
            return Err(TokenError::Malformed);
        }
        let text = String::from_utf8(bytes.to_vec()).map_err(|_| TokenError::Malformed)?;
        Ok(Token(text))
    }

    /// The token in `$MESHKV_TOKEN`, if it is set and not empty.
    pub fn from_env() -> Result<Option<Token>, TokenError> {
        match std::env::var_os(TOKEN_VARIABLE) {
            None => Ok(None),
            Some(value) if value.is_empty() => Ok(None),
            Some(value) => Token::new(value.as_encoded_bytes()).map(Some),
        }
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<hidden>)")
    }
}

/// What one attempt on one server came to, when it did not succeed.
enum Failure {
    /// This server cannot serve now; try the next one. The reason is for the log.
    Next(String),
    /// The answer is final; trying another server would not change it.
    Final(ClientError),
}

/// A client of one meshkv cluster. Not `Sync` by itself: the C API keeps it behind a
/// mutex, so calls are serialised.
pub struct Client {
    servers: Vec<Server>,
    /// Index of the server tried first; the last one that answered.
    current: usize,
    agent: Agent,
    /// The last `Meshkv-Session` token a server gave, sent back on every request.
    session: Option<HeaderValue>,
    token: Option<Token>,
}

impl Client {
    /// A client of `servers` (at least one), starting with the first.
    pub fn new(servers: Vec<Server>, token: Option<Token>) -> Client {
        assert!(!servers.is_empty(), "a client needs at least one server");
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .max_idle_age(MAX_IDLE_AGE)
            // Loopback and cluster addresses are never reached through a proxy, and a
            // node never redirects.
            .proxy(None)
            .max_redirects(0)
            .user_agent(concat!("libkv739/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client {
            servers,
            current: 0,
            agent,
            session: None,
            token,
        }
    }

    /// The server the next call tries first.
    pub fn current_server(&self) -> &Server {
        &self.servers[self.current]
    }

    /// Replaces (or with `None`, drops) the access token.
    pub fn set_token(&mut self, token: Option<Token>) {
        self.token = token;
    }

    /// Whether a session token is held (for tests and diagnostics).
    pub fn has_session(&self) -> bool {
        self.session.is_some()
    }

    /// The value of `key` (`None`: absent), checked to fit a C buffer.
    pub fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, ClientError> {
        let path = key_path(key);
        self.call(
            |agent, url| agent.get(url),
            |request| request.call(),
            |server, mut response| match response.status().as_u16() {
                200 => {
                    let value = response
                        .body_mut()
                        .with_config()
                        .limit(crate::protocol::MAX_VALUE_BYTES as u64)
                        .read_to_vec()
                        .map_err(|error| match error {
                            ureq::Error::BodyExceedsLimit(_) => {
                                Failure::Final(ClientError::Value(ValueError::TooLong))
                            }
                            other => Failure::Next(format!("reading the value: {other}")),
                        })?;
                    check_value(&value).map_err(|e| Failure::Final(ClientError::Value(e)))?;
                    Ok(Some(value))
                }
                404 => Ok(None),
                status => Err(refusal(server, status, response)),
            },
            &path,
        )
    }

    /// Writes `value` under `key`; the value the answering server held before (`None`:
    /// a new key), checked to fit a C buffer.
    pub fn put(&mut self, key: &str, value: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        check_value(value).map_err(ClientError::Value)?;
        let path = key_path(key);
        self.call(
            |agent, url| {
                agent
                    .put(url)
                    .header("Content-Type", "text/plain; charset=utf-8")
            },
            |request| request.send(value),
            |server, mut response| match response.status().as_u16() {
                200 => {
                    let body = response
                        .body_mut()
                        .with_config()
                        .limit(MAX_PUT_REPLY_BYTES)
                        .read_to_vec()
                        .map_err(|error| match error {
                            ureq::Error::BodyExceedsLimit(_) => {
                                Failure::Final(ClientError::OldValue(ValueError::TooLong))
                            }
                            other => Failure::Next(format!("reading the reply: {other}")),
                        })?;
                    let previous = parse_put_reply(&body).map_err(|error| {
                        Failure::Final(ClientError::Reply {
                            server: server.to_string(),
                            error,
                        })
                    })?;
                    if let Some(old) = &previous {
                        check_value(old).map_err(|e| Failure::Final(ClientError::OldValue(e)))?;
                    }
                    Ok(previous)
                }
                status => Err(refusal(server, status, response)),
            },
            &path,
        )
    }

    /// Runs one request with failover: `build` makes the request for a URL, `send`
    /// sends it, `handle` reads a response that did not ask for failover.
    ///
    /// When every server refused the request because none could catch up with the
    /// session token (a node whose writes the session saw is down, docs/API.md §3.3),
    /// the token is dropped, once, with a line on stderr, and the request is sent again
    /// without it: the course's interface has no way to report a session failure, and
    /// it expects reads to go on after a failover. Later answers may then be older than
    /// what this client saw before.
    fn call<B, T>(
        &mut self,
        build: impl Fn(&Agent, &str) -> ureq::RequestBuilder<B>,
        send: impl Fn(ureq::RequestBuilder<B>) -> Result<Response<Body>, ureq::Error>,
        handle: impl Fn(&Server, Response<Body>) -> Result<T, Failure>,
        path: &str,
    ) -> Result<T, ClientError> {
        match self.call_once(&build, &send, &handle, path) {
            Err(ClientError::NoServer(reasons))
                if self.session.is_some() && reasons.contains(SESSION_BEHIND) =>
            {
                say(format_args!(
                    "no server could serve the session ({reasons}); dropping the session token"
                ));
                self.session = None;
                self.call_once(&build, &send, &handle, path)
            }
            other => other,
        }
    }

    /// One pass of [`Client::call`] over the servers.
    fn call_once<B, T>(
        &mut self,
        build: &impl Fn(&Agent, &str) -> ureq::RequestBuilder<B>,
        send: &impl Fn(ureq::RequestBuilder<B>) -> Result<Response<Body>, ureq::Error>,
        handle: &impl Fn(&Server, Response<Body>) -> Result<T, Failure>,
        path: &str,
    ) -> Result<T, ClientError> {
        let mut failures: Vec<String> = Vec::new();
        for index in attempt_order(self.current, self.servers.len()) {
            let server = &self.servers[index];
            let mut request = build(&self.agent, &server.url(path));
            if let Some(session) = &self.session {
                request = request.header(SESSION_HEADER, session.clone());
            }
            if let Some(Token(token)) = &self.token {
                request = request.header("Authorization", format!("Bearer {token}"));
            }
            let outcome = match send(request) {
                Err(error) => Err(Failure::Next(error.to_string())),
                Ok(mut response) => {
                    if let Some(session) = response.headers().get(SESSION_HEADER) {
                        if session.len() <= MAX_TOKEN_BYTES && !session.is_empty() {
                            self.session = Some(session.clone());
                        }
                    }
                    let status = response.status().as_u16();
                    if fails_over(status) {
                        Err(Failure::Next(format!(
                            "{status}: {}",
                            read_error(&mut response)
                        )))
                    } else {
                        handle(server, response)
                    }
                }
            };
            match outcome {
                Ok(result) => {
                    if index != self.current {
                        say(format_args!(
                            "failed over: {}; now using {server}",
                            failures.join("; ")
                        ));
                        self.current = index;
                    }
                    return Ok(result);
                }
                Err(Failure::Final(error)) => {
                    // The server answered: it is up, so it stays (or becomes) current.
                    self.current = index;
                    return Err(error);
                }
                Err(Failure::Next(reason)) => failures.push(format!("{server}: {reason}")),
            }
        }
        Err(ClientError::NoServer(failures.join("; ")))
    }
}

/// Writes one line to stderr, prefixed `kv739: `. A failed write is ignored: a
/// library must not panic (or abort its caller) for a closed stderr.
pub(crate) fn say(message: fmt::Arguments<'_>) {
    // Unit tests print through the test harness, which captures it.
    #[cfg(test)]
    eprintln!("kv739: {message}");
    #[cfg(not(test))]
    let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("kv739: {message}\n"));
}

/// A definite refusal from a server that answered `status`.
fn refusal(server: &Server, status: u16, mut response: Response<Body>) -> Failure {
    Failure::Final(ClientError::Refused {
        server: server.to_string(),
        status,
        message: read_error(&mut response),
    })
}

/// The error sentence of a response, read within a bound.
fn read_error(response: &mut Response<Body>) -> String {
    match response
        .body_mut()
        .with_config()
        .limit(MAX_ERROR_BYTES)
        .read_to_vec()
    {
        Ok(body) => error_message(&body),
        Err(error) => format!("(unreadable error body: {error})"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::thread;

    use super::*;
    use crate::protocol::parse_server;

    /// A one-shot HTTP server on a free loopback port: answers one connection per
    /// scripted response, in order, then stops; sends each request's head (lowercase)
    /// down the channel.
    fn fake_server(responses: Vec<String>) -> (Server, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let address = listener.local_addr().expect("local address").to_string();
        let (heads, received) = mpsc::channel();
        thread::spawn(move || {
            for response in responses {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let mut reader = BufReader::new(stream);
                let mut head = String::new();
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let line = line.to_ascii_lowercase();
                    if let Some(value) = line.strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                    head.push_str(&line);
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let _ = heads.send(head);
                let _ = reader.get_mut().write_all(response.as_bytes());
            }
        });
        (parse_server(address.as_bytes()).expect("parses"), received)
    }

    fn response(status: &str, headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n{headers}\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn the_session_and_access_tokens_go_with_every_request() {
        let (server, heads) = fake_server(vec![
            response(
                "200 OK",
                "Meshkv-Session: s-1\r\n",
                r#"{"key":"k","previous":null,"version":"1"}"#,
            ),
            response("200 OK", "", "v"),
        ]);
        let token = Token::new(b"t0k").expect("valid");
        let mut client = Client::new(vec![server], Some(token));
        assert_eq!(client.put("k", b"v").expect("put"), None);
        assert!(client.has_session());
        assert_eq!(client.get("k").expect("get"), Some(b"v".to_vec()));
        let first = heads.recv().expect("first request");
        assert!(first.starts_with("put /v1/kv/k http/1.1"), "{first}");
        assert!(first.contains("authorization: bearer t0k"), "{first}");
        assert!(!first.contains("meshkv-session"), "{first}");
        let second = heads.recv().expect("second request");
        assert!(second.contains("meshkv-session: s-1"), "{second}");
        assert!(second.contains("authorization: bearer t0k"), "{second}");
    }

    #[test]
    fn a_503_fails_over_and_the_answering_server_stays_current() {
        let (starting, starting_heads) = fake_server(vec![response(
            "503 Service Unavailable",
            "",
            r#"{"error":"the node is starting"}"#,
        )]);
        let (healthy, healthy_heads) = fake_server(vec![
            response("200 OK", "", "v"),
            response("404 Not Found", "", r#"{"error":"no such key"}"#),
            response("400 Bad Request", "", r#"{"error":"bad key"}"#),
        ]);
        let mut client = Client::new(vec![starting, healthy.clone()], None);
        assert_eq!(client.get("k").expect("fails over"), Some(b"v".to_vec()));
        assert_eq!(client.current_server(), &healthy);
        // 404 and 400 are answers, not reasons to fail over.
        assert_eq!(client.get("gone").expect("absent"), None);
        let refused = client.get("k").expect_err("refused");
        assert!(
            matches!(&refused, ClientError::Refused { status: 400, message, .. } if message == "bad key"),
            "{refused}"
        );
        assert_eq!(client.current_server(), &healthy);
        assert_eq!(starting_heads.try_iter().count(), 1);
        assert_eq!(healthy_heads.try_iter().count(), 3);
    }

    #[test]
    fn a_stored_value_too_long_for_the_caller_is_an_error_not_a_failover() {
        let long = "x".repeat(crate::protocol::MAX_VALUE_BYTES + 1);
        let old = format!(r#"{{"key":"k","previous":"{long}","version":"1"}}"#);
        let (server, _heads) = fake_server(vec![
            response("200 OK", "", &long),
            response("200 OK", "", &old),
        ]);
        let mut client = Client::new(vec![server], None);
        assert!(matches!(
            client.get("k"),
            Err(ClientError::Value(ValueError::TooLong))
        ));
        assert!(matches!(
            client.put("k", b"v"),
            Err(ClientError::OldValue(ValueError::TooLong))
        ));
    }

    #[test]
    fn tokens_are_visible_ascii_and_never_shown() {
        let token = Token::new(b"s3cr3t-token").expect("valid");
        assert_eq!(format!("{token:?}"), "Token(<hidden>)");
        assert_eq!(Token::new(b""), Err(TokenError::Malformed));
        assert_eq!(Token::new(b"two words"), Err(TokenError::Malformed));
        assert_eq!(Token::new(b"line\nbreak"), Err(TokenError::Malformed));
        assert_eq!(Token::new(&[b'x'; 4097]), Err(TokenError::Malformed));
        assert!(!TokenError::Malformed.to_string().contains("s3cr3t"));
    }

    #[test]
    fn a_dead_cluster_fails_every_server_once_and_keeps_the_current_one() {
        // Port 1 on loopback: nothing listens there, so connecting fails at once.
        let servers =
            crate::protocol::parse_servers([b"127.0.0.1:1".as_slice(), b"127.0.0.2:1".as_slice()])
                .0;
        let mut client = Client::new(servers, None);
        let error = client.get("k").expect_err("nothing listens");
        let message = error.to_string();
        assert!(message.contains("127.0.0.1:1"), "{message}");
        assert!(message.contains("127.0.0.2:1"), "{message}");
        assert_eq!(client.current_server().to_string(), "127.0.0.1:1");
        assert!(!client.has_session());
    }

    #[test]
    fn values_too_long_for_the_caller_are_refused_before_sending() {
        let servers = crate::protocol::parse_servers([b"127.0.0.1:1".as_slice()]).0;
        let mut client = Client::new(servers, None);
        let value = vec![b'v'; crate::protocol::MAX_VALUE_BYTES + 1];
        assert!(matches!(
            client.put("k", &value),
            Err(ClientError::Value(ValueError::TooLong))
        ));
    }
}
