//! Replication across real `meshkv serve` processes: read-your-writes through
//! different nodes, `previous` chains, node crashes, restarts, partitions.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{eventually, require_nft, TestCluster};
use meshkv::tools::client::Client;

/// Bound of every convergence wait.
const CONVERGE: Duration = Duration::from_secs(30);
/// Bound of waits for the failure detectors to notice a crash or a partition.
const DETECT: Duration = Duration::from_secs(15);

/// Waits until node `observer` no longer holds node `target` alive.
async fn wait_not_alive(cluster: &TestCluster, observer: usize, target: usize) {
    let what = format!(
        "{} no longer holds {} alive",
        cluster.id(observer),
        cluster.id(target)
    );
    eventually(DETECT, &what, || async {
        match cluster.peer_state(observer, target).await.as_deref() {
            Some("alive") | None => None,
            Some(_) => Some(()),
        }
    })
    .await
}

/// Starts a cluster and waits until every node holds every other one alive.
///
/// `TestCluster::start` returns once every node answers `/health`; a node may still
/// hold some peers `down` then (its first dial came before they listened, and it
/// retries with a backoff), and `live` writes do not wait for `down` peers. The
/// contract promises read-your-writes through any *healthy* node right away;
/// `replicates_across_three_nodes` checks that window. The other tests test other
/// things, so they start from a fully linked cluster.
async fn start_linked(n: usize) -> TestCluster {
    let cluster = TestCluster::start(n, "");
    cluster.wait_mesh(DETECT).await;
    cluster
}

