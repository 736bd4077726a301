//! The pure half of the client: what the course allows, what meshkv's HTTP API says.
//!
//! Owns: the course's limits on keys and values, parsing the server list, the request
//! path of a key, reading a PUT reply (API.md §3), which answers mean "try the next
//! server", and the order in which servers are tried.
//! Knows nothing of: sockets, HTTP clients or C pointers; everything here is a plain
//! function of its arguments, so it is unit-tested without a server.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

/// The longest key the course allows, in bytes (`KV739_MAX_KEY`).
pub const MAX_KEY_BYTES: usize = 128;
/// The longest value the course allows, in bytes (`KV739_MAX_VALUE`). The caller's
/// value buffers hold this plus the terminating NUL.
pub const MAX_VALUE_BYTES: usize = 2048;
/// The longest `host:port` entry accepted in a server list, in bytes.
pub const MAX_SERVER_BYTES: usize = 512;

/// Everything but the unreserved characters of RFC 3986 is escaped in the key's path
/// segment: `/` too (the server decodes `%2F` back into the key), so that no key can
/// change the route or be normalised on the way.
const KEY_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Why a key is refused before any request is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key has no characters.
    #[error("the key is empty")]
    Empty,
    /// The key is longer than [`MAX_KEY_BYTES`].
    #[error("the key is longer than {MAX_KEY_BYTES} bytes")]
    TooLong,
    /// The course reserves `[` and `]`.
    #[error("the key contains '[' or ']', which the course reserves")]
    Bracket,
    /// A control character (the course allows printable characters only).
    #[error("the key contains a control character (byte {0:#04x})")]
    Control(u8),
    /// meshkv keys are UTF-8.
    #[error("the key is not valid UTF-8")]
    NotUtf8,
}

/// Checks a key against the course's rules (1 to 128 bytes of printable UTF-8, no `[`
/// or `]`) and returns it as text.
pub fn check_key(bytes: &[u8]) -> Result<&str, KeyError> {
    if bytes.is_empty() {
        return Err(KeyError::Empty);
    }
    if bytes.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong);
    }
    if let Some(&byte) = bytes.iter().find(|&&b| b < 0x20 || b == 0x7f) {
        return Err(KeyError::Control(byte));
    }
    if bytes.iter().any(|&b| b == b'[' || b == b']') {
        return Err(KeyError::Bracket);
    }
    std::str::from_utf8(bytes).map_err(|_| KeyError::NotUtf8)
}

/// The request path of a key: `/v1/kv/` and the percent-encoded key.
pub fn key_path(key: &str) -> String {
    format!("/v1/kv/{}", percent_encode(key.as_bytes(), KEY_ESCAPES))
}

/// One server of the list: where its HTTP API listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Server {
    /// Host name or IP address; an IPv6 address keeps its brackets.
    host: String,
    /// TCP port, never 0.
    port: u16,
}

impl Server {
    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}{}", self.host, self.port, path)
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Why one entry of the server list was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    /// Not text.
    #[error("server {0:?} is not valid UTF-8")]
    NotUtf8(String),
    /// Not `host:port`.
    #[error("server {0:?} is not host:port")]
    Malformed(String),
    /// The port is not a number from 1 to 65535.
    #[error("server {0:?} has no valid port (1 to 65535)")]
    BadPort(String),
    /// `https://` was asked for; the library speaks plain HTTP.
    #[error("server {0:?} asks for HTTPS, which libkv739 does not speak yet")]
    Https(String),
}

