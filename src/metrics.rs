//! Counters, gauges and histograms, rendered in the Prometheus text format.
//!
//! Owns: [`Metrics`], the one registry of the node; every family is declared here so
//! that the whole set can be read in one place.
//! Knows nothing of: who increments what (any layer may record into it).
//!
//! Bytes and frames between nodes are counted per peer, message kind and direction at
//! the codec, so the figures in DESIGN.md (bytes per write, idle bytes per second) are
//! read off `/metrics` rather than estimated.
//!
//! Every series whose labels are known in advance (routes, reasons, configured peers)
//! exists at 0 from the start: a family that appears only with its first event hides
//! that event from `rate()` and from alerts, and is missing from dashboards until then.
//! The per-request counters of the client API are resolved once into handles, so a
//! request costs two atomic increments and a histogram update, no label hashing.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

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

/// Labels carrying an HTTP status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
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

/// The routes of the client API, as the `route` label of the HTTP families names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// `GET /v1/kv/{key}`.
    KvGet,
    /// `PUT /v1/kv/{key}`.
    KvPut,
    /// `DELETE /v1/kv/{key}`.
    KvDelete,
    /// Any other method on `/v1/kv/{key}`, and `/v1/kv/` (no key).
    KvOther,
    /// `/v1/kv`: listing.
    KvList,
    /// `/v1/convergence`.
    Convergence,
    /// `/v1/cluster`.
    Cluster,
    /// `/v1/conflicts`.
    Conflicts,
    /// `/v1/watch`.
    Watch,
    /// `/` and `/ui`: the dashboard.
    Dashboard,
    /// `/health`.
    Health,
    /// `/metrics`.
    Metrics,
    /// No route.
    Unmatched,
}

impl Route {
    /// Every route.
    pub const ALL: [Route; 13] = [
        Route::KvGet,
        Route::KvPut,
        Route::KvDelete,
        Route::KvOther,
        Route::KvList,
        Route::Convergence,
        Route::Cluster,
        Route::Conflicts,
        Route::Watch,
        Route::Dashboard,
        Route::Health,
        Route::Metrics,
        Route::Unmatched,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::KvGet => "kv_get",
            Route::KvPut => "kv_put",
            Route::KvDelete => "kv_delete",
            Route::KvOther => "kv_other",
            Route::KvList => "kv_list",
            Route::Convergence => "convergence",
            Route::Cluster => "cluster",
            Route::Conflicts => "conflicts",
            Route::Watch => "watch",
            Route::Dashboard => "dashboard",
            Route::Health => "health",
            Route::Metrics => "metrics",
            Route::Unmatched => "unmatched",
        }
    }

    /// The status a route normally answers: its series exists from the start.
    fn usual_status(self) -> u16 {
        match self {
            Route::Unmatched => 404,
            _ => 200,
        }
    }
}

/// The statuses the client API answers, each with a request counter handle per route.
/// Any other status is still counted, through the family's label lookup.
const HTTP_STATUSES: [u16; 11] = [200, 400, 401, 403, 404, 405, 408, 413, 414, 500, 503];

/// Every `reason` of `meshkv_peer_frames_rejected_total` the transport reports.
pub const REJECT_REASONS: [&str; 14] = [
    "too_many_connections",
    "handshake_timeout",
    "no_hello",
    "protocol",
    "cluster",
    "not_member",
    "wrong_node",
    "bad_tag",
    "replay",
    "out_of_order",
    "reflected",
    "bad_frame",
    "oversized_frame",
    "unexpected",
];

/// Every `status` of `meshkv_http_auth_refused_total`.
pub const AUTH_REFUSALS: [u16; 2] = [401, 403];
/// Every `reason` of `meshkv_peer_tls_refused_total`: the dialer's certificate is not
/// from the CA, it presented none, it names no member of the cluster file, the `Hello`
/// names another node than the certificate; the responder's certificate does not name
/// the node dialed; any other handshake failure (not TLS, a timeout).
pub const PEER_TLS_REFUSALS: [&str; 6] = [
    "unknown_ca",
    "no_certificate",
    "names_no_member",
    "hello_mismatch",
    "wrong_name",
    "handshake",
];

/// Every `reason` of `meshkv_http_tls_failures_total`: plain HTTP sent to the HTTPS
/// port, no handshake within the header deadline, any other handshake failure.
pub const HTTP_TLS_FAILURES: [&str; 3] = ["plaintext", "timeout", "handshake"];

/// Every `reason` (outcome) of `meshkv_anti_entropy_rounds_total`.
pub const ROUND_OUTCOMES: [&str; 3] = ["in_sync", "repaired", "failed"];

