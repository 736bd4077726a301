//! Node-to-node transport: TCP links, handshakes, request/reply, the accept loop.
//!
//! Owns: dialing from the node's own peer IP (bind before connect, so that nftables
//! rules on IPs partition nodes that share a machine), mutual TLS on every link when
//! the cluster has it (the dialer checks that the responder's certificate names the
//! node dialed; the acceptor, that the dialer's names a member, the one its `Hello`
//! claims to be), the `Hello` handshake (its nonces, which bind every later frame to
//! the connection: see `wire::codec`), the deadline on every network operation, and
//! the bounded set of inbound connections.
//! Knows nothing of: what requests mean, and how bytes move: every connection comes
//! from the node's [`Transport`] (TCP in production). Inbound requests go to a
//! [`Responder`]; outbound ones come from whoever holds a [`Link`].
//!
//! Every await on the network here has a deadline: a partition made by dropping
//! packets leaves TCP waiting forever, and only a timer notices.

use std::collections::VecDeque;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock::{Clock, NodeId};
use crate::metrics::Metrics;
use crate::tls::NodeTls;
use crate::transport::{BoxStream, Listener, Transport};
use crate::wire::codec::{FrameCodec, WireError, HANDSHAKE_MAX_FRAME_BYTES};
use crate::wire::{Lineage, Message, Nonce, PROTOCOL_VERSION};

/// Why a link failed. Every variant ends the link; the caller reconnects.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Connecting, sending or receiving failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The deadline passed (a hung peer, or a partition dropping packets).
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// The peer refused the handshake.
    #[error("handshake refused: {0}")]
    Refused(String),
    /// The TLS handshake failed on our side (the responder's certificate is not from
    /// the CA, or does not name the node dialed).
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// The peer answered something that does not fit the request.
    #[error("unexpected {got} in reply to {sent}")]
    Unexpected {
        /// What we sent.
        sent: &'static str,
        /// What came back.
        got: &'static str,
    },
}

/// Who we are and who may talk to us: the handshake's terms.
#[derive(Clone, Debug)]
pub struct Identity {
    /// This node.
    pub node: NodeId,
    /// The cluster name.
    pub cluster: String,
    /// Every configured node, this one included.
    pub members: HashSet<NodeId>,
}

impl Identity {
    /// The node table this node sends in its handshakes: every member, in order. Its
    /// frames then name a node by its index in it (`wire::compact`).
    pub fn table(&self) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = self.members.iter().cloned().collect();
        nodes.sort();
        nodes.truncate(crate::wire::compact::MAX_TABLE);
        nodes
    }
}

/// Settings shared by both ends of every link.
#[derive(Clone)]
pub struct TransportOptions {
    /// Largest frame sent or accepted.
    pub max_frame_bytes: usize,
    /// Frame authentication key, if the cluster has a secret.
    pub secret: Option<Arc<[u8]>>,
    /// Deadline to connect and to complete the handshake.
    pub connect_timeout: Duration,
    /// An inbound connection silent this long is closed.
    pub idle_timeout: Duration,
    /// Concurrent inbound connections.
    pub max_connections: usize,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The node's clock (rate limits of log lines; the wall time in `Welcome`).
    pub clock: Arc<dyn Clock>,
    /// Mutual TLS on every link, if the cluster has it (`None`: plaintext).
    pub tls: Option<NodeTls>,
    /// Where the handshake nonces come from: the OS's random numbers in a node.
    pub nonces: NonceSource,
}

/// Where handshake nonces come from.
#[derive(Clone, Debug, Default)]
pub struct NonceSource {
    /// `None`: the operating system's random numbers. `Some`: a counter, for tests and
    /// fuzzing that must compute the tags of a conversation in advance.
    counter: Option<Arc<AtomicU64>>,
}

impl NonceSource {
    /// Fresh random nonces (`getrandom`): the only source a node uses.
    pub fn random() -> Self {
        Self::default()
    }

    /// Nonces `start`, `start + 1`, …: predictable, so for tests and fuzzing only.
    pub fn counting(start: u64) -> Self {
        Self {
            counter: Some(Arc::new(AtomicU64::new(start))),
        }
    }

    /// The next nonce; an error if the OS has no random numbers to give.
    pub fn draw(&self) -> Result<Nonce, WireError> {
        match &self.counter {
            Some(counter) => Ok(Nonce::from(counter.fetch_add(1, Ordering::Relaxed))),
            None => {
                let mut bytes = [0u8; 16];
                getrandom::fill(&mut bytes).map_err(|error| {
                    WireError::Io(std::io::Error::other(format!(
                        "no random nonce for the handshake: {error}"
                    )))
                })?;
                Ok(Nonce::from_be_bytes(bytes))
            }
        }
    }
}

impl TransportOptions {
    /// A codec for a new connection, capped at the handshake size until
    /// [`FrameCodec::set_max_frame_bytes`] lifts it.
    fn codec(&self) -> FrameCodec {
        FrameCodec::new(
            HANDSHAKE_MAX_FRAME_BYTES,
            self.secret.clone(),
            self.metrics.clone(),
        )
    }
}

