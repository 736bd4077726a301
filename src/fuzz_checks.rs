//! The bodies of the fuzz targets (`fuzz/`), shared with `tests/fuzz_regressions.rs`,
//! which replays every committed corpus and regression input through them in the
//! ordinary `cargo test`.
//!
//! Owns: one check per target, each taking arbitrary bytes and panicking only when the
//! code under test breaks a promise (a panic of its own, a reply that is not a frame,
//! an error that is not JSON, a refused request that changed the store…).
//! Knows nothing of: libFuzzer. Not part of the node: nothing in the server calls it.
//!
//! Every check builds its own state (store, replica, codec) from scratch, so an input
//! replays the same way alone as in the middle of a fuzzing run. Time is a
//! [`ManualClock`], never the system's, and nothing touches a socket: peer connections
//! are in-memory duplex pipes and HTTP requests go to the API service through
//! `Service::call`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

use crate::clock::{ManualClock, NodeId, Timestamp, Version};
use crate::config::{ClusterConfig, Tuning};
use crate::metrics::Metrics;
use crate::peer::{self, Identity, Inbound, Link, NonceSource, TransportOptions};
use crate::replication::anti_entropy::SyncSession;
use crate::replication::{Consistency, Replica, ReplicationOptions};
use crate::store::{Entry, Limits, Store};
use crate::wire::codec::{tag, FrameCodec, Position, PREFIX_BYTES, TAG_BYTES};
use crate::wire::{DataEpoch, Lineage, Message, Nonce, PROTOCOL_VERSION};

/// The cluster secret of every check that authenticates frames (16 bytes or more, as
/// the cluster file requires).
pub const SECRET: &[u8] = b"fuzz-cluster-secret";
/// The cluster name of the in-memory nodes.
pub const CLUSTER: &str = "fuzz";
/// The wall clock of every in-memory node (2025-11-26).
pub const WALL_MS: u64 = 1_764_127_282_000;
/// The nonce of [`hello`]: the harness's, as an initiator.
pub const HELLO_NONCE: Nonce = 0x6d65_7368_6b76_2068_656c_6c6f;
/// The first nonce an in-memory node draws (its nonces count up from here), so the
/// harness can tag the frames that follow its `Welcome` or `Hello`.
pub const NODE_NONCE: Nonce = 1;
/// Frame cap after the handshake: the production default.
const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

fn node_id(id: &str) -> NodeId {
    NodeId::new(id).expect("a valid node id")
}

fn secret(on: bool) -> Option<Arc<[u8]>> {
    on.then(|| Arc::from(SECRET))
}

/// One current-thread runtime per thread, reused across inputs: building one per input
/// would dominate the cost of small inputs. Checks leave no task behind.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a tokio runtime");
    }
    RUNTIME.with(|runtime| runtime.block_on(future))
}

/// A frame as the codec writes it, around any payload: length prefix, tag (with a
/// secret), payload, at the position of a `Hello` (or any frame of a codec not bound
/// by a handshake). Lets a check reach the MessagePack decoder behind a valid tag,
/// which a fuzzer cannot forge.
pub fn frame(payload: &[u8], secret: Option<&[u8]>) -> Vec<u8> {
    frame_at(payload, secret, Position::HELLO)
}

/// [`frame`] at `position` in its connection.
pub fn frame_at(payload: &[u8], secret: Option<&[u8]>, position: Position) -> Vec<u8> {
    let mut body = Vec::new();
    if let Some(key) = secret {
        body.extend_from_slice(&tag(key, position, payload));
    }
    body.extend_from_slice(payload);
    let mut framed = Vec::with_capacity(PREFIX_BYTES + body.len());
    framed.put_u32(body.len() as u32);
    framed.extend_from_slice(&body);
    framed
}

