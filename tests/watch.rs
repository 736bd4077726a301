//! Watches (API.md §3.5) against real `meshkv` processes: what a watch sees (local and
//! replicated writes, deletions, binary values, only its prefix), resuming with
//! `after`, a slow consumer cut off with `overflow` while the node keeps serving, the
//! cap on watchers, and `meshkv watch`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use common::{eventually, TestCluster};
use meshkv::tools::client::Client;
use meshkv::tools::client::{ChangeEvent, WatchEvent, WatchStream};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::ChildStdout;

type Output = Lines<BufReader<ChildStdout>>;

/// Writes `key` until `meshkv watch` prints a line (it may not be subscribed yet when
/// it starts), then returns that line. Bounded: 30 tries.
async fn first_line(lines: &mut Output, node: &Client, key: &str) -> serde_json::Value {
    for _ in 0..30 {
        node.put(key, "v", None).await.unwrap();
        // `next_line` is cancel-safe: a timeout loses no partial line.
        if let Ok(line) = tokio::time::timeout(Duration::from_millis(300), lines.next_line()).await
        {
            return serde_json::from_str(&line.unwrap().expect("a line")).unwrap();
        }
    }
    panic!("meshkv watch printed nothing");
}

async fn next_line(lines: &mut Output) -> serde_json::Value {
    let line = tokio::time::timeout(EVENT_TIMEOUT, lines.next_line())
        .await
        .expect("a line in time")
        .unwrap()
        .expect("a line");
    serde_json::from_str(&line).unwrap()
}

/// Longest wait for one event that a write already caused.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

async fn next_change(stream: &mut WatchStream) -> ChangeEvent {
    match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await {
        Ok(Ok(Some(WatchEvent::Change(change)))) => change,
        other => panic!("expected a change, got {other:?}"),
    }
}

