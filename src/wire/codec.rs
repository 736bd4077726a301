//! Frames: a 4-byte big-endian length, then (with a cluster secret) a 32-byte
//! HMAC-SHA256 tag, then the MessagePack encoding of one [`Message`] (its layout is
//! `wire::compact`'s; the codec keeps that layout's per-direction state).
//!
//! Owns: [`FrameCodec`], the frame size cap, frame authentication and the state that
//! binds a connection's frames to it (both handshake nonces, a sequence number per
//! direction).
//! Knows nothing of: what messages mean, sockets, where nonces come from.
//!
//! Order of checks on receipt, cheapest and safest first: the length prefix against
//! the cap (before allocating), the tag (before parsing), then decoding.
//!
//! # The tag
//! ```text
//! tag = HMAC-SHA256(secret, "meshkv/4" | Ni | Nr | payload | direction:u8 | seq:u64be)
//! ```
//! `Ni` is the initiator's nonce (sent in `Hello`), `Nr` the responder's (sent in
//! `Welcome`), each 16 random bytes. The codec follows the handshake itself: the
//! `Hello` it sends or receives binds it to `Ni`, the `Welcome` adds `Nr`. Until it is
//! bound (the `Hello` itself), both nonces are zero, and direction and seq are 0. Once bound,
//! direction is 1 from initiator to responder and 2 back, and seq counts the frames of
//! that direction from 0, the `Hello` being frame 0 of direction 1 (so the first bound
//! frame of direction 1 is seq 1). Frame 0 of direction 2 (the `Welcome` or `Refuse`)
//! is tagged before the responder's nonce is known to the initiator, so with `Nr` zero;
//! every later frame with both nonces. The sequence numbers are never sent: each side
//! counts. So a frame is valid at one place only: one connection, one direction, one
//! position; anywhere else its tag fails, and the codec tells which place it matches, if
//! it is a nearby one of this connection (see [`WireError`]).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use super::compact::{self, Direction};
use super::{Message, Nonce};
use crate::metrics::Metrics;

type HmacSha256 = Hmac<Sha256>;

/// Length of the authentication tag.
pub const TAG_BYTES: usize = 32;
/// Length of the frame's length prefix.
pub const PREFIX_BYTES: usize = 4;
/// Frame cap until the handshake is done: `Hello`, `Welcome` and `Refuse` are small,
/// and nothing larger is read from a sender not known to be a member.
pub const HANDSHAKE_MAX_FRAME_BYTES: usize = 4096;
/// The MAC's domain: the protocol it belongs to (bumped with the tag's layout).
const DOMAIN: &[u8] = b"meshkv/4";
/// The protocol this codec's layout is, for the error naming an older one.
const PROTOCOL: u16 = super::PROTOCOL_VERSION;
/// How protocols 1 to 3 began a `Hello`: rmp-serde's externally tagged enum, a
/// one-entry map from the variant's name.
const OLD_HELLO: &[u8] = b"\x81\xa5Hello";
/// How far around the expected position a failed tag is looked for, to name the
/// rejection (a replay, a reordering, a reflection). Only rejected frames pay for it.
const SEARCH_WINDOW: u64 = 16;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed, or the length prefix exceeded the cap.
    #[error("peer connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The frame's tag is valid nowhere near here in this connection: another secret,
    /// a forgery, or a frame recorded on another connection (which cannot be told apart
    /// from a forgery: the other connection's nonces are in its tag).
    #[error("frame authentication failed")]
    BadTag,
    /// The frame's tag is valid at an earlier position of this connection, or it is a
    /// handshake frame (a `Hello`) after the handshake: a recorded frame played again.
    #[error("frame authentication failed: a replayed frame")]
    Replay,
    /// The frame's tag is valid at a later position of this connection: frames were
    /// dropped or reordered on the way.
    #[error("frame authentication failed: a frame out of order")]
    OutOfOrder,
    /// The frame's tag is valid for the other direction of this connection: one of our
    /// own frames sent back to us.
    #[error("frame authentication failed: our own frame reflected back")]
    Reflected,
    /// The first frame is a `Hello` of protocol 3 or older (rmp-serde's variant-name
    /// layout, tagged over the payload alone when there is a secret): an older meshkv,
    /// which cannot read ours either.
    #[error("the peer speaks protocol 3 or older (an older meshkv); this node speaks {PROTOCOL}: upgrade every node")]
    OldProtocol,
    /// The frame is authentic (or unauthenticated) but not a message of this protocol.
    #[error("frame does not decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// A message could not be encoded (never expected).
    #[error("frame does not encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

