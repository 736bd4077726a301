//! The cluster file (API.md §1): one typed, validated struct with named defaults.
//!
//! Owns: [`ClusterConfig`] (what the TOML says), [`NodeSpec`] (one `[[nodes]]` entry)
//! and [`Tuning`] (every optional top-level key, each with its default).
//! Knows nothing of: sockets, the store, HTTP. Subsystems receive the values they need;
//! only this module reads the file.
//!
//! ```toml
//! # optional keys, shown with their defaults
//! cluster = "meshkv"            # name both sides of a peer link must share
//! # secret_file = "secret.key"  # path (relative to this file); enables frame HMACs
//! # client_tokens_file = "tokens" # path (relative to this file); requires client tokens
//! metrics_open = false          # with tokens: true leaves /metrics readable without one
//! # tls_ca_file = "tls/ca.pem"  # path; turns TLS on (HTTPS, mutual TLS between peers)
//! max_key_bytes = 1024
//! max_value_bytes = 1048576
//! max_clock_skew_ms = 1000
//! live_timeout_ms = 500         # how long a `live` write waits for peers' acks
//! session_wait_ms = 500         # how long a request with a session token waits
//! tombstone_grace_ms = 604800000  # 7 days: a node silent this long no longer holds
//!                               # tombstone collection back, and is refused with its
//!                               # old data when it returns (an empty node rejoins)
//!
//! [[nodes]]
//! id   = "n1"
//! http = "127.0.0.11:7001"
//! peer = "127.0.0.11:7101"
//! # tls_cert_file = "tls/n1.pem" # with tls_ca_file: this node's certificate chain
//! # tls_key_file = "tls/n1.key"  # and its private key
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::{ClientTokens, TokensFileError};
use crate::clock::NodeId;
use crate::persist::FsyncPolicy;
use crate::store::Limits;
use crate::tls::TlsPaths;

/// Why a cluster file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("{path} is not a valid cluster file: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's explanation.
        message: String,
    },
    /// The file parses but describes an unusable cluster.
    #[error("invalid cluster file: {0}")]
    Invalid(String),
    /// The client tokens file is unusable (the error names a line, never a token).
    #[error("invalid client tokens file {path}: {error}")]
    Tokens {
        /// The file.
        path: PathBuf,
        /// What is wrong, and on which line.
        error: TokensFileError,
    },
    /// `--node` names no node of the file.
    #[error("node {0:?} is not in the cluster file")]
    UnknownNode(String),
    /// A node to be served, or one of its peers, has no `peer` address.
    #[error(
        "node {0} has no peer address in the cluster file; serving a node needs `peer` on every node (only testing a cluster can do without it)"
    )]
    NoPeerAddress(String),
}

/// One `[[nodes]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Unique id, `[a-z0-9_-]{1,32}`.
    pub id: NodeId,
    /// Client HTTP address.
    pub http: SocketAddr,
    /// Node-to-node address; outbound peer connections also originate from its IP.
    /// Needed to serve the node (see [`ClusterConfig::peer_address`]), not to test it:
    /// a store that is not meshkv may be described by `id` and `http` alone.
    #[serde(default)]
    pub peer: Option<SocketAddr>,
    /// This node's certificate chain (PEM), for HTTPS and the peer links; needed to
    /// serve the node when `tls_ca_file` is set.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// The private key of `tls_cert_file` (PEM); a warning if others may read it.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
}

