//! Counters, gauges and histograms, rendered in the Prometheus text format.
//!
//! Owns: [`Metrics`], the one registry of the node; every family is declared here so
//! that the whole set can be read in one place.
//! Knows nothing of: who increments what (any layer may record into it).
//!
//! Bytes and frames between nodes are counted per peer, message kind and direction at
//! the codec, so the figures in DESIGN.md (bytes per write, idle bytes per second) are
//! read off `/metrics` rather than estimated.

use std::fmt::Write as _;
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of node-to-node traffic.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FrameLabels {
    /// The peer's node id, or `unknown` before the handshake.
    pub peer: String,
    /// The message kind (`push`, `sync_root`, …).
    pub kind: &'static str,
    /// `sent` or `received`.
    pub direction: &'static str,
}

/// Labels of client HTTP requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route, e.g. `kv_put`.
    pub route: &'static str,
    /// The HTTP status code.
    pub status: u16,
}

/// Labels of the HTTP latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route, e.g. `kv_put`.
    pub route: &'static str,
}

/// Labels carrying one reason or outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why, or how it ended.
    pub reason: &'static str,
}

/// Labels carrying a peer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// The peer's node id.
    pub peer: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// Every metric of one node. Cheap to share: clone the `Arc`.
pub struct Metrics {
    registry: Registry,
    /// Frames between nodes.
    pub frames: Family<FrameLabels, Counter>,
    /// Bytes between nodes, length prefix included.
    pub frame_bytes: Family<FrameLabels, Counter>,
    /// Frames or connections refused, by reason.
    pub frames_rejected: Family<ReasonLabels, Counter>,
    /// Client requests by route and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Client request latency by route, in seconds.
    pub request_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Entries sent in push batches.
    pub pushed_entries: Counter,
    /// Push batches sent.
    pub push_batches: Counter,
    /// Writes queued for a peer while an older write of the same key was still queued
    /// (coalesced into one push).
    pub pushes_coalesced: Counter,
    /// Writes dropped from a full outbox (left to anti-entropy).
    pub pushes_dropped: Family<PeerLabels, Counter>,
    /// Anti-entropy rounds by outcome (`in_sync`, `repaired`, `failed`).
    pub anti_entropy_rounds: Family<ReasonLabels, Counter>,
    /// Entries exchanged by anti-entropy (`pushed`, `fetched`).
    pub keys_repaired: Family<ReasonLabels, Counter>,
    /// Remote versions refused for being too far in the future.
    pub skew_refusals: Counter,
    /// Keys holding a value (set when scraped).
    pub keys: Gauge,
    /// Keys holding a tombstone (set when scraped).
    pub tombstones: Gauge,
    /// Peer state: 0 alive, 1 suspect, 2 down.
    pub peer_state: Family<PeerLabels, Gauge>,
    /// Links to a peer that were up and failed (the peer became `down`).
    pub link_down: Family<PeerLabels, Counter>,
    /// Bounds reached, by bound (`job_queue`, …), other than those counted above.
    pub bounds_hit: Family<ReasonLabels, Counter>,
    /// Open watches (`GET /v1/watch`).
    pub watchers: Gauge,
    /// Events handed to watchers, snapshot entries included.
    pub watch_events: Counter,
    /// Watchers cut off because they fell behind.
    pub watch_overflows: Counter,
}