impl WireError {
    /// The `reason` of `meshkv_peer_frames_rejected_total` for a frame whose tag failed.
    pub fn tag_rejection(&self) -> Option<&'static str> {
        match self {
            WireError::BadTag => Some("bad_tag"),
            WireError::Replay => Some("replay"),
            WireError::OutOfOrder => Some("out_of_order"),
            WireError::Reflected => Some("reflected"),
            _ => None,
        }
    }
}

/// Which end of the connection a codec serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// It dialed and sent the `Hello`.
    Initiator,
    /// It accepted and answered the `Hello`.
    Responder,
}

/// Direction bytes of the tag.
const UNBOUND: u8 = 0;
const TO_RESPONDER: u8 = 1;
const TO_INITIATOR: u8 = 2;

impl Role {
    fn sending(self) -> u8 {
        match self {
            Role::Initiator => TO_RESPONDER,
            Role::Responder => TO_INITIATOR,
        }
    }

    fn receiving(self) -> u8 {
        match self {
            Role::Initiator => TO_INITIATOR,
            Role::Responder => TO_RESPONDER,
        }
    }
}

/// What ties a connection's frames to it, once the `Hello` has gone.
#[derive(Clone, Debug)]
struct Binding {
    role: Role,
    initiator_nonce: Nonce,
    /// Zero until the `Welcome` has gone (responder) or come (initiator).
    responder_nonce: Nonce,
    /// Frames sent and received so far in this connection, the `Hello` included.
    sent: u64,
    received: u64,
}

impl Binding {
    /// The binding made by a `Hello` carrying `initiator_nonce`, which counts as frame
    /// 0 of its direction.
    fn new(role: Role, initiator_nonce: Nonce) -> Self {
        let hello = 1;
        Self {
            role,
            initiator_nonce,
            responder_nonce: 0,
            sent: if role == Role::Initiator { hello } else { 0 },
            received: if role == Role::Responder { hello } else { 0 },
        }
    }

    /// Where frame `seq` of `direction` stands in this connection.
    fn position(&self, direction: u8, seq: u64) -> Position {
        Position::bound(self.initiator_nonce, self.responder_nonce, direction, seq)
    }
}

/// Where a frame stands in its connection: what its tag covers besides the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    initiator_nonce: Nonce,
    responder_nonce: Nonce,
    direction: u8,
    seq: u64,
}

impl Position {
    /// The `Hello`'s position (every frame's, before a codec is bound).
    pub const HELLO: Position = Position {
        initiator_nonce: 0,
        responder_nonce: 0,
        direction: UNBOUND,
        seq: 0,
    };

    /// Frame `seq` from the initiator (1: the first after the `Hello`).
    pub fn to_responder(initiator_nonce: Nonce, responder_nonce: Nonce, seq: u64) -> Self {
        Self::bound(initiator_nonce, responder_nonce, TO_RESPONDER, seq)
    }

    /// Frame `seq` from the responder (0: the `Welcome` or `Refuse`).
    pub fn to_initiator(initiator_nonce: Nonce, responder_nonce: Nonce, seq: u64) -> Self {
        Self::bound(initiator_nonce, responder_nonce, TO_INITIATOR, seq)
    }

    /// Frame 0 of either direction is tagged before the responder's nonce is known to
    /// both sides: it covers zero instead.
    fn bound(initiator_nonce: Nonce, responder_nonce: Nonce, direction: u8, seq: u64) -> Self {
        Self {
            initiator_nonce,
            responder_nonce: if seq == 0 { 0 } else { responder_nonce },
            direction,
            seq,
        }
    }
}

/// The tag of `payload` at `position`, keyed with the cluster secret.
pub fn tag(key: &[u8], position: Position, payload: &[u8]) -> [u8; TAG_BYTES] {
    FrameCodec::positioned(
        FrameCodec::keyed(
            key,
            position.initiator_nonce,
            position.responder_nonce,
            payload,
        ),
        position.direction,
        position.seq,
    )
    .finalize()
    .into_bytes()
    .into()
}