/// Every optional top-level key of the cluster file, with its default.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tuning {
    /// Cluster name exchanged in the handshake; nodes of other clusters are refused.
    pub cluster: String,
    /// File holding the shared secret that authenticates every frame (none: frames are
    /// not authenticated, and the peer port must stay on a private network).
    pub secret_file: Option<PathBuf>,
    /// File listing the client tokens and their roles (none: the client API is open to
    /// anyone who can reach it).
    pub client_tokens_file: Option<PathBuf>,
    /// With client tokens: `/metrics` stays readable without a token (for a scraper
    /// that cannot send one). Without tokens it changes nothing.
    pub metrics_open: bool,
    /// The CA bundle (PEM) that signs every node's certificate. Set, it turns TLS on:
    /// clients speak HTTPS, peers mutual TLS (API.md §3.6).
    pub tls_ca_file: Option<PathBuf>,
    /// Longest key in bytes.
    pub max_key_bytes: usize,
    /// Longest value in bytes.
    pub max_value_bytes: usize,
    /// Remote versions further ahead of the local wall clock are refused for now.
    pub max_clock_skew_ms: u64,
    /// How long a `live` write waits for the acks of live peers.
    pub live_timeout_ms: u64,
    /// How long a `quorum` or `all` request waits before answering 503.
    pub strong_timeout_ms: u64,
    /// Interval between anti-entropy rounds with each peer. 0 disables anti-entropy:
    /// only for tests that must observe read repair alone; replicas then never heal
    /// from a lost push.
    pub anti_entropy_interval_ms: u64,
    /// A link idle this long sends a ping.
    pub heartbeat_interval_ms: u64,
    /// A peer that has not answered for this long is `suspect`.
    pub suspect_after_ms: u64,
    /// Longest wait after a start before serving clients, caught up with the peers or
    /// not (see `Replica::check_ready`).
    pub startup_sync_timeout_ms: u64,
    /// Deadline for connecting to a peer.
    pub connect_timeout_ms: u64,
    /// Deadline for a peer's reply to one request; past it the link is dropped.
    pub request_timeout_ms: u64,
    /// An inbound peer connection silent this long is closed.
    pub peer_idle_timeout_ms: u64,
    /// Longest wait between reconnection attempts.
    pub max_backoff_ms: u64,
    /// Largest frame accepted or sent, in bytes.
    pub max_frame_bytes: usize,
    /// Target size of one push batch or anti-entropy reply, in bytes.
    pub batch_bytes: usize,
    /// Distinct keys queued for one peer before further writes are left to anti-entropy.
    pub outbox_max_keys: usize,
    /// Concurrent inbound peer connections.
    pub max_peer_connections: usize,
    /// Open client HTTP connections.
    pub max_http_connections: usize,
    /// Deadline for one client HTTP request, body included (answered 408 past it).
    pub http_timeout_ms: u64,
    /// Deadline for a client to send a request's headers; idle keep-alive connections
    /// are closed after it too.
    pub http_header_timeout_ms: u64,
    /// When a durable node's writes reach the disk (`always`, `batch`, `never`);
    /// `meshkv serve --fsync` overrides it. Memory-only nodes ignore it.
    pub fsync: FsyncPolicy,
    /// Tombstones are dropped once every node holds them. A node out of contact for
    /// longer than this no longer holds collection back; if it returns with the data
    /// it had (same data epoch), it is refused until its data is wiped, since that
    /// data may bring deleted keys back. An empty node rejoins. Default 7 days; tests
    /// use seconds.
    pub tombstone_grace_ms: u64,
    /// Concurrent watches (`GET /v1/watch`); more are answered 503.
    pub max_watchers: usize,
    /// Changes buffered for one watcher; one that falls further behind is cut off with
    /// an `overflow` event.
    pub watch_buffer: usize,
    /// Longest a request with a session token waits for this node to catch up with
    /// what the token covers (fetching the key from its peers) before answering 503.
    pub session_wait_ms: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            cluster: "meshkv".to_owned(),
            secret_file: None,
            client_tokens_file: None,
            metrics_open: false,
            tls_ca_file: None,
            max_key_bytes: limits.max_key_bytes,
            max_value_bytes: limits.max_value_bytes,
            max_clock_skew_ms: 1000,
            live_timeout_ms: 500,
            strong_timeout_ms: 1000,
            anti_entropy_interval_ms: 1000,
            heartbeat_interval_ms: 200,
            suspect_after_ms: 600,
            startup_sync_timeout_ms: 5000,
            connect_timeout_ms: 500,
            request_timeout_ms: 1500,
            peer_idle_timeout_ms: 10_000,
            max_backoff_ms: 300,
            max_frame_bytes: 16 * 1024 * 1024,
            batch_bytes: 1024 * 1024,
            outbox_max_keys: 100_000,
            max_peer_connections: 64,
            max_http_connections: 1024,
            http_timeout_ms: 10_000,
            http_header_timeout_ms: 5_000,
            fsync: FsyncPolicy::Batch,
            tombstone_grace_ms: 7 * 24 * 3600 * 1000,
            max_watchers: 256,
            watch_buffer: 1024,
            session_wait_ms: 500,
        }
    }
}