/// The frame of `message`, encoded by the real codec (a fresh one: a `Hello`'s
/// position).
pub fn frame_message(message: &Message, secret: Option<&[u8]>) -> Vec<u8> {
    let mut codec = FrameCodec::new(MAX_FRAME_BYTES, secret.map(Arc::from), Metrics::new());
    let mut buffer = BytesMut::new();
    codec.encode(message, &mut buffer).expect("messages encode");
    buffer.to_vec()
}

/// Our frames in a conversation: `script` is every message of both sides in the order
/// sent, `true` for ours. Each side's real codec writes its own and reads the other's,
/// so ours are tagged at their positions, the nonces being those of the script's
/// `Hello` and `Welcome`.
pub fn conversation(script: &[(bool, Message)], secret: Option<&[u8]>) -> Vec<u8> {
    let codec = || FrameCodec::new(MAX_FRAME_BYTES, secret.map(Arc::from), Metrics::new());
    let (mut ours, mut theirs) = (codec(), codec());
    let mut out = Vec::new();
    for (mine, message) in script {
        let (speaker, listener) = if *mine {
            (&mut ours, &mut theirs)
        } else {
            (&mut theirs, &mut ours)
        };
        let mut wire = BytesMut::new();
        speaker.encode(message, &mut wire).expect("messages encode");
        if *mine {
            out.extend_from_slice(&wire);
        }
        let read = listener.decode(&mut wire);
        assert!(matches!(read, Ok(Some(_))), "{read:?}");
    }
    out
}

/// The nonce of `payload` if it is a `Hello` or `Welcome`.
fn handshake_nonce(payload: &[u8]) -> Option<Nonce> {
    let mut codec = FrameCodec::new(usize::MAX, None, Metrics::new());
    match codec.decode(&mut BytesMut::from(&frame(payload, None)[..])) {
        Ok(Some(Message::Hello { nonce, .. } | Message::Welcome { nonce, .. })) => Some(nonce),
        _ => None,
    }
}

/// Who frames a payload list ([`frames_of`]), and so at which positions.
#[derive(Clone, Copy)]
enum Framer {
    /// An initiator talking to a responder whose nonce will be `responder_nonce`: its
    /// first `Hello` binds it (frames before it are at the `Hello`'s position), unless
    /// `hello` says a `Hello` with that nonce went before the list.
    Initiator {
        responder_nonce: Nonce,
        hello: Option<Nonce>,
    },
    /// A responder answering an initiator whose `Hello` had `initiator_nonce`: its
    /// first frame is the `Welcome`'s, whose nonce tags the rest.
    Responder { initiator_nonce: Nonce },
}

/// Splits `bytes` into payloads, each a big-endian `u16` length then that many bytes
/// (the last one cut short if the bytes end first), and frames each with [`frame_at`],
/// at the positions `framer`'s frames would take.
fn frames_of(bytes: &[u8], secret: Option<&[u8]>, framer: Framer) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = bytes;
    // (initiator nonce, responder nonce, frames sent) once bound.
    let mut bound = match framer {
        Framer::Initiator {
            responder_nonce,
            hello,
        } => hello.map(|nonce| (nonce, responder_nonce, 1)),
        Framer::Responder { initiator_nonce } => Some((initiator_nonce, 0, 0)),
    };
    while !rest.is_empty() {
        let len = match rest {
            [high, low, ..] => usize::from(u16::from_be_bytes([*high, *low])),
            _ => rest.len(),
        };
        rest = rest.get(2..).unwrap_or_default();
        let (payload, tail) = rest.split_at(len.min(rest.len()));
        match (&mut bound, framer) {
            (
                None,
                Framer::Initiator {
                    responder_nonce, ..
                },
            ) => {
                out.extend_from_slice(&frame(payload, secret));
                if let Some(nonce) = handshake_nonce(payload) {
                    bound = Some((nonce, responder_nonce, 1));
                }
            }
            (Some((initiator, responder, sent)), Framer::Initiator { .. }) => {
                let position = Position::to_responder(*initiator, *responder, *sent);
                out.extend_from_slice(&frame_at(payload, secret, position));
                *sent += 1;
            }
            (Some((initiator, responder, sent)), Framer::Responder { .. }) => {
                let position = Position::to_initiator(*initiator, *responder, *sent);
                out.extend_from_slice(&frame_at(payload, secret, position));
                if *sent == 0 {
                    *responder = handshake_nonce(payload).unwrap_or(0);
                }
                *sent += 1;
            }
            (None, Framer::Responder { .. }) => unreachable!("a responder starts bound"),
        }
        rest = tail;
    }
    out
}

