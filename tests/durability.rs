//! Durable nodes (`--data-dir`), with real processes: acknowledged writes survive
//! `kill -9` (each fsync policy that promises it, at `one` and `live`, and on a node
//! whose disk is the only one holding them), the whole cluster survives being killed
//! at once, and the data directory is checked at start: a torn last record is cut, a
//! damaged one refuses the start (or `--repair` keeps the prefix), and a directory in
//! use or of another cluster is refused.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, require_nft, TestCluster};
use meshkv::tools::client::Client;

/// One acknowledged write: key, value, version.
type Acked = (String, String, String);

/// Writers that PUT distinct keys to one node until told to stop, recording every
/// acknowledged write.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: &str, level: &'static str, writers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..writers)
            .map(|writer| {
                let (stop, acked) = (stop.clone(), acked.clone());
                let client = Client::new(url, Duration::from_secs(2));
                tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("w{writer}/{n:05}");
                        let value = format!("value {writer} {n}");
                        if let Ok(reply) = client.put(&key, &value, Some(level)).await {
                            acked.lock().unwrap().push((key, value, reply.version));
                        } else {
                            // The node is gone: back off a little instead of spinning.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        Load { stop, acked, tasks }
    }

    async fn wait_for(&self, count: usize) {
        let acked = self.acked.clone();
        eventually(
            Duration::from_secs(30),
            "enough acknowledged writes",
            || {
                let acked = acked.clone();
                async move { (acked.lock().unwrap().len() >= count).then_some(()) }
            },
        )
        .await;
    }

    /// Stops the writers; returns every acknowledged write.
    async fn finish(self) -> Vec<Acked> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        acked
    }
}

/// Every acknowledged write is on node `i`, with its version or a newer one.
async fn assert_all_present(cluster: &TestCluster, i: usize, acked: &[Acked], what: &str) {
    let client = cluster.client(i);
    let mut missing = Vec::new();
    for (key, value, version) in acked {
        match client.get(key, Some("one")).await {
            Ok(Some(reply)) if reply.version >= *version => {
                if reply.version == *version {
                    assert_eq!(reply.text(), value.as_str(), "{what}: value of {key}");
                }
            }
            other => missing.push(format!("{key} ({version}): {other:?}")),
        }
    }
    assert!(
        missing.is_empty(),
        "{what}: {} of {} acknowledged writes are missing on {}, e.g. {:?}\nlog:\n{}",
        missing.len(),
        acked.len(),
        cluster.id(i),
        &missing[..missing.len().min(5)],
        cluster.log(i)
    );
}

