//! Clock self-fencing (API.md §3.2) with real processes whose wall clocks are shifted by
//! libfaketime: the scenario of a node 3 s ahead (or behind) that used to make a later
//! acknowledged write lose, a node that recovers once its clock is fixed, and the
//! visibility of it all (`/v1/cluster`, `/metrics`, the log).

mod common;

use std::time::Duration;

use common::{eventually, faketime_env, TestCluster};
use meshkv::tools::client::{Client, ClientError};
use serde_json::Value;

/// Bound of waits for the fence and for convergence.
const WAIT: Duration = Duration::from_secs(30);

async fn view(client: &Client) -> Value {
    client.get_json("/v1/cluster").await.expect("/v1/cluster")
}

async fn wait_fenced(cluster: &TestCluster, i: usize, fenced: bool) {
    let what = format!("n{i} reports fenced = {fenced}");
    eventually(WAIT, &what, || async {
        (view(&cluster.client(i)).await["fenced"] == Value::Bool(fenced)).then_some(())
    })
    .await
}

/// The offset `observer` measured for peer `peer` (ms), once known.
async fn offset(cluster: &TestCluster, observer: usize, peer: usize) -> i64 {
    let view = view(&cluster.client(observer)).await;
    view["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == cluster.id(peer))
        .and_then(|p| p["clock_offset_ms"].as_i64())
        .unwrap_or_else(|| panic!("n{observer} has no offset for n{peer}: {view}"))
}

/// `GET /metrics` of node `i`, as text.
fn metrics(cluster: &TestCluster, i: usize) -> String {
    use std::io::{Read, Write};
    let address = cluster.http_addr(i);
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2))
        .expect("connect for /metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("/metrics read");
    response
}

async fn read(cluster: &TestCluster, i: usize, key: &str) -> Option<String> {
    cluster
        .client(i)
        .get(key, None)
        .await
        .expect("GET")
        .map(|reply| reply.text().into_owned())
}

/// A write refused for clock skew: 503, the sentence names it, nothing applied.
fn assert_skew_refusal(result: Result<meshkv::tools::client::WriteReply, ClientError>) {
    match result {
        Err(ClientError::Status {
            status: 503,
            message,
            ..
        }) => assert!(message.contains("clock skew"), "{message}"),
        other => panic!("expected a 503 for clock skew, got {other:?}"),
    }
}