impl Tuning {
    /// Key and value limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_key_bytes: self.max_key_bytes,
            max_value_bytes: self.max_value_bytes,
        }
    }

    /// A duration from one of the `_ms` keys.
    pub fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }
}

/// The client tokens file, read.
#[derive(Debug)]
pub struct TokensFile {
    /// Its tokens.
    pub tokens: ClientTokens,
    /// Where it is.
    pub path: PathBuf,
    /// Its permission bits.
    pub mode: u32,
    /// Its group or others may read it (worth a warning: it holds secrets).
    pub readable_by_others: bool,
}

/// A parsed and validated cluster file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Every node of the cluster.
    pub nodes: Vec<NodeSpec>,
    /// Optional keys.
    pub tuning: Tuning,
    /// The directory the file was read from, to resolve relative paths.
    pub base_dir: PathBuf,
}

impl ClusterConfig {
    /// Reads, parses and validates a cluster file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|error| match error {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        config.base_dir = path.parent().map(Path::to_owned).unwrap_or_default();
        Ok(config)
    }

    /// Parses and validates cluster-file text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message,
        };
        // `nodes` and the optional keys are split by hand: serde cannot combine
        // `flatten` with `deny_unknown_fields`, and unknown keys (typos) must be refused.
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| parse_error(e.message().to_owned()))?;
        let nodes = match table.remove("nodes") {
            Some(nodes) => nodes
                .try_into()
                .map_err(|e: toml::de::Error| parse_error(e.message().to_owned()))?,
            None => Vec::new(),
        };
        let tuning = table
            .try_into()
            .map_err(|e: toml::de::Error| parse_error(e.message().to_owned()))?;
        let config = Self {
            nodes,
            tuning,
            base_dir: PathBuf::new(),
        };
        config.validate()?;
        Ok(config)
    }

    /// The one-node cluster that `meshkv serve` runs with no `--cluster`.
    pub fn single_node() -> Self {
        Self {
            nodes: vec![NodeSpec {
                id: NodeId::new("n1").expect("valid id"),
                http: "127.0.0.1:7001".parse().expect("valid address"),
                peer: Some("127.0.0.1:7101".parse().expect("valid address")),
                tls_cert_file: None,
                tls_key_file: None,
            }],
            tuning: Tuning::default(),
            base_dir: PathBuf::new(),
        }
    }

    /// Checks what the types cannot: uniqueness and consistent limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        if self.nodes.is_empty() {
            return invalid("it lists no [[nodes]]".into());
        }
        let mut ids = HashSet::new();
        let mut addresses = HashSet::new();
        for node in &self.nodes {
            if !ids.insert(&node.id) {
                return invalid(format!("node id {} appears twice", node.id));
            }
            for address in std::iter::once(node.http).chain(node.peer) {
                if !addresses.insert(address) {
                    return invalid(format!("address {address} is used twice"));
                }
            }
        }
        let tuning = &self.tuning;
        for node in &self.nodes {
            let files = [
                ("tls_cert_file", &node.tls_cert_file),
                ("tls_key_file", &node.tls_key_file),
            ];
            if let Some((name, _)) = files.iter().find(|(_, file)| file.is_some()) {
                if tuning.tls_ca_file.is_none() {
                    return invalid(format!(
                        "node {} has {name} but the file has no tls_ca_file: TLS needs the CA that signs the nodes' certificates",
                        node.id
                    ));
                }
            }
            if node.tls_cert_file.is_some() != node.tls_key_file.is_some() {
                return invalid(format!(
                    "node {} needs both tls_cert_file and tls_key_file, or neither",
                    node.id
                ));
            }
            if tuning.tls_ca_file.is_some() && crate::tls::server_name(&node.id).is_none() {
                return invalid(format!(
                    "node id {} cannot be a certificate's DNS name, which TLS needs (use letters as well as digits)",
                    node.id
                ));
            }
        }
        if tuning.cluster.is_empty() || tuning.cluster.len() > 128 {
            return invalid("cluster must be 1 to 128 bytes long".into());
        }
        if tuning.max_key_bytes == 0 || tuning.max_value_bytes == 0 {
            return invalid("max_key_bytes and max_value_bytes must be positive".into());
        }
        // One entry with the largest key and value must fit in a frame, with room for
        // the version, the tag and the encoding overhead.
        if tuning.max_frame_bytes < tuning.max_key_bytes + tuning.max_value_bytes + 4096 {
            return invalid(
                "max_frame_bytes must exceed max_key_bytes + max_value_bytes + 4096".into(),
            );
        }
        let positive = [
            ("live_timeout_ms", tuning.live_timeout_ms),
            ("strong_timeout_ms", tuning.strong_timeout_ms),
            ("heartbeat_interval_ms", tuning.heartbeat_interval_ms),
            ("suspect_after_ms", tuning.suspect_after_ms),
            ("connect_timeout_ms", tuning.connect_timeout_ms),
            ("request_timeout_ms", tuning.request_timeout_ms),
            ("peer_idle_timeout_ms", tuning.peer_idle_timeout_ms),
            ("max_backoff_ms", tuning.max_backoff_ms),
            ("http_timeout_ms", tuning.http_timeout_ms),
            ("batch_bytes", tuning.batch_bytes as u64),
            ("outbox_max_keys", tuning.outbox_max_keys as u64),
            ("max_peer_connections", tuning.max_peer_connections as u64),
            ("max_http_connections", tuning.max_http_connections as u64),
            ("http_header_timeout_ms", tuning.http_header_timeout_ms),
            ("tombstone_grace_ms", tuning.tombstone_grace_ms),
            ("watch_buffer", tuning.watch_buffer as u64),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return invalid(format!("{name} must be positive"));
        }
        // A batch or reply may overshoot its budget by one entry or bucket: keep a wide
        // margin under the frame cap.
        if tuning.batch_bytes > tuning.max_frame_bytes / 4 {
            return invalid("batch_bytes must be at most a quarter of max_frame_bytes".into());
        }
        if tuning.watch_buffer > 1_000_000 {
            return invalid("watch_buffer must be at most 1000000".into());
        }
        if tuning.session_wait_ms >= tuning.http_timeout_ms {
            return invalid("session_wait_ms must be less than http_timeout_ms".into());
        }
        if tuning.peer_idle_timeout_ms <= tuning.heartbeat_interval_ms {
            return invalid("peer_idle_timeout_ms must exceed heartbeat_interval_ms".into());
        }
        Ok(())
    }

    /// The entry of node `id`.
    pub fn node(&self, id: &str) -> Result<&NodeSpec, ConfigError> {
        self.nodes
            .iter()
            .find(|node| node.id.as_str() == id)
            .ok_or_else(|| ConfigError::UnknownNode(id.to_owned()))
    }

    /// The `peer` address of `node`, which serving a cluster needs on every node.
    pub fn peer_address(&self, node: &NodeSpec) -> Result<SocketAddr, ConfigError> {
        node.peer
            .ok_or_else(|| ConfigError::NoPeerAddress(node.id.to_string()))
    }

    /// Where node `node`'s TLS material is, if TLS is on (`tls_ca_file` set); an error
    /// if TLS is on and the node has no certificate or key.
    pub fn tls_paths(&self, node: &NodeSpec) -> Result<Option<TlsPaths>, ConfigError> {
        let Some(ca) = &self.tuning.tls_ca_file else {
            return Ok(None);
        };
        match (&node.tls_cert_file, &node.tls_key_file) {
            (Some(cert), Some(key)) => Ok(Some(TlsPaths {
                ca: self.base_dir.join(ca),
                cert: self.base_dir.join(cert),
                key: self.base_dir.join(key),
            })),
            _ => Err(ConfigError::Invalid(format!(
                "TLS is on (tls_ca_file) but node {} has no tls_cert_file and tls_key_file: serving it needs its certificate and key",
                node.id
            ))),
        }
    }

    /// The CA bundle clients trust, if TLS is on.
    pub fn tls_ca_path(&self) -> Option<PathBuf> {
        self.tuning
            .tls_ca_file
            .as_ref()
            .map(|ca| self.base_dir.join(ca))
    }

    /// Every node but `id`.
    pub fn peers_of<'a>(&'a self, id: &'a NodeId) -> impl Iterator<Item = &'a NodeSpec> + 'a {
        self.nodes.iter().filter(move |node| &node.id != id)
    }

    /// The cluster secret, read from `secret_file` (trailing whitespace trimmed).
    pub fn secret(&self) -> Result<Option<Arc<[u8]>>, ConfigError> {
        let Some(file) = &self.tuning.secret_file else {
            return Ok(None);
        };
        let path = self.base_dir.join(file);
        let text = std::fs::read(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let trimmed = text.trim_ascii_end();
        if trimmed.len() < 16 {
            return Err(ConfigError::Invalid(format!(
                "the secret in {} is shorter than 16 bytes",
                path.display()
            )));
        }
        Ok(Some(Arc::from(trimmed)))
    }

    /// The client tokens, read from `client_tokens_file` (`None`: not configured).
    pub fn client_tokens(&self) -> Result<Option<TokensFile>, ConfigError> {
        let Some(file) = &self.tuning.client_tokens_file else {
            return Ok(None);
        };
        let path = self.base_dir.join(file);
        let read_error = |source| ConfigError::Read {
            path: path.clone(),
            source,
        };
        let text = std::fs::read(&path).map_err(read_error)?;
        let mode = {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::metadata(&path)
                .map_err(read_error)?
                .permissions()
                .mode()
        };
        // Not UTF-8: parsed lossily, so that the error names the line (a replaced
        // byte is not visible ASCII).
        let tokens = ClientTokens::parse(&String::from_utf8_lossy(&text)).map_err(|error| {
            ConfigError::Tokens {
                path: path.clone(),
                error,
            }
        })?;
        Ok(Some(TokensFile {
            tokens,
            readable_by_others: mode & 0o044 != 0,
            mode: mode & 0o777,
            path,
        }))
    }

    /// Renders a cluster file for `count` nodes on 127.0.0.11.., as used by `demo`.
    pub fn local_file(count: usize, http_base_port: u16, peer_base_port: u16) -> String {
        Self::local_file_with(count, http_base_port, peer_base_port, false)
    }

    /// [`ClusterConfig::local_file`], with TLS if `tls`: `tls_ca_file = "tls/ca.pem"`,
    /// and node `n<i>`'s certificate and key in `tls/n<i>.pem` and `tls/n<i>.key`.
    pub fn local_file_with(
        count: usize,
        http_base_port: u16,
        peer_base_port: u16,
        tls: bool,
    ) -> String {
        let mut text = String::new();
        if tls {
            text.push_str("tls_ca_file = \"tls/ca.pem\"\n\n");
        }
        for index in 0..count {
            let ip = format!("127.0.0.{}", 11 + index);
            let n = index + 1;
            text.push_str(&format!(
                "[[nodes]]\nid = \"n{n}\"\nhttp = \"{ip}:{http}\"\npeer = \"{ip}:{peer}\"\n",
                http = http_base_port as usize + index,
                peer = peer_base_port as usize + index,
            ));
            if tls {
                text.push_str(&format!(
                    "tls_cert_file = \"tls/n{n}.pem\"\ntls_key_file = \"tls/n{n}.key\"\n"
                ));
            }
            text.push('\n');
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_NODES: &str = r#"
        [[nodes]]
        id   = "n1"
        http = "127.0.0.11:7001"
        peer = "127.0.0.11:7101"

        [[nodes]]
        id   = "n2"
        http = "127.0.0.12:7002"
        peer = "127.0.0.12:7102"
    "#;

    #[test]
    fn parses_the_api_example_with_defaults() {
        let config = ClusterConfig::parse(TWO_NODES).unwrap();
        assert_eq!(config.nodes.len(), 2);
        assert_eq!(config.tuning, Tuning::default());
        assert_eq!(
            config.node("n2").unwrap().peer,
            Some("127.0.0.12:7102".parse().unwrap())
        );
        let me = NodeId::new("n1").unwrap();
        assert_eq!(
            config
                .peers_of(&me)
                .map(|n| n.id.as_str())
                .collect::<Vec<_>>(),
            ["n2"]
        );
    }

    #[test]
    fn optional_keys_override_defaults() {
        let text =
            format!("max_clock_skew_ms = 50\ncluster = \"test\"\nfsync = \"always\"\n{TWO_NODES}");
        let config = ClusterConfig::parse(&text).unwrap();
        assert_eq!(config.tuning.max_clock_skew_ms, 50);
        assert_eq!(config.tuning.cluster, "test");
        assert_eq!(config.tuning.fsync, FsyncPolicy::Always);
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let cases = [
            ("", "no [[nodes]]"),
            ("[[nodes]]\nid=\"N1\"\nhttp=\"127.0.0.1:1\"\npeer=\"127.0.0.1:2\"", "invalid"),
            ("typo_key = 1\n[[nodes]]\nid=\"n1\"\nhttp=\"127.0.0.1:1\"\npeer=\"127.0.0.1:2\"", "unknown field"),
            (
                "[[nodes]]\nid=\"n1\"\nhttp=\"127.0.0.1:1\"\npeer=\"127.0.0.1:2\"\n[[nodes]]\nid=\"n1\"\nhttp=\"127.0.0.1:3\"\npeer=\"127.0.0.1:4\"",
                "appears twice",
            ),
            ("[[nodes]]\nid=\"n1\"\nhttp=\"127.0.0.1:1\"\npeer=\"127.0.0.1:1\"", "used twice"),
            ("max_frame_bytes = 10\n[[nodes]]\nid=\"n1\"\nhttp=\"127.0.0.1:1\"\npeer=\"127.0.0.1:2\"", "max_frame_bytes"),
            ("batch_bytes = 8388608\n[[nodes]]\nid=\"n1\"\nhttp=\"127.0.0.1:1\"\npeer=\"127.0.0.1:2\"", "batch_bytes"),
            ("fsync = \"sometimes\"\n[[nodes]]\nid=\"n1\"\nhttp=\"127.0.0.1:1\"\npeer=\"127.0.0.1:2\"", "fsync policy \"sometimes\" is unknown"),
            ("live_timeout_ms = 0\n[[nodes]]\nid=\"n1\"\nhttp=\"127.0.0.1:1\"\npeer=\"127.0.0.1:2\"", "live_timeout_ms"),
        ];
        for (text, expected) in cases {
            let error = ClusterConfig::parse(text).unwrap_err().to_string();
            assert!(
                error.contains(expected),
                "{text:?} gave {error:?}, expected {expected:?}"
            );
        }
    }

    #[test]
    fn nodes_without_peer_addresses_can_be_tested_not_served() {
        let text = "[[nodes]]\nid=\"a\"\nhttp=\"127.0.0.1:1\"\n[[nodes]]\nid=\"b\"\nhttp=\"127.0.0.1:2\"\npeer=\"127.0.0.1:3\"";
        let config = ClusterConfig::parse(text).unwrap();
        assert_eq!(config.nodes[0].peer, None);
        let error = config.peer_address(&config.nodes[0]).unwrap_err();
        assert!(
            error.to_string().contains("node a has no peer address"),
            "{error}"
        );
        assert_eq!(
            config.peer_address(&config.nodes[1]).unwrap(),
            "127.0.0.1:3".parse().unwrap()
        );
        // Duplicates are still refused, between http and peer addresses alike.
        let twice =
            "[[nodes]]\nid=\"a\"\nhttp=\"127.0.0.1:1\"\n[[nodes]]\nid=\"b\"\nhttp=\"127.0.0.1:1\"";
        assert!(ClusterConfig::parse(twice)
            .unwrap_err()
            .to_string()
            .contains("used twice"));
        let crossed = "[[nodes]]\nid=\"a\"\nhttp=\"127.0.0.1:1\"\n[[nodes]]\nid=\"b\"\nhttp=\"127.0.0.1:2\"\npeer=\"127.0.0.1:1\"";
        assert!(ClusterConfig::parse(crossed)
            .unwrap_err()
            .to_string()
            .contains("used twice"));
    }

    #[test]
    fn client_tokens_are_read_relative_to_the_cluster_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let cluster = dir.path().join("cluster.toml");
        let write = |tokens: &str, mode: u32| {
            let path = dir.path().join("tokens");
            std::fs::write(&path, tokens).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        std::fs::write(
            &cluster,
            format!("client_tokens_file = \"tokens\"\nmetrics_open = true\n{TWO_NODES}"),
        )
        .unwrap();
        let config = ClusterConfig::load(&cluster).unwrap();
        assert!(config.tuning.metrics_open);
        write("# ops\nadmin s3cr3t-admin-token-0001\n", 0o600);
        let file = config.client_tokens().unwrap().unwrap();
        assert_eq!(file.tokens.count(crate::auth::Role::Admin), 1);
        assert!(!file.readable_by_others);
        write("admin s3cr3t-admin-token-0001\n", 0o644);
        assert!(config.client_tokens().unwrap().unwrap().readable_by_others);
        write(
            "admin s3cr3t-admin-token-0001\nroot s3cr3t-admin-token-0002\n",
            0o600,
        );
        let error = config.client_tokens().unwrap_err().to_string();
        assert!(
            error.contains("invalid client tokens file") && error.contains("tokens: line 2: "),
            "{error}"
        );
        assert!(!error.contains("s3cr3t"), "{error}");
        std::fs::remove_file(dir.path().join("tokens")).unwrap();
        assert!(config
            .client_tokens()
            .unwrap_err()
            .to_string()
            .starts_with("cannot read"));
        assert!(ClusterConfig::parse(TWO_NODES)
            .unwrap()
            .client_tokens()
            .unwrap()
            .is_none());
    }

    #[test]
    fn tls_keys_are_checked_and_resolved_against_the_file() {
        let node = |id: &str, n: u8, tls: &str| {
            format!(
                "[[nodes]]\nid=\"{id}\"\nhttp=\"127.0.0.{n}:1\"\npeer=\"127.0.0.{n}:2\"\n{tls}\n"
            )
        };
        let files =
            |id: &str| format!("tls_cert_file=\"tls/{id}.pem\"\ntls_key_file=\"tls/{id}.key\"");
        let ca = "tls_ca_file = \"tls/ca.pem\"\n";

        // TLS on: the node served needs its files; a client may use a file without them.
        let text = format!("{ca}{}{}", node("n1", 1, &files("n1")), node("n2", 2, ""));
        let mut config = ClusterConfig::parse(&text).unwrap();
        config.base_dir = PathBuf::from("/etc/meshkv");
        assert_eq!(
            config.tls_paths(&config.nodes[0]).unwrap(),
            Some(TlsPaths {
                ca: "/etc/meshkv/tls/ca.pem".into(),
                cert: "/etc/meshkv/tls/n1.pem".into(),
                key: "/etc/meshkv/tls/n1.key".into(),
            })
        );
        assert_eq!(config.tls_ca_path(), Some("/etc/meshkv/tls/ca.pem".into()));
        let error = config.tls_paths(&config.nodes[1]).unwrap_err().to_string();
        assert!(
            error.contains("node n2 has no tls_cert_file and tls_key_file"),
            "{error}"
        );

        // TLS off: no paths, whatever the node.
        let plain = ClusterConfig::parse(&node("n1", 1, "")).unwrap();
        assert_eq!(plain.tls_paths(&plain.nodes[0]).unwrap(), None);
        assert_eq!(plain.tls_ca_path(), None);

        let refused = [
            (
                node("n1", 1, &files("n1")),
                "has tls_cert_file but the file has no tls_ca_file",
            ),
            (
                format!("{ca}{}", node("n1", 1, "tls_cert_file=\"a.pem\"")),
                "needs both tls_cert_file and tls_key_file",
            ),
            (
                format!("{ca}{}", node("n1", 1, "tls_key_file=\"a.key\"")),
                "needs both tls_cert_file and tls_key_file",
            ),
            (
                format!("{ca}{}", node("7", 1, "")),
                "cannot be a certificate's DNS name",
            ),
        ];
        for (text, expected) in refused {
            let error = ClusterConfig::parse(&text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?} gave {error:?}");
        }
    }

    #[test]
    fn local_file_describes_a_valid_cluster() {
        let config = ClusterConfig::parse(&ClusterConfig::local_file(4, 7001, 7101)).unwrap();
        assert_eq!(config.nodes.len(), 4);
        let secure =
            ClusterConfig::parse(&ClusterConfig::local_file_with(2, 7001, 7101, true)).unwrap();
        assert_eq!(
            secure.tls_paths(&secure.nodes[1]).unwrap().unwrap().key,
            PathBuf::from("tls/n2.key")
        );
        assert_eq!(config.nodes[3].http, "127.0.0.14:7004".parse().unwrap());
        assert!(ClusterConfig::single_node().validate().is_ok());
    }
}
