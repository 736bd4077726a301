//! Cluster benchmarks with real `meshkv` processes on loopback: the figures quoted in
//! DESIGN.md. Run with `cargo bench --bench cluster` (as root: the partition figures
//! need nftables; without it they are skipped and said so). `cargo bench --bench
//! cluster -- quick` runs one repetition of each, for a smoke check; section names
//! (`catch_up heal heal_dropped bytes idle detection minority`) run only those.
//!
//! Each figure is the median of several repetitions, measured in one run: the machine
//! is shared and noisy, so compare figures of the same run, not across runs.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{nft_available, TestCluster};
use futures_util::stream::{self, StreamExt};
use meshkv::tools::client::Client;

const WAIT: Duration = Duration::from_secs(60);
const VALUE_100_BYTES: &str = "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789";

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

/// Writes `count` keys `prefix0..` with 100-byte values through `client`, 32 at a time.
async fn load(client: &Client, prefix: &str, count: usize, level: &str) {
    stream::iter(0..count)
        .for_each_concurrent(32, |i| {
            let client = client.clone();
            let key = format!("{prefix}{i}");
            let level = level.to_owned();
            async move {
                client
                    .put(&key, VALUE_100_BYTES, Some(&level))
                    .await
                    .expect("load write");
            }
        })
        .await;
}