/// Every decoded message must survive a round trip through the encoder.
fn assert_round_trips(message: &Message, secret: Option<&[u8]>) {
    let mut codec = FrameCodec::new(usize::MAX, secret.map(Arc::from), Metrics::new());
    let mut buffer = BytesMut::from(&frame_message(message, secret)[..]);
    let again = codec.decode(&mut buffer);
    assert!(
        matches!(&again, Ok(Some(decoded)) if decoded == message),
        "{message:?} re-decoded as {again:?}"
    );
    assert!(buffer.is_empty(), "re-encoding left {} bytes", buffer.len());
}

/// Target `peer_frame`: the frame codec reading arbitrary bytes, as a connection
/// receives them.
///
/// The first byte picks the setting: bit 0 a cluster secret; bit 1 the rest is a list
/// of payloads that the check frames itself with valid tags (see [`frame`]), so the
/// MessagePack decoder is reached behind the tag; bit 2 the handshake's frame cap
/// rather than the configured one; bits 3–5 the size of the chunks the bytes arrive in.
/// Every message decoded must re-encode to itself; an error ends the connection, as
/// it does in the node.
pub fn peer_frame(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = (mode & 1 != 0).then_some(SECRET);
    let bytes = if mode & 2 != 0 {
        // The codec reading them plays the responder and sends no `Welcome`.
        frames_of(
            rest,
            key,
            Framer::Initiator {
                responder_nonce: 0,
                hello: None,
            },
        )
    } else {
        rest.to_vec()
    };
    let cap = if mode & 4 != 0 {
        crate::wire::codec::HANDSHAKE_MAX_FRAME_BYTES
    } else {
        MAX_FRAME_BYTES
    };
    let chunk = [1, 2, 3, 5, 8, 64, 1024, usize::MAX][usize::from((mode >> 3) & 7)];
    let mut codec = FrameCodec::new(cap, secret(key.is_some()), Metrics::new());
    let mut buffer = BytesMut::new();
    for piece in bytes.chunks(chunk.min(bytes.len().max(1))) {
        buffer.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(message)) => assert_round_trips(&message, key),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    // The end of the stream, as `Framed` reports it.
    while let Ok(Some(message)) = codec.decode_eof(&mut buffer) {
        assert_round_trips(&message, key);
    }
}

/// Key and value limits of the in-memory nodes: small, so that inputs reach them.
pub fn limits() -> Limits {
    Limits {
        max_key_bytes: 64,
        max_value_bytes: 1024,
    }
}

/// The replication options of an in-memory node with `limits`.
fn replication_options(limits: Limits) -> ReplicationOptions {
    ReplicationOptions {
        epoch: DataEpoch {
            id: 1,
            created_ms: WALL_MS,
        },
        ..ReplicationOptions::in_process(limits)
    }
}

/// An in-memory replica `id` with `peers`, on a manual clock at [`WALL_MS`].
pub fn replica(id: &str, peers: &[&str]) -> Replica {
    Replica::new(
        node_id(id),
        peers.iter().map(|peer| node_id(peer)).collect(),
        Arc::new(ManualClock::new(WALL_MS)),
        replication_options(limits()),
        Metrics::new(),
    )
}

fn entry(key: &str, wall_ms: u64, node: &str, value: Option<&[u8]>) -> Entry {
    Entry {
        key: key.to_owned(),
        version: Version {
            timestamp: Timestamp {
                wall_ms,
                logical: 0,
            },
            node: node_id(node),
        },
        value: value.map(Bytes::copy_from_slice),
        replaces: None,
    }
}

