//! Failure handling with real processes: dead and hung peers, consistency levels under
//! failure, read repair, convergence checking, node authentication and hostile input
//! on the peer and client ports.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, require_nft, TestCluster};
use meshkv::clock::{ManualClock, NodeId};
use meshkv::metrics::Metrics;
use meshkv::peer::{dial, Identity, Link, LinkError, NonceSource, TransportOptions};
use meshkv::transport::TcpTransport;
use meshkv::wire::{Lineage, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);

/// Runs the built `meshkv` binary; returns its exit code and stdout.
fn meshkv(args: &[&str]) -> (i32, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_meshkv"))
        .args(args)
        .output()
        .expect("meshkv runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

async fn put_status(
    cluster: &TestCluster,
    i: usize,
    key: &str,
    value: &str,
    level: &str,
) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .put(format!(
            "{}/v1/kv/{key}?consistency={level}",
            cluster.url(i)
        ))
        .body(value.to_owned())
        .send()
        .await
        .expect("node answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_peer_under_live_load_fails_no_write() {
    let mut cluster = TestCluster::start(3, "live_timeout_ms = 500\n");
    cluster.wait_mesh(WAIT).await;
    let (one, two) = (cluster.client(1), cluster.client(2));
    let mut slowest = Duration::ZERO;
    for round in 0..300 {
        if round == 100 {
            cluster.kill(3);
        }
        let client = if round % 2 == 0 { &one } else { &two };
        let started = Instant::now();
        client
            .put(&format!("k{}", round % 40), &format!("v{round}"), None)
            .await
            .unwrap_or_else(|error| panic!("write {round} failed around the kill: {error}"));
        slowest = slowest.max(started.elapsed());
    }
    eprintln!("slowest live write around the kill: {slowest:?}");
    // Not a speed check: a write must never hang on a dead peer.
    assert!(
        slowest < Duration::from_secs(5),
        "a write hung for {slowest:?}"
    );
    eventually(WAIT, "n1 sees n3 down", || async {
        (cluster.peer_state(1, 3).await.as_deref() == Some("down")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_peer_is_suspected_and_live_writes_keep_succeeding() {
    let mut cluster = TestCluster::start(3, "live_timeout_ms = 500\n");
    cluster.wait_mesh(WAIT).await;
    cluster.pause(3);
    let client = cluster.client(1);
    // Keep writing while the detector notices: every write must succeed.
    let mut round = 0;
    eventually(WAIT, "n1 stops holding the paused n3 alive", || {
        round += 1;
        let client = client.clone();
        let cluster = &cluster;
        async move {
            client
                .put("hung", &format!("v{round}"), None)
                .await
                .expect("live write succeeds");
            matches!(
                cluster.peer_state(1, 3).await.as_deref(),
                Some("suspect" | "down")
            )
            .then_some(())
        }
    })
    .await;
    for i in 0..20 {
        client
            .put(&format!("during{i}"), "x", None)
            .await
            .expect("live write succeeds");
    }
    cluster.resume(3);
    eventually(WAIT, "n3 alive again", || async {
        (cluster.peer_state(1, 3).await.as_deref() == Some("alive")).then_some(())
    })
    .await;
    cluster
        .wait_converged(WAIT)
        .await
        .expect("converges after resume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_needs_a_majority_across_a_partition() {
    if !require_nft("quorum_needs_a_majority_across_a_partition") {
        return;
    }
    let mut cluster = TestCluster::start(3, "strong_timeout_ms = 800\n");
    cluster.wait_mesh(WAIT).await;
    cluster.partition(&[&[1], &[2, 3]]);
    let (status, body) = put_status(&cluster, 1, "q", "minority", "quorum").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["applied_locally"], true, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("applied"),
        "{body}"
    );
    let (status, body) = put_status(&cluster, 2, "q", "majority", "quorum").await;
    assert_eq!(status, 200, "{body}");
    let read = reqwest::get(format!("{}/v1/kv/q?consistency=quorum", cluster.url(1)))
        .await
        .unwrap();
    assert_eq!(read.status().as_u16(), 503);
    let read = cluster
        .client(3)
        .get("q", Some("quorum"))
        .await
        .unwrap()
        .expect("majority reads its write");
    assert_eq!(read.value, "majority");
    cluster.heal();
    cluster
        .wait_converged(WAIT)
        .await
        .expect("converges after heal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_fails_with_a_node_down_but_quorum_succeeds() {
    let mut cluster = TestCluster::start(3, "strong_timeout_ms = 800\n");
    cluster.wait_mesh(WAIT).await;
    let (status, _) = put_status(&cluster, 1, "a", "everyone", "all").await;
    assert_eq!(status, 200);
    for i in 1..=3 {
        let value = cluster
            .client(i)
            .get("a", Some("one"))
            .await
            .unwrap()
            .unwrap()
            .value;
        assert_eq!(
            value, "everyone",
            "an `all` write is on every node when acknowledged"
        );
    }
    cluster.kill(3);
    let (status, body) = put_status(&cluster, 1, "a", "two of three", "all").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["applied_locally"], true);
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("needs 3 replicas but only 2 answered"),
        "the error counts the two live replicas that took the write: {body}"
    );
    let local = cluster
        .client(1)
        .get("a", Some("one"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        local.value, "two of three",
        "the refused write was applied locally, as the error said"
    );
    let (status, _) = put_status(&cluster, 1, "a", "majority", "quorum").await;
    assert_eq!(status, 200);
    let read = reqwest::get(format!("{}/v1/kv/a?consistency=all", cluster.url(2)))
        .await
        .unwrap();
    assert_eq!(read.status().as_u16(), 503);
    let body: serde_json::Value = read.json().await.unwrap();
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("needs 3 replicas but only 2 answered"),
        "the error counts the two live replicas that answered the read: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_repair_fixes_a_stale_replica() {
    // Anti-entropy off and an outbox of one key: a write can only reach the restarted
    // node through read repair.
    let mut cluster = TestCluster::start(
        3,
        // No anti-entropy round can complete, so readiness after the restart comes
        // from the startup timeout.
        "anti_entropy_interval_ms = 0\noutbox_max_keys = 1\nstartup_sync_timeout_ms = 1500\n",
    );
    cluster.wait_mesh(WAIT).await;
    cluster.kill(3);
    let client = cluster.client(1);
    client.put("filler", "queued for n3", None).await.unwrap();
    client.put("pushed-by-repair", "fresh", None).await.unwrap();
    client.put("pulled-by-repair", "fresh", None).await.unwrap();
    cluster.restart(3);
    cluster.wait_mesh(WAIT).await;
    let stale = cluster.client(3);
    eventually(WAIT, "n3 receives the queued key", || async {
        stale.get("filler", None).await.unwrap().map(|_| ())
    })
    .await;
    assert!(
        stale.get("pushed-by-repair", None).await.unwrap().is_none(),
        "n3 starts stale"
    );
    assert!(
        stale.get("pulled-by-repair", None).await.unwrap().is_none(),
        "n3 starts stale"
    );

    // An `all` read on n1 finds n3 behind and pushes the newest version to it.
    let read = client
        .get("pushed-by-repair", Some("all"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.value, "fresh");
    eventually(WAIT, "n3 repaired by n1's read", || async {
        stale
            .get("pushed-by-repair", None)
            .await
            .unwrap()
            .map(|_| ())
    })
    .await;
    // A `quorum` read on the stale n3 answers the newest version and repairs n3 itself.
    let read = stale
        .get("pulled-by-repair", Some("quorum"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.value, "fresh");
    let local = stale
        .get("pulled-by-repair", Some("one"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(local.value, "fresh");
    assert!(
        cluster
            .metric(3, "meshkv_keys_repaired_total{reason=\"read_repair\"}")
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_during_a_divergent_partition_and_passes_after_heal() {
    if !require_nft("check_fails_during_a_divergent_partition_and_passes_after_heal") {
        return;
    }
    let mut cluster = TestCluster::start(3, "");
    cluster.wait_mesh(WAIT).await;
    let file = cluster.cluster_file().to_str().unwrap().to_owned();
    let (code, out) = meshkv(&["check", "--cluster", &file, "--wait", "10s"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = meshkv(&["status", "--cluster", &file]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("n3") && out.contains("alive"), "{out}");
    // Through one node: it reports every node's summary and its own view of its peers.
    let n2 = cluster.url(2);
    let (code, out) = meshkv(&["status", "--node", &n2]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("n1") && out.contains("n3") && out.contains("alive"),
        "{out}"
    );
    let (code, out) = meshkv(&["check", "--node", &n2, "--all"]);
    assert_eq!(code, 0, "{out}");

    cluster.partition(&[&[1], &[2, 3]]);
    cluster
        .client(1)
        .put("split", "left", Some("one"))
        .await
        .unwrap();
    cluster
        .client(2)
        .put("split", "right", Some("one"))
        .await
        .unwrap();
    let (code, out) = meshkv(&["check", "--cluster", &file]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("differs"), "{out}");
    let json = cluster
        .client(2)
        .get_json("/v1/convergence?cluster=true")
        .await
        .unwrap();
    assert_eq!(json["converged"], false, "{json}");
    // n2 cannot reach n1: through n2, the check fails with --all and names n1.
    let (code, out) = meshkv(&["check", "--node", &n2, "--all"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("n1 is unreachable"), "{out}");

    cluster.heal();
    let (code, out) = meshkv(&["check", "--cluster", &file, "--wait", "30s"]);
    assert_eq!(code, 0, "{out}");
    let json = cluster
        .client(2)
        .get_json("/v1/convergence?cluster=true")
        .await
        .unwrap();
    assert_eq!(json["converged"], true, "{json}");
    assert_eq!(json["nodes"].as_array().unwrap().len(), 3);
    let (code, out) = meshkv(&["check", "--node", &n2, "--all", "--wait", "30s"]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_convergence_reports_unreachable_nodes() {
    let mut cluster = TestCluster::start(3, "strong_timeout_ms = 800\n");
    cluster.wait_mesh(WAIT).await;
    cluster.client(1).put("k", "v", None).await.unwrap();
    let json = cluster
        .client(1)
        .get_json("/v1/convergence?cluster=true")
        .await
        .unwrap();
    assert_eq!(json["converged"], true, "{json}");
    cluster.kill(3);
    let json = cluster
        .client(1)
        .get_json("/v1/convergence?cluster=true")
        .await
        .unwrap();
    assert_eq!(json["converged"], false, "{json}");
    let n3 = &json["nodes"][2];
    assert_eq!(
        (n3["id"].as_str(), n3["reachable"].as_bool()),
        (Some("n3"), Some(false)),
        "{json}"
    );
    let file = cluster.cluster_file().to_str().unwrap().to_owned();
    assert_eq!(
        meshkv(&["check", "--cluster", &file, "--wait", "10s"]).0,
        0,
        "reachable nodes agree"
    );
    assert_eq!(
        meshkv(&["check", "--cluster", &file, "--all"]).0,
        1,
        "--all fails on an unreachable node"
    );
}

fn transport(secret: &[u8]) -> TransportOptions {
    TransportOptions {
        max_frame_bytes: 1 << 20,
        secret: Some(Arc::from(secret)),
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(2),
        max_connections: 4,
        metrics: Metrics::new(),
        clock: Arc::new(ManualClock::new(0)),
        tls: None,
        nonces: NonceSource::random(),
    }
}

fn identity(node: &str) -> Identity {
    Identity {
        node: NodeId::new(node).unwrap(),
        cluster: "meshkv".into(),
        members: HashSet::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_with_a_wrong_secret_or_from_a_non_member_are_refused_and_counted() {
    let secret_path = std::env::temp_dir().join(format!("meshkv-secret-{}", std::process::id()));
    std::fs::write(&secret_path, "correct horse battery staple\n").unwrap();
    let cluster = TestCluster::start(
        2,
        &format!("secret_file = {:?}\n", secret_path.to_str().unwrap()),
    );
    cluster.wait_mesh(WAIT).await;
    let target = cluster.client(1);
    let peer_address = {
        let text = std::fs::read_to_string(cluster.cluster_file()).unwrap();
        let config = meshkv::config::ClusterConfig::parse(&text).unwrap();
        config.nodes[0]
            .peer
            .expect("the harness writes peer addresses")
    };
    let local_ip = "127.0.0.1".parse().unwrap();
    let n1 = NodeId::new("n1").unwrap();

    // Claiming to be n2, with the wrong secret.
    let stream = dial(
        &TcpTransport,
        local_ip,
        peer_address,
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    let result = Link::open(
        stream,
        &identity("n2"),
        &n1,
        Lineage::default(),
        &transport(b"wrong secret, wrong tag"),
    )
    .await;
    assert!(
        result.is_err(),
        "a wrong secret must not pass the handshake"
    );
    // The right secret but not a member.
    let stream = dial(
        &TcpTransport,
        local_ip,
        peer_address,
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    let result = Link::open(
        stream,
        &identity("n9"),
        &n1,
        Lineage::default(),
        &transport(b"correct horse battery staple"),
    )
    .await;
    assert!(
        matches!(result, Err(LinkError::Refused(_))),
        "{:?}",
        result.err()
    );
    // The right secret and a member: accepted.
    let stream = dial(
        &TcpTransport,
        local_ip,
        peer_address,
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    let mut link = Link::open(
        stream,
        &identity("n2"),
        &n1,
        Lineage::default(),
        &transport(b"correct horse battery staple"),
    )
    .await
    .expect("a member with the secret is welcome");
    let pong = link
        .request(&Message::Ping, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        matches!(pong, Message::Pong { fenced: false, .. }),
        "{pong:?}"
    );

    assert!(
        cluster
            .metric(1, "meshkv_peer_frames_rejected_total{reason=\"bad_tag\"}")
            .await
            >= 1.0
    );
    assert!(
        cluster
            .metric(
                1,
                "meshkv_peer_frames_rejected_total{reason=\"not_member\"}"
            )
            .await
            >= 1.0
    );
    target.put("still", "works", None).await.unwrap();
    assert_eq!(
        cluster
            .client(2)
            .get("still", None)
            .await
            .unwrap()
            .unwrap()
            .value,
        "works"
    );
    let _ = std::fs::remove_file(secret_path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_peer_port_leaves_the_node_serving() {
    let cluster = TestCluster::start(2, "");
    cluster.wait_mesh(WAIT).await;
    let text = std::fs::read_to_string(cluster.cluster_file()).unwrap();
    let peer_address = meshkv::config::ClusterConfig::parse(&text).unwrap().nodes[0]
        .peer
        .expect("the harness writes peer addresses");
    let payloads: [&[u8]; 5] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &[0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4],
        &[0, 0, 0, 50, 1, 2, 3],
        &[0, 0, 0, 4, 0xc1, 0xc1, 0xc1, 0xc1],
        &[0x92, 0x01, 0x02],
    ];
    for payload in payloads {
        let mut stream = tokio::net::TcpStream::connect(peer_address).await.unwrap();
        let _ = stream.write_all(payload).await;
        let _ = stream.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut sink)).await;
    }
    assert!(cluster.client(1).healthy().await);
    cluster
        .client(1)
        .put("after", "garbage", None)
        .await
        .unwrap();
    assert_eq!(
        cluster
            .client(2)
            .get("after", None)
            .await
            .unwrap()
            .unwrap()
            .value,
        "garbage"
    );
    assert!(cluster.metric(1, "meshkv_peer_frames_rejected_total").await >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_http_client_is_cut_off_and_others_are_served() {
    let cluster = TestCluster::start(1, "http_header_timeout_ms = 500\n");
    let mut slow = tokio::net::TcpStream::connect(cluster.http_addr(1))
        .await
        .unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Meanwhile others are served.
    assert!(cluster.client(1).healthy().await);
    // The slow client is disconnected: the read ends (EOF, or an error answer then EOF).
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buffer)).await;
    assert!(
        read.is_ok(),
        "the server kept a client that never finished its headers"
    );
    assert!(cluster.client(1).healthy().await);
}

/// A TCP relay between one client and `target`: forwards both ways and records what
/// the client sent. Returns its address and the recording, complete once the client
/// closed.
async fn recording_relay(
    target: std::net::SocketAddr,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let relay = tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = tokio::net::TcpStream::connect(target).await.unwrap();
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let back = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        });
        let mut recorded = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    recorded.extend_from_slice(&buffer[..n]);
                    if server_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = server_write.shutdown().await;
        back.abort();
        recorded
    });
    (address, relay)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_peer_connection_replayed_to_the_node_is_refused() {
    let secret = b"correct horse battery staple";
    let secret_path =
        std::env::temp_dir().join(format!("meshkv-replay-secret-{}", std::process::id()));
    std::fs::write(&secret_path, secret).unwrap();
    let cluster = TestCluster::start(
        2,
        &format!("secret_file = {:?}\n", secret_path.to_str().unwrap()),
    );
    cluster.wait_mesh(WAIT).await;
    let peer_address = {
        let text = std::fs::read_to_string(cluster.cluster_file()).unwrap();
        let config = meshkv::config::ClusterConfig::parse(&text).unwrap();
        config.nodes[0]
            .peer
            .expect("the harness writes peer addresses")
    };
    let n1 = NodeId::new("n1").unwrap();

    // A genuine conversation with n1 (as n2, with the secret), through a relay that
    // records every byte sent to n1.
    let (relay, recording) = recording_relay(peer_address).await;
    let stream = dial(
        &TcpTransport,
        "127.0.0.1".parse().unwrap(),
        relay,
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    let mut link = Link::open(
        stream,
        &identity("n2"),
        &n1,
        Lineage::default(),
        &transport(secret),
    )
    .await
    .expect("a member with the secret is welcome");
    for _ in 0..3 {
        let reply = link
            .request(&Message::Summarize, Duration::from_secs(2))
            .await
            .unwrap();
        assert!(matches!(reply, Message::Summary { .. }), "{reply:?}");
    }
    drop(link);
    let recorded = recording.await.unwrap();
    assert!(recorded.len() > 100, "{} bytes recorded", recorded.len());

    // The recording played to n1 on a new connection: refused at its Hello, nothing
    // answered, the connection closed.
    let before = cluster
        .metric(1, "meshkv_peer_frames_rejected_total{reason=\"replay\"}")
        .await;
    let mut replay = tokio::net::TcpStream::connect(peer_address).await.unwrap();
    replay.write_all(&recorded).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), replay.read_to_end(&mut answer)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "n1 answered a replayed connection with {} bytes",
        answer.len()
    );
    eventually(WAIT, "the replay is counted", || async {
        let now = cluster
            .metric(1, "meshkv_peer_frames_rejected_total{reason=\"replay\"}")
            .await;
        (now > before).then_some(())
    })
    .await;

    // n1 keeps serving and replicating.
    cluster
        .client(1)
        .put("after-replay", "ok", None)
        .await
        .unwrap();
    eventually(WAIT, "the write reaches n2", || async {
        let value = cluster.client(2).get("after-replay", None).await.ok()??;
        (value.value == "ok").then_some(())
    })
    .await;
    let _ = std::fs::remove_file(secret_path);
}