/// Writes to n1 at `level` under `fsync`, kills every node with SIGKILL mid-load
/// (n1 first), restarts n1 alone: every write n1 acknowledged is on its disk (and,
/// for `live`, on n2's).
async fn kill_9_under_load(fsync: &str, level: &'static str) {
    let mut cluster = TestCluster::start_durable(3, "", fsync);
    cluster.wait_mesh(Duration::from_secs(10)).await;
    let load = Load::start(&cluster.url(1), level, 6);
    load.wait_for(150).await;
    for i in 1..=3 {
        cluster.kill(i);
    }
    let acked = load.finish().await;
    cluster.restart(1);
    let view = cluster.cluster_view(1).await;
    assert_eq!(view["durable"], true, "{view}");
    assert_all_present(
        &cluster,
        1,
        &acked,
        &format!("fsync {fsync}, level {level}"),
    )
    .await;
    if level == "live" {
        // n2 was alive throughout, so each of n1's acks waited for n2's, which n2
        // sends only once the entries are durable there: n2's disk holds them all
        // too (checked with n1 down, so that nothing comes from it).
        cluster.kill(1);
        cluster.restart(2);
        assert_all_present(&cluster, 2, &acked, &format!("fsync {fsync}, live, on n2")).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_keeps_acknowledged_writes_fsync_always_one() {
    kill_9_under_load("always", "one").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_keeps_acknowledged_writes_fsync_always_live() {
    kill_9_under_load("always", "live").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_keeps_acknowledged_writes_fsync_batch_one() {
    kill_9_under_load("batch", "one").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_keeps_acknowledged_writes_fsync_batch_live() {
    kill_9_under_load("batch", "live").await;
}

/// n1 is cut off from its peers, so its disk alone holds what it acknowledges; it is
/// killed under load and restarted still cut off: everything is there. After the heal
/// the peers get it too.
#[tokio::test(flavor = "multi_thread")]
async fn an_isolated_node_killed_under_load_keeps_its_writes() {
    if !require_nft("an_isolated_node_killed_under_load_keeps_its_writes") {
        return;
    }
    let mut cluster = TestCluster::start_durable(3, "", "batch");
    cluster.wait_mesh(Duration::from_secs(10)).await;
    cluster.partition(&[&[1], &[2, 3]]);
    for level in ["one", "live"] {
        let load = Load::start(&cluster.url(1), level, 6);
        load.wait_for(100).await;
        cluster.kill(1);
        let acked = load.finish().await;
        cluster.restart(1);
        assert_all_present(&cluster, 1, &acked, &format!("isolated, level {level}")).await;
        for (key, _, _) in acked.iter().take(20) {
            assert!(
                cluster
                    .client(2)
                    .get(key, Some("one"))
                    .await
                    .unwrap()
                    .is_none(),
                "{key} reached n2 through the partition: the test would prove nothing"
            );
        }
    }
    cluster.heal();
    cluster
        .wait_converged(Duration::from_secs(20))
        .await
        .unwrap();
}

/// Every node killed at once, then restarted: all data is there and the digests are
/// equal (and equal to the digest before the kill).
#[tokio::test(flavor = "multi_thread")]
async fn the_whole_cluster_killed_at_once_restarts_with_all_its_data() {
    let mut cluster = TestCluster::start_durable(3, "", "batch");
    cluster.wait_mesh(Duration::from_secs(10)).await;
    for n in 0..300 {
        let node = 1 + n % 3;
        let client = cluster.client(node);
        client
            .put(&format!("k{n:03}"), format!("v{n}"), Some("live"))
            .await
            .unwrap();
        if n % 10 == 9 {
            client
                .delete(&format!("k{:03}", n - 5), Some("live"))
                .await
                .unwrap();
        }
    }
    cluster
        .wait_converged(Duration::from_secs(20))
        .await
        .unwrap();
    let before = cluster.convergence(1).await;
    for i in 1..=3 {
        cluster.kill(i);
    }
    for i in 1..=3 {
        cluster.restart(i);
    }
    cluster
        .wait_converged(Duration::from_secs(20))
        .await
        .unwrap();
    for i in 1..=3 {
        let after = cluster.convergence(i).await;
        assert_eq!(
            (&after["digest"], &after["keys"], &after["tombstones"]),
            (&before["digest"], &before["keys"], &before["tombstones"]),
            "n{i} after the restart"
        );
        assert!(cluster.log(i).contains("recovered the data directory"));
    }
    assert_eq!(before["keys"], 270);
    assert_eq!(before["tombstones"], 30);
    let client = cluster.client(3);
    let reply = client.get("k000", Some("one")).await.unwrap().unwrap();
    assert_eq!(reply.text(), "v0");
    assert!(client.get("k004", Some("one")).await.unwrap().is_none());
}

/// The segment files of a data directory, oldest first, with their sizes.
fn segments(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .map(|path| {
            let len = std::fs::metadata(&path).unwrap().len();
            (path, len)
        })
        .collect();
    found.sort();
    found
}

/// The segment holding records (the largest one).
fn data_segment(dir: &std::path::Path) -> (std::path::PathBuf, u64) {
    segments(dir)
        .into_iter()
        .max_by_key(|(_, len)| *len)
        .expect("a segment")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_data_directory_is_checked_at_start() {
    let mut cluster = TestCluster::start_durable(1, "cluster = \"durability\"\n", "always");
    let client = cluster.client(1);
    for n in 0..40 {
        client
            .put(&format!("k{n:02}"), format!("value {n}"), None)
            .await
            .unwrap();
    }

    // A second process on the same directory is refused while the first runs.
    let (status, output) = cluster.serve_and_expect_exit(1, &[]);
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("in use by another process"), "{output}");

    // A clean stop exits 0.
    assert!(cluster.stop(1).success(), "{}", cluster.log(1));

    // The directory of another cluster is refused, naming it.
    let data_dir = cluster.data_dir(1);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_meshkv"))
        .arg("serve")
        .arg("--data-dir")
        .arg(&data_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("belongs to cluster durability, not meshkv"),
        "{text}"
    );

    // A torn last record (the file ends inside it) is cut with a log line.
    let (segment, clean_len) = data_segment(&data_dir);
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend_from_slice(&[100, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    std::fs::write(&segment, &bytes).unwrap();
    cluster.restart(1);
    assert!(
        cluster.log(1).contains("dropped a torn last record"),
        "{}",
        cluster.log(1)
    );
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), clean_len);
    for n in 0..40 {
        let reply = client.get(&format!("k{n:02}"), None).await.unwrap();
        assert_eq!(reply.unwrap().text(), format!("value {n}"));
    }
    assert!(cluster.stop(1).success());

    // A flipped byte in the middle refuses the start, naming the file and the offset.
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&segment, &bytes).unwrap();
    let (status, output) = cluster.serve_and_expect_exit(1, &[]);
    assert_eq!(status.code(), Some(1), "{output}");
    let name = segment.file_name().unwrap().to_str().unwrap();
    assert!(
        output.contains(name) && output.contains("is damaged at byte"),
        "{output}"
    );

    // --repair keeps the prefix before the damage and says what it dropped.
    cluster.set_extra_args(1, &["--repair"]);
    cluster.restart(1);
    assert!(
        cluster.log(1).contains("repair dropped damaged data"),
        "{}",
        cluster.log(1)
    );
    let mut present = Vec::new();
    for n in 0..40 {
        present.push(
            client
                .get(&format!("k{n:02}"), None)
                .await
                .unwrap()
                .is_some(),
        );
    }
    let kept = present.iter().take_while(|&&p| p).count();
    assert!(
        kept > 0 && kept < 40 && present[kept..].iter().all(|&p| !p),
        "repair must keep exactly a prefix: {present:?}"
    );
    // Writes work after a repair, and survive a kill.
    client.put("after", "repair", None).await.unwrap();
    cluster.kill(1);
    cluster.set_extra_args(1, &[]);
    cluster.restart(1);
    assert_eq!(
        client.get("after", None).await.unwrap().unwrap().text(),
        "repair"
    );
}

/// `/v1/cluster` and `/metrics` say whether a node is catching up, and show the
/// journal's figures.
#[tokio::test(flavor = "multi_thread")]
async fn catching_up_and_journal_figures_are_visible() {
    let cluster = TestCluster::start_durable(2, "", "batch");
    cluster.wait_mesh(Duration::from_secs(10)).await;
    cluster.client(1).put("a", "1", None).await.unwrap();
    eventually(Duration::from_secs(10), "n1 caught up", || async {
        (cluster.cluster_view(1).await["catching_up"] == false).then_some(())
    })
    .await;
    let metrics = reqwest::get(format!("{}/metrics", cluster.url(1)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "meshkv_catching_up 0",
        "meshkv_journal_fsyncs_total",
        "meshkv_journal_written_bytes_total",
        "meshkv_journal_durable_lag",
        "meshkv_journal_compactions_total",
    ] {
        assert!(
            metrics.contains(line),
            "{line} missing from /metrics:\n{metrics}"
        );
    }
    let memory_only = TestCluster::start(1, "");
    let view = memory_only.cluster_view(1).await;
    assert_eq!(view["durable"], false);
    assert!(memory_only.log(1).contains("memory only"));
}