/// The entries every in-memory store starts with: text, bytes, a tombstone, a key with
/// a slash and one outside ASCII.
pub fn seed_entries() -> Vec<Entry> {
    vec![
        entry("a", WALL_MS - 10, "n1", Some(b"alpha")),
        entry("dir/b", WALL_MS - 9, "n2", Some(b"beta")),
        entry("bin", WALL_MS - 8, "n1", Some(&[0xff, 0x00, 0xfe])),
        entry("gone", WALL_MS - 7, "n2", None),
        entry("clé ключ", WALL_MS - 6, "n1", Some("ünïcode".as_bytes())),
    ]
}

fn transport_options(secret: Option<Arc<[u8]>>) -> TransportOptions {
    TransportOptions {
        max_frame_bytes: MAX_FRAME_BYTES,
        secret,
        // Everything is in memory and every input ends: no deadline should ever fire.
        // One that did would show up as a fuzzer timeout, which is a bug to look at.
        connect_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
        max_connections: 4,
        metrics: Metrics::new(),
        clock: Arc::new(ManualClock::new(WALL_MS)),
        tls: None,
        nonces: NonceSource::counting(NODE_NONCE as u64),
    }
}

fn identity(node: &str) -> Identity {
    Identity {
        node: node_id(node),
        cluster: CLUSTER.to_owned(),
        members: ["n1", "n2", "n3"].into_iter().map(node_id).collect(),
    }
}

/// The `Hello` that `n2` sends to `n1`.
pub fn hello() -> Message {
    Message::Hello {
        protocol: PROTOCOL_VERSION,
        cluster: CLUSTER.to_owned(),
        from: node_id("n2"),
        to: node_id("n1"),
        lineage: Lineage::default(),
        nonce: HELLO_NONCE,
        nodes: identity("n2").table(),
    }
}

/// Writes `input` into one end of a pipe and shuts it, while reading everything that
/// comes back; `node` runs on the other end. Returns what the node wrote.
async fn converse<F, Fut>(input: Vec<u8>, node: F) -> Vec<u8>
where
    F: FnOnce(tokio::io::DuplexStream) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let (mut reader, mut writer) = tokio::io::split(ours);
    let write = async move {
        // The node may close its end before reading everything: not an error here.
        let _ = writer.write_all(&input).await;
        let _ = writer.shutdown().await;
    };
    let read = async move {
        let mut output = Vec::new();
        let _ = reader.read_to_end(&mut output).await;
        output
    };
    let ((), output, ()) = tokio::join!(write, read, node(theirs));
    output
}

/// Target `handshake`: what a node does with the bytes of a peer connection, on both
/// sides of it.
///
/// The first byte picks the setting: bit 0 a cluster secret; bit 1 the rest is a list
/// of payloads framed by the check with valid tags; bit 2 a valid `Hello` from a member
/// goes first, so that the requests after it reach the real responder of a replica;
/// bit 3 the node is the initiator (it dials, sends `Hello`, and then runs
/// anti-entropy rounds on whatever comes back) rather than the acceptor.
///
/// Acceptor: everything the node writes must be whole frames that decode, the first a
/// `Welcome` or a `Refuse`, nothing after a `Refuse` (which may also answer the first
/// request, refusing the admission). Initiator: the store it repairs
/// from the replies keeps a digest equal to its recomputation.
pub fn handshake(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = (mode & 1 != 0).then_some(SECRET);
    let mut input = Vec::new();
    if mode & 4 != 0 {
        input.extend_from_slice(&frame_message(&hello(), key));
    }
    if mode & 2 != 0 {
        let framer = if mode & 8 != 0 {
            Framer::Responder {
                initiator_nonce: NODE_NONCE,
            }
        } else {
            Framer::Initiator {
                responder_nonce: NODE_NONCE,
                // With the valid `Hello` first, the rest follows it.
                hello: (mode & 4 != 0).then_some(HELLO_NONCE),
            }
        };
        input.extend_from_slice(&frames_of(rest, key, framer));
    } else {
        input.extend_from_slice(rest);
    }
    if mode & 8 != 0 {
        block_on(initiate(input, key));
    } else {
        let output = block_on(accept(input, key));
        check_acceptor_output(&output, key);
    }
}

