//! The dashboard page and what it reads, against real `meshkv` processes: every node
//! serves the page at `/` and `/ui`, and `/v1/cluster` gives each peer's client address
//! and may be read from another node's page. The page itself is driven in a real
//! browser by scripts/dashboard-test.sh.

mod common;

use common::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_serves_the_page_and_a_cluster_view_it_can_read() {
    let cluster = TestCluster::start(3, "");
    for node in 1..=3 {
        for path in ["/", "/ui"] {
            let response = reqwest::get(format!("{}{path}", cluster.url(node)))
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "GET {path} on n{node}");
            assert_eq!(
                response.headers()["content-type"],
                "text/html; charset=utf-8"
            );
            let page = response.text().await.unwrap();
            assert!(page.contains("<title>meshkv dashboard</title>"));
            assert!(page.len() < 25_000, "the page is {} bytes", page.len());
            // With client tokens on, the page sends the token typed in its field as a
            // Bearer header; an EventSource could not, so the watch is fetch-streamed
            // (driven in Chromium by scripts/dashboard-test.sh with DASHBOARD_TOKENS=1).
            assert!(page.contains("id=\"token\"") && page.contains("sessionStorage"));
            assert!(page.contains("Authorization: \"Bearer \" + token"));
            assert!(!page.contains("new EventSource("));
        }
    }
    let response = reqwest::get(format!("{}/v1/cluster", cluster.url(2)))
        .await
        .unwrap();
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let view: serde_json::Value = response.json().await.unwrap();
    let peers = view["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2);
    for peer in peers {
        let index: usize = peer["id"].as_str().unwrap()[1..].parse().unwrap();
        assert_eq!(peer["http"], cluster.http_addr(index).to_string(), "{peer}");
    }
    // Data routes stay same-origin: no CORS header on them.
    let response = reqwest::get(format!("{}/v1/kv?prefix=", cluster.url(1)))
        .await
        .unwrap();
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    // POST / is not a thing.
    let response = reqwest::Client::new()
        .post(format!("{}/", cluster.url(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
}
