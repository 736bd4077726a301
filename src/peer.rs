//! Node-to-node transport: TCP links, handshakes, request/reply, the accept loop.
//!
//! Owns: dialing from the node's own peer IP (bind before connect, so that nftables
//! rules on IPs partition nodes that share a machine), mutual TLS on every link when
//! the cluster has it (the dialer checks that the responder's certificate names the
//! node dialed; the acceptor, that the dialer's names a member, the one its `Hello`
//! claims to be), the `Hello` handshake, the deadline on every network operation, and
//! the bounded set of inbound connections.
//! Knows nothing of: what requests mean, and how bytes move: every connection comes
//! from the node's [`Transport`] (TCP in production). Inbound requests go to a
//! [`Responder`]; outbound ones come from whoever holds a [`Link`].
//!
//! Every await on the network here has a deadline: a partition made by dropping
//! packets leaves TCP waiting forever, and only a timer notices.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
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
use crate::wire::{Lineage, Message, PROTOCOL_VERSION};

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

/// An outbound connection to one peer, past the handshake: strict request → reply.
pub struct Link<S = BoxStream> {
    frames: Framed<S, FrameCodec>,
    /// What the peer said of its data in its `Welcome`.
    peer_lineage: Lineage,
    /// The peer's wall clock in its `Welcome`.
    welcome_wall_ms: u64,
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
        };
        let hello = Message::Hello {
            protocol: PROTOCOL_VERSION,
            cluster: identity.cluster.clone(),
            from: identity.node.clone(),
            to: peer.clone(),
            lineage,
        };
        match link.request(&hello, options.connect_timeout).await? {
            Message::Welcome { lineage, wall_ms } => {
                link.welcome_wall_ms = wall_ms;
                link.frames
                    .codec_mut()
                    .set_max_frame_bytes(options.max_frame_bytes);
                link.peer_lineage = lineage;
                Ok(link)
            }
            Message::Refuse { reason } => Err(LinkError::Refused(reason)),
            other => Err(LinkError::Unexpected {
                sent: hello.kind(),
                got: other.kind(),
            }),
        }
    }

    /// What the peer said of its data in the handshake.
    pub fn peer_lineage(&self) -> &Lineage {
        &self.peer_lineage
    }

    /// The peer's wall clock (ms) when it welcomed us: a clock-offset sample for whoever
    /// timed [`Link::open`].
    pub fn welcome_wall_ms(&self) -> u64 {
        self.welcome_wall_ms
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

    /// `from` completed a handshake on a new inbound connection: it is running now.
    fn connected(&self, _from: &NodeId) {}

    /// Whether `from`, whose `Hello` passed the checks of identity, may connect given
    /// what it says of its data: `Ok` with our own lineage for the `Welcome`, or the
    /// sentence of the refusal. By default every member is admitted.
    fn admit(&self, _from: &NodeId, _theirs: &Lineage) -> Result<Lineage, String> {
        Ok(Lineage::default())
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
    let limiter = Arc::new(LogLimiter::new(options.clock.clone()));
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
            if limiter.allow("too_many_connections") {
                warn!(%remote, limit = options.max_connections, "peer connection refused: too many connections");
            }
            continue;
        };
        let (identity, options, responder, shutdown, limiter) = (
            identity.clone(),
            options.clone(),
            responder.clone(),
            shutdown.clone(),
            limiter.clone(),
        );
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                // In order: a stopping node answers nothing more.
                biased;
                _ = shutdown.cancelled() => {}
                _ = accept(stream, remote, &identity, &options, &*responder, &limiter) => {}
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
    limiter: &LogLimiter,
) {
    let Some(tls) = &options.tls else {
        return serve_connection(stream, remote, identity, options, responder, limiter, None).await;
    };
    let refuse = |reason: &'static str, detail: &dyn std::fmt::Display| {
        options.metrics.tls_refuse(reason);
        if limiter.allow(&format!("{}:tls:{reason}", remote.ip())) {
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
        limiter,
        Some(&named),
    )
    .await
}

