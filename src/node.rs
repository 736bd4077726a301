//! One running node: turns the cluster file into tasks, and stops them.
//!
//! Owns: the node's environment ([`NodeEnv`]: the seams through which the outside world
//! enters, and their production implementations), binding the two listeners, spawning
//! the peer server, one driver per peer and the HTTP server, and the shutdown sequence
//! (one [`CancellationToken`] that every task watches; the root waits for all of them,
//! with a deadline).
//! Knows nothing of: request semantics.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::api::server::ServerOptions;
use crate::clock::Clock;
use crate::config::{ClusterConfig, ConfigError, Tuning};
use crate::metrics::Metrics;
use crate::peer::{self, Identity, TransportOptions};
use crate::replication::driver::{self, DriverOptions, PeerTarget};
use crate::replication::{Replica, ReplicationOptions};
use crate::transport::{Listener, TcpTransport, Transport};

/// How long shutdown waits for tasks to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The cluster file is unusable for this node.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen for {what} on {address}: {source}")]
    Bind {
        /// `client HTTP` or `peer`.
        what: &'static str,
        /// The address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

async fn bind(
    transport: &dyn Transport,
    what: &'static str,
    address: SocketAddr,
) -> Result<Box<dyn Listener>, NodeError> {
    transport
        .listen(address)
        .await
        .map_err(|source| NodeError::Bind {
            what,
            address,
            source,
        })
}

/// The production [`Clock`]: wall time from the operating system, monotonic time from
/// tokio's `Instant`, so that it agrees with tokio's timers (which `tokio::time::pause`
/// and a simulator drive).
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: tokio::time::Instant,
}

impl SystemClock {
    /// A clock whose monotonic time starts at 0 now.
    pub fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn wall_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or(0)
    }

    fn monotonic_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }
}

/// Called once with the node's [`Replica`] as the node starts. Lets a deterministic
/// simulator look at every node's state from outside the network (its invariant
/// checks: which replicas hold a write when a `quorum` write is acknowledged, what a
/// node held when it crashed), between two steps of the simulation. Production has
/// none.
pub type ReplicaObserver = Arc<dyn Fn(&Replica) + Send + Sync>;

/// The outside world of one node: the seams through which time and the network reach
/// it. [`run`] uses [`NodeEnv::production`]; a deterministic simulator builds its own
/// (simulated time, simulated TCP) and calls [`run_with`] once per node, all in one
/// process.
#[derive(Clone)]
pub struct NodeEnv {
    /// Wall and monotonic time.
    pub clock: Arc<dyn Clock>,
    /// Every connection: to peers, from peers, from HTTP clients.
    pub transport: Arc<dyn Transport>,
    // The storage seam (`persist`, the data directory) joins here.
    /// Read-only access to the node's state for a simulator; `None` in production.
    pub observer: Option<ReplicaObserver>,
}

impl NodeEnv {
    /// The real world: the system clock and TCP.
    pub fn production() -> Self {
        Self {
            clock: Arc::new(SystemClock::new()),
            transport: Arc::new(TcpTransport),
            observer: None,
        }
    }
}

/// Runs node `id` of `config` until `shutdown` is cancelled.
pub async fn run(
    config: &ClusterConfig,
    id: &str,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    run_with(config, id, NodeEnv::production(), shutdown).await
}

/// [`run`] in the environment `env` (tests and simulations drive time and the network).
pub async fn run_with(
    config: &ClusterConfig,
    id: &str,
    env: NodeEnv,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let me = config.node(id)?.clone();
    // Refused before anything is bound: every node, this one and its peers, needs a
    // `peer` address (a cluster file written to test a foreign store may have none).
    let my_peer_address = config.peer_address(&me)?;
    let peers = config
        .peers_of(&me.id)
        .map(|peer| Ok((peer.clone(), config.peer_address(peer)?)))
        .collect::<Result<Vec<_>, ConfigError>>()?;
    let tuning = &config.tuning;
    let secret = config.secret()?;
    let http_listener = bind(&*env.transport, "client HTTP", me.http).await?;
    let peer_listener = bind(&*env.transport, "peer", my_peer_address).await?;

    let metrics = Metrics::new();
    let replica = Replica::new(
        me.id.clone(),
        peers.iter().map(|(peer, _)| peer.id.clone()).collect(),
        env.clock.clone(),
        ReplicationOptions {
            limits: tuning.limits(),
            max_clock_skew_ms: tuning.max_clock_skew_ms,
            live_timeout: Tuning::ms(tuning.live_timeout_ms),
            strong_timeout: Tuning::ms(tuning.strong_timeout_ms),
            batch_bytes: tuning.batch_bytes,
            outbox_max_keys: tuning.outbox_max_keys,
            suspect_after: Tuning::ms(tuning.suspect_after_ms),
            startup_sync_timeout: Tuning::ms(tuning.startup_sync_timeout_ms),
        },
        metrics.clone(),
    );
    if let Some(observer) = &env.observer {
        observer(&replica);
    }
    let identity = Arc::new(Identity {
        node: me.id.clone(),
        cluster: tuning.cluster.clone(),
        members: config
            .nodes
            .iter()
            .map(|node| node.id.clone())
            .collect::<HashSet<_>>(),
    });
    let transport = TransportOptions {
        max_frame_bytes: tuning.max_frame_bytes,
        secret: secret.clone(),
        connect_timeout: Tuning::ms(tuning.connect_timeout_ms),
        idle_timeout: Tuning::ms(tuning.peer_idle_timeout_ms),
        max_connections: tuning.max_peer_connections,
        metrics: metrics.clone(),
        clock: env.clock.clone(),
    };
    let driver_options = DriverOptions {
        anti_entropy_interval: Tuning::ms(tuning.anti_entropy_interval_ms),
        heartbeat_interval: Tuning::ms(tuning.heartbeat_interval_ms),
        request_timeout: Tuning::ms(tuning.request_timeout_ms),
        max_backoff: Tuning::ms(tuning.max_backoff_ms),
    };

    let tasks = TaskTracker::new();
    tasks.spawn(peer::serve(
        peer_listener,
        identity.clone(),
        transport.clone(),
        replica.responder(),
        shutdown.clone(),
    ));
    for (peer, address) in &peers {
        let Some(port) = replica.driver_port(&peer.id) else {
            warn!(peer = %peer.id, "a driver for this peer is already running");
            continue;
        };
        let target = PeerTarget {
            address: *address,
            local_ip: my_peer_address.ip(),
        };
        tasks.spawn(driver::run(
            port,
            target,
            env.transport.clone(),
            identity.clone(),
            transport.clone(),
            driver_options.clone(),
            shutdown.clone(),
        ));
    }
    tasks.close();

    info!(
        node = %me.id,
        http = %me.http,
        peer = %my_peer_address,
        peers = peers.len(),
        authenticated = secret.is_some(),
        "node serving"
    );
    let app = crate::api::router(replica, Tuning::ms(tuning.http_timeout_ms));
    let server_options = ServerOptions {
        max_connections: tuning.max_http_connections,
        header_timeout: Tuning::ms(tuning.http_header_timeout_ms),
        write_timeout: Tuning::ms(tuning.http_timeout_ms),
        shutdown_grace: SHUTDOWN_GRACE,
    };
    crate::api::server::serve(http_listener, app, server_options, shutdown.clone()).await;
    shutdown.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        warn!("some tasks did not stop within {SHUTDOWN_GRACE:?}");
    }
    info!(node = %me.id, "node stopped");
    Ok(())
}