async fn accept(input: Vec<u8>, key: Option<&[u8]>) -> Vec<u8> {
    let replica = replica("n1", &["n2", "n3"]);
    for entry in seed_entries() {
        replica.apply_remote(&node_id("n2"), vec![entry]);
    }
    let options = transport_options(secret(key.is_some()));
    let identity = identity("n1");
    let responder = replica.responder();
    let inbound = Inbound::new(options.clock.clone());
    let remote = "127.0.0.12:7102".parse().expect("an address");
    converse(input, |stream| async move {
        peer::serve_connection(
            stream,
            remote,
            &identity,
            &options,
            &*responder,
            &inbound,
            None,
        )
        .await;
    })
    .await
}

fn check_acceptor_output(output: &[u8], key: Option<&[u8]>) {
    // The tags are checked by the codec's own tests; here the frames' shape and
    // payloads, which a harness that does not know which `Hello` the node took for its
    // own cannot tag-check: each frame loses its tag and is read unauthenticated.
    let mut untagged = Vec::new();
    let mut rest = output;
    while let [a, b, c, d, body @ ..] = rest {
        let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
        if body.len() < len {
            break;
        }
        let (frame_body, tail) = body.split_at(len);
        let payload = if key.is_some() {
            assert!(len >= TAG_BYTES, "the node wrote a frame without a tag");
            &frame_body[TAG_BYTES..]
        } else {
            frame_body
        };
        untagged.extend_from_slice(&frame(payload, None));
        rest = tail;
    }
    untagged.extend_from_slice(rest);
    let mut codec = FrameCodec::new(usize::MAX, None, Metrics::new());
    let mut buffer = BytesMut::from(&untagged[..]);
    let mut replies = Vec::new();
    loop {
        match codec.decode(&mut buffer) {
            Ok(Some(message)) => replies.push(message),
            Ok(None) => break,
            Err(error) => panic!("the node wrote a bad frame: {error}"),
        }
    }
    assert!(buffer.is_empty(), "the node wrote half a frame");
    match replies.first() {
        None | Some(Message::Welcome { .. }) => {}
        Some(Message::Refuse { .. }) => assert_eq!(replies.len(), 1, "frames after Refuse"),
        Some(other) => panic!("the node answered a handshake with {}", other.kind()),
    }
    for (index, reply) in replies.iter().enumerate().skip(1) {
        // The answer to the first request may refuse the admission, and ends it all.
        if index == 1 && matches!(reply, Message::Refuse { .. }) {
            assert_eq!(replies.len(), 2, "frames after Refuse");
            continue;
        }
        assert!(
            !matches!(
                reply,
                Message::Hello { .. } | Message::Welcome { .. } | Message::Refuse { .. }
            ),
            "the node answered a request with {}",
            reply.kind()
        );
    }
}

async fn initiate(input: Vec<u8>, key: Option<&[u8]>) {
    let options = transport_options(secret(key.is_some()));
    let me = identity("n1");
    let store = converse(input, |stream| async move {
        let mut store = Store::new();
        for entry in seed_entries() {
            store.merge(entry);
        }
        let Ok(mut link) =
            Link::open(stream, &me, &node_id("n2"), Lineage::default(), &options).await
        else {
            check_store(&store);
            return;
        };
        // The driver's round, minus its timers: plan, ask, merge what comes back.
        let mut session = SyncSession::new();
        while let Some(request) = session.next_request(&store, 4096) {
            let Ok(reply) = link.request(&request, options.connect_timeout).await else {
                break;
            };
            match session.on_reply(reply, &store) {
                Ok(entries) => {
                    for entry in entries {
                        store.merge(entry);
                    }
                }
                Err(_) => break,
            }
        }
        check_store(&store);
    });
    store.await;
}