/// Serves one inbound connection: the handshake, then request → reply until it ends.
/// `certified`: the members that the dialer's TLS certificate names (with TLS), one
/// of which its `Hello` must claim to be.
pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    remote: SocketAddr,
    identity: &Identity,
    options: &TransportOptions,
    responder: &dyn Responder,
    limiter: &LogLimiter,
    certified: Option<&[NodeId]>,
) {
    let mut frames = Framed::new(stream, options.codec());
    let refuse = |reason: &'static str, detail: &dyn std::fmt::Display| {
        if reason == "hello_mismatch" {
            options.metrics.tls_refuse(reason);
        } else {
            options.metrics.reject(reason);
        }
        if limiter.allow(&format!("{}:{reason}", remote.ip())) {
            warn!(%remote, reason, "peer connection refused: {detail}");
        }
    };
    let hello = match tokio::time::timeout(options.connect_timeout, frames.next()).await {
        Ok(Some(Ok(hello))) => hello,
        Ok(Some(Err(error))) => {
            let reason = match error {
                WireError::BadTag => "bad_tag",
                _ => "bad_frame",
            };
            return refuse(reason, &error);
        }
        Ok(None) => return,
        Err(_) => return refuse("handshake_timeout", &"no hello in time"),
    };
    let admitted = check_hello(identity, &hello).and_then(|(from, lineage)| {
        if let Some(named) = certified.filter(|named| !named.contains(&from)) {
            let named: Vec<&str> = named.iter().map(NodeId::as_str).collect();
            return Err((
                "hello_mismatch",
                format!(
                    "the hello claims {from}, but the TLS certificate names {}",
                    named.join(", ")
                ),
            ));
        }
        let ours = responder
            .admit(&from, &lineage)
            .map_err(|sentence| ("retired", sentence))?;
        Ok((from, ours))
    });
    let (from, lineage) = match admitted {
        Ok(admitted) => admitted,
        Err((reason, sentence)) => {
            refuse(reason, &sentence);
            let refusal = Message::Refuse { reason: sentence };
            let _ = tokio::time::timeout(options.connect_timeout, frames.send(&refusal)).await;
            return;
        }
    };
    frames.codec_mut().set_peer(from.as_str());
    frames
        .codec_mut()
        .set_max_frame_bytes(options.max_frame_bytes);
    let welcome = Message::Welcome {
        lineage,
        wall_ms: options.clock.wall_ms(),
    };
    if tokio::time::timeout(options.connect_timeout, frames.send(&welcome))
        .await
        .is_err()
    {
        return;
    }
    debug!(peer = %from, %remote, "peer connected");
    responder.connected(&from);
    loop {
        let request = match tokio::time::timeout(options.idle_timeout, frames.next()).await {
            Ok(Some(Ok(request))) => request,
            Ok(Some(Err(error))) => {
                let reason = match &error {
                    WireError::BadTag => "bad_tag",
                    // The length-prefix codec reports a frame over the cap this way.
                    WireError::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
                        "oversized_frame"
                    }
                    WireError::Io(_) => return,
                    _ => "bad_frame",
                };
                return refuse(reason, &error);
            }
            Ok(None) => return,
            Err(_) => {
                info!(peer = %from, "closing idle peer connection");
                return;
            }
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
        }
    }

    #[tokio::test]
    async fn a_link_handshakes_and_exchanges_requests_over_a_duplex_pipe() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let server_identity = identity("n2");
        let server_task = tokio::spawn(async move {
            let options = options();
            let limiter = LogLimiter::new(options.clock.clone());
            serve_connection(
                server,
                "127.0.0.1:1".parse().unwrap(),
                &server_identity,
                &options,
                &Echo,
                &limiter,
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
        fn respond(&self, _from: &NodeId, _request: Message) -> ReplyFuture {
            Box::pin(std::future::ready(Err(NoReply::Unexpected)))
        }
        fn admit(&self, from: &NodeId, theirs: &Lineage) -> Result<Lineage, String> {
            if theirs.epoch.id != 7 {
                return Err(format!("{from} is refused: wipe its data directory"));
            }
            let mut ours = Lineage::default();
            ours.epoch.id = 9;
            Ok(ours)
        }
    }

    #[tokio::test]
    async fn the_handshake_carries_lineages_and_the_responder_may_refuse_one() {
        for (epoch, admitted) in [(7, true), (8, false)] {
            let (client, server) = tokio::io::duplex(1 << 16);
            let server_task = tokio::spawn(async move {
                let options = options();
                let limiter = LogLimiter::new(options.clock.clone());
                let address = "127.0.0.1:1".parse().unwrap();
                serve_connection(
                    server,
                    address,
                    &identity("n2"),
                    &options,
                    &Picky,
                    &limiter,
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
}
