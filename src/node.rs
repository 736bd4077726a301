//! One running node: turns the cluster file into tasks, and stops them.
//!
//! Owns: the node's environment ([`NodeEnv`]: the seams through which the outside world
//! enters, and their production implementations), opening the storage and logging what
//! recovery found, loading the TLS material, binding the two listeners, spawning the
//! peer server, one driver per peer, the lease keeper and the HTTP server, and the
//! shutdown sequence (one [`CancellationToken`] that every task watches; the root
//! waits for all of them, with a deadline, then flushes and closes the journal).
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
use crate::persist::{JournalError, MemoryStorage, Owner, Storage};
use crate::replication::driver::{self, DriverOptions, PeerTarget};
use crate::replication::durable::{self, RecoverError};
use crate::replication::{Replica, ReplicationOptions};
use crate::tls::NodeTls;
use crate::transport::{Listener, TcpTransport, Transport};
use crate::wire::DataEpoch;

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
    /// The storage could not be opened (damaged, another node's, in use).
    #[error("cannot open the node's storage: {0}")]
    Storage(#[from] RecoverError),
    /// The TLS material (CA, certificate, key) cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The journal could not be flushed at shutdown.
    #[error("closing the node's storage: {0}")]
    Close(JournalError),
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

/// The outside world of one node: the seams through which time, the network and the
/// disk reach it. [`run`] uses [`NodeEnv::production`]; a deterministic simulator builds
/// its own (simulated time, simulated TCP, a simulated disk) and calls [`run_with`] once
/// per node, all in one process.
#[derive(Clone)]
pub struct NodeEnv {
    /// Wall and monotonic time.
    pub clock: Arc<dyn Clock>,
    /// Every connection: to peers, from peers, from HTTP clients.
    pub transport: Arc<dyn Transport>,
    /// Where the node keeps its data (memory only, or a data directory).
    pub storage: Arc<dyn Storage>,
    /// Skip records that do not decode instead of refusing to start (`--repair`).
    pub repair: bool,
    /// Read-only access to the node's state for a simulator; `None` in production.
    pub observer: Option<ReplicaObserver>,
}

impl NodeEnv {
    /// The real world: the system clock, TCP, and no disk (memory only).
    pub fn production() -> Self {
        Self {
            clock: Arc::new(SystemClock::new()),
            transport: Arc::new(TcpTransport),
            storage: Arc::new(MemoryStorage),
            repair: false,
            observer: None,
        }
    }
}

/// Opens the storage and replays it, on a blocking thread if it does I/O; logs what it
/// found.
async fn open_storage(env: &NodeEnv, owner: Owner) -> Result<durable::Recovered, NodeError> {
    let storage = env.storage.clone();
    let repair = env.repair;
    let started = env.clock.monotonic_ms();
    let recovered = if storage.blocks() {
        tokio::task::spawn_blocking(move || durable::recover(&*storage, &owner, repair))
            .await
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))?
    } else {
        durable::recover(&*storage, &owner, repair)?
    };
    let elapsed_ms = env.clock.monotonic_ms().saturating_sub(started);
    match &recovered.recovery {
        None => info!(
            "memory only: no --data-dir, so the data lives in memory and a restart recovers it from the peers"
        ),
        Some(recovery) if recovery.created => {
            info!(storage = %env.storage.describe(), "new data directory created")
        }
        Some(recovery) => {
            let summary = recovered.store.summary();
            info!(
                storage = %env.storage.describe(),
                segments = recovery.segments,
                records = recovery.records,
                bytes = recovery.bytes,
                keys = summary.keys,
                tombstones = summary.tombstones,
                elapsed_ms,
                "recovered the data directory"
            );
        }
    }
    if let Some(recovery) = &recovered.recovery {
        for cut in &recovery.truncations {
            if cut.is_unused_tail() {
                info!(
                    file = %cut.file.display(),
                    offset = cut.offset,
                    "the node was not stopped cleanly: cut the unused preallocated tail of its last segment (nothing lost)"
                );
                continue;
            }
            let what = if cut.torn {
                "dropped a torn last record (an interrupted write)"
            } else {
                "repair dropped damaged data"
            };
            warn!(
                file = %cut.file.display(),
                offset = cut.offset,
                bytes_dropped = cut.bytes_dropped,
                reason = %cut.reason,
                "{what}"
            );
        }
        for removed in &recovery.removed {
            info!(file = %removed.display(), "removed a leftover of an interrupted compaction");
        }
    }
    if recovered.skipped > 0 {
        warn!(
            records = recovered.skipped,
            "repair skipped records that do not decode"
        );
    }
    Ok(recovered)
}

