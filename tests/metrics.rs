//! `/metrics` of a fresh node: every family is listed, with its known series at 0, before
//! the first event it counts (a series that appears only with its first event hides
//! that event from `rate()`, from alerts and from dashboards).

mod common;

use common::TestCluster;

/// Every family a node exports (README/DESIGN name them).
const FAMILIES: [&str; 36] = [
    "meshkv_peer_frames",
    "meshkv_peer_bytes",
    "meshkv_peer_frames_rejected",
    "meshkv_http_requests",
    "meshkv_http_request_duration_seconds",
    "meshkv_pushed_entries",
    "meshkv_push_batches",
    "meshkv_pushes_coalesced",
    "meshkv_pushes_dropped",
    "meshkv_anti_entropy_rounds",
    "meshkv_keys_repaired",
    "meshkv_clock_skew_refusals",
    "meshkv_keys",
    "meshkv_tombstones",
    "meshkv_peer_state",
    "meshkv_peer_link_down",
    "meshkv_bounds_hit",
    "meshkv_tombstones_collected",
    "meshkv_catching_up",
    "meshkv_journal_written_bytes",
    "meshkv_journal_fsyncs",
    "meshkv_journal_compactions",
    "meshkv_journal_durable_lag",
    "meshkv_journal_disk_bytes",
    "meshkv_journal_garbage_bytes",
    "meshkv_clock_offset_ms",
    "meshkv_fenced",
    "meshkv_conflicts",
    "meshkv_watchers",
    "meshkv_watch_events",
    "meshkv_watch_overflows",
    "meshkv_session_fetches",
    "meshkv_session_behind",
    "meshkv_http_auth_refused",
    "meshkv_peer_tls_refused",
    "meshkv_http_tls_failures",
];

/// Whether `text` lists a series of `family` (`family_total{…}`, `family{…}`, `family 0`).
fn has_series(text: &str, family: &str) -> bool {
    text.lines().any(|line| {
        !line.starts_with('#')
            && line
                .strip_prefix(family)
                .is_some_and(|tail| tail.starts_with(['{', '_', ' ']))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_node_lists_every_family_at_zero() {
    let cluster = TestCluster::start(2, "");
    let text = reqwest::get(format!("{}/metrics", cluster.url(1)))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("a /metrics body");

    let declared: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .collect();
    for family in FAMILIES {
        assert!(declared.contains(&family), "{family} not declared:\n{text}");
        assert!(
            has_series(&text, family),
            "{family} lists no series:\n{text}"
        );
    }
    assert_eq!(declared.len(), FAMILIES.len(), "families: {declared:?}");

    // Events that cannot have happened yet, counted at 0 already.
    for series in [
        r#"meshkv_keys_repaired_total{reason="read_repair"} 0"#,
        r#"meshkv_peer_frames_rejected_total{reason="bad_tag"} 0"#,
        r#"meshkv_peer_frames_rejected_total{reason="oversized_frame"} 0"#,
        r#"meshkv_peer_frames_rejected_total{reason="replay"} 0"#,
        r#"meshkv_peer_frames_rejected_total{reason="out_of_order"} 0"#,
        r#"meshkv_peer_frames_rejected_total{reason="reflected"} 0"#,
        r#"meshkv_bounds_hit_total{reason="job_queue"} 0"#,
        r#"meshkv_peer_tls_refused_total{reason="unknown_ca"} 0"#,
        r#"meshkv_peer_tls_refused_total{reason="hello_mismatch"} 0"#,
        r#"meshkv_http_tls_failures_total{reason="plaintext"} 0"#,
        r#"meshkv_pushes_dropped_total{peer="n2"} 0"#,
        r#"meshkv_peer_frames_total{peer="n2",kind="push",direction="sent"} 0"#,
        r#"meshkv_http_requests_total{route="kv_put",status="200"} 0"#,
        r#"meshkv_http_requests_total{route="unmatched",status="404"} 0"#,
        r#"meshkv_http_request_duration_seconds_count{route="kv_get"} 0"#,
        r#"meshkv_http_auth_refused_total{status="401"} 0"#,
        r#"meshkv_http_auth_refused_total{status="403"} 0"#,
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
}