/// Sum of every `meshkv_peer_bytes_total` / `_frames_total` sample sent by node `i`
/// whose labels contain `filter`.
async fn sent(cluster: &TestCluster, i: usize, metric: &str, filter: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", cluster.url(i)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| {
            line.starts_with(metric) && line.contains("direction=\"sent\"") && line.contains(filter)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn cluster_sent(cluster: &TestCluster, metric: &str, filter: &str) -> f64 {
    let mut total = 0.0;
    for i in 1..=cluster.len() {
        if cluster.is_running(i) {
            total += sent(cluster, i, metric, filter).await;
        }
    }
    total
}

/// Polls (every 5 ms) until node `i` holds peer `j` in a state other than `alive`.
async fn time_until_not_alive(
    cluster: &TestCluster,
    i: usize,
    j: usize,
    since: Instant,
) -> Duration {
    loop {
        if !matches!(cluster.peer_state(i, j).await.as_deref(), Some("alive")) {
            return since.elapsed();
        }
        assert!(since.elapsed() < WAIT, "peer never left alive");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn report(name: &str, samples: &[f64], unit: &str) {
    let shown: Vec<String> = samples.iter().map(|s| format!("{s:.1}")).collect();
    println!(
        "{name:<58} median {:>10.1} {unit:<8} samples [{}]",
        median(samples.to_vec()),
        shown.join(", ")
    );
}

async fn catch_up(reps: usize) {
    let (mut synced, mut ready) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let mut cluster = TestCluster::start(3, "");
        cluster.wait_mesh(WAIT).await;
        load(&cluster.client(1), "key", 10_000, "live").await;
        cluster
            .wait_converged(WAIT)
            .await
            .expect("loaded cluster converges");
        let target = cluster.convergence(1).await["digest"].clone();
        cluster.kill(3);
        let started = Instant::now();
        cluster.restart_without_waiting(3);
        // Poll every 5 ms from the spawn: /v1/convergence answers while starting.
        let client = Client::new(&cluster.http_addr(3).to_string(), Duration::from_secs(1));
        let mut caught_up = None;
        loop {
            assert!(started.elapsed() < WAIT, "restarted node never caught up");
            if caught_up.is_none() {
                if let Ok(json) = client.get_json("/v1/convergence").await {
                    if json["digest"] == target {
                        caught_up = Some(started.elapsed());
                    }
                }
            }
            if caught_up.is_some() && client.healthy().await {
                ready.push(started.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        synced.push(caught_up.expect("caught up").as_secs_f64() * 1000.0);
    }
    report(
        "restarted empty node holds all 10 000 keys (from spawn)",
        &synced,
        "ms",
    );
    report(
        "restarted node serves clients (/health ok, from spawn)",
        &ready,
        "ms",
    );
}

async fn heal(reps: usize) {
    if !nft_available() {
        println!("SKIPPED heal figure: needs root and nft");
        return;
    }
    let mut samples = Vec::new();
    for _ in 0..reps {
        let mut cluster = TestCluster::start(3, "");
        cluster.wait_mesh(WAIT).await;
        cluster.partition(&[&[1], &[2, 3]]);
        load(&cluster.client(1), "split", 1000, "one").await;
        load(&cluster.client(2), "split", 1000, "one").await;
        let started = Instant::now();
        cluster.heal();
        cluster
            .wait_converged(WAIT)
            .await
            .expect("converges after heal");
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    report(
        "converge after heal, 1 000 divergent keys (from heal)",
        &samples,
        "ms",
    );
}

/// Like [`heal`], but the partition lasts until both sides have dropped their links
/// (peer state `down`), so the heal waits for fresh connections: the case a long
/// partition leaves.
async fn heal_after_links_dropped(reps: usize) {
    if !nft_available() {
        println!("SKIPPED heal_dropped figure: needs root and nft");
        return;
    }
    let mut samples = Vec::new();
    for _ in 0..reps {
        let mut cluster = TestCluster::start(3, "");
        cluster.wait_mesh(WAIT).await;
        cluster.partition(&[&[1], &[2, 3]]);
        load(&cluster.client(1), "split", 1000, "one").await;
        load(&cluster.client(2), "split", 1000, "one").await;
        let since = Instant::now();
        for (i, j) in [(1, 2), (1, 3), (2, 1), (3, 1)] {
            while cluster.peer_state(i, j).await.as_deref() != Some("down") {
                assert!(since.elapsed() < WAIT, "the links never dropped");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let started = Instant::now();
        cluster.heal();
        cluster
            .wait_converged(WAIT)
            .await
            .expect("converges after heal");
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    report(
        "converge after heal, links dropped, 1 000 divergent keys",
        &samples,
        "ms",
    );
}

async fn bytes_per_write(reps: usize) {
    let cluster = TestCluster::start(3, "");
    cluster.wait_mesh(WAIT).await;
    let client = cluster.client(1);
    let (mut bytes, mut frames) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        // Idle traffic over a window as long as the write batch, subtracted below.
        let writes = 1000;
        let idle_start = (
            cluster_sent(&cluster, "meshkv_peer_bytes_total", "").await,
            Instant::now(),
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle_rate = (cluster_sent(&cluster, "meshkv_peer_bytes_total", "").await
            - idle_start.0)
            / idle_start.1.elapsed().as_secs_f64();
        let push_bytes = cluster_sent(&cluster, "meshkv_peer_bytes_total", "kind=\"push").await;
        let push_frames = cluster_sent(&cluster, "meshkv_peer_frames_total", "kind=\"push").await;
        let total_before = cluster_sent(&cluster, "meshkv_peer_bytes_total", "").await;
        let started = Instant::now();
        for i in 0..writes {
            client
                .put(&format!("w{rep}-{i}"), VALUE_100_BYTES, None)
                .await
                .unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        let total = cluster_sent(&cluster, "meshkv_peer_bytes_total", "").await
            - total_before
            - idle_rate * elapsed;
        let pushed =
            cluster_sent(&cluster, "meshkv_peer_bytes_total", "kind=\"push").await - push_bytes;
        let pushed_frames =
            cluster_sent(&cluster, "meshkv_peer_frames_total", "kind=\"push").await - push_frames;
        bytes.push(total / writes as f64);
        frames.push(pushed_frames / writes as f64);
        if rep == 0 {
            println!(
                "  (push + push_ack only: {:.1} bytes per write)",
                pushed / writes as f64
            );
        }
    }
    report(
        "bytes between nodes per live write, 100-byte value, 3 nodes",
        &bytes,
        "bytes",
    );
    report(
        "push/push_ack frames per live write (sequential client)",
        &frames,
        "frames",
    );
}

async fn idle_bytes(reps: usize) {
    let cluster = TestCluster::start(3, "");
    cluster.wait_mesh(WAIT).await;
    load(&cluster.client(1), "key", 10_000, "live").await;
    cluster.wait_converged(WAIT).await.expect("converges");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut all, mut sync) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let before = cluster_sent(&cluster, "meshkv_peer_bytes_total", "").await;
        let sync_before = cluster_sent(&cluster, "meshkv_peer_bytes_total", "kind=\"sync_root\"")
            .await
            + cluster_sent(&cluster, "meshkv_peer_bytes_total", "kind=\"in_sync\"").await;
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let seconds = started.elapsed().as_secs_f64();
        let after = cluster_sent(&cluster, "meshkv_peer_bytes_total", "").await;
        let sync_after = cluster_sent(&cluster, "meshkv_peer_bytes_total", "kind=\"sync_root\"")
            .await
            + cluster_sent(&cluster, "meshkv_peer_bytes_total", "kind=\"in_sync\"").await;
        all.push((after - before) / seconds / 3.0);
        sync.push((sync_after - sync_before) / seconds / 3.0);
    }
    report(
        "idle bytes/s per node, 10 000 keys, all traffic",
        &all,
        "B/s",
    );
    report(
        "idle bytes/s per node, 10 000 keys, anti-entropy only",
        &sync,
        "B/s",
    );
}

/// Writes to node 1 in a loop until `stop`; returns the slowest write.
async fn writer(client: Client, stop: tokio::sync::watch::Receiver<bool>) -> (Duration, usize) {
    let (mut slowest, mut failures, mut i) = (Duration::ZERO, 0, 0u64);
    while !*stop.borrow() && i < 100_000 {
        let started = Instant::now();
        if client
            .put(&format!("detect{}", i % 50), "v", None)
            .await
            .is_err()
        {
            failures += 1;
        }
        slowest = slowest.max(started.elapsed());
        i += 1;
    }
    (slowest, failures)
}

async fn detection(reps: usize) {
    for hung in [false, true] {
        let (mut detect, mut slowest_writes, mut failed) = (Vec::new(), Vec::new(), 0);
        for _ in 0..reps {
            let mut cluster = TestCluster::start(3, "");
            cluster.wait_mesh(WAIT).await;
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let load = tokio::spawn(writer(cluster.client(1), stop_rx));
            tokio::time::sleep(Duration::from_millis(300)).await;
            let started = Instant::now();
            if hung {
                cluster.pause(3);
            } else {
                cluster.kill(3);
            }
            detect.push(
                time_until_not_alive(&cluster, 1, 3, started)
                    .await
                    .as_secs_f64()
                    * 1000.0,
            );
            tokio::time::sleep(Duration::from_millis(1500)).await;
            stop_tx.send(true).unwrap();
            let (slowest, failures) = load.await.unwrap();
            slowest_writes.push(slowest.as_secs_f64() * 1000.0);
            failed += failures;
            if hung {
                cluster.resume(3);
            }
        }
        let what = if hung {
            "hung (SIGSTOP)"
        } else {
            "killed (SIGKILL)"
        };
        report(&format!("detection time, {what} peer"), &detect, "ms");
        report(
            &format!("slowest live write around a {what} peer"),
            &slowest_writes,
            "ms",
        );
        println!("  failed writes around the fault: {failed}");
    }
}

async fn minority_503(reps: usize) {
    if !nft_available() {
        println!("SKIPPED minority 503 figure: needs root and nft");
        return;
    }
    let mut cluster = TestCluster::start(4, "");
    cluster.wait_mesh(WAIT).await;
    cluster.partition(&[&[1], &[2, 3, 4]]);
    let http = reqwest::Client::new();
    let mut samples = Vec::new();
    for i in 0..reps * 2 {
        let started = Instant::now();
        let response = http
            .put(format!(
                "{}/v1/kv/minority{i}?consistency=quorum",
                cluster.url(1)
            ))
            .body("v")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 503);
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    println!("  minority quorum 503 latencies in order (first ones before the detector marks peers down):");
    report(
        "minority side quorum write → 503, 4 nodes, 1|3 partition",
        &samples,
        "ms",
    );
    cluster.heal();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|arg| arg == "quick");
    // `cargo test --benches` runs benches with `--bench`-less args; only run on demand.
    if std::env::args().any(|arg| arg == "--test") {
        println!("cluster bench: compiled (run with `cargo bench --bench cluster`)");
        return;
    }
    let reps = if quick { 1 } else { 5 };
    // Section names given as arguments run only those sections.
    let sections = [
        "catch_up",
        "heal",
        "heal_dropped",
        "bytes",
        "idle",
        "detection",
        "minority",
    ];
    let chosen: Vec<String> = std::env::args()
        .filter(|arg| sections.contains(&arg.as_str()))
        .collect();
    let run = |name: &str| chosen.is_empty() || chosen.iter().any(|c| c == name);
    println!("meshkv cluster benchmarks, {reps} repetition(s) each, medians\n");
    if run("catch_up") {
        catch_up(reps).await;
    }
    if run("heal") {
        heal(reps).await;
    }
    if run("heal_dropped") {
        heal_after_links_dropped(reps).await;
    }
    if run("bytes") {
        bytes_per_write(reps).await;
    }
    if run("idle") {
        idle_bytes(reps).await;
    }
    if run("detection") {
        detection(reps).await;
    }
    if run("minority") {
        minority_503(reps).await;
    }
}