/// Every `reason` (how) of `meshkv_keys_repaired_total`.
pub const REPAIR_KINDS: [&str; 3] = ["pushed", "fetched", "read_repair"];

/// Every `reason` (bound) of `meshkv_bounds_hit_total`.
pub const BOUNDS: [&str; 1] = ["job_queue"];

/// The handles of one route: its latency histogram and its request counter per status.
struct RouteHandles {
    seconds: Histogram,
    requests: [OnceLock<Counter>; HTTP_STATUSES.len()],
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
    /// Tombstones dropped by collection.
    pub tombstones_collected: Counter,
    /// Peer state: 0 alive, 1 suspect, 2 down.
    pub peer_state: Family<PeerLabels, Gauge>,
    /// Links to a peer that were up and failed (the peer became `down`).
    pub link_down: Family<PeerLabels, Counter>,
    /// Bounds reached, by bound (`job_queue`, …), other than those counted above.
    pub bounds_hit: Family<ReasonLabels, Counter>,
    /// Handles into `requests` and `request_seconds`, indexed by [`Route`].
    routes: [RouteHandles; Route::ALL.len()],
    /// 1 while the node is catching up after its start, then 0.
    pub catching_up: Gauge,
    /// Bytes the journal handed to the OS.
    pub journal_written_bytes: Counter,
    /// fdatasyncs of the journal.
    pub journal_fsyncs: Counter,
    /// Journal compactions completed.
    pub journal_compactions: Counter,
    /// Journal appends not yet durable.
    pub journal_durable_lag: Gauge,
    /// Bytes of the journal's files.
    pub journal_disk_bytes: Gauge,
    /// Journal bytes known to be overwritten, not yet compacted away.
    pub journal_garbage_bytes: Gauge,
    /// Each peer's measured clock offset (its clock minus ours), ms.
    pub clock_offset_ms: Family<PeerLabels, Gauge>,
    /// 1 while this node refuses client writes for clock skew, else 0.
    pub fenced: Gauge,
    /// Concurrent writes that a merge on this node discarded (LWW conflicts).
    pub conflicts: Counter,
    /// Reads with a session token that the local register could not settle, so the
    /// node asked its peers.
    pub session_fetches: Counter,
    /// Requests with a session token answered 503: not caught up in time.
    pub session_behind: Counter,
    /// Open watches (`GET /v1/watch`).
    pub watchers: Gauge,
    /// Events handed to watchers, snapshot entries included.
    pub watch_events: Counter,
    /// Watchers cut off because they fell behind.
    pub watch_overflows: Counter,
    /// Client requests refused for their token: 401 (none, malformed, unknown) or 403
    /// (a role without the right).
    pub auth_refused: Family<StatusLabels, Counter>,
    /// Peer connections refused for TLS, by reason (see [`crate::tls`]).
    pub peer_tls_refused: Family<ReasonLabels, Counter>,
    /// Client TLS handshakes that failed, by reason.
    pub http_tls_failures: Family<ReasonLabels, Counter>,
}