/// Logs a given complaint at most once per interval per source, so a misconfigured or
/// hostile peer cannot flood the log.
pub struct LogLimiter {
    clock: Arc<dyn Clock>,
    /// Monotonic milliseconds of the last line allowed per source.
    last: Mutex<HashMap<String, u64>>,
}

impl LogLimiter {
    /// The quiet interval per source.
    pub const INTERVAL: Duration = Duration::from_secs(10);

    /// A limiter that reads the time from `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// True if `source` may be logged now.
    pub fn allow(&self, source: &str) -> bool {
        let mut last = self.last.lock().expect("log limiter lock");
        let now_ms = self.clock.monotonic_ms();
        match last.get(source) {
            Some(&at_ms) if now_ms.saturating_sub(at_ms) < Self::INTERVAL.as_millis() as u64 => {
                false
            }
            _ => {
                if last.len() > 1024 {
                    last.clear();
                }
                last.insert(source.to_owned(), now_ms);
                true
            }
        }
    }
}

/// The state the accept loop shares between its connections: the log limiter, and the
/// initiator nonces of recent handshakes, so that a recorded `Hello` played again is
/// refused at once (`replay`).
pub struct Inbound {
    limiter: LogLimiter,
    /// The nonces of the last [`Inbound::REMEMBERED`] `Hello`s, oldest first.
    seen: Mutex<VecDeque<Nonce>>,
}

impl Inbound {
    /// How many recent `Hello` nonces are remembered (16 bytes each).
    pub const REMEMBERED: usize = 4096;

    /// Fresh state, logging at the pace of `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            limiter: LogLimiter::new(clock),
            seen: Mutex::new(VecDeque::new()),
        }
    }

    /// The log limiter.
    pub fn limiter(&self) -> &LogLimiter {
        &self.limiter
    }

    /// Records a `Hello`'s nonce: false if it was seen already (a replayed `Hello`).
    fn first_sight(&self, nonce: Nonce) -> bool {
        let mut seen = self.seen.lock().expect("nonce memory lock");
        if seen.contains(&nonce) {
            return false;
        }
        if seen.len() == Self::REMEMBERED {
            seen.pop_front();
        }
        seen.push_back(nonce);
        true
    }
}

/// An outbound connection to one peer, past the handshake: strict request → reply.
pub struct Link<S = BoxStream> {
    frames: Framed<S, FrameCodec>,
    /// What the peer said of its data in its `Welcome`.
    peer_lineage: Lineage,
    /// The peer's wall clock in its `Welcome`.
    welcome_wall_ms: u64,
    /// The handshake's clock sample: see [`Link::clock_sample`].
    sample: ClockSample,
}

/// A clock-offset sample: a request sent at our `sent_wall_ms` (`sent_ms` on our
/// monotonic clock), answered with the peer's wall clock and whether it is fenced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockSample {
    /// Our wall clock when the request left.
    pub sent_wall_ms: u64,
    /// Our monotonic clock when the request left.
    pub sent_ms: u64,
    /// The peer's wall clock in its answer.
    pub peer_wall_ms: u64,
    /// The peer refuses client writes for clock skew.
    pub peer_fenced: bool,
}

/// Opens a connection to `remote` from `local_ip` through `transport`, within `timeout`.
pub async fn dial(
    transport: &dyn Transport,
    local_ip: IpAddr,
    remote: SocketAddr,
    timeout: Duration,
) -> Result<BoxStream, LinkError> {
    let stream = tokio::time::timeout(timeout, transport.dial(local_ip, remote))
        .await
        .map_err(|_| LinkError::Timeout(timeout))?
        .map_err(WireError::Io)?;
    Ok(stream)
}

