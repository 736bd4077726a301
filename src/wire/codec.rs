//! Frames: a 4-byte big-endian length, then (with a cluster secret) a 32-byte
//! HMAC-SHA256 tag, then the MessagePack encoding of one [`Message`].
//!
//! Owns: [`FrameCodec`], the frame size cap and frame authentication.
//! Knows nothing of: what messages mean.
//!
//! Order of checks on receipt, cheapest and safest first: the length prefix against
//! the cap (before allocating), the tag (before parsing), then decoding.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use super::Message;
use crate::metrics::Metrics;

type HmacSha256 = Hmac<Sha256>;

/// Length of the authentication tag.
pub const TAG_BYTES: usize = 32;
/// Length of the frame's length prefix.
pub const PREFIX_BYTES: usize = 4;
/// Frame cap until the handshake is done: `Hello`, `Welcome` and `Refuse` are small,
/// and nothing larger is read from a sender not known to be a member.
pub const HANDSHAKE_MAX_FRAME_BYTES: usize = 4096;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed, or the length prefix exceeded the cap.
    #[error("peer connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The frame's tag does not match the cluster secret.
    #[error("frame authentication failed")]
    BadTag,
    /// The frame is authentic (or unauthenticated) but not a message of this protocol.
    #[error("frame does not decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// A message could not be encoded (never expected).
    #[error("frame does not encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

/// Message ⇄ frame codec for one connection.
pub struct FrameCodec {
    frames: LengthDelimitedCodec,
    key: Option<Arc<[u8]>>,
    metrics: Arc<Metrics>,
    peer: String,
}

impl FrameCodec {
    /// A codec capping frames at `max_frame_bytes`, authenticating with `secret` if any.
    pub fn new(max_frame_bytes: usize, secret: Option<Arc<[u8]>>, metrics: Arc<Metrics>) -> Self {
        Self {
            frames: LengthDelimitedCodec::builder()
                .max_frame_length(max_frame_bytes)
                .new_codec(),
            key: secret,
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

    fn tag(key: &[u8], payload: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
        mac.update(payload);
        mac
    }
}

impl Encoder<&Message> for FrameCodec {
    type Error = WireError;

    fn encode(&mut self, message: &Message, dst: &mut BytesMut) -> Result<(), WireError> {
        let payload = rmp_serde::to_vec(message)?;
        let frame = match &self.key {
            Some(key) => {
                let tag = Self::tag(key, &payload).finalize().into_bytes();
                let mut frame = Vec::with_capacity(TAG_BYTES + payload.len());
                frame.extend_from_slice(&tag);
                frame.extend_from_slice(&payload);
                frame
            }
            None => payload,
        };
        let bytes = frame.len() + PREFIX_BYTES;
        self.frames.encode(Bytes::from(frame), dst)?;
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
                    return Err(WireError::BadTag);
                }
                let (tag, payload) = frame.split_at(TAG_BYTES);
                Self::tag(key, payload)
                    .verify_slice(tag)
                    .map_err(|_| WireError::BadTag)?;
                payload
            }
            None => &frame[..],
        };
        let message: Message = rmp_serde::from_slice(payload)?;
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

    fn codec(secret: Option<&[u8]>) -> FrameCodec {
        FrameCodec::new(1024, secret.map(Arc::from), Metrics::new())
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
}