fn check_store(store: &Store) {
    assert_eq!(
        store.digest().root(),
        store.recompute_root(),
        "the incremental digest drifted from the store"
    );
}

/// Target `persist_records`: the data directory's record reader on arbitrary bytes (a
/// segment's body, after its header), as recovery reads it. The scan never reads past
/// the end; it ends cleanly exactly when every byte belonged to a record, else at the
/// first bad one; the valid part alone scans clean to the same records (so cutting a
/// torn tail keeps a prefix); every record decodes to an entry or is refused with an
/// error, and the entries merge into a store whose digest stays true.
pub fn persist_records(data: &[u8]) {
    use crate::persist::record::{scan, ScanEnd};
    use crate::replication::durable;

    let mut records = scan(data);
    let mut store = Store::new();
    let mut payloads = Vec::new();
    for (offset, payload) in records.by_ref() {
        assert!(
            offset + payload.len() <= data.len(),
            "a record past the end"
        );
        if let Ok(entry) = durable::decode(payload) {
            store.merge(entry);
        }
        payloads.push(payload);
    }
    let valid = records.offset();
    match records.end() {
        Some(ScanEnd::Clean) => assert_eq!(valid, data.len(), "clean before the end"),
        Some(ScanEnd::Damaged { offset, .. }) => {
            assert_eq!(offset, valid, "damage reported away from the valid end")
        }
        None => panic!("the scan did not say how it ended"),
    }
    let mut prefix = scan(&data[..valid]);
    assert!(
        prefix.by_ref().eq(payloads.iter().scan(0, |at, payload| {
            let item = (*at, *payload);
            *at += crate::persist::record::RECORD_HEADER_BYTES + payload.len();
            Some(item)
        })),
        "the valid prefix scans to other records"
    );
    assert_eq!(
        prefix.end(),
        Some(ScanEnd::Clean),
        "the valid prefix is damaged"
    );
    check_store(&store);
}

/// Records of the seed entries, as the journal writes them: the `persist_records`
/// corpus.
pub fn seed_records() -> Vec<u8> {
    let mut batch = crate::persist::RecordBatch::new();
    for entry in seed_entries() {
        batch
            .push(&crate::replication::durable::encode(&entry))
            .expect("a seed entry fits a record");
    }
    batch.as_bytes().to_vec()
}

/// Target `cluster_file`: `ClusterConfig::parse` on arbitrary text. A file it accepts
/// must pass its own validation, name each of its nodes, and be usable as the node
/// assembles it (a replica and a router built from its values, without sockets).
pub fn cluster_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = ClusterConfig::parse(text) else {
        return;
    };
    config
        .validate()
        .expect("a parsed cluster file passes validation");
    for node in &config.nodes {
        assert_eq!(config.node(node.id.as_str()).expect("named").id, node.id);
        assert_eq!(config.peers_of(&node.id).count(), config.nodes.len() - 1);
    }
    // What `node::run_with` builds from the file, minus sockets and tasks.
    let tuning = &config.tuning;
    let me = &config.nodes[0];
    let replica = Replica::new(
        me.id.clone(),
        config
            .peers_of(&me.id)
            .map(|peer| peer.id.clone())
            .collect(),
        Arc::new(ManualClock::new(WALL_MS)),
        crate::node::replication_options(
            tuning,
            DataEpoch {
                id: 1,
                created_ms: WALL_MS,
            },
        ),
        Metrics::new(),
    );
    let _router = crate::api::router(
        replica,
        crate::api::ApiOptions::new(Tuning::ms(tuning.http_timeout_ms)),
    );
}