async fn read_value(client: &Client, key: &str) -> Option<String> {
    client
        .get(key, None)
        .await
        .unwrap_or_else(|e| panic!("GET {key} on {}: {e}", client.url()))
        .map(|reply| reply.text().into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_across_three_nodes() {
    let cluster = TestCluster::start(3, "");
    for writer in 1..=3 {
        let key = format!("from/n{writer}");
        let value = format!("written on n{writer}");
        let reply = cluster
            .client(writer)
            .put(&key, &value, None)
            .await
            .unwrap_or_else(|e| panic!("PUT {key} on n{writer}: {e}"));
        assert_eq!(reply.key, key);
        assert_eq!(reply.previous, None, "{key} was never written before");
        // The contract: with the defaults, the client's own write is visible at once
        // through every healthy node.
        for reader in 1..=3 {
            assert_eq!(
                read_value(&cluster.client(reader), &key).await.as_deref(),
                Some(value.as_str()),
                "{key} written on n{writer} must be readable right away on n{reader}"
            );
        }
    }
    // Every key on every node, with its version.
    for writer in 1..=3 {
        let key = format!("from/n{writer}");
        let mut versions = Vec::new();
        for reader in 1..=3 {
            let reply = cluster
                .client(reader)
                .get(&key, None)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{key} missing on n{reader}"));
            assert_eq!(reply.node, cluster.id(reader));
            versions.push(reply.version);
        }
        assert!(
            versions.iter().all(|v| v == &versions[0]),
            "{key} has one version everywhere: {versions:?}"
        );
    }
    cluster
        .wait_converged(CONVERGE)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_chains_for_a_client_rotating_nodes() {
    let cluster = start_linked(3).await;
    let key = "chain";
    let mut last_value: Option<String> = None;
    let mut last_version: Option<String> = None;
    for round in 0..30 {
        let node = 1 + round % 3;
        let value = format!("v{round}");
        let reply = cluster
            .client(node)
            .put(key, &value, None)
            .await
            .unwrap_or_else(|e| panic!("PUT {key}={value} on n{node}: {e}"));
        assert_eq!(
            reply.previous_text().map(|text| text.into_owned()),
            last_value,
            "PUT {value} on n{node}: `previous` must be the value written just before"
        );
        if let Some(last) = &last_version {
            assert!(
                reply.version > *last,
                "version {} of {value} must be larger than {last}",
                reply.version
            );
        }
        last_value = Some(value);
        last_version = Some(reply.version);
    }

    let deleted = cluster
        .client(2)
        .delete(key, None)
        .await
        .unwrap_or_else(|e| panic!("DELETE {key} on n2: {e}"));
    assert_eq!(deleted.previous_text().as_deref(), Some("v29"));
    assert!(deleted.version > last_version.unwrap());
    for node in 1..=3 {
        assert_eq!(
            read_value(&cluster.client(node), key).await,
            None,
            "deleted {key} must be 404 on n{node}"
        );
    }
    // A write after the delete sees no previous value.
    let reply = cluster.client(3).put(key, "again", None).await.unwrap();
    assert_eq!(
        reply.previous, None,
        "the delete left a tombstone, not a value"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_leaves_others_serving() {
    let mut cluster = start_linked(3).await;
    for node in 1..=3 {
        cluster
            .client(node)
            .put(&format!("before/{node}"), "x", None)
            .await
            .unwrap_or_else(|e| panic!("PUT before/{node} on n{node}: {e}"));
    }
    cluster.kill(3);
    assert!(!cluster.client(3).healthy().await, "n3 was killed");

    let (c1, c2) = (cluster.client(1), cluster.client(2));
    for round in 0..40 {
        let (writer, reader) = if round % 2 == 0 {
            (&c1, &c2)
        } else {
            (&c2, &c1)
        };
        let key = format!("after/{round}");
        let value = format!("value {round}");
        writer
            .put(&key, &value, None)
            .await
            .unwrap_or_else(|e| panic!("PUT {key} on {} with n3 down: {e}", writer.url()));
        assert_eq!(
            read_value(reader, &key).await.as_deref(),
            Some(value.as_str()),
            "{key} written on {} must be readable on {}",
            writer.url(),
            reader.url()
        );
        assert_eq!(
            read_value(writer, &key).await.as_deref(),
            Some(value.as_str())
        );
    }
    for node in 1..=3 {
        let key = format!("before/{node}");
        for client in [&c1, &c2] {
            assert_eq!(read_value(client, &key).await.as_deref(), Some("x"));
        }
    }
    let deleted = c2
        .delete("after/0", None)
        .await
        .expect("DELETE with n3 down");
    assert_eq!(deleted.previous_text().as_deref(), Some("value 0"));
    assert_eq!(read_value(&c1, "after/0").await, None);
}

/// Runs `ops` (key, Some(value) to put / None to delete) with 8 concurrent tasks,
/// spreading them over `clients`. Every request must succeed.
async fn run_concurrently(clients: Vec<Client>, ops: Vec<(String, Option<String>)>) {
    const TASKS: usize = 8;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let clients = clients.clone();
        let mine: Vec<(usize, (String, Option<String>))> = ops
            .iter()
            .cloned()
            .enumerate()
            .filter(|(i, _)| i % TASKS == task)
            .collect();
        tasks.spawn(async move {
            for (i, (key, value)) in mine {
                let client = &clients[i % clients.len()];
                let result = match &value {
                    Some(value) => client.put(&key, value, None).await,
                    None => client.delete(&key, None).await,
                };
                if let Err(e) = result {
                    panic!("write of {key} on {} failed: {e}", client.url());
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("a writer task panicked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_empty_node_catches_up() {
    let mut cluster = start_linked(3).await;
    let key = |i: usize| format!("k/{i:04}");
    let mut expected: BTreeMap<String, Option<String>> = BTreeMap::new();

    let first: Vec<(String, Option<String>)> = (0..2000)
        .map(|i| (key(i), Some(format!("v-{i}"))))
        .collect();
    expected.extend(first.iter().cloned());
    run_concurrently((1..=3).map(|n| cluster.client(n)).collect(), first).await;

    cluster.kill(3);
    // Not needed for correctness; keeps `live` writes from waiting for the dead node.
    wait_not_alive(&cluster, 1, 3).await;
    wait_not_alive(&cluster, 2, 3).await;

    let mut second: Vec<(String, Option<String>)> = Vec::new();
    second.extend((2000..2200).map(|i| (key(i), Some(format!("v-{i}")))));
    second.extend((100..150).map(|i| (key(i), Some(format!("w-{i}"))))); // overwrites
    second.extend((0..100).map(|i| (key(i), None))); // deletes of keys n3 once held
    second.extend((2000..2020).map(|i| (key(i), None))); // deletes of new keys
    let (puts, deletes): (Vec<_>, Vec<_>) = second.into_iter().partition(|(_, v)| v.is_some());
    expected.extend(puts.iter().cloned());
    run_concurrently(vec![cluster.client(1), cluster.client(2)], puts).await;
    expected.extend(deletes.iter().cloned());
    run_concurrently(vec![cluster.client(1), cluster.client(2)], deletes).await;

    cluster.restart(3);
    cluster
        .wait_converged(CONVERGE)
        .await
        .unwrap_or_else(|e| panic!("the restarted node did not catch up: {e}"));

    let summary = cluster.convergence(3).await;
    let live_keys = expected.values().filter(|v| v.is_some()).count();
    assert_eq!(summary["keys"], live_keys, "n3's key count: {summary}");

    // Every key, read from n3 alone.
    let n3 = cluster.client(3);
    let expected: Vec<(String, Option<String>)> = expected.into_iter().collect();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in expected.chunks(expected.len().div_ceil(8)) {
        let chunk = chunk.to_vec();
        let n3 = n3.clone();
        tasks.spawn(async move {
            for (key, value) in chunk {
                let got = n3
                    .get(&key, None)
                    .await
                    .unwrap_or_else(|e| panic!("GET {key} on n3: {e}"))
                    .map(|reply| reply.text().into_owned());
                assert_eq!(got, value, "{key} on the restarted n3");
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("a reader task panicked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_heals_and_later_write_wins() {
    if !require_nft("partition_heals_and_later_write_wins") {
        return;
    }
    let mut cluster = start_linked(3).await;
    let keys: Vec<String> = (0..5).map(|i| format!("contested/{i}")).collect();
    for key in &keys {
        cluster.client(1).put(key, "initial", None).await.unwrap();
        assert_eq!(
            read_value(&cluster.client(3), key).await.as_deref(),
            Some("initial")
        );
    }

    cluster.partition(&[&[1], &[2, 3]]);
    // Let the failure detectors see the cut, so that `live` writes do not wait for
    // the other side (they would succeed anyway, after live_timeout_ms).
    for (observer, target) in [(1, 2), (1, 3), (2, 1), (3, 1)] {
        wait_not_alive(&cluster, observer, target).await;
    }

    // Minority side first, majority side later.
    let mut minority = Vec::new();
    for key in &keys {
        let reply = cluster
            .client(1)
            .put(key, &format!("minority {key}"), None)
            .await
            .unwrap_or_else(|e| panic!("PUT {key} on n1 during the partition: {e}"));
        assert_eq!(reply.previous_text().as_deref(), Some("initial"));
        minority.push(reply.version);
    }
    let mut majority = Vec::new();
    for key in &keys {
        let reply = cluster
            .client(2)
            .put(key, &format!("majority {key}"), None)
            .await
            .unwrap_or_else(|e| panic!("PUT {key} on n2 during the partition: {e}"));
        assert_eq!(
            reply.previous_text().as_deref(),
            Some("initial"),
            "n2 cannot have seen n1's write through the partition"
        );
        majority.push(reply.version);
    }

    // Each side reads its own value.
    for key in &keys {
        let mine = format!("minority {key}");
        let theirs = format!("majority {key}");
        assert_eq!(read_value(&cluster.client(1), key).await, Some(mine));
        assert_eq!(
            read_value(&cluster.client(2), key).await,
            Some(theirs.clone())
        );
        assert_eq!(read_value(&cluster.client(3), key).await, Some(theirs));
    }
    let digest = |json: serde_json::Value| json["digest"].as_str().unwrap().to_owned();
    let d1 = digest(cluster.convergence(1).await);
    let d2 = digest(cluster.convergence(2).await);
    let d3 = digest(cluster.convergence(3).await);
    assert_ne!(d1, d2, "the sides diverged during the partition");
    assert_ne!(d1, d3, "the sides diverged during the partition");

    cluster.heal();
    cluster
        .wait_converged(CONVERGE)
        .await
        .unwrap_or_else(|e| panic!("no convergence after the heal: {e}"));

    for (i, key) in keys.iter().enumerate() {
        let (winner, version) = if majority[i] > minority[i] {
            (format!("majority {key}"), &majority[i])
        } else {
            (format!("minority {key}"), &minority[i])
        };
        for node in 1..=3 {
            let reply = cluster
                .client(node)
                .get(key, None)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{key} missing on n{node} after the heal"));
            assert_eq!(reply.value, winner, "{key} on n{node} after the heal");
            assert_eq!(&reply.version, version, "{key} on n{node} after the heal");
        }
        // The contract: a later write always wins.
        assert!(
            majority[i] > minority[i],
            "{key}: the later write (n2, {}) must carry a larger version than n1's {}",
            majority[i],
            minority[i]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_sees_a_clients_writes_right_away() {
    // The same promise as `replicates_across_three_nodes`, just after a restart: once
    // the restarted node answers /health, a client writing through another node and
    // reading through it sees its own write.
    let mut cluster = start_linked(3).await;
    cluster.kill(3);
    // A node is typically down for a while before it comes back: let n1 go without
    // news of n3 for 3 s (so that its reconnection attempts have slowed down to
    // their longest interval), then restart n3.
    eventually(DETECT, "n1 has not heard from n3 for 3 s", || async {
        let view = cluster.cluster_view(1).await;
        let n3 = view["peers"].as_array()?.iter().find(|p| p["id"] == "n3")?;
        (n3["state"] != "alive" && n3["last_seen_ms"].as_u64()? > 3000).then_some(())
    })
    .await;
    cluster.restart(3);
    for round in 0..3 {
        let key = format!("after-restart/{round}");
        cluster
            .client(1)
            .put(&key, "fresh", None)
            .await
            .unwrap_or_else(|e| panic!("PUT {key} on n1: {e}"));
        assert_eq!(
            read_value(&cluster.client(3), &key).await.as_deref(),
            Some("fresh"),
            "{key} written on n1 must be readable right away on the restarted, healthy n3"
        );
    }
}

/// A restarted node must not serve clients before it has caught up: with one peer
/// down it waits at least `max_clock_skew_ms` (so its HLC is past every version of its
/// previous life), answering 503 meanwhile; once it answers, every key is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_serves_only_once_caught_up() {
    let mut cluster = TestCluster::start(3, "max_clock_skew_ms = 3000\n");
    cluster.wait_mesh(DETECT).await;
    let writer = cluster.client(1);
    for i in 0..300 {
        writer
            .put(&format!("gate{i}"), &format!("v{i}"), None)
            .await
            .unwrap();
    }
    cluster.kill(2);
    cluster.restart_without_waiting(3);
    let url = format!("{}/health", cluster.url(3));
    // The first answer, as soon as the node listens, is "starting".
    let first = eventually(DETECT, "n3 answers at all", || async {
        reqwest::get(&url)
            .await
            .ok()
            .map(|response| response.status().as_u16())
    })
    .await;
    assert_eq!(
        first, 503,
        "a node that has not caught up must not claim to be healthy"
    );
    let read = reqwest::get(format!("{}/v1/kv/gate0", cluster.url(3)))
        .await
        .unwrap();
    assert_eq!(read.status().as_u16(), 503);
    let body: serde_json::Value = read.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("starting"),
        "{body}"
    );
    eventually(DETECT, "n3 becomes ready", || async {
        let response = reqwest::get(&url).await.ok()?;
        (response.status().as_u16() == 200).then_some(())
    })
    .await;
    let reader = cluster.client(3);
    for i in 0..300 {
        let value = reader.get(&format!("gate{i}"), Some("one")).await.unwrap();
        assert_eq!(
            value.map(|read| read.text().into_owned()),
            Some(format!("v{i}")),
            "gate{i} on n3 once ready"
        );
    }
}

/// Many `quorum` reads at once through one node: its drivers merge the `Fetch`
/// requests queued behind a busy link into one, and every read must still get its own
/// key's value (written at `quorum` through another node, so a quorum read must see it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_quorum_reads_each_get_their_own_key() {
    let cluster = start_linked(3).await;
    let writer = cluster.client(2);
    let keys: Vec<String> = (0..200).map(|i| format!("q/{i}")).collect();
    for key in &keys {
        writer
            .put(key, &format!("value of {key}"), Some("quorum"))
            .await
            .unwrap_or_else(|e| panic!("PUT {key}: {e}"));
    }
    let reader = cluster.client(1);
    let reads = keys.iter().map(|key| {
        let reader = reader.clone();
        async move {
            let reply = reader
                .get(key, Some("quorum"))
                .await
                .unwrap_or_else(|e| panic!("GET {key} at quorum: {e}"));
            (key.clone(), reply.map(|reply| reply.text().into_owned()))
        }
    });
    for (key, value) in futures_util::future::join_all(reads).await {
        assert_eq!(value, Some(format!("value of {key}")), "{key}");
    }
}