/// The replication options of a node served with `tuning`, its data of `epoch`.
pub fn replication_options(tuning: &Tuning, epoch: DataEpoch) -> ReplicationOptions {
    ReplicationOptions {
        limits: tuning.limits(),
        max_clock_skew_ms: tuning.max_clock_skew_ms,
        live_timeout: Tuning::ms(tuning.live_timeout_ms),
        strong_timeout: Tuning::ms(tuning.strong_timeout_ms),
        batch_bytes: tuning.batch_bytes,
        outbox_max_keys: tuning.outbox_max_keys,
        suspect_after: Tuning::ms(tuning.suspect_after_ms),
        startup_sync_timeout: Tuning::ms(tuning.startup_sync_timeout_ms),
        tombstone_grace: Tuning::ms(tuning.tombstone_grace_ms),
        epoch,
        watch_buffer: tuning.watch_buffer,
        max_watchers: tuning.max_watchers,
        session_wait: Tuning::ms(tuning.session_wait_ms),
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
    let tokens = config.client_tokens()?;
    if let Some(file) = &tokens {
        if file.readable_by_others {
            warn!(
                file = %file.path.display(),
                mode = format_args!("{:o}", file.mode),
                "the client tokens file is readable by its group or others; it holds secrets: chmod 600 it"
            );
        }
    }
    // Loaded before anything is bound: unusable TLS material stops the node at once.
    let tls = match config.tls_paths(&me)? {
        Some(paths) => {
            let members: Vec<_> = config.nodes.iter().map(|node| node.id.clone()).collect();
            let tls = NodeTls::load(&paths, &members)?;
            if let Some(warning) = crate::tls::key_permissions_warning(&paths.key) {
                warn!("{warning}");
            }
            if !tls.own_certificate_names(&me.id) {
                warn!(
                    cert = %paths.cert.display(),
                    "the certificate does not name this node ({}) as a DNS name: its peers will refuse it",
                    me.id
                );
            }
            Some(tls)
        }
        None => None,
    };
    // Opened before anything is bound: a refused directory (another node's, in use,
    // damaged) stops the node before it answers anyone.
    let recovered = open_storage(
        &env,
        Owner {
            cluster: tuning.cluster.clone(),
            node: me.id.clone(),
        },
    )
    .await?;
    let journal = recovered.journal.clone();
    let close = |journal: Arc<dyn crate::persist::Journal>| async move {
        if !journal.blocks() {
            return journal.shutdown();
        }
        tokio::task::spawn_blocking(move || journal.shutdown())
            .await
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))
    };
    let listeners = async {
        let http = bind(&*env.transport, "client HTTP", me.http).await?;
        let peer = bind(&*env.transport, "peer", my_peer_address).await?;
        Ok::<_, NodeError>((http, peer))
    };
    let (http_listener, peer_listener) = match listeners.await {
        Ok(listeners) => listeners,
        Err(error) => {
            let _ = close(journal).await;
            return Err(error);
        }
    };

    let metrics = Metrics::new();
    let replica = Replica::recovered(
        me.id.clone(),
        peers.iter().map(|(peer, _)| peer.id.clone()).collect(),
        env.clock.clone(),
        replication_options(
            tuning,
            // A data directory keeps its epoch for life; a memory-only node's store
            // begins empty at every start, so each start is a new epoch.
            match &recovered.recovery {
                Some(recovery) => DataEpoch {
                    id: recovery.epoch,
                    created_ms: recovery.created_ms,
                },
                None => DataEpoch {
                    id: getrandom::u64().unwrap_or_else(|_| env.clock.wall_ms()),
                    created_ms: env.clock.wall_ms(),
                },
            },
        ),
        metrics.clone(),
        recovered,
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
        tls: tls.clone(),
        nonces: peer::NonceSource::random(),
    };
    let driver_options = DriverOptions {
        anti_entropy_interval: Tuning::ms(tuning.anti_entropy_interval_ms),
        heartbeat_interval: Tuning::ms(tuning.heartbeat_interval_ms),
        request_timeout: Tuning::ms(tuning.request_timeout_ms),
        max_backoff: Tuning::ms(tuning.max_backoff_ms),
    };

    let tasks = TaskTracker::new();
    if let Some(keeper) = replica.keep_lease(shutdown.clone()) {
        tasks.spawn(keeper);
    }
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
    let collect_every = match tuning.anti_entropy_interval_ms {
        0 => Duration::from_secs(1),
        ms => Tuning::ms(ms),
    };
    tasks.spawn({
        let (replica, shutdown) = (replica.clone(), shutdown.clone());
        async move { replica.collect_tombstones(collect_every, shutdown).await }
    });
    // Open watch streams never end on their own: end them when the node stops, so
    // that the HTTP server's graceful shutdown does not wait for them.
    tasks.spawn({
        let replica = replica.clone();
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            replica.close_watches();
        }
    });
    tasks.close();

    info!(
        node = %me.id,
        http = %me.http,
        peer = %my_peer_address,
        peers = peers.len(),
        authenticated = secret.is_some(),
        client_tokens = %tokens.as_ref().map_or_else(
            || "off: any client that reaches the port may read and write".to_owned(),
            |file| {
                use crate::auth::Role;
                let count = |role| file.tokens.count(role);
                format!(
                    "{} read, {} write, {} admin (metrics_open = {})",
                    count(Role::Read),
                    count(Role::Write),
                    count(Role::Admin),
                    tuning.metrics_open
                )
            },
        ),
        client_traffic = if tls.is_some() { "HTTPS" } else { "plaintext HTTP" },
        peer_traffic = if tls.is_some() { "mutual TLS" } else { "plaintext" },
        storage = %env.storage.describe(),
        "node serving"
    );
    let api_options = crate::api::ApiOptions {
        request_timeout: Tuning::ms(tuning.http_timeout_ms),
        peer_http: peers
            .iter()
            .map(|(peer, _)| (peer.id.to_string(), peer.http))
            .collect(),
        cluster: tuning.cluster.clone(),
        access: tokens.map(|file| crate::api::access::Access {
            tokens: Arc::new(file.tokens),
            metrics_open: tuning.metrics_open,
        }),
    };
    let app = crate::api::router(replica, api_options);
    let server_options = ServerOptions {
        max_connections: tuning.max_http_connections,
        header_timeout: Tuning::ms(tuning.http_header_timeout_ms),
        write_timeout: Tuning::ms(tuning.http_timeout_ms),
        shutdown_grace: SHUTDOWN_GRACE,
    };
    let https = tls.map(|tls| crate::api::server::Https {
        acceptor: tls.https().clone(),
        metrics: metrics.clone(),
    });
    crate::api::server::serve(http_listener, app, server_options, https, shutdown.clone()).await;
    shutdown.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        warn!("some tasks did not stop within {SHUTDOWN_GRACE:?}");
    }
    // Everything appended is written and synced, whatever the fsync policy.
    close(journal).await.map_err(NodeError::Close)?;
    info!(node = %me.id, "node stopped");
    Ok(())
}
