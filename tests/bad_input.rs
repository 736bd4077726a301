//! Bad client input (API.md §3) against a real node: the documented status, a JSON
//! error body, and no change to the stored state. Also key round-trips, prefix
//! listings and the exit codes of the CLI client.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::TestCluster;
use serde_json::Value;

/// The node's digest and key count.
async fn state_of(cluster: &TestCluster) -> (Value, Value, Value) {
    let json = cluster.convergence(1).await;
    (
        json["digest"].clone(),
        json["keys"].clone(),
        json["tombstones"].clone(),
    )
}

/// Sends a request and checks its status and its `{"error": "..."}` body.
async fn expect_error(request: reqwest::RequestBuilder, status: u16, what: &str) {
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: request failed: {e}"));
    let got = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(got, status, "{what}: status (body {body:?})");
    let json: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{what}: the error body is not JSON ({e}): {body:?}"));
    let sentence = json["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no \"error\" string in {body}"));
    assert!(!sentence.trim().is_empty(), "{what}: empty error sentence");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_refused_and_change_nothing() {
    let cluster = TestCluster::start(1, "max_value_bytes = 1000\n");
    let client = cluster.client(1);
    client.put("x", "stored", None).await.unwrap();
    client.put("other", "value", None).await.unwrap();
    client.put("gone", "soon", None).await.unwrap();
    client.delete("gone", None).await.unwrap();
    let before = state_of(&cluster).await;

    // A fresh connection per request: see `refused_oversized_value_leaves_the_connection_usable`
    // for what a reused connection meets after a 413.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let base = cluster.url(1);
    let kv = |raw_key: &str| format!("{base}/v1/kv/{raw_key}");
    let long_key = "a".repeat(1025);

    expect_error(http.put(kv("")).body("v"), 400, "PUT empty key").await;
    expect_error(http.delete(kv("")), 400, "DELETE empty key").await;
    expect_error(http.get(kv("")), 400, "GET empty key").await;
    expect_error(http.put(kv("a%0Ab")).body("v"), 400, "PUT key with LF").await;
    expect_error(http.put(kv("%07")).body("v"), 400, "PUT key with BEL").await;
    expect_error(http.get(kv("a%0Ab")), 400, "GET key with LF").await;
    expect_error(http.delete(kv("a%0Ab")), 400, "DELETE key with LF").await;
    expect_error(http.put(kv("%FF")).body("v"), 400, "PUT key not UTF-8").await;
    expect_error(http.put(kv("a%C3")).body("v"), 400, "PUT key cut UTF-8").await;
    expect_error(http.get(kv("%FF")), 400, "GET key not UTF-8").await;
    expect_error(http.put(kv(&long_key)).body("v"), 414, "PUT 1025-byte key").await;
    expect_error(http.get(kv(&long_key)), 414, "GET 1025-byte key").await;
    expect_error(http.delete(kv(&long_key)), 414, "DELETE 1025-byte key").await;
    expect_error(
        http.put(kv("x")).body("v".repeat(1001)),
        413,
        "PUT 1001-byte value over max_value_bytes = 1000",
    )
    .await;
    expect_error(
        http.put(kv("x")).body("v".repeat(100_000)),
        413,
        "PUT 100000-byte value over max_value_bytes = 1000",
    )
    .await;
    expect_error(http.post(kv("x")).body("v"), 405, "POST /v1/kv/x").await;
    expect_error(http.patch(kv("x")).body("v"), 405, "PATCH /v1/kv/x").await;
    expect_error(
        http.get(format!("{base}/v1/kv/x?consistency=bogus")),
        400,
        "GET consistency=bogus",
    )
    .await;
    expect_error(
        http.put(format!("{base}/v1/kv/x?consistency=bogus"))
            .body("v"),
        400,
        "PUT consistency=bogus",
    )
    .await;
    expect_error(
        http.delete(format!("{base}/v1/kv/x?consistency=bogus")),
        400,
        "DELETE consistency=bogus",
    )
    .await;
    expect_error(
        http.get(format!("{base}/v1/kv?limit=abc")),
        400,
        "GET /v1/kv?limit=abc",
    )
    .await;
    expect_error(
        http.get(format!("{base}/v1/kv?limit=-1")),
        400,
        "GET /v1/kv?limit=-1",
    )
    .await;
    expect_error(http.get(kv("missing")), 404, "GET missing key").await;
    expect_error(http.get(kv("gone")), 404, "GET deleted key").await;
    expect_error(http.get(format!("{base}/nope")), 404, "GET unknown path").await;
    expect_error(
        http.get(format!("{base}/v2/kv/x")),
        404,
        "GET unknown API version",
    )
    .await;

    assert_eq!(
        state_of(&cluster).await,
        before,
        "bad requests must change nothing (digest, keys, tombstones)"
    );
    assert_eq!(
        client.get("x", None).await.unwrap().unwrap().value,
        "stored",
        "x keeps its value"
    );
    assert!(
        client.healthy().await,
        "the node survived every bad request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_inclusive() {
    let cluster = TestCluster::start(1, "max_value_bytes = 1000\n");
    let client = cluster.client(1);
    let key = "k".repeat(1024);
    let value = "v".repeat(1000);
    client
        .put(&key, &value, None)
        .await
        .expect("a 1024-byte key and a 1000-byte value are within the limits");
    assert_eq!(client.get(&key, None).await.unwrap().unwrap().value, value);
    client
        .put("empty", "", None)
        .await
        .expect("an empty value is allowed");
    assert_eq!(
        client.get("empty", None).await.unwrap().unwrap().value,
        "",
        "the empty value is a value, not an absence"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_round_trip_and_prefix_listing() {
    let cluster = TestCluster::start(1, "");
    let client = cluster.client(1);
    let keys = [
        "a/b/c",
        "/leading/slash",
        "with space",
        "ünïcödé/日本語/🚀",
        "q?x&y=z#frag%25+plus",
        "quote\"and'apostrophe",
    ];
    for (i, key) in keys.iter().enumerate() {
        let value = format!("value {i} of {key}");
        let reply = client
            .put(key, &value, None)
            .await
            .unwrap_or_else(|e| panic!("PUT {key:?}: {e}"));
        assert_eq!(reply.key, *key, "the key is echoed decoded");
        let read = client
            .get(key, None)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{key:?} not found after PUT"));
        assert_eq!(read.key, *key);
        assert_eq!(read.value, value);
    }
    // A listing shows the decoded keys.
    let all = client.get_json("/v1/kv?limit=100").await.unwrap();
    let listed = listed_keys(&all);
    let mut sorted = keys.to_vec();
    sorted.sort();
    assert_eq!(listed, sorted, "the listing holds every key, ordered");

    // The plain GET: text body, ETag with the version.
    let plain = reqwest::get(format!("{}/v1/kv/with%20space", cluster.url(1)))
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
    assert!(plain.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let etag = plain.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(plain.text().await.unwrap(), "value 2 of with space");
    let version = client
        .get("with space", None)
        .await
        .unwrap()
        .unwrap()
        .version;
    assert_eq!(etag, format!("\"{version}\""));

    // Prefix listing: ordered, limited, truncated.
    for key in ["p/c", "p/a", "p/b", "q/x", "p", "o/z"] {
        client.put(key, &format!("val {key}"), None).await.unwrap();
    }
    let page = client.get_json("/v1/kv?prefix=p/&limit=2").await.unwrap();
    let items = page["items"].as_array().unwrap();
    let listed: Vec<(&str, &str)> = items
        .iter()
        .map(|item| {
            assert!(item["version"].is_string(), "item has a version: {item}");
            (
                item["key"].as_str().unwrap(),
                item["value"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, [("p/a", "val p/a"), ("p/b", "val p/b")]);
    assert_eq!(page["truncated"], true, "{page}");
    assert_eq!(page["next"], "p/b", "the cursor of the next page: {page}");
    // The next page starts after the cursor, and the last page says so.
    let page = client
        .get_json("/v1/kv?prefix=p/&limit=2&start_after=p/b")
        .await
        .unwrap();
    assert_eq!(listed_keys(&page), ["p/c"]);
    assert_eq!(page["truncated"], false, "{page}");
    assert_eq!(page["next"], Value::Null, "{page}");

    let page = client.get_json("/v1/kv?prefix=p/&limit=10").await.unwrap();
    let listed = listed_keys(&page);
    assert_eq!(listed, ["p/a", "p/b", "p/c"]);
    assert_eq!(page["truncated"], false, "{page}");

    // Deleted keys are not listed.
    client.delete("p/b", None).await.unwrap();
    let page = client.get_json("/v1/kv?prefix=p/&limit=10").await.unwrap();
    let listed = listed_keys(&page);
    assert_eq!(listed, ["p/a", "p/c"]);
}

async fn meshkv(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_meshkv"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run meshkv {args:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_exit_codes() {
    let cluster = TestCluster::start(1, "");
    let url = cluster.url(1);

    let out = meshkv(&["get", "missing", "--node", &url]).await;
    assert_eq!(out.status.code(), Some(1), "get of a missing key: {out:?}");
    assert!(!out.stderr.is_empty(), "a failure says why on stderr");

    let out = meshkv(&["get"]).await;
    assert_eq!(out.status.code(), Some(2), "get without a key: {out:?}");

    let out = meshkv(&["put", "k", "v", "--node", &url]).await;
    assert_eq!(out.status.code(), Some(0), "put: {out:?}");
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("put prints JSON ({e}): {out:?}"));
    assert_eq!(json["key"], "k");
    assert_eq!(json["previous"], Value::Null);
    assert!(json["version"].is_string(), "{json}");

    let out = meshkv(&["get", "k", "--node", &url]).await;
    assert_eq!(out.status.code(), Some(0), "get: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), "v");

    let out = meshkv(&[
        "put",
        "k",
        "w",
        "--cluster",
        cluster.cluster_file().to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "put --cluster: {out:?}");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["previous"], "v");

    let out = meshkv(&["del", "k", "--node", &url]).await;
    assert_eq!(out.status.code(), Some(0), "del: {out:?}");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["previous"], "w");

    let out = meshkv(&["get", "k", "--node", &url]).await;
    assert_eq!(out.status.code(), Some(1), "get of a deleted key: {out:?}");

    let out = meshkv(&["put", "k", "v", "--node", &url, "--consistency", "bogus"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad consistency level is bad usage: {out:?}"
    );

    let out = meshkv(&["frobnicate"]).await;
    assert_eq!(out.status.code(), Some(2), "unknown subcommand: {out:?}");
}

/// Reads one HTTP/1.1 response (headers and a `content-length` body) from `stream`;
/// `None` if the connection ends or fails first. Returns the lower-cased head and the body.
fn read_response(stream: &mut TcpStream) -> Option<(String, String)> {
    let mut data = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |value| value.trim().parse().unwrap_or(0));
            if data.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&data[end + 4..end + 4 + length]).into_owned();
                return Some((head, body));
            }
        }
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buffer[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_oversized_value_leaves_the_connection_usable() {
    // HTTP/1.1 keep-alive: after answering 413 to a body it did not read in full, a
    // server must either say `Connection: close` or keep serving the connection.
    // Otherwise a pooling client's next request on that connection fails.
    let cluster = TestCluster::start(1, "max_value_bytes = 1000\n");
    let address = cluster.http_addr(1);
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let size = 100_000;
    let request = format!(
        "PUT /v1/kv/x HTTP/1.1\r\nHost: {address}\r\nContent-Length: {size}\r\n\r\n{}",
        "v".repeat(size)
    );
    stream
        .write_all(request.as_bytes())
        .expect("the whole request fits in the socket buffers");
    let (head, body) = read_response(&mut stream).expect("a response to the oversized PUT");
    assert!(head.starts_with("http/1.1 413"), "{head}\n\n{body}");
    if head.contains("connection: close") {
        return;
    }
    let second = stream
        .write_all(format!("GET /health HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes())
        .ok()
        .and_then(|()| read_response(&mut stream));
    assert!(
        matches!(&second, Some((head, body)) if head.starts_with("http/1.1 200") && body == "ok"),
        "the 413 response did not say `Connection: close`, yet the connection no longer \
         serves requests (second request got {second:?}); 413 head was:\n{head}"
    );
}

/// The keys of a `GET /v1/kv` answer, in the order listed.
fn listed_keys(page: &serde_json::Value) -> Vec<&str> {
    page["items"]
        .as_array()
        .expect("items is an array")
        .iter()
        .map(|item| item["key"].as_str().expect("every item has a key"))
        .collect()
}