/// The next event must not come within a short while (it would be one too many).
async fn assert_quiet(stream: &mut WatchStream) {
    if let Ok(event) = tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
        panic!("expected no event, got {event:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_local_and_replicated_changes_under_its_prefix() {
    let cluster = TestCluster::start(3, "");
    let (n1, n2) = (cluster.client(1), cluster.client(2));
    let mut stream = n2.watch("w/", None).await.unwrap();

    // A `live` write returns once every live peer applied it: events come in order.
    let put = n1.put("w/a", "from n1", None).await.unwrap();
    let change = next_change(&mut stream).await;
    assert_eq!(change.json["key"], "w/a");
    assert_eq!(change.json["value"], "from n1");
    assert_eq!(change.json["origin"], "replicated");
    assert_eq!(change.json["version"], put.version.as_str());
    assert!(!change.snapshot);

    n2.put("other/x", "not watched", None).await.unwrap();
    let put = n2.put("w/b", "from n2", None).await.unwrap();
    let change = next_change(&mut stream).await;
    assert_eq!(change.json["key"], "w/b", "other/x is outside the prefix");
    assert_eq!(change.json["origin"], "local");
    assert_eq!(change.version, put.version);

    let blob = [0u8, 0xff, 0xfe, 0x80];
    n1.put("w/bin", blob, None).await.unwrap();
    let change = next_change(&mut stream).await;
    assert_eq!(change.json["key"], "w/bin");
    assert!(change.json.get("value").is_none(), "{}", change.json);
    assert_eq!(
        change.json["value_base64"],
        base64::engine::general_purpose::STANDARD.encode(blob)
    );
    assert_eq!(change.value.as_deref(), Some(&blob[..]));

    let deleted = n1.delete("w/a", None).await.unwrap();
    let change = next_change(&mut stream).await;
    assert_eq!(change.json["key"], "w/a");
    assert_eq!(change.json["deleted"], true);
    assert_eq!(change.json["origin"], "replicated");
    assert_eq!(change.version, deleted.version);
    assert_eq!(change.value, None);

    // Anti-entropy rounds run meanwhile; they change nothing, so they send nothing.
    assert_quiet(&mut stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_resumes_with_the_newer_entries_then_the_live_changes() {
    let cluster = TestCluster::start(2, "");
    let (n1, n2) = (cluster.client(1), cluster.client(2));
    n1.put("r/1", "one", None).await.unwrap();
    let seen = n1.put("r/2", "two", None).await.unwrap();
    n2.put("r/3", "three", None).await.unwrap();
    n1.delete("r/1", None).await.unwrap();
    n1.put("s/1", "other prefix", None).await.unwrap();

    let mut stream = n1.watch("r/", Some(&seen.version)).await.unwrap();
    // The snapshot: entries newer than `seen`, tombstones included, in key order.
    let first = next_change(&mut stream).await;
    assert_eq!(
        (first.json["key"].as_str(), first.json["deleted"].as_bool()),
        (Some("r/1"), Some(true))
    );
    assert!(first.snapshot);
    assert_eq!(first.origin, "local", "r/1 was written on n1");
    let second = next_change(&mut stream).await;
    assert_eq!(second.json["key"], "r/3");
    assert_eq!(second.json["value"], "three");
    assert!(second.snapshot);
    assert_eq!(second.origin, "replicated", "r/3 was written on n2");
    // Then the live changes, and r/2 (not newer than `seen`) never.
    n2.put("r/4", "four", None).await.unwrap();
    let live = next_change(&mut stream).await;
    assert_eq!(live.json["key"], "r/4");
    assert!(!live.snapshot);
    assert_eq!(live.origin, "replicated");
    assert_quiet(&mut stream).await;

    // A malformed version is refused with a sentence.
    let error = n1.watch("r/", Some("yesterday")).await.err().unwrap();
    assert_eq!(error.status(), Some(400), "{error}");
    assert!(error.to_string().contains("not a version"), "{error}");
}

/// Opens a watch with a plain socket that then reads nothing.
fn silent_watch(address: SocketAddr, prefix: &str) -> TcpStream {
    let mut socket = TcpStream::connect_timeout(&address, Duration::from_secs(5)).unwrap();
    write!(
        socket,
        "GET /v1/watch?prefix={prefix} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    socket
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_falls_behind_gets_overflow_and_the_node_keeps_serving() {
    // A small buffer, one watcher at most, and a response-write deadline long enough
    // that the node waits for the silent consumer instead of dropping it.
    let cluster = TestCluster::start(
        1,
        "watch_buffer = 4\nmax_watchers = 1\nhttp_timeout_ms = 60000\n",
    );
    let node = cluster.client(1);
    let mut silent = silent_watch(cluster.http_addr(1), "slow/");
    // The watch is open once the gauge says so.
    eventually(Duration::from_secs(10), "the watch to open", || async {
        let text = reqwest::get(format!("{}/metrics", cluster.url(1)))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (metric(&text, "meshkv_watchers") == 1.0).then_some(())
    })
    .await;
    // The cap: a second watcher is refused while the first is open.
    let refused = node.watch("", None).await.err().expect("over the cap");
    assert_eq!(refused.status(), Some(503), "{refused}");
    assert!(refused.to_string().contains("max_watchers"), "{refused}");

    // Writes until the node has filled the socket buffers and the watcher's own, and
    // cut it off. Bounded: 4000 writes of 16 KiB are far more than the buffers hold.
    let value = vec![b'x'; 16 * 1024];
    let mut writes = 0;
    loop {
        node.put(&format!("slow/{}", writes % 100), &value, None)
            .await
            .unwrap();
        writes += 1;
        if writes % 50 == 0 {
            let text = node_metrics(&cluster).await;
            if metric(&text, "meshkv_watch_overflows_total") >= 1.0 {
                break;
            }
        }
        assert!(writes < 4000, "no overflow after {writes} writes");
    }
    // The node kept serving throughout, and still does.
    assert_eq!(
        node.get("slow/0", None).await.unwrap().unwrap().value.len(),
        value.len()
    );

    // The consumer now reads: the events the buffers held, then `overflow`, then the end.
    let text = tokio::task::spawn_blocking(move || {
        silent
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut bytes = Vec::new();
        silent.read_to_end(&mut bytes).unwrap();
        String::from_utf8_lossy(&bytes).into_owned()
    })
    .await
    .unwrap();
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..200.min(text.len())]
    );
    assert!(text.contains("text/event-stream"));
    let overflow = text
        .find("event: overflow")
        .expect("an overflow event at the end");
    let after = &text[overflow..];
    assert!(after.contains("fell more than 4 changes behind"), "{after}");
    assert!(
        !after.contains("data: {\"key\""),
        "nothing after overflow: {after}"
    );
    assert!(text.matches("data: {\"key\"").count() >= 4);

    // The cut-off watcher is gone: a new one is accepted and works.
    let mut stream = eventually(Duration::from_secs(10), "a new watch", || async {
        node.watch("slow/", None).await.ok()
    })
    .await;
    node.put("slow/after", "fine", None).await.unwrap();
    assert_eq!(next_change(&mut stream).await.json["key"], "slow/after");
}

async fn node_metrics(cluster: &TestCluster) -> String {
    reqwest::get(format!("{}/metrics", cluster.url(1)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshkv_watch_prints_json_lines_and_fails_when_the_node_goes() {
    let mut cluster = TestCluster::start(1, "");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshkv"))
        .args(["watch", "cli/", "--node", &cluster.url(1)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The watch is open once a write shows up; earlier writes may precede it.
    let node = cluster.client(1);
    let event = first_line(&mut lines, &node, "cli/k").await;
    assert_eq!(event["key"], "cli/k");
    assert_eq!(event["value"], "v");
    assert_eq!(event["origin"], "local");
    node.put("cli/deleted", "x", None).await.unwrap();
    node.delete("cli/deleted", None).await.unwrap();
    // Lines of the first loop's extra writes may come first.
    let mut event = next_line(&mut lines).await;
    while event["key"] == "cli/k" {
        event = next_line(&mut lines).await;
    }
    assert_eq!(event["key"], "cli/deleted");
    assert_eq!(next_line(&mut lines).await["deleted"], true);

    // The node dies: the watch fails with a sentence and exit status 1.
    cluster.kill(1);
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("meshkv watch exits when the node dies")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("meshkv: "), "{stderr}");
    assert!(stderr.contains("lost"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshkv_watch_exits_0_on_ctrl_c() {
    let cluster = TestCluster::start(1, "");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshkv"))
        .args(["watch", "--node", &cluster.url(1)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let node = cluster.client(1);
    first_line(&mut lines, &node, "any").await;
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("meshkv watch stops on SIGINT")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
