//! Tombstone collection with real processes: deletes are collected once every node
//! holds them, kept while a node is away, collected without it after the grace, and
//! no deleted key comes back: not from a node that returns empty, not from one that
//! was cut off while the delete happened.

mod common;

use std::time::Duration;

use common::{eventually, require_nft, TestCluster};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);
/// Short rounds, so that collection follows deletes quickly.
const FAST: &str = "anti_entropy_interval_ms = 200\n";

/// Tombstones node `i` holds (`/v1/convergence`).
async fn tombstones(cluster: &TestCluster, i: usize) -> u64 {
    cluster.convergence(i).await["tombstones"]
        .as_u64()
        .expect("tombstones is a count")
}

/// Node `i`'s view of peer `j` in `/v1/cluster`.
async fn view_of(cluster: &TestCluster, i: usize, j: usize) -> Value {
    let view = cluster.cluster_view(i).await;
    view["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .find(|peer| peer["id"] == cluster.id(j))
        .cloned()
        .expect("the peer is listed")
}

/// Whether node `i` holds a value for `key` (a plain read there).
async fn present(cluster: &TestCluster, i: usize, key: &str) -> bool {
    cluster
        .client(i)
        .get(key, None)
        .await
        .unwrap_or_else(|e| panic!("GET {key} on n{i}: {e}"))
        .is_some()
}

/// Waits until each of `nodes` holds no tombstone.
async fn wait_collected(cluster: &TestCluster, nodes: &[usize]) {
    eventually(WAIT, "every tombstone collected", || async {
        for &i in nodes {
            if tombstones(cluster, i).await != 0 {
                return None;
            }
        }
        Some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_are_collected_kept_while_a_node_is_down_and_collected_after_the_grace() {
    let grace = Duration::from_secs(3);
    let mut cluster = TestCluster::start(
        3,
        &format!("{FAST}tombstone_grace_ms = {}\n", grace.as_millis()),
    );
    cluster.wait_mesh(WAIT).await;
    for i in 0..20 {
        cluster
            .client(1 + i % 3)
            .put(&format!("key{i}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    for i in 0..10 {
        cluster
            .client(1)
            .delete(&format!("key{i}"), None)
            .await
            .unwrap();
    }
    // Every node held the ten tombstones, and every node collected them.
    wait_collected(&cluster, &[1, 2, 3]).await;
    cluster.wait_converged(WAIT).await.unwrap();
    for i in 1..=3 {
        assert_eq!(
            cluster.metric(i, "meshkv_tombstones_collected_total").await,
            10.0,
            "n{i}"
        );
        assert_eq!(cluster.convergence(i).await["keys"], 10, "n{i}");
        for key in 0..20 {
            assert_eq!(present(&cluster, i, &format!("key{key}")).await, key >= 10);
        }
        for j in (1..=3).filter(|j| *j != i) {
            assert_eq!(view_of(&cluster, i, j).await["tombstones"], "synced");
        }
    }

    // n3 goes down; deletes now wait for it.
    cluster.kill(3);
    for i in 10..15 {
        cluster
            .client(1)
            .delete(&format!("key{i}"), None)
            .await
            .unwrap();
    }
    eventually(WAIT, "n1 and n2 hold the five new tombstones", || async {
        (tombstones(&cluster, 1).await == 5 && tombstones(&cluster, 2).await == 5).then_some(())
    })
    .await;
    // Several rounds and collection passes later, still within the grace: kept.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for i in 1..=2 {
        assert_eq!(tombstones(&cluster, i).await, 5, "n{i} must wait for n3");
        let n3 = view_of(&cluster, i, 3).await;
        // Its watermark predates the deletes; within the grace it is not left out.
        assert_eq!(n3["tombstones"], "synced", "{n3}");
    }

    // Past the grace, n1 and n2 collect without n3, and retire its old data.
    wait_collected(&cluster, &[1, 2]).await;
    for i in 1..=2 {
        let n3 = view_of(&cluster, i, 3).await;
        assert_eq!(n3["tombstones"], "excluded", "{n3}");
        let refused = n3["refused"].as_str().expect("n3's old data is refused");
        assert!(refused.contains("wipe its data directory"), "{refused}");
    }

    // n3 returns empty (a memory-only node): a new data epoch, admitted. It catches up
    // and the deleted keys stay deleted everywhere.
    cluster.restart(3);
    cluster.wait_converged(WAIT).await.unwrap();
    eventually(WAIT, "n1 and n2 admit the new n3", || async {
        for i in 1..=2 {
            if !view_of(&cluster, i, 3).await["refused"].is_null() {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert!(cluster.cluster_view(3).await["retired"].is_null());
    for i in 1..=3 {
        for key in 0..20 {
            assert_eq!(
                present(&cluster, i, &format!("key{key}")).await,
                key >= 15,
                "n{i} key{key}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_while_a_key_is_deleted_does_not_bring_it_back() {
    if !require_nft("a_node_cut_off_while_a_key_is_deleted_does_not_bring_it_back") {
        return;
    }
    let mut cluster = TestCluster::start(3, FAST);
    cluster.wait_mesh(WAIT).await;
    cluster.client(1).put("k", "old", None).await.unwrap();
    cluster.wait_converged(WAIT).await.unwrap();
    cluster.partition(&[&[1, 2], &[3]]);
    cluster.client(1).delete("k", None).await.unwrap();
    // The side that saw the delete keeps its tombstone: n3 has not seen it.
    eventually(WAIT, "n1 and n2 hold the tombstone", || async {
        (tombstones(&cluster, 1).await == 1 && tombstones(&cluster, 2).await == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(tombstones(&cluster, 1).await, 1);
    assert_eq!(tombstones(&cluster, 2).await, 1);
    assert!(
        present(&cluster, 3, "k").await,
        "n3 still has the old value"
    );
    cluster.heal();
    // n3 gets the tombstone, then everyone collects it, and k stays deleted.
    wait_collected(&cluster, &[1, 2, 3]).await;
    cluster.wait_converged(WAIT).await.unwrap();
    for i in 1..=3 {
        assert!(!present(&cluster, i, "k").await, "k came back on n{i}");
        assert_eq!(
            cluster.metric(i, "meshkv_tombstones_collected_total").await,
            1.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_longer_than_the_grace_is_refused_until_it_returns_empty() {
    if !require_nft("a_node_cut_off_longer_than_the_grace_is_refused_until_it_returns_empty") {
        return;
    }
    let mut cluster = TestCluster::start(3, &format!("{FAST}tombstone_grace_ms = 2000\n"));
    cluster.wait_mesh(WAIT).await;
    cluster.client(1).put("k", "old", None).await.unwrap();
    cluster.wait_converged(WAIT).await.unwrap();
    cluster.partition(&[&[1, 2], &[3]]);
    cluster.client(1).delete("k", None).await.unwrap();
    // Past the grace, the majority collects without n3 and retires n3's data.
    wait_collected(&cluster, &[1, 2]).await;
    cluster.heal();
    // n3 still holds the old value of k. It learns it was retired, and every node
    // refuses its links, so the old value never reaches the others.
    eventually(WAIT, "n3 knows its data was retired", || async {
        cluster.cluster_view(3).await["retired"]
            .as_str()
            .map(str::to_owned)
    })
    .await;
    let reason = view_of(&cluster, 1, 3).await["refused"]
        .as_str()
        .expect("n1 refuses n3")
        .to_owned();
    assert!(reason.contains("tombstone_grace_ms"), "{reason}");
    // Rounds keep being tried across the healed network: k must stay deleted.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for i in 1..=2 {
        assert!(!present(&cluster, i, "k").await, "k came back on n{i}");
        assert_eq!(tombstones(&cluster, i).await, 0);
    }
    assert!(present(&cluster, 3, "k").await, "n3 keeps its stale copy");
    // Restarted, a memory-only n3 is empty: a new epoch, admitted, caught up.
    cluster.restart(3);
    cluster.wait_converged(WAIT).await.unwrap();
    for i in 1..=3 {
        assert!(!present(&cluster, i, "k").await, "k came back on n{i}");
    }
    assert!(view_of(&cluster, 1, 3).await["refused"].is_null());
}