/// Opens a link's stream to `peer` at `remote` from `local_ip`: [`dial`], then, if the
/// cluster has TLS, the TLS handshake (our certificate presented, the responder's
/// verified against the CA and `peer`'s id), all within the connect timeout.
pub async fn connect(
    transport: &dyn Transport,
    local_ip: IpAddr,
    remote: SocketAddr,
    peer: &NodeId,
    options: &TransportOptions,
) -> Result<BoxStream, LinkError> {
    let timeout = options.connect_timeout;
    let stream = dial(transport, local_ip, remote, timeout).await?;
    let Some(tls) = &options.tls else {
        return Ok(stream);
    };
    let name = crate::tls::server_name(peer)
        .ok_or_else(|| LinkError::Tls(format!("{peer} cannot be a certificate name")))?;
    match tokio::time::timeout(timeout, tls.peer_connector().connect(name, stream)).await {
        Err(_) => Err(LinkError::Timeout(timeout)),
        Ok(Ok(stream)) => Ok(Box::new(stream)),
        Ok(Err(error)) if crate::tls::refused_by_other_side(&error) => {
            Err(LinkError::Wire(WireError::Io(error)))
        }
        Ok(Err(error)) => {
            let reason = crate::tls::peer_refusal_reason(&error);
            if reason != "handshake" {
                options.metrics.tls_refuse(reason);
            }
            Err(LinkError::Tls(format!("{peer} at {remote}: {error}")))
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Link<S> {
    /// Performs the initiator's side of the handshake on a fresh connection, presenting
    /// `lineage` (our data epoch and retirements); the peer's is then
    /// [`Link::peer_lineage`]. Whether to keep a link to that peer is the caller's call.
    ///
    /// Three frames and a reply: `Hello` (our nonce), `Welcome` (theirs; its tag covers
    /// ours, so it is fresh), then a `Ping` tagged with both nonces. Only that `Ping`
    /// proves to the responder that a member holding the secret is on this connection
    /// now rather than a recording of an old `Hello`; the responder admits us then,
    /// answering `Pong`, or `Refuse`.
    pub async fn open(
        stream: S,
        identity: &Identity,
        peer: &NodeId,
        lineage: Lineage,
        options: &TransportOptions,
    ) -> Result<Self, LinkError> {
        let mut codec = options.codec();
        codec.set_peer(peer.as_str());
        let mut link = Self {
            frames: Framed::new(stream, codec),
            peer_lineage: Lineage::default(),
            welcome_wall_ms: 0,
            sample: ClockSample::default(),
        };
        let nonce = options.nonces.draw()?;
        let hello = Message::Hello {
            protocol: PROTOCOL_VERSION,
            cluster: identity.cluster.clone(),
            from: identity.node.clone(),
            to: peer.clone(),
            lineage,
            nonce,
            nodes: identity.table(),
        };
        let handshake = async {
            // The codec binds itself to the nonces as the Hello and Welcome pass.
            link.frames.send(&hello).await?;
            match link.frames.next().await.ok_or(LinkError::Closed)?? {
                Message::Welcome {
                    lineage, wall_ms, ..
                } => {
                    link.welcome_wall_ms = wall_ms;
                    link.peer_lineage = lineage;
                }
                Message::Refuse { reason } => return Err(LinkError::Refused(reason)),
                other => {
                    return Err(LinkError::Unexpected {
                        sent: hello.kind(),
                        got: other.kind(),
                    })
                }
            }
            let (sent_wall_ms, sent_ms) = (options.clock.wall_ms(), options.clock.monotonic_ms());
            link.frames.send(&Message::Ping).await?;
            match link.frames.next().await.ok_or(LinkError::Closed)?? {
                Message::Pong { wall_ms, fenced } => {
                    link.sample = ClockSample {
                        sent_wall_ms,
                        sent_ms,
                        peer_wall_ms: wall_ms,
                        peer_fenced: fenced,
                    };
                    Ok(())
                }
                Message::Refuse { reason } => Err(LinkError::Refused(reason)),
                other => Err(LinkError::Unexpected {
                    sent: "ping",
                    got: other.kind(),
                }),
            }
        };
        tokio::time::timeout(options.connect_timeout, handshake)
            .await
            .map_err(|_| LinkError::Timeout(options.connect_timeout))??;
        link.frames
            .codec_mut()
            .set_max_frame_bytes(options.max_frame_bytes);
        Ok(link)
    }

    /// What the peer said of its data in the handshake.
    pub fn peer_lineage(&self) -> &Lineage {
        &self.peer_lineage
    }

    /// The peer's wall clock (ms) when it welcomed us.
    pub fn welcome_wall_ms(&self) -> u64 {
        self.welcome_wall_ms
    }

    /// The clock-offset sample of the handshake's last exchange (the confirming
    /// `Ping`), timed with the clock of the [`TransportOptions`]: one round trip, where
    /// timing the whole [`Link::open`] would count two.
    pub fn clock_sample(&self) -> ClockSample {
        self.sample
    }

    /// Resolves when the idle link dies: the peer closed it, reset it (a killed
    /// process), or sent something unasked. Cancel-safe: meant to be raced against
    /// other work while no request is in flight, so a dead peer is noticed at once
    /// rather than at the next heartbeat.
    pub async fn closed(&mut self) -> LinkError {
        match self.frames.next().await {
            None => LinkError::Closed,
            Some(Err(error)) => error.into(),
            Some(Ok(message)) => LinkError::Unexpected {
                sent: "nothing",
                got: message.kind(),
            },
        }
    }

    /// Sends `request` and waits for its reply, all within `timeout`.
    pub async fn request(
        &mut self,
        request: &Message,
        timeout: Duration,
    ) -> Result<Message, LinkError> {
        let exchange = async {
            self.frames.send(request).await?;
            match self.frames.next().await {
                Some(reply) => Ok(reply?),
                None => Err(LinkError::Closed),
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| LinkError::Timeout(timeout))?
    }
}

/// Why a request gets no reply; the connection is closed either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoReply {
    /// The request makes no sense here.
    Unexpected,
    /// The request cannot be answered truthfully (e.g. its entries could not be made
    /// durable); the sentence is logged.
    Failed(String),
}

/// A reply in the making.
pub type ReplyFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Message, NoReply>> + Send>>;

/// Answers requests arriving on inbound links.
pub trait Responder: Send + Sync + 'static {
    /// The reply to one request from `from`. The state change, if any, happens before
    /// this returns; the future may then wait (e.g. for the change to be durable)
    /// before yielding the reply. Must not block: it runs on the async runtime.
    fn respond(&self, from: &NodeId, request: Message) -> ReplyFuture;

    /// `from` completed a handshake on a new inbound connection (its first request
    /// passed, so it is no recording): it is running now.
    fn connected(&self, _from: &NodeId) {}

    /// Our data epoch and retirements, for the `Welcome`. Reads only: the `Hello` it
    /// answers may be a recording.
    fn lineage(&self) -> Lineage {
        Lineage::default()
    }

    /// Whether `from`, whose `Hello` passed the checks of identity and whose first
    /// request proved the connection fresh, may connect given what it said of its data
    /// in that `Hello`: `Ok`, or the sentence of the refusal. May record what it learnt.
    /// By default every member is admitted.
    fn admit(&self, _from: &NodeId, _theirs: &Lineage) -> Result<(), String> {
        Ok(())
    }
}

/// With TLS, whether `from` (what the `Hello` claims) is one of the members the
/// dialer's certificate names (`certified`); `Err` carries the refusal sentence.
fn claimed_by_certificate(certified: Option<&[NodeId]>, from: &NodeId) -> Result<(), String> {
    match certified {
        Some(named) if !named.contains(from) => {
            let named: Vec<&str> = named.iter().map(NodeId::as_str).collect();
            Err(format!(
                "the hello claims {from}, but the TLS certificate names {}",
                named.join(", ")
            ))
        }
        _ => Ok(()),
    }
}

/// Checks a `Hello` against our identity; `Err` carries the refusal sentence.
fn check_hello(
    identity: &Identity,
    hello: &Message,
) -> Result<(NodeId, Lineage), (&'static str, String)> {
    let Message::Hello {
        protocol,
        cluster,
        from,
        to,
        lineage,
        ..
    } = hello
    else {
        return Err(("no_hello", format!("expected hello, got {}", hello.kind())));
    };
    if *protocol != PROTOCOL_VERSION {
        return Err((
            "protocol",
            format!(
                "{from} speaks protocol {protocol}, {} speaks {PROTOCOL_VERSION}",
                identity.node
            ),
        ));
    }
    if *cluster != identity.cluster {
        return Err((
            "cluster",
            format!(
                "{from} is in cluster {cluster:?}, {} in {:?}",
                identity.node, identity.cluster
            ),
        ));
    }
    if !identity.members.contains(from) || *from == identity.node {
        return Err((
            "not_member",
            format!("{from} is not a peer of {}", identity.node),
        ));
    }
    if *to != identity.node {
        return Err((
            "wrong_node",
            format!("{from} expected {to} but reached {}", identity.node),
        ));
    }
    Ok((from.clone(), lineage.clone()))
}

/// Accepts inbound peer connections until `shutdown`, each served by its own task.
pub async fn serve(
    mut listener: Box<dyn Listener>,
    identity: Arc<Identity>,
    options: TransportOptions,
    responder: Arc<dyn Responder>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let inbound = Arc::new(Inbound::new(options.clock.clone()));
    loop {
        let accepted = tokio::select! {
            // In order: a stopping node accepts nothing more.
            biased;
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                warn!(%error, "peer accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            options.metrics.reject("too_many_connections");
            if inbound.limiter.allow("too_many_connections") {
                warn!(%remote, limit = options.max_connections, "peer connection refused: too many connections");
            }
            continue;
        };
        let (identity, options, responder, shutdown, inbound) = (
            identity.clone(),
            options.clone(),
            responder.clone(),
            shutdown.clone(),
            inbound.clone(),
        );
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                // In order: a stopping node answers nothing more.
                biased;
                _ = shutdown.cancelled() => {}
                _ = accept(stream, remote, &identity, &options, &*responder, &inbound) => {}
            }
        });
    }
}

