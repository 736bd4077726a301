//! Visible conflicts (API.md §3.4) with real processes: concurrent writes on both sides
//! of a partition show up in `/v1/conflicts` and `meshkv_conflicts_total` after the heal;
//! sequential writes through different nodes never do.

mod common;

use std::time::Duration;

use common::{require_nft, TestCluster};
use serde_json::Value;

/// Bound of every wait.
const WAIT: Duration = Duration::from_secs(30);

async fn conflicts(cluster: &TestCluster, i: usize) -> Vec<Value> {
    let reply = cluster
        .client(i)
        .get_json("/v1/conflicts?limit=256")
        .await
        .expect("/v1/conflicts");
    reply["conflicts"].as_array().expect("a list").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_writes_through_different_nodes_never_conflict() {
    let cluster = TestCluster::start(3, "");
    cluster.wait_mesh(WAIT).await;
    for round in 0..30 {
        let writer = 1 + round % 3;
        for key in ["a", "b", "c/d"] {
            let value = format!("{key} #{round} via n{writer}");
            let body = if round % 7 == 6 { None } else { Some(value) };
            let client = cluster.client(writer);
            match body {
                Some(value) => client.put(key, &value, None).await.map(|_| ()),
                None => client.delete(key, None).await.map(|_| ()),
            }
            .unwrap_or_else(|e| panic!("write {key} on n{writer}: {e}"));
        }
    }
    cluster.wait_converged(WAIT).await.expect("converged");
    for i in 1..=3 {
        let found = conflicts(&cluster, i).await;
        assert!(found.is_empty(), "n{i} reports conflicts: {found:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_in_a_partition_show_up_as_conflicts_after_the_heal() {
    if !require_nft("concurrent_writes_in_a_partition_show_up_as_conflicts_after_the_heal") {
        return;
    }
    let mut cluster = TestCluster::start(3, "");
    cluster.wait_mesh(WAIT).await;
    cluster
        .client(1)
        .put("k", "base", None)
        .await
        .expect("base");
    cluster
        .client(1)
        .put("quiet", "only here", None)
        .await
        .expect("quiet");
    cluster
        .wait_converged(WAIT)
        .await
        .expect("converged before");
    cluster.partition(&[&[1], &[2, 3]]);
    // One side, then the other: neither writer sees the other's write.
    cluster
        .client(1)
        .put("k", "left", Some("one"))
        .await
        .expect("left");
    cluster
        .client(2)
        .put("k", "right", Some("one"))
        .await
        .expect("right");
    cluster.heal();
    cluster
        .wait_converged(WAIT)
        .await
        .expect("converged after the heal");

    let winner = cluster.client(1).get("k", None).await.unwrap().unwrap();
    let winner = winner.text().into_owned();
    let loser = if winner == "right" { "left" } else { "right" };
    // The node that held the loser discarded it: it reports the conflict.
    let mut reported = 0;
    for i in 1..=3 {
        for conflict in conflicts(&cluster, i).await {
            assert_eq!(conflict["key"], "k", "{conflict}");
            assert_eq!(conflict["winner"]["value"], winner.as_str(), "{conflict}");
            assert_eq!(conflict["loser"]["value"], loser, "{conflict}");
            assert_eq!(conflict["node"], cluster.id(i), "{conflict}");
            assert!(conflict["at_ms"].as_u64().unwrap() > 0);
            assert!(conflict["winner"]["version"].as_str() > conflict["loser"]["version"].as_str());
            reported += 1;
        }
    }
    assert!(reported >= 1, "no node reported the conflict");
    // The node that held the loser was n1 (left) or n2 (right): it saw the conflict,
    // once, however many times the loser reached it.
    let holder = if winner == "right" { 1 } else { 2 };
    let found = conflicts(&cluster, holder).await;
    assert_eq!(found.len(), 1, "n{holder}: {found:?}");
}