/// Message ⇄ frame codec for one connection.
pub struct FrameCodec {
    frames: LengthDelimitedCodec,
    key: Option<Arc<[u8]>>,
    binding: Option<Binding>,
    /// What the layout of each direction refers back to (node tables, clocks).
    sending: Direction,
    receiving: Direction,
    metrics: Arc<Metrics>,
    peer: String,
}

impl FrameCodec {
    /// A codec capping frames at `max_frame_bytes`, authenticating with `secret` if any.
    /// It binds itself to the connection as the `Hello` and `Welcome` pass through it
    /// (their nonces); until then it reads and writes handshake frames.
    pub fn new(max_frame_bytes: usize, secret: Option<Arc<[u8]>>, metrics: Arc<Metrics>) -> Self {
        Self {
            frames: LengthDelimitedCodec::builder()
                .max_frame_length(max_frame_bytes)
                .new_codec(),
            key: secret,
            binding: None,
            sending: Direction::default(),
            receiving: Direction::default(),
            metrics,
            peer: "unknown".to_owned(),
        }
    }

    /// Changes the frame cap: small until the handshake has named a member, then the
    /// configured one.
    pub fn set_max_frame_bytes(&mut self, max_frame_bytes: usize) {
        self.frames.set_max_frame_length(max_frame_bytes);
    }

    /// Names the peer for metrics, once the handshake has told who it is.
    pub fn set_peer(&mut self, peer: &str) {
        self.peer = peer.to_owned();
    }

    /// The MAC over the nonces and the payload, before the position is added.
    fn keyed(
        key: &[u8],
        initiator_nonce: Nonce,
        responder_nonce: Nonce,
        payload: &[u8],
    ) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
        mac.update(DOMAIN);
        mac.update(&initiator_nonce.to_be_bytes());
        mac.update(&responder_nonce.to_be_bytes());
        mac.update(payload);
        mac
    }

    /// Adds the frame's position to a [`FrameCodec::keyed`] MAC.
    fn positioned(mut mac: HmacSha256, direction: u8, seq: u64) -> HmacSha256 {
        mac.update(&[direction]);
        mac.update(&seq.to_be_bytes());
        mac
    }

    /// Where the next frame sent stands.
    fn next_sent(&self) -> Position {
        match &self.binding {
            None => Position::HELLO,
            Some(binding) => binding.position(binding.role.sending(), binding.sent),
        }
    }

    /// Checks the tag of the next frame received; on failure, names what it matches.
    fn check_tag(&self, key: &[u8], tag: &[u8], payload: &[u8]) -> Result<(), WireError> {
        let Some(binding) = &self.binding else {
            let mac = Self::keyed(key, 0, 0, payload);
            return Self::positioned(mac, UNBOUND, 0)
                .verify_slice(tag)
                .map_err(|_| WireError::BadTag);
        };
        let direction = binding.role.receiving();
        let with_nonce = Self::keyed(
            key,
            binding.initiator_nonce,
            binding.responder_nonce,
            payload,
        );
        let handshake = Self::keyed(key, binding.initiator_nonce, 0, payload);
        let at = |direction: u8, seq: u64| {
            let position = binding.position(direction, seq);
            let base = if position.responder_nonce == 0 {
                &handshake
            } else {
                &with_nonce
            };
            Self::positioned(base.clone(), direction, seq)
                .verify_slice(tag)
                .is_ok()
        };
        if at(direction, binding.received) {
            return Ok(());
        }
        // Rejected: say what it is, if it is a frame of this connection near here.
        let received = binding.received;
        let sent = binding.sent;
        if (received.saturating_sub(SEARCH_WINDOW)..received).any(|seq| at(direction, seq)) {
            return Err(WireError::Replay);
        }
        if (received + 1..=received + SEARCH_WINDOW).any(|seq| at(direction, seq)) {
            return Err(WireError::OutOfOrder);
        }
        let other = binding.role.sending();
        if (sent.saturating_sub(SEARCH_WINDOW)..=sent + SEARCH_WINDOW).any(|seq| at(other, seq)) {
            return Err(WireError::Reflected);
        }
        let unbound = Self::keyed(key, 0, 0, payload);
        if Self::positioned(unbound, UNBOUND, 0)
            .verify_slice(tag)
            .is_ok()
        {
            return Err(WireError::Replay);
        }
        Err(WireError::BadTag)
    }
}