/// Serves one inbound connection: first the TLS handshake if the cluster has TLS,
/// refusing a dialer whose certificate is not from the CA or names no member; then
/// [`serve_connection`].
async fn accept(
    stream: BoxStream,
    remote: SocketAddr,
    identity: &Identity,
    options: &TransportOptions,
    responder: &dyn Responder,
    inbound: &Inbound,
) {
    let Some(tls) = &options.tls else {
        return serve_connection(stream, remote, identity, options, responder, inbound, None).await;
    };
    let refuse = |reason: &'static str, detail: &dyn std::fmt::Display| {
        options.metrics.tls_refuse(reason);
        if inbound
            .limiter
            .allow(&format!("{}:tls:{reason}", remote.ip()))
        {
            warn!(%remote, reason, "peer connection refused (TLS): {detail}");
        }
    };
    let handshake = tls.peer_acceptor().accept(stream);
    let stream = match tokio::time::timeout(options.connect_timeout, handshake).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) if crate::tls::refused_by_other_side(&error) => {
            // The dialer refused our certificate: its refusal, counted there.
            return debug!(%remote, %error, "the dialer refused our TLS certificate");
        }
        Ok(Err(error)) => return refuse(crate::tls::peer_refusal_reason(&error), &error),
        Err(_) => return refuse("handshake", &"no TLS handshake in time"),
    };
    let named = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| tls.members_named(cert))
        .unwrap_or_default();
    if named.is_empty() {
        return refuse(
            "names_no_member",
            &"its certificate, from our CA, names no node of the cluster file",
        );
    }
    serve_connection(
        stream,
        remote,
        identity,
        options,
        responder,
        inbound,
        Some(&named),
    )
    .await
}