/// Parses one `host:port` entry. An `http://` prefix and surrounding blanks are
/// tolerated; an IPv6 host must be bracketed (`[::1]:7001`).
pub fn parse_server(bytes: &[u8]) -> Result<Server, ServerError> {
    let lossy = || String::from_utf8_lossy(bytes).into_owned();
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ServerError::NotUtf8(lossy()))?
        .trim();
    if text.starts_with("https://") {
        return Err(ServerError::Https(text.to_owned()));
    }
    let text = text.strip_prefix("http://").unwrap_or(text);
    let text = text.strip_suffix('/').unwrap_or(text);
    let malformed = || ServerError::Malformed(text.to_owned());
    let (host, port) = text.rsplit_once(':').ok_or_else(malformed)?;
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        // An IPv6 address, perhaps with a zone (`%eth0`).
        Some(address) => {
            address.contains(':')
                && address
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b":.%".contains(&b))
        }
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        }
    };
    if !host_ok {
        return Err(malformed());
    }
    let digits = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    let port = match port.parse::<u16>() {
        Ok(number) if digits && number != 0 => number,
        _ => return Err(ServerError::BadPort(text.to_owned())),
    };
    Ok(Server {
        host: host.to_owned(),
        port,
    })
}

/// Parses a server list: the servers that parse, in order and without duplicates, and
/// one complaint per entry skipped. The caller decides what an empty result means.
pub fn parse_servers<'a>(
    entries: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<Server>, Vec<ServerError>) {
    let mut servers: Vec<Server> = Vec::new();
    let mut skipped = Vec::new();
    for entry in entries {
        match parse_server(entry) {
            Ok(server) if !servers.contains(&server) => servers.push(server),
            Ok(_) => {}
            Err(error) => skipped.push(error),
        }
    }
    (servers, skipped)
}

/// The order in which one call tries the servers: the current one first, then the
/// following ones round-robin, each once.
pub fn attempt_order(current: usize, count: usize) -> impl Iterator<Item = usize> {
    (0..count).map(move |step| (current + step) % count)
}

/// Whether an HTTP status means "this server cannot serve now, try the next one":
/// any 5xx (503 included: starting up, fenced, level or session not met) and 408 (the
/// server's own request deadline passed). Other statuses are the cluster's answer,
/// which another node would give too.
pub fn fails_over(status: u16) -> bool {
    status >= 500 || status == 408
}

/// Why a PUT reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// Not a JSON object.
    #[error("the PUT reply is not a JSON object")]
    NotJson,
    /// Neither `previous` nor `previous_base64`.
    #[error("the PUT reply has no \"previous\" field")]
    NoPrevious,
    /// A field of the wrong type, or both shapes at once.
    #[error("the PUT reply has a malformed \"previous\": {0}")]
    BadPrevious(&'static str),
}

/// The previous value in a PUT reply (`{"key","previous","version"}`, API.md §3): the
/// old bytes, or `None` for a new key. `previous` holds text; binary values arrive as
/// `previous_base64` (standard base64) instead.
pub fn parse_put_reply(body: &[u8]) -> Result<Option<Vec<u8>>, ReplyError> {
    let reply: Value = serde_json::from_slice(body).map_err(|_| ReplyError::NotJson)?;
    let object = reply.as_object().ok_or(ReplyError::NotJson)?;
    let text = object.get("previous");
    let base64 = object.get("previous_base64");
    match (text, base64) {
        (None, None) => Err(ReplyError::NoPrevious),
        (Some(Value::String(_)), Some(encoded)) if !encoded.is_null() => Err(
            ReplyError::BadPrevious("both \"previous\" and \"previous_base64\" are set"),
        ),
        (Some(Value::String(text)), _) => Ok(Some(text.as_bytes().to_vec())),
        (_, Some(Value::String(encoded))) => STANDARD
            .decode(encoded)
            .map(Some)
            .map_err(|_| ReplyError::BadPrevious("\"previous_base64\" is not valid base64")),
        (Some(Value::Null) | None, Some(Value::Null) | None) => Ok(None),
        _ => Err(ReplyError::BadPrevious(
            "expected a string or null in \"previous\"/\"previous_base64\"",
        )),
    }
}