impl Metrics {
    /// A registry with every family registered under the `meshkv_` prefix.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("meshkv");
        let request_seconds: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let routes = Route::ALL.map(|route| RouteHandles {
            // A clone shares the family's histogram.
            seconds: request_seconds
                .get_or_create(&RouteLabels {
                    route: route.as_str(),
                })
                .clone(),
            requests: std::array::from_fn(|_| OnceLock::new()),
        });
        let metrics = Self {
            frames: Family::default(),
            frame_bytes: Family::default(),
            frames_rejected: Family::default(),
            requests: Family::default(),
            request_seconds,
            pushed_entries: Counter::default(),
            push_batches: Counter::default(),
            pushes_coalesced: Counter::default(),
            pushes_dropped: Family::default(),
            anti_entropy_rounds: Family::default(),
            keys_repaired: Family::default(),
            skew_refusals: Counter::default(),
            keys: Gauge::default(),
            tombstones: Gauge::default(),
            tombstones_collected: Counter::default(),
            peer_state: Family::default(),
            link_down: Family::default(),
            bounds_hit: Family::default(),
            routes,
            catching_up: Gauge::default(),
            journal_written_bytes: Counter::default(),
            journal_fsyncs: Counter::default(),
            journal_compactions: Counter::default(),
            journal_durable_lag: Gauge::default(),
            journal_disk_bytes: Gauge::default(),
            journal_garbage_bytes: Gauge::default(),
            clock_offset_ms: Family::default(),
            fenced: Gauge::default(),
            conflicts: Counter::default(),
            session_fetches: Counter::default(),
            session_behind: Counter::default(),
            watchers: Gauge::default(),
            watch_events: Counter::default(),
            watch_overflows: Counter::default(),
            auth_refused: Family::default(),
            peer_tls_refused: Family::default(),
            http_tls_failures: Family::default(),
            registry: Registry::default(),
        };
        for route in Route::ALL {
            metrics.request_handle(route, route.usual_status());
        }
        for status in AUTH_REFUSALS {
            let _ = metrics.auth_refused.get_or_create(&StatusLabels { status });
        }
        for (family, reasons) in [
            (&metrics.frames_rejected, &REJECT_REASONS[..]),
            (&metrics.anti_entropy_rounds, &ROUND_OUTCOMES[..]),
            (&metrics.keys_repaired, &REPAIR_KINDS[..]),
            (&metrics.bounds_hit, &BOUNDS[..]),
            (&metrics.peer_tls_refused, &PEER_TLS_REFUSALS[..]),
            (&metrics.http_tls_failures, &HTTP_TLS_FAILURES[..]),
        ] {
            for &reason in reasons {
                let _ = family.get_or_create(&ReasonLabels { reason });
            }
        }
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
            "tombstones_collected",
            "Tombstones dropped once every node held them (or a newer version)",
            metrics.tombstones_collected.clone(),
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
            "catching_up",
            "1 from the node's start until every peer has completed an anti-entropy round with it or was found down",
            metrics.catching_up.clone(),
        );
        registry.register(
            "journal_written_bytes",
            "Bytes the journal handed to the OS (records with their headers)",
            metrics.journal_written_bytes.clone(),
        );
        registry.register(
            "journal_fsyncs",
            "fdatasyncs of the journal (group commit: one per group under fsync batch)",
            metrics.journal_fsyncs.clone(),
        );
        registry.register(
            "journal_compactions",
            "Journal compactions completed",
            metrics.journal_compactions.clone(),
        );
        registry.register(
            "journal_durable_lag",
            "Journal appends queued or written but not yet durable",
            metrics.journal_durable_lag.clone(),
        );
        registry.register(
            "journal_disk_bytes",
            "Bytes of valid data in the journal's segment files",
            metrics.journal_disk_bytes.clone(),
        );
        registry.register(
            "journal_garbage_bytes",
            "Journal bytes known to be overwritten and not yet compacted away",
            metrics.journal_garbage_bytes.clone(),
        );
        registry.register(
            "clock_offset_ms",
            "Measured clock offset of each peer (its clock minus ours), ms",
            metrics.clock_offset_ms.clone(),
        );
        registry.register(
            "fenced",
            "1 while this node refuses client writes for clock skew",
            metrics.fenced.clone(),
        );
        registry.register(
            "conflicts",
            "Concurrent writes that a merge on this node discarded (last-writer-wins conflicts)",
            metrics.conflicts.clone(),
        );
        registry.register(
            "session_fetches",
            "Reads with a session token that the local register could not settle, so the node asked its peers",
            metrics.session_fetches.clone(),
        );
        registry.register(
            "session_behind",
            "Requests with a session token answered 503 because the node could not catch up in time",
            metrics.session_behind.clone(),
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
            "peer_tls_refused",
            "Peer connections refused for TLS reasons (certificate, handshake), by reason",
            metrics.peer_tls_refused.clone(),
        );
        registry.register(
            "http_tls_failures",
            "Client connections whose TLS handshake failed, by reason",
            metrics.http_tls_failures.clone(),
        );
        registry.register(
            "watch_overflows",
            "Watchers cut off because they fell behind",
            metrics.watch_overflows.clone(),
        );
        registry.register(
            "http_auth_refused",
            "Client requests refused for their token: 401 none or unknown, 403 a role without the right",
            metrics.auth_refused.clone(),
        );
        Arc::new(Self {
            registry,
            ..metrics
        })
    }

    /// Creates the series of a configured peer at 0: its pushes dropped, its link
    /// failures, and its frames and bytes of every message kind in both directions.
    pub fn add_peer(&self, peer: &str, kinds: &[&'static str]) {
        let labels = PeerLabels {
            peer: peer.to_owned(),
        };
        let _ = self.pushes_dropped.get_or_create(&labels);
        let _ = self.link_down.get_or_create(&labels);
        // 0 until the first sample (`/v1/cluster` says `null` then).
        let _ = self.clock_offset_ms.get_or_create(&labels);
        for &kind in kinds {
            for direction in ["sent", "received"] {
                let labels = FrameLabels {
                    peer: peer.to_owned(),
                    kind,
                    direction,
                };
                let _ = self.frames.get_or_create(&labels);
                let _ = self.frame_bytes.get_or_create(&labels);
            }
        }
    }

    /// Counts one client request of `route` answered with `status` after `elapsed`.
    pub fn record_request(&self, route: Route, status: u16, elapsed: Duration) {
        let labels = || RequestLabels {
            route: route.as_str(),
            status,
        };
        match self.request_handle(route, status) {
            Some(counter) => counter.inc(),
            None => self.requests.get_or_create(&labels()).inc(),
        };
        self.routes[route as usize]
            .seconds
            .observe(elapsed.as_secs_f64());
    }

    /// The request counter of `route` and `status`, resolved on first use, for the
    /// statuses the API answers.
    fn request_handle(&self, route: Route, status: u16) -> Option<&Counter> {
        let index = HTTP_STATUSES.iter().position(|&known| known == status)?;
        Some(self.routes[route as usize].requests[index].get_or_init(|| {
            self.requests
                .get_or_create(&RequestLabels {
                    route: route.as_str(),
                    status,
                })
                .clone()
        }))
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

    /// Counts a peer connection refused for TLS, by `reason` ([`PEER_TLS_REFUSALS`]).
    pub fn tls_refuse(&self, reason: &'static str) {
        self.peer_tls_refused
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

    /// The families of `text` (Prometheus text format) that list no series.
    fn families_without_series(text: &str) -> Vec<&str> {
        text.lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split(' ').next())
            .filter(|family| {
                !text.lines().any(|line| {
                    line.strip_prefix(family)
                        .is_some_and(|tail| tail.starts_with(['{', '_', ' ']))
                })
            })
            .collect()
    }

    #[test]
    fn every_family_lists_its_known_series_at_zero_from_the_start() {
        let metrics = Metrics::new();
        metrics.add_peer("n2", &["push", "push_ack"]);
        // Set when scraped, from the failure detector.
        metrics
            .peer_state
            .get_or_create(&PeerLabels { peer: "n2".into() })
            .set(2);
        let text = metrics.render();
        assert_eq!(families_without_series(&text), Vec::<&str>::new(), "{text}");
        for family in [
            "meshkv_catching_up",
            "meshkv_journal_fsyncs",
            "meshkv_journal_durable_lag",
            "meshkv_tombstones_collected",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family}: {text}"
            );
        }
        for series in [
            r#"meshkv_peer_frames_rejected_total{reason="bad_tag"} 0"#,
            r#"meshkv_peer_frames_rejected_total{reason="too_many_connections"} 0"#,
            r#"meshkv_keys_repaired_total{reason="read_repair"} 0"#,
            r#"meshkv_anti_entropy_rounds_total{reason="failed"} 0"#,
            r#"meshkv_bounds_hit_total{reason="job_queue"} 0"#,
            r#"meshkv_pushes_dropped_total{peer="n2"} 0"#,
            r#"meshkv_peer_link_down_total{peer="n2"} 0"#,
            r#"meshkv_peer_bytes_total{peer="n2",kind="push_ack",direction="received"} 0"#,
            r#"meshkv_http_requests_total{route="kv_get",status="200"} 0"#,
            r#"meshkv_http_requests_total{route="unmatched",status="404"} 0"#,
            r#"meshkv_http_request_duration_seconds_count{route="kv_put"} 0"#,
        ] {
            assert!(text.contains(series), "{series} missing from\n{text}");
        }
    }

    #[test]
    fn requests_are_counted_by_route_and_status() {
        let metrics = Metrics::new();
        let elapsed = Duration::from_millis(3);
        metrics.record_request(Route::KvGet, 200, elapsed);
        metrics.record_request(Route::KvGet, 200, elapsed);
        metrics.record_request(Route::KvPut, 503, elapsed);
        // A status without a handle is counted through the family.
        metrics.record_request(Route::KvPut, 418, elapsed);
        let text = metrics.render();
        for series in [
            r#"meshkv_http_requests_total{route="kv_get",status="200"} 2"#,
            r#"meshkv_http_requests_total{route="kv_put",status="503"} 1"#,
            r#"meshkv_http_requests_total{route="kv_put",status="418"} 1"#,
            r#"meshkv_http_request_duration_seconds_count{route="kv_get"} 2"#,
            r#"meshkv_http_request_duration_seconds_count{route="kv_put"} 2"#,
        ] {
            assert!(text.contains(series), "{series} missing from\n{text}");
        }
    }

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

    #[test]
    fn tombstone_metrics_are_present_at_zero_from_the_start() {
        let text = Metrics::new().render();
        assert!(text.contains("\nmeshkv_tombstones 0\n"), "{text}");
        assert!(
            text.contains("\nmeshkv_tombstones_collected_total 0\n"),
            "{text}"
        );
    }
}