/// The scenario with node n3's clock `shift` (`+3s` or `-3s`).
async fn later_acknowledged_write_wins(test: &str, shift: &str, n3_ahead: bool) {
    let Some(env) = faketime_env(test, shift, None) else {
        return;
    };
    let cluster =
        TestCluster::start_with_env(3, "", |i| if i == 3 { env.clone() } else { Vec::new() });
    cluster.wait_mesh(WAIT).await;
    wait_fenced(&cluster, 3, true).await;
    // The healthy nodes hear it (every reply says so), and leave n3 out of their waits.
    for i in [1, 2] {
        eventually(WAIT, "the healthy nodes know n3 is fenced", || async {
            let view = view(&cluster.client(i)).await;
            view["peers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["id"] == "n3" && p["fenced"] == Value::Bool(true))
                .then_some(())
        })
        .await;
    }
    // The healthy nodes see the offset and stay writable.
    let measured = offset(&cluster, 1, 3).await;
    let expected = if n3_ahead { 3_000 } else { -3_000 };
    assert!(
        (measured - expected).abs() < 200,
        "n1 measured n3 at {measured} ms"
    );
    assert_eq!(view(&cluster.client(1)).await["fenced"], Value::Bool(false));
    assert_eq!(view(&cluster.client(2)).await["fenced"], Value::Bool(false));

    // 1. PUT k=a on n1; 2. PUT k=b on n3 (refused); 3. PUT k=c on n1, after b's reply.
    cluster
        .client(1)
        .put("k", "a", None)
        .await
        .expect("a on n1");
    assert_skew_refusal(cluster.client(3).put("k", "b", None).await);
    assert_skew_refusal(cluster.client(3).put("k", "b", Some("one")).await);
    cluster
        .client(1)
        .put("k", "c", None)
        .await
        .expect("c on n1");
    // Every level stays available on the healthy nodes.
    for level in ["one", "live", "quorum"] {
        let key = format!("healthy/{level}");
        for writer in [1, 2] {
            cluster
                .client(writer)
                .put(&key, level, Some(level))
                .await
                .unwrap_or_else(|e| panic!("{key} on n{writer}: {e}"));
        }
    }
    // The bug's window: b's version (had it been stamped) would have overtaken c once
    // the healthy clocks caught up, 3 s later. Not a synchronisation: it lets the hazard
    // pass before looking for its effect.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    cluster
        .wait_converged(WAIT)
        .await
        .expect("the nodes converge");
    for i in 1..=3 {
        assert_eq!(
            read(&cluster, i, "k").await.as_deref(),
            Some("c"),
            "n{i}: the later acknowledged write must win"
        );
    }
    // The fenced node shows it in its metrics, with the offsets it measured.
    let text = metrics(&cluster, 3);
    assert!(text.contains("meshkv_fenced 1"), "{text}");
    assert!(
        text.contains("meshkv_clock_offset_ms{peer=\"n1\"} "),
        "{text}"
    );
    assert!(metrics(&cluster, 1).contains("meshkv_fenced 0"));
    let log = cluster.log(3);
    assert_eq!(
        log.matches("refusing client writes until it is back within bounds")
            .count(),
        1,
        "one log line when fencing:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_three_seconds_ahead_is_fenced_and_the_later_write_wins() {
    later_acknowledged_write_wins(
        "a_node_three_seconds_ahead_is_fenced_and_the_later_write_wins",
        "+3s",
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_three_seconds_behind_is_fenced_and_the_later_write_wins() {
    later_acknowledged_write_wins(
        "a_node_three_seconds_behind_is_fenced_and_the_later_write_wins",
        "-3s",
        false,
    )
    .await;
}

/// A node whose clock jumps 3 s ahead fences itself, and resumes by itself once its
/// clock is fixed; one log line each way. Prints how long each took (from the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_node_recovers_by_itself_once_its_clock_is_fixed() {
    let test = "a_fenced_node_recovers_by_itself_once_its_clock_is_fixed";
    let dir = std::env::temp_dir().join(format!("meshkv-faketime-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("n3.offset");
    let Some(env) = faketime_env(test, "+0s", Some(&file)) else {
        return;
    };
    let cluster =
        TestCluster::start_with_env(3, "", |i| if i == 3 { env.clone() } else { Vec::new() });
    cluster.wait_mesh(WAIT).await;
    cluster
        .client(3)
        .put("k", "before", None)
        .await
        .expect("n3 writable");

    let jumped = std::time::Instant::now();
    std::fs::write(&file, "+3s").unwrap();
    wait_fenced(&cluster, 3, true).await;
    let fenced_after = jumped.elapsed();
    assert_skew_refusal(cluster.client(3).put("k", "during", None).await);
    assert_eq!(
        read(&cluster, 3, "k").await.as_deref(),
        Some("before"),
        "reads go on"
    );

    let fixed = std::time::Instant::now();
    std::fs::write(&file, "+0s").unwrap();
    eventually(WAIT, "n3 accepts writes again", || async {
        cluster.client(3).put("k", "after", None).await.ok()
    })
    .await;
    let recovered_after = fixed.elapsed();
    wait_fenced(&cluster, 3, false).await;
    let log = cluster.log(3);
    assert_eq!(
        log.matches("refusing client writes until it is back within bounds")
            .count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("accepting client writes again").count(),
        1,
        "{log}"
    );
    // Not asserted (no test asserts a timing): reported for DESIGN.md.
    eprintln!("fenced {fenced_after:?} after the clock jumped; writable {recovered_after:?} after it was fixed");
    let _ = std::fs::remove_dir_all(&dir);
}