/// One HTTP request decoded from fuzz bytes: text shaped like HTTP/1.1 on the wire,
/// `METHOD TARGET` on the first line, `Name: value` lines, an empty line, the body.
/// `None` for what hyper would refuse before the router sees it (a bad method, target
/// or header).
pub fn request_of(data: &[u8]) -> Option<Request<Body>> {
    let mut lines = data.split(|&byte| byte == b'\n');
    let first = lines.next()?;
    let first = first.strip_suffix(b"\r").unwrap_or(first);
    let space = first.iter().position(|&byte| byte == b' ')?;
    let method = Method::from_bytes(&first[..space]).ok()?;
    let uri = Uri::try_from(&first[space + 1..]).ok()?;
    let mut request = Request::builder().method(method).uri(uri);
    let mut consumed = first.len() + 1;
    let mut body = Bytes::new();
    for line in lines {
        consumed += line.len() + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            body = Bytes::copy_from_slice(data.get(consumed..).unwrap_or_default());
            break;
        }
        let colon = line.iter().position(|&byte| byte == b':')?;
        let name = HeaderName::from_bytes(&line[..colon]).ok()?;
        let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).ok()?;
        request = request.header(name, value);
    }
    request.body(Body::from(body)).ok()
}

/// Target `http_request`: the client API's router, driven in memory with arbitrary
/// requests against a single-node replica holding [`seed_entries`].
///
/// Promises checked: no panic; every status is 200 or an error ≥ 400; every error
/// carries a JSON `{"error": "<sentence>"}` body (HEAD answers carry no body) and
/// leaves the store unchanged; every JSON body parses; a value's ETag parses as a
/// [`Version`]. The pure helpers the API relies on get every line of the input too.
pub fn http_request(data: &[u8]) {
    for line in data.split(|&byte| byte == b'\n') {
        if let Ok(text) = std::str::from_utf8(line) {
            text_helpers(text.trim_end_matches('\r'));
        }
    }
    let Some(request) = request_of(data) else {
        return;
    };
    block_on(serve_request(request));
}

/// `Version` and `Consistency` parsing: whatever parses prints back to itself.
fn text_helpers(text: &str) {
    for candidate in [text, text.trim_matches('"')] {
        if let Ok(version) = Version::from_str(candidate) {
            assert_eq!(
                version.to_string().parse::<Version>().as_ref(),
                Ok(&version),
                "{candidate:?}"
            );
        }
        if let Ok(level) = Consistency::from_str(candidate) {
            assert_eq!(level.as_str(), candidate);
        }
    }
}

async fn serve_request(request: Request<Body>) {
    let replica = replica("n1", &[]);
    for entry in seed_entries() {
        replica.apply_remote(&node_id("n2"), vec![entry]);
    }
    let before = replica.summary();
    let is_head = request.method() == Method::HEAD;
    let router = crate::api::router(
        replica.clone(),
        crate::api::ApiOptions::new(Duration::from_secs(10)),
    );
    let response = hyper::service::Service::call(&router, request)
        .await
        .expect("the service is infallible");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let etag = response.headers().get(header::ETAG).cloned();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("a body in memory reads");
    assert!(
        status == StatusCode::OK || status.as_u16() >= 400,
        "status {status}"
    );
    if content_type == "application/json" && !is_head {
        assert_eq!(body.last(), Some(&b'\n'), "JSON bodies end with a newline");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON body parses");
        if status.as_u16() >= 400 {
            let sentence = json["error"].as_str().expect("an error has a sentence");
            assert!(!sentence.trim().is_empty(), "an empty error sentence");
        }
    } else if status.as_u16() >= 400 && !is_head {
        panic!("error {status} with content type {content_type:?}: {body:?}");
    }
    if status.as_u16() >= 400 {
        assert_eq!(
            replica.summary(),
            before,
            "a refused request changed the store"
        );
    }
    if let Some(etag) = etag {
        let text = etag.to_str().expect("an ASCII ETag");
        let version = text.trim_matches('"');
        assert!(Version::from_str(version).is_ok(), "ETag {text:?}");
    }
}