impl Encoder<&Message> for FrameCodec {
    type Error = WireError;

    fn encode(&mut self, message: &Message, dst: &mut BytesMut) -> Result<(), WireError> {
        let payload = compact::encode(message, &mut self.sending)?;
        let frame = match &self.key {
            Some(key) => {
                let tag = tag(key, self.next_sent(), &payload);
                let mut frame = Vec::with_capacity(TAG_BYTES + payload.len());
                frame.extend_from_slice(&tag);
                frame.extend_from_slice(&payload);
                frame
            }
            None => payload,
        };
        let bytes = frame.len() + PREFIX_BYTES;
        self.frames.encode(Bytes::from(frame), dst)?;
        // The codec follows the handshake: a `Hello` binds it, a `Welcome` completes it.
        match (&mut self.binding, message) {
            (None, Message::Hello { nonce, .. }) => {
                self.binding = Some(Binding::new(Role::Initiator, *nonce));
            }
            (None, _) => {}
            (Some(binding), message) => {
                if let (Role::Responder, 0, Message::Welcome { nonce, .. }) =
                    (binding.role, binding.sent, message)
                {
                    binding.responder_nonce = *nonce;
                }
                binding.sent += 1;
            }
        }
        self.metrics
            .record_frame(&self.peer, message.kind(), "sent", bytes);
        Ok(())
    }
}