/// Serves one inbound connection: the handshake, then request → reply until it ends.
/// `certified`: the members that the dialer's TLS certificate names (with TLS), one
/// of which its `Hello` must claim to be.
///
/// Nothing a `Hello` says changes this node's state before the initiator's first
/// request has passed its tag, which covers our fresh nonce: a recorded `Hello` played
/// again gets a `Welcome` at most (and not even that while its nonce is remembered),
/// never an admission, a contact or a lineage learnt.
pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    remote: SocketAddr,
    identity: &Identity,
    options: &TransportOptions,
    responder: &dyn Responder,
    inbound: &Inbound,
    certified: Option<&[NodeId]>,
) {
    let mut frames = Framed::new(stream, options.codec());
    let log = |reason: &'static str, detail: &dyn std::fmt::Display| {
        if inbound.limiter.allow(&format!("{}:{reason}", remote.ip())) {
            warn!(%remote, reason, "peer connection refused: {detail}");
        }
    };
    let refuse = |reason: &'static str, detail: &dyn std::fmt::Display| {
        options.metrics.reject(reason);
        log(reason, detail);
    };
    // A frame that failed: the codec counted a failed tag already; the rest is
    // counted here. Socket errors are no one's fault and are not counted.
    let rejected = |error: WireError| match error.tag_rejection() {
        Some(reason) => log(reason, &error),
        None => match &error {
            // The length-prefix codec reports a frame over the cap this way.
            WireError::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
                refuse("oversized_frame", &error)
            }
            WireError::Io(_) => {}
            WireError::OldProtocol => refuse("protocol", &error),
            _ => refuse("bad_frame", &error),
        },
    };
    let hello = match tokio::time::timeout(options.connect_timeout, frames.next()).await {
        Ok(Some(Ok(hello))) => hello,
        Ok(Some(Err(error))) => return rejected(error),
        Ok(None) => return,
        Err(_) => return refuse("handshake_timeout", &"no hello in time"),
    };
    if let Message::Hello { nonce, .. } = &hello {
        if !inbound.first_sight(*nonce) {
            return refuse("replay", &"a hello seen before (a recording played again)");
        }
    }
    // A refusal is counted under its own family: the frame protocol's, or TLS's when
    // the `Hello` claims another node than the certificate names.
    let checked = match check_hello(identity, &hello) {
        Ok((from, theirs)) => match claimed_by_certificate(certified, &from) {
            Ok(()) => Ok((from, theirs)),
            Err(sentence) => {
                options.metrics.tls_refuse("hello_mismatch");
                log("hello_mismatch", &sentence);
                Err(sentence)
            }
        },
        Err((reason, sentence)) => {
            refuse(reason, &sentence);
            Err(sentence)
        }
    };
    let (from, theirs) = match checked {
        Ok(checked) => checked,
        Err(sentence) => {
            let refusal = Message::Refuse { reason: sentence };
            let _ = tokio::time::timeout(options.connect_timeout, frames.send(&refusal)).await;
            return;
        }
    };
    frames.codec_mut().set_peer(from.as_str());
    let nonce = match options.nonces.draw() {
        Ok(nonce) => nonce,
        Err(error) => {
            warn!(peer = %from, "cannot answer a hello: {error}");
            return;
        }
    };
    let welcome = Message::Welcome {
        lineage: responder.lineage(),
        wall_ms: options.clock.wall_ms(),
        nonce,
        nodes: identity.table(),
    };
    match tokio::time::timeout(options.connect_timeout, frames.send(&welcome)).await {
        Ok(Ok(())) => {}
        _ => return,
    }
    // The first request: its tag covers our nonce, so the initiator is live.
    let first = match tokio::time::timeout(options.connect_timeout, frames.next()).await {
        Ok(Some(Ok(request))) => request,
        Ok(Some(Err(error))) => return rejected(error),
        Ok(None) => return,
        Err(_) => return refuse("handshake_timeout", &"no request after the welcome in time"),
    };
    if let Err(sentence) = responder.admit(&from, &theirs) {
        refuse("retired", &sentence);
        let refusal = Message::Refuse { reason: sentence };
        let _ = tokio::time::timeout(options.connect_timeout, frames.send(&refusal)).await;
        return;
    }
    frames
        .codec_mut()
        .set_max_frame_bytes(options.max_frame_bytes);
    debug!(peer = %from, %remote, "peer connected");
    responder.connected(&from);
    let mut next = Some(first);
    loop {
        let request = match next.take() {
            Some(request) => request,
            None => match tokio::time::timeout(options.idle_timeout, frames.next()).await {
                Ok(Some(Ok(request))) => request,
                Ok(Some(Err(error))) => return rejected(error),
                Ok(None) => return,
                Err(_) => {
                    info!(peer = %from, "closing idle peer connection");
                    return;
                }
            },
        };
        let kind = request.kind();
        // A reply waits for nothing but local work (e.g. an fsync); bounded all the same.
        let reply = match tokio::time::timeout(
            options.idle_timeout,
            responder.respond(&from, request),
        )
        .await
        {
            Ok(Ok(reply)) => reply,
            Ok(Err(NoReply::Unexpected)) => {
                return refuse("unexpected", &format!("{from} sent an unexpected {kind}"))
            }
            Ok(Err(NoReply::Failed(reason))) => {
                warn!(peer = %from, "cannot answer a {kind}: {reason}; closing the connection");
                return;
            }
            Err(_) => {
                warn!(peer = %from, "the reply to a {kind} took too long; closing the connection");
                return;
            }
        };
        match tokio::time::timeout(options.idle_timeout, frames.send(&reply)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use tokio_util::codec::{Decoder, Encoder};

    fn identity(node: &str) -> Identity {
        Identity {
            node: NodeId::new(node).unwrap(),
            cluster: "c".into(),
            members: ["n1", "n2"]
                .iter()
                .map(|id| NodeId::new(*id).unwrap())
                .collect(),
        }
    }

    fn hello(protocol: u16, cluster: &str, from: &str, to: &str) -> Message {
        Message::Hello {
            protocol,
            cluster: cluster.into(),
            from: NodeId::new(from).unwrap(),
            to: NodeId::new(to).unwrap(),
            lineage: Lineage::default(),
            nonce: 1,
            nodes: vec![],
        }
    }

    #[test]
    fn handshake_accepts_members_and_refuses_the_rest() {
        let me = identity("n1");
        assert_eq!(
            check_hello(&me, &hello(PROTOCOL_VERSION, "c", "n2", "n1"))
                .unwrap()
                .0
                .as_str(),
            "n2"
        );
        let refusals = [
            (hello(PROTOCOL_VERSION + 1, "c", "n2", "n1"), "protocol"),
            (hello(PROTOCOL_VERSION, "other", "n2", "n1"), "cluster"),
            (hello(PROTOCOL_VERSION, "c", "n9", "n1"), "not_member"),
            (hello(PROTOCOL_VERSION, "c", "n1", "n1"), "not_member"),
            (hello(PROTOCOL_VERSION, "c", "n2", "n2"), "wrong_node"),
            (Message::Ping, "no_hello"),
        ];
        for (message, expected) in refusals {
            assert_eq!(check_hello(&me, &message).unwrap_err().0, expected);
        }
    }

    #[test]
    fn the_log_limiter_allows_one_line_per_source_per_interval() {
        let clock = Arc::new(ManualClock::new(0));
        let limiter = LogLimiter::new(clock.clone());
        assert!(limiter.allow("10.0.0.1:bad_tag"));
        assert!(
            !limiter.allow("10.0.0.1:bad_tag"),
            "a second line within the interval is dropped"
        );
        assert!(
            limiter.allow("10.0.0.2:bad_tag"),
            "another source has its own budget"
        );
        assert!(
            limiter.allow("10.0.0.1:not_member"),
            "another reason has its own budget"
        );
        clock.advance_ms(LogLimiter::INTERVAL.as_millis() as u64);
        assert!(
            limiter.allow("10.0.0.1:bad_tag"),
            "a source may log again after the interval"
        );
    }

    struct Echo;
    impl Responder for Echo {
        fn respond(&self, _from: &NodeId, request: Message) -> ReplyFuture {
            let reply = match request {
                Message::Ping => Ok(Message::Pong {
                    wall_ms: 7,
                    fenced: false,
                }),
                Message::SyncRoot { root } => Ok(Message::Summary {
                    keys: root,
                    tombstones: 0,
                    digest: 0,
                }),
                _ => Err(NoReply::Unexpected),
            };
            Box::pin(std::future::ready(reply))
        }
    }

    fn options() -> TransportOptions {
        TransportOptions {
            max_frame_bytes: 1 << 20,
            secret: None,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_connections: 4,
            metrics: Metrics::new(),
            clock: Arc::new(ManualClock::new(5)),
            tls: None,
            nonces: NonceSource::counting(100),
        }
    }

    #[tokio::test]
    async fn a_link_handshakes_and_exchanges_requests_over_a_duplex_pipe() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let server_identity = identity("n2");
        let server_task = tokio::spawn(async move {
            let options = options();
            let inbound = Inbound::new(options.clock.clone());
            serve_connection(
                server,
                "127.0.0.1:1".parse().unwrap(),
                &server_identity,
                &options,
                &Echo,
                &inbound,
                None,
            )
            .await;
        });
        let mut link = Link::open(
            client,
            &identity("n1"),
            &NodeId::new("n2").unwrap(),
            Lineage::default(),
            &options(),
        )
        .await
        .unwrap();
        assert_eq!(
            link.welcome_wall_ms(),
            5,
            "the Welcome carries the replier's clock"
        );
        let reply = link
            .request(&Message::Ping, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(
            reply,
            Message::Pong {
                wall_ms: 7,
                fenced: false
            }
        );
        // A request the responder does not understand closes the connection.
        let closed = link
            .request(&Message::Summarize, Duration::from_secs(1))
            .await;
        assert!(matches!(closed, Err(LinkError::Closed)), "{closed:?}");
        server_task.await.unwrap();
    }

    /// Admits only epoch 7, and presents epoch 9.
    struct Picky;
    impl Responder for Picky {
        fn respond(&self, from: &NodeId, request: Message) -> ReplyFuture {
            Echo.respond(from, request)
        }
        fn lineage(&self) -> Lineage {
            let mut ours = Lineage::default();
            ours.epoch.id = 9;
            ours
        }
        fn admit(&self, from: &NodeId, theirs: &Lineage) -> Result<(), String> {
            if theirs.epoch.id != 7 {
                return Err(format!("{from} is refused: wipe its data directory"));
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_handshake_carries_lineages_and_the_responder_may_refuse_one() {
        for (epoch, admitted) in [(7, true), (8, false)] {
            let (client, server) = tokio::io::duplex(1 << 16);
            let server_task = tokio::spawn(async move {
                let options = options();
                let inbound = Inbound::new(options.clock.clone());
                let address = "127.0.0.1:1".parse().unwrap();
                serve_connection(
                    server,
                    address,
                    &identity("n2"),
                    &options,
                    &Picky,
                    &inbound,
                    None,
                )
                .await;
            });
            let mut lineage = Lineage::default();
            lineage.epoch.id = epoch;
            let n2 = NodeId::new("n2").unwrap();
            let result = Link::open(client, &identity("n1"), &n2, lineage, &options()).await;
            match result {
                Ok(link) => {
                    assert!(admitted);
                    assert_eq!(link.peer_lineage().epoch.id, 9);
                }
                Err(LinkError::Refused(reason)) => {
                    assert!(!admitted);
                    assert_eq!(reason, "n1 is refused: wipe its data directory");
                }
                Err(other) => panic!("{other}"),
            }
            server_task.abort();
        }
    }

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        let (client, _server) = tokio::io::duplex(1 << 16);
        let result = Link::open(
            client,
            &identity("n1"),
            &NodeId::new("n2").unwrap(),
            Lineage::default(),
            &TransportOptions {
                connect_timeout: Duration::from_millis(50),
                ..options()
            },
        )
        .await;
        assert!(matches!(result, Err(LinkError::Timeout(_))));
    }

    /// Counts what a `Hello` got from the responder.
    #[derive(Default)]
    struct Recorder {
        admitted: std::sync::atomic::AtomicUsize,
        connected: std::sync::atomic::AtomicUsize,
    }
    impl Responder for Recorder {
        fn respond(&self, from: &NodeId, request: Message) -> ReplyFuture {
            Echo.respond(from, request)
        }
        fn connected(&self, _from: &NodeId) {
            self.connected.fetch_add(1, Ordering::Relaxed);
        }
        fn admit(&self, _from: &NodeId, _theirs: &Lineage) -> Result<(), String> {
            self.admitted.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    const SECRET: &[u8] = b"a cluster secret of some length";

    /// One responder (n2) with a cluster secret, its state shared by the connections
    /// it serves, like a node's accept loop.
    struct Server {
        options: TransportOptions,
        inbound: Arc<Inbound>,
        responder: Arc<Recorder>,
    }

    impl Server {
        fn new() -> Self {
            let options = TransportOptions {
                secret: Some(Arc::from(SECRET)),
                nonces: NonceSource::counting(1 << 40),
                ..options()
            };
            let inbound = Arc::new(Inbound::new(options.clock.clone()));
            Self {
                options,
                inbound,
                responder: Arc::default(),
            }
        }

        /// A new connection to it: our end of the pipe.
        fn connect(&self) -> tokio::io::DuplexStream {
            let (client, server) = tokio::io::duplex(1 << 16);
            let (options, inbound, responder) = (
                self.options.clone(),
                self.inbound.clone(),
                self.responder.clone(),
            );
            tokio::spawn(async move {
                let address = "127.0.0.1:1".parse().unwrap();
                serve_connection(
                    server,
                    address,
                    &identity("n2"),
                    &options,
                    &*responder,
                    &inbound,
                    None,
                )
                .await;
            });
            client
        }

        fn rejected(&self, reason: &str) -> u64 {
            let text = self.options.metrics.render();
            let series = format!(r#"meshkv_peer_frames_rejected_total{{reason="{reason}"}} "#);
            text.lines()
                .find_map(|line| line.strip_prefix(&series))
                .map_or(0, |count| count.parse().unwrap())
        }
    }

    /// An initiator driven by hand: our frames are written raw, so a test can record,
    /// replay, swap or reflect them; theirs are read whole.
    struct Client {
        io: tokio::io::DuplexStream,
        codec: FrameCodec,
        /// Every frame we wrote and read, in order.
        written: Vec<Vec<u8>>,
        read: Vec<Vec<u8>>,
    }

    impl Client {
        fn new(io: tokio::io::DuplexStream) -> Self {
            let codec = FrameCodec::new(1 << 20, Some(Arc::from(SECRET)), Metrics::new());
            Self {
                io,
                codec,
                written: Vec::new(),
                read: Vec::new(),
            }
        }

        /// The frame of `message` at our next position (not sent).
        fn frame(&mut self, message: &Message) -> Vec<u8> {
            let mut buffer = bytes::BytesMut::new();
            self.codec.encode(message, &mut buffer).unwrap();
            buffer.to_vec()
        }

        async fn write(&mut self, frame: &[u8]) {
            use tokio::io::AsyncWriteExt;
            self.io.write_all(frame).await.unwrap();
            self.written.push(frame.to_vec());
        }

        /// The next frame from the responder, decoded; `None` once it closed.
        async fn read(&mut self) -> Option<Message> {
            let frame = self.read_raw().await?;
            let message = self.codec.decode(&mut bytes::BytesMut::from(&frame[..]));
            Some(message.unwrap().unwrap())
        }

        /// The next frame from the responder, as it came; `None` once it closed.
        async fn read_raw(&mut self) -> Option<Vec<u8>> {
            use tokio::io::AsyncReadExt;
            let mut prefix = [0u8; 4];
            let read =
                tokio::time::timeout(Duration::from_secs(5), self.io.read_exact(&mut prefix));
            if read
                .await
                .expect("the responder answers or closes")
                .is_err()
            {
                return None;
            }
            let mut frame = prefix.to_vec();
            frame.resize(4 + u32::from_be_bytes(prefix) as usize, 0);
            self.io.read_exact(&mut frame[4..]).await.unwrap();
            self.read.push(frame.clone());
            Some(frame)
        }

        /// Sends `message` and reads the answer.
        async fn ask(&mut self, message: &Message) -> Option<Message> {
            let frame = self.frame(message);
            self.write(&frame).await;
            self.read().await
        }

        /// Hello, Welcome, Ping, Pong: a fresh nonce from `nonces`.
        async fn handshake(&mut self, nonces: &NonceSource) {
            let mut hello = hello(PROTOCOL_VERSION, "c", "n1", "n2");
            if let Message::Hello { nonce, .. } = &mut hello {
                *nonce = nonces.draw().unwrap();
            }
            assert!(matches!(
                self.ask(&hello).await,
                Some(Message::Welcome { .. })
            ));
            assert!(matches!(
                self.ask(&Message::Ping).await,
                Some(Message::Pong { .. })
            ));
        }
    }

    #[tokio::test]
    async fn a_connection_recorded_and_replayed_on_a_new_one_gets_nothing() {
        let server = Server::new();
        let nonces = NonceSource::counting(1);
        let mut first = Client::new(server.connect());
        first.handshake(&nonces).await;
        let summary = first.ask(&Message::SyncRoot { root: 5 }).await;
        assert!(matches!(summary, Some(Message::Summary { keys: 5, .. })));
        let recorded = first.written.clone();
        assert_eq!(server.responder.admitted.load(Ordering::Relaxed), 1);

        // Played again to the same node: the Hello's nonce is remembered.
        let mut replay = Client::new(server.connect());
        replay.write(&recorded.concat()).await;
        assert_eq!(
            replay.read_raw().await,
            None,
            "no Welcome for a replayed Hello"
        );
        assert_eq!(server.rejected("replay"), 1);

        // Played to a node that forgot it (a restart): a Welcome with a fresh nonce,
        // after which the recorded Ping's tag fails, and the Hello changed nothing.
        let forgetful = Server {
            inbound: Arc::new(Inbound::new(server.options.clock.clone())),
            responder: server.responder.clone(),
            options: server.options.clone(),
        };
        let mut replay = Client::new(forgetful.connect());
        replay.write(&recorded.concat()).await;
        assert!(replay.read_raw().await.is_some(), "a Welcome");
        assert_eq!(
            replay.read_raw().await,
            None,
            "the recorded Ping is refused"
        );
        assert_eq!(server.rejected("bad_tag"), 1);
        assert_eq!(server.responder.admitted.load(Ordering::Relaxed), 1);
        assert_eq!(server.responder.connected.load(Ordering::Relaxed), 1);

        // One recorded frame spliced into a fresh, genuine connection.
        let mut fresh = Client::new(server.connect());
        fresh.handshake(&nonces).await;
        fresh.write(&recorded[2]).await;
        assert_eq!(fresh.read().await, None);
        assert_eq!(server.rejected("bad_tag"), 2);
    }

    #[tokio::test]
    async fn frames_swapped_replayed_or_reflected_within_a_connection_are_refused() {
        let server = Server::new();
        let nonces = NonceSource::counting(1);
        // Two requests swapped: the later one arrives first.
        let mut client = Client::new(server.connect());
        client.handshake(&nonces).await;
        let _second = client.frame(&Message::SyncRoot { root: 1 });
        let third = client.frame(&Message::Ping);
        client.write(&third).await;
        assert_eq!(client.read().await, None);
        assert_eq!(server.rejected("out_of_order"), 1);

        // A request answered, then played again.
        let mut client = Client::new(server.connect());
        client.handshake(&nonces).await;
        let request = client.frame(&Message::SyncRoot { root: 2 });
        client.write(&request).await;
        assert!(client.read().await.is_some());
        client.write(&request).await;
        assert_eq!(client.read().await, None);
        assert_eq!(server.rejected("replay"), 1);

        // The responder's own Pong sent back to it.
        let mut client = Client::new(server.connect());
        client.handshake(&nonces).await;
        let pong = client.read.last().unwrap().clone();
        client.write(&pong).await;
        assert_eq!(client.read().await, None);
        assert_eq!(server.rejected("reflected"), 1);

        // And a genuine exchange on the same responder still works.
        let mut link = Link::open(
            server.connect(),
            &identity("n1"),
            &NodeId::new("n2").unwrap(),
            Lineage::default(),
            &TransportOptions {
                nonces: NonceSource::counting(7_000),
                ..server.options.clone()
            },
        )
        .await
        .unwrap();
        let reply = link
            .request(&Message::SyncRoot { root: 3 }, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(matches!(reply, Message::Summary { keys: 3, .. }));
        assert_eq!(server.rejected("bad_tag"), 0);
    }
}