impl Metrics {
    /// A registry with every family registered under the `meshkv_` prefix.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("meshkv");
        let metrics = Self {
            frames: Family::default(),
            frame_bytes: Family::default(),
            frames_rejected: Family::default(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            pushed_entries: Counter::default(),
            push_batches: Counter::default(),
            pushes_coalesced: Counter::default(),
            pushes_dropped: Family::default(),
            anti_entropy_rounds: Family::default(),
            keys_repaired: Family::default(),
            skew_refusals: Counter::default(),
            keys: Gauge::default(),
            tombstones: Gauge::default(),
            peer_state: Family::default(),
            link_down: Family::default(),
            bounds_hit: Family::default(),
            watchers: Gauge::default(),
            watch_events: Counter::default(),
            watch_overflows: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "peer_frames",
            "Frames between nodes",
            metrics.frames.clone(),
        );
        registry.register(
            "peer_bytes",
            "Bytes between nodes, length prefix included",
            metrics.frame_bytes.clone(),
        );
        registry.register(
            "peer_frames_rejected",
            "Frames or peer connections refused, by reason",
            metrics.frames_rejected.clone(),
        );
        registry.register(
            "http_requests",
            "Client requests by route and status",
            metrics.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Client request latency by route",
            metrics.request_seconds.clone(),
        );
        registry.register(
            "pushed_entries",
            "Entries sent in push batches",
            metrics.pushed_entries.clone(),
        );
        registry.register(
            "push_batches",
            "Push batches sent",
            metrics.push_batches.clone(),
        );
        registry.register(
            "pushes_coalesced",
            "Writes folded into an already queued push of the same key",
            metrics.pushes_coalesced.clone(),
        );
        registry.register(
            "pushes_dropped",
            "Writes dropped from a full outbox, left to anti-entropy",
            metrics.pushes_dropped.clone(),
        );
        registry.register(
            "anti_entropy_rounds",
            "Anti-entropy rounds by outcome",
            metrics.anti_entropy_rounds.clone(),
        );
        registry.register(
            "keys_repaired",
            "Entries exchanged by anti-entropy",
            metrics.keys_repaired.clone(),
        );
        registry.register(
            "clock_skew_refusals",
            "Remote versions refused for being too far in the future",
            metrics.skew_refusals.clone(),
        );
        registry.register("keys", "Keys holding a value", metrics.keys.clone());
        registry.register(
            "tombstones",
            "Keys holding a tombstone",
            metrics.tombstones.clone(),
        );
        registry.register(
            "peer_state",
            "Failure detector view of each peer: 0 alive, 1 suspect, 2 down",
            metrics.peer_state.clone(),
        );
        registry.register(
            "peer_link_down",
            "Links to a peer that were up and failed",
            metrics.link_down.clone(),
        );
        registry.register(
            "bounds_hit",
            "Bounds reached (requests dropped), by bound",
            metrics.bounds_hit.clone(),
        );
        registry.register(
            "watchers",
            "Open watches (GET /v1/watch)",
            metrics.watchers.clone(),
        );
        registry.register(
            "watch_events",
            "Events sent to watchers, snapshot entries included",
            metrics.watch_events.clone(),
        );
        registry.register(
            "watch_overflows",
            "Watchers cut off because they fell behind",
            metrics.watch_overflows.clone(),
        );
        Arc::new(Self {
            registry,
            ..metrics
        })
    }

    /// Counts one frame of `bytes` bytes.
    pub fn record_frame(
        &self,
        peer: &str,
        kind: &'static str,
        direction: &'static str,
        bytes: usize,
    ) {
        let labels = FrameLabels {
            peer: peer.to_owned(),
            kind,
            direction,
        };
        self.frames.get_or_create(&labels).inc();
        self.frame_bytes.get_or_create(&labels).inc_by(bytes as u64);
    }

    /// Counts one refused frame or connection.
    pub fn reject(&self, reason: &'static str) {
        self.frames_rejected
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The whole registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if encode(&mut text, &self.registry).is_err() {
            let _ = writeln!(text, "# encoding failed");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_recorded_frames() {
        let metrics = Metrics::new();
        metrics.record_frame("n2", "push", "sent", 120);
        metrics.record_frame("n2", "push", "sent", 30);
        let text = metrics.render();
        assert!(
            text.contains(r#"meshkv_peer_bytes_total{peer="n2",kind="push",direction="sent"} 150"#),
            "{text}"
        );
        assert!(
            text.contains(r#"meshkv_peer_frames_total{peer="n2",kind="push",direction="sent"} 2"#)
        );
    }
}