/// Why a stored value cannot be handed to C.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Longer than the caller's buffer allows.
    #[error("the value is longer than KV739_MAX_VALUE ({MAX_VALUE_BYTES} bytes)")]
    TooLong,
    /// A NUL byte would cut the C string short.
    #[error("the value contains a NUL byte, which a C string cannot hold")]
    Nul,
}

/// Checks that a value fits a caller's buffer as a C string: at most
/// [`MAX_VALUE_BYTES`] bytes, no NUL.
pub fn check_value(bytes: &[u8]) -> Result<(), ValueError> {
    if bytes.len() > MAX_VALUE_BYTES {
        return Err(ValueError::TooLong);
    }
    if bytes.contains(&0) {
        return Err(ValueError::Nul);
    }
    Ok(())
}

/// The sentence of an error body (`{"error": "..."}`), else the body's start.
pub fn error_message(body: &[u8]) -> String {
    const SHOWN_BYTES: usize = 200;
    if let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) {
        if let Some(Value::String(message)) = object.get("error") {
            return message.clone();
        }
    }
    let shown = &body[..body.len().min(SHOWN_BYTES)];
    String::from_utf8_lossy(shown).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_course_rules() {
        assert_eq!(check_key(b"user:42"), Ok("user:42"));
        assert_eq!(check_key(&[b'k'; MAX_KEY_BYTES]).map(str::len), Ok(128));
        assert_eq!(check_key(b""), Err(KeyError::Empty));
        assert_eq!(
            check_key(&[b'k'; MAX_KEY_BYTES + 1]),
            Err(KeyError::TooLong)
        );
        assert_eq!(check_key(b"a[1]"), Err(KeyError::Bracket));
        assert_eq!(check_key(b"a]"), Err(KeyError::Bracket));
        assert_eq!(check_key(b"tab\there"), Err(KeyError::Control(b'\t')));
        assert_eq!(check_key(b"del\x7f"), Err(KeyError::Control(0x7f)));
        assert_eq!(check_key(b"\xff\xfe"), Err(KeyError::NotUtf8));
        assert_eq!(check_key("café".as_bytes()), Ok("café"));
    }

    #[test]
    fn key_paths_escape_everything_but_unreserved_characters() {
        assert_eq!(key_path("a-b_c.d~e"), "/v1/kv/a-b_c.d~e");
        assert_eq!(key_path("a/b c?d#e%f"), "/v1/kv/a%2Fb%20c%3Fd%23e%25f");
        assert_eq!(key_path("café"), "/v1/kv/caf%C3%A9");
    }

    #[test]
    fn servers_parse_as_host_and_port() {
        let server = parse_server(b"127.0.0.11:7001").expect("parses");
        assert_eq!(server.to_string(), "127.0.0.11:7001");
        assert_eq!(server.url("/health"), "http://127.0.0.11:7001/health");
        let named = parse_server(b" http://node-1.local:80/ ").expect("parses");
        assert_eq!(named.to_string(), "node-1.local:80");
        let v6 = parse_server(b"[::1]:7001").expect("parses");
        assert_eq!(v6.url(""), "http://[::1]:7001");
        for bad in [
            "",
            "localhost",
            ":7001",
            "::1:7001",
            "a b:1",
            "a[b:1",
            "[]:1",
            "h:",
            "h:x",
        ] {
            assert!(parse_server(bad.as_bytes()).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(parse_server(b"h:0"), Err(ServerError::BadPort(_))));
        assert!(matches!(
            parse_server(b"h:65536"),
            Err(ServerError::BadPort(_))
        ));
        assert!(matches!(
            parse_server(b"h:+80"),
            Err(ServerError::BadPort(_))
        ));
        assert!(matches!(
            parse_server(b"https://h:443"),
            Err(ServerError::Https(_))
        ));
        assert!(matches!(
            parse_server(b"\xffh:1"),
            Err(ServerError::NotUtf8(_))
        ));
    }

    #[test]
    fn a_server_list_keeps_the_good_entries_in_order_once() {
        let entries: [&[u8]; 5] = [b"b:2", b"junk", b"a:1", b"b:2", b"c:99999"];
        let (servers, skipped) = parse_servers(entries);
        let names: Vec<String> = servers.iter().map(Server::to_string).collect();
        assert_eq!(names, ["b:2", "a:1"]);
        assert_eq!(skipped.len(), 2);
        let (none, skipped) = parse_servers([b"x".as_slice()]);
        assert!(none.is_empty());
        assert_eq!(skipped, [ServerError::Malformed("x".to_owned())]);
    }

    #[test]
    fn failover_tries_every_server_once_from_the_current_one() {
        assert_eq!(attempt_order(0, 3).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(attempt_order(1, 3).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(attempt_order(2, 3).collect::<Vec<_>>(), [2, 0, 1]);
        assert_eq!(attempt_order(0, 1).collect::<Vec<_>>(), [0]);
        assert_eq!(attempt_order(0, 0).count(), 0);
    }

    #[test]
    fn only_server_trouble_fails_over() {
        for status in [500, 502, 503, 504, 408] {
            assert!(fails_over(status), "{status}");
        }
        for status in [200, 400, 401, 403, 404, 413, 414] {
            assert!(!fails_over(status), "{status}");
        }
    }

    #[test]
    fn put_replies_carry_text_binary_or_no_previous_value() {
        let text = br#"{"key":"k","previous":"old","version":"v"}"#;
        assert_eq!(parse_put_reply(text), Ok(Some(b"old".to_vec())));
        let empty = br#"{"key":"k","previous":"","version":"v"}"#;
        assert_eq!(parse_put_reply(empty), Ok(Some(Vec::new())));
        let new = br#"{"key":"k","previous":null,"version":"v"}"#;
        assert_eq!(parse_put_reply(new), Ok(None));
        // "\xff\x00a" in base64.
        let binary = br#"{"key":"k","previous_base64":"/wBh","version":"v"}"#;
        assert_eq!(parse_put_reply(binary), Ok(Some(vec![0xff, 0, b'a'])));
        let binary_with_null = br#"{"key":"k","previous":null,"previous_base64":"/wBh"}"#;
        assert_eq!(
            parse_put_reply(binary_with_null),
            Ok(Some(vec![0xff, 0, b'a']))
        );
        let both_null = br#"{"key":"k","previous":null,"previous_base64":null}"#;
        assert_eq!(parse_put_reply(both_null), Ok(None));
    }

    #[test]
    fn malformed_put_replies_are_errors() {
        assert_eq!(parse_put_reply(b"not json"), Err(ReplyError::NotJson));
        assert_eq!(parse_put_reply(b"[1]"), Err(ReplyError::NotJson));
        assert_eq!(
            parse_put_reply(br#"{"key":"k","version":"v"}"#),
            Err(ReplyError::NoPrevious)
        );
        for bad in [
            r#"{"previous":42}"#,
            r#"{"previous_base64":"***"}"#,
            r#"{"previous":"a","previous_base64":"YQ=="}"#,
        ] {
            assert!(
                matches!(
                    parse_put_reply(bad.as_bytes()),
                    Err(ReplyError::BadPrevious(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn values_must_fit_a_c_buffer() {
        assert_eq!(check_value(&[b'v'; MAX_VALUE_BYTES]), Ok(()));
        assert_eq!(check_value(b""), Ok(()));
        assert_eq!(
            check_value(&[b'v'; MAX_VALUE_BYTES + 1]),
            Err(ValueError::TooLong)
        );
        assert_eq!(check_value(b"a\0b"), Err(ValueError::Nul));
    }

    #[test]
    fn error_bodies_give_their_sentence() {
        assert_eq!(
            error_message(br#"{"error":"the node is starting"}"#),
            "the node is starting"
        );
        assert_eq!(error_message(b"  Bad Gateway\n"), "Bad Gateway");
        assert_eq!(error_message(&[b'x'; 1000]).len(), 200);
    }
}