impl Decoder for FrameCodec {
    type Item = Message;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, WireError> {
        let Some(frame) = self.frames.decode(src)? else {
            return Ok(None);
        };
        let payload = match &self.key {
            Some(key) => {
                if frame.len() < TAG_BYTES {
                    self.metrics.reject("bad_tag");
                    return Err(WireError::BadTag);
                }
                let (tag, payload) = frame.split_at(TAG_BYTES);
                if self.binding.is_none() && payload.starts_with(OLD_HELLO) {
                    // Protocol 3's tag was over the payload alone.
                    let mut old = HmacSha256::new_from_slice(key).expect("HMAC takes any key");
                    old.update(payload);
                    if old.verify_slice(tag).is_ok() {
                        return Err(WireError::OldProtocol);
                    }
                }
                if let Err(error) = self.check_tag(key, tag, payload) {
                    if let Some(reason) = error.tag_rejection() {
                        self.metrics.reject(reason);
                    }
                    return Err(error);
                }
                payload
            }
            None => &frame[..],
        };
        if self.binding.is_none() && payload.starts_with(OLD_HELLO) {
            return Err(WireError::OldProtocol);
        }
        let message = compact::decode(payload, &mut self.receiving)?;
        match (&mut self.binding, &message) {
            (None, Message::Hello { nonce, .. }) => {
                self.binding = Some(Binding::new(Role::Responder, *nonce));
            }
            (None, _) => {}
            (Some(binding), message) => {
                if let (Role::Initiator, 0, Message::Welcome { nonce, .. }) =
                    (binding.role, binding.received, message)
                {
                    binding.responder_nonce = *nonce;
                }
                binding.received += 1;
            }
        }
        self.metrics.record_frame(
            &self.peer,
            message.kind(),
            "received",
            frame.len() + PREFIX_BYTES,
        );
        Ok(Some(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{NodeId, Timestamp, Version};
    use crate::store::Entry;
    use crate::wire::Nonce;

    fn codec(secret: Option<&[u8]>) -> FrameCodec {
        FrameCodec::new(1024, secret.map(Arc::from), Metrics::new())
    }

    #[test]
    fn a_hello_of_protocol_3_is_named_as_such() {
        // The start of a protocol 3 `Hello`: {"Hello": [3, "c", ...]}.
        let payload = b"\x81\xa5Hello\x97\x03\xa1c";
        let frame = |tag: Option<&[u8]>| {
            let mut bytes = BytesMut::new();
            let len = payload.len() + tag.map_or(0, <[u8]>::len);
            bytes.extend_from_slice(&(len as u32).to_be_bytes());
            bytes.extend_from_slice(tag.unwrap_or_default());
            bytes.extend_from_slice(payload);
            bytes
        };
        let old = |error: Result<Option<Message>, WireError>| {
            matches!(error, Err(WireError::OldProtocol))
        };
        assert!(old(codec(None).decode(&mut frame(None))));
        // With a secret: protocol 3 tagged the payload alone.
        let secret = b"a cluster secret of 16+ bytes";
        let mut mac = HmacSha256::new_from_slice(secret).unwrap();
        mac.update(payload);
        let v3_tag = mac.finalize().into_bytes();
        assert!(old(codec(Some(secret)).decode(&mut frame(Some(&v3_tag)))));
        // Another secret is no evidence of anything: a bad tag, as for any frame.
        let mut other = HmacSha256::new_from_slice(b"another secret, 16+ bytes").unwrap();
        other.update(payload);
        let other_tag = other.finalize().into_bytes();
        assert!(matches!(
            codec(Some(secret)).decode(&mut frame(Some(&other_tag))),
            Err(WireError::BadTag)
        ));
    }

    fn push() -> Message {
        Message::Push {
            entries: vec![Entry {
                key: "k".into(),
                version: Version {
                    timestamp: Timestamp {
                        wall_ms: 1_764_127_282_000,
                        logical: 1,
                    },
                    node: NodeId::new("n1").unwrap(),
                },
                value: Some("v".into()),
                replaces: None,
            }],
        }
    }

    fn roundtrip(
        sender: &mut FrameCodec,
        receiver: &mut FrameCodec,
        message: &Message,
    ) -> Result<Option<Message>, WireError> {
        let mut buffer = BytesMut::new();
        sender.encode(message, &mut buffer)?;
        receiver.decode(&mut buffer)
    }

    #[test]
    fn messages_roundtrip_with_and_without_secret() {
        for secret in [None, Some(&b"s3cret"[..])] {
            let message = push();
            let decoded = roundtrip(&mut codec(secret), &mut codec(secret), &message).unwrap();
            assert_eq!(decoded, Some(message));
        }
    }

    #[test]
    fn a_wrong_secret_or_missing_tag_is_refused() {
        let result = roundtrip(&mut codec(Some(b"one")), &mut codec(Some(b"two")), &push());
        assert!(matches!(result, Err(WireError::BadTag)));
        let result = roundtrip(&mut codec(None), &mut codec(Some(b"two")), &Message::Ping);
        assert!(matches!(result, Err(WireError::BadTag)));
    }

    #[test]
    fn oversized_length_prefix_is_refused_before_allocation() {
        let mut buffer = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3][..]);
        assert!(matches!(
            codec(None).decode(&mut buffer),
            Err(WireError::Io(_))
        ));
    }

    #[test]
    fn garbage_and_truncation_are_errors_or_pending_never_panics() {
        let mut garbage = BytesMut::from(&[0, 0, 0, 3, 0xc1, 0xc1, 0xc1][..]);
        assert!(matches!(
            codec(None).decode(&mut garbage),
            Err(WireError::Decode(_))
        ));
        let mut truncated = BytesMut::from(&[0, 0, 0, 10, 1][..]);
        assert!(matches!(codec(None).decode(&mut truncated), Ok(None)));
    }

    #[test]
    fn frames_are_counted_with_their_prefix() {
        let metrics = Metrics::new();
        let mut sender = FrameCodec::new(1024, None, metrics.clone());
        sender.set_peer("n2");
        let mut buffer = BytesMut::new();
        sender.encode(&Message::Ping, &mut buffer).unwrap();
        let text = metrics.render();
        let expected = format!(
            r#"meshkv_peer_bytes_total{{peer="n2",kind="ping",direction="sent"}} {}"#,
            buffer.len()
        );
        assert!(text.contains(&expected), "{text}");
    }

    fn hello(nonce: Nonce) -> Message {
        Message::Hello {
            protocol: crate::wire::PROTOCOL_VERSION,
            cluster: "c".into(),
            from: NodeId::new("n1").unwrap(),
            to: NodeId::new("n2").unwrap(),
            lineage: Default::default(),
            nonce,
            nodes: vec![NodeId::new("n1").unwrap(), NodeId::new("n2").unwrap()],
        }
    }

    fn send(codec: &mut FrameCodec, message: &Message) -> BytesMut {
        let mut buffer = BytesMut::new();
        codec.encode(message, &mut buffer).unwrap();
        buffer
    }

    /// An initiator and a responder past `Hello` and `Welcome`, with the given nonces.
    fn connection(initiator_nonce: Nonce, responder_nonce: Nonce) -> (FrameCodec, FrameCodec) {
        let (mut initiator, mut responder) = (codec(Some(b"s3cret")), codec(Some(b"s3cret")));
        let mut wire = send(&mut initiator, &hello(initiator_nonce));
        assert!(responder.decode(&mut wire).unwrap().is_some());
        let welcome = Message::Welcome {
            lineage: Default::default(),
            wall_ms: 0,
            nonce: responder_nonce,
            nodes: vec![NodeId::new("n2").unwrap()],
        };
        let mut wire = send(&mut responder, &welcome);
        assert_eq!(initiator.decode(&mut wire).unwrap(), Some(welcome));
        (initiator, responder)
    }

    #[test]
    fn a_bound_connection_exchanges_frames_both_ways() {
        let (mut initiator, mut responder) = connection(1, 2);
        for _ in 0..3 {
            let mut wire = send(&mut initiator, &push());
            assert_eq!(responder.decode(&mut wire).unwrap(), Some(push()));
            let mut wire = send(&mut responder, &Message::Summarize);
            assert_eq!(
                initiator.decode(&mut wire).unwrap(),
                Some(Message::Summarize)
            );
        }
    }

    #[test]
    fn frames_from_another_connection_are_refused() {
        let (mut recorded, _) = connection(1, 2);
        let old = send(&mut recorded, &Message::Ping);
        // Another connection: the initiator's nonce or the responder's differs.
        for (initiator_nonce, responder_nonce) in [(3, 2), (1, 4)] {
            let (_, mut responder) = connection(initiator_nonce, responder_nonce);
            let result = responder.decode(&mut old.clone());
            assert!(matches!(result, Err(WireError::BadTag)), "{result:?}");
        }
        // A Hello played into a bound connection.
        let (_, mut responder) = connection(1, 2);
        let result = responder.decode(&mut send(&mut codec(Some(b"s3cret")), &hello(1)));
        assert!(matches!(result, Err(WireError::Replay)), "{result:?}");
    }

    #[test]
    fn frames_replayed_swapped_dropped_or_reflected_are_refused() {
        // Replayed: the same frame twice.
        let (mut initiator, mut responder) = connection(1, 2);
        let first = send(&mut initiator, &Message::Ping);
        assert!(responder.decode(&mut first.clone()).unwrap().is_some());
        let result = responder.decode(&mut first.clone());
        assert!(matches!(result, Err(WireError::Replay)), "{result:?}");
        // Swapped: the second frame before the first (or the first dropped).
        let (mut initiator, mut responder) = connection(1, 2);
        let _first = send(&mut initiator, &Message::Ping);
        let mut second = send(&mut initiator, &Message::Summarize);
        let result = responder.decode(&mut second);
        assert!(matches!(result, Err(WireError::OutOfOrder)), "{result:?}");
        // Reflected: the responder's own frame sent back to it.
        let (_, mut responder) = connection(1, 2);
        let mut own = send(&mut responder, &Message::Summarize);
        let result = responder.decode(&mut own);
        assert!(matches!(result, Err(WireError::Reflected)), "{result:?}");
        // And the rejections are counted.
        let metrics = Metrics::new();
        let (mut initiator, mut responder) = connection(1, 2);
        responder.metrics = metrics.clone();
        let mut own = send(&mut initiator, &Message::Ping);
        responder.decode(&mut own.clone()).unwrap();
        let _ = responder.decode(&mut own);
        let text = metrics.render();
        assert!(
            text.contains(r#"meshkv_peer_frames_rejected_total{reason="replay"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn the_tag_covers_the_position_not_just_the_payload() {
        let payload = b"same payload";
        let positions = [
            Position::HELLO,
            Position::to_responder(1, 2, 1),
            Position::to_responder(1, 2, 2),
            Position::to_initiator(1, 2, 1),
            Position::to_initiator(1, 3, 1),
            Position::to_initiator(4, 2, 1),
        ];
        let tags: std::collections::HashSet<_> = positions
            .iter()
            .map(|position| tag(b"k", *position, payload))
            .collect();
        assert_eq!(tags.len(), positions.len());
        // Frame 0 of the responder (the Welcome) cannot cover the nonce it carries.
        assert_eq!(
            tag(b"k", Position::to_initiator(1, 2, 0), payload),
            tag(b"k", Position::to_initiator(1, 9, 0), payload)
        );
    }
}
