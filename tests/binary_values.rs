//! Values are bytes (API.md §3): every byte value and a 1 MiB random blob round-trip
//! through HTTP and the CLI, replicate to every node byte for byte, and the JSON views
//! carry them as `value_base64`.

mod common;

use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use common::{eventually, TestCluster};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// A 1 MiB blob from a fixed xorshift seed: every byte value occurs, and it is far
/// from valid UTF-8.
fn random_blob(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

async fn raw_get(url: &str) -> (u16, String, Vec<u8>) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (
        status,
        content_type,
        response.bytes().await.unwrap().to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_values_round_trip_and_replicate_byte_exact() {
    let cluster = TestCluster::start(3, "");
    let http = reqwest::Client::new();
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let blob = random_blob(1024 * 1024);
    let cases: [(&str, &[u8]); 4] = [
        ("bin/all-256", &all_bytes),
        ("bin/blob", &blob),
        ("bin/empty", b""),
        ("bin/nul", b"\0"),
    ];
    for (key, value) in cases {
        let response = http
            .put(format!("{}/v1/kv/{key}", cluster.url(1)))
            .body(value.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "PUT {key}");
    }
    // The default `live` write waited for every peer: each node has the exact bytes.
    for node in 1..=3 {
        for (key, value) in cases {
            let (status, content_type, body) =
                raw_get(&format!("{}/v1/kv/{key}", cluster.url(node))).await;
            assert_eq!(status, 200, "GET {key} on n{node}");
            assert!(body == value, "{key} on n{node}: the bytes differ");
            let expected_type = if std::str::from_utf8(value).is_ok() {
                "text/plain; charset=utf-8"
            } else {
                "application/octet-stream"
            };
            assert_eq!(content_type, expected_type, "{key} on n{node}");
        }
    }
    // JSON views: base64 for bytes that are not UTF-8, a string otherwise.
    let json: Value = http
        .get(format!("{}/v1/kv/bin/all-256", cluster.url(2)))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(json.get("value").is_none(), "{json}");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(json["value_base64"].as_str().expect("value_base64"))
        .unwrap();
    assert_eq!(decoded, all_bytes);
    let page: Value = http
        .get(format!("{}/v1/kv?prefix=bin/", cluster.url(3)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = page["items"].as_array().unwrap();
    let empty = items
        .iter()
        .find(|item| item["key"] == "bin/empty")
        .unwrap();
    assert_eq!(empty["value"], "", "an empty value is valid UTF-8: {empty}");
    let nul = items.iter().find(|item| item["key"] == "bin/nul").unwrap();
    assert_eq!(nul["value"], "\u{0}", "NUL is valid UTF-8: {nul}");
    let blob_item = items.iter().find(|item| item["key"] == "bin/blob").unwrap();
    assert!(
        blob_item.get("value_base64").is_some(),
        "blob listed as base64"
    );
    // `previous` of an overwrite is base64 too.
    let reply: Value = http
        .put(format!("{}/v1/kv/bin/all-256", cluster.url(3)))
        .body("text now")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(reply.get("previous").is_none(), "{reply}");
    let previous = base64::engine::general_purpose::STANDARD
        .decode(reply["previous_base64"].as_str().expect("previous_base64"))
        .unwrap();
    assert_eq!(previous, all_bytes);
}

async fn meshkv(args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshkv"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run meshkv {args:?}: {e}"));
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(bytes).await.unwrap();
        drop(pipe);
    }
    tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("meshkv finished within 30 s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_puts_and_gets_any_bytes() {
    let cluster = TestCluster::start(2, "");
    let (n1, n2) = (cluster.url(1), cluster.url(2));
    let all_bytes: Vec<u8> = (0..=255u8).rev().collect();
    let blob = random_blob(1024 * 1024);

    // From a file: a 1 MiB argument would not even fit on a command line.
    let path = cluster.dir().join("blob.bin");
    std::fs::write(&path, &blob).unwrap();
    let out = meshkv(
        &[
            "put",
            "cli/blob",
            "--file",
            path.to_str().unwrap(),
            "--node",
            &n1,
        ],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "put --file: {out:?}");
    // From standard input.
    let out = meshkv(&["put", "cli/all", "-", "--node", &n1], Some(&all_bytes)).await;
    assert_eq!(out.status.code(), Some(0), "put -: {out:?}");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["previous"], Value::Null, "{json}");

    // `get` writes the raw bytes, on the other node.
    for (key, value) in [("cli/blob", &blob), ("cli/all", &all_bytes)] {
        let out = eventually(Duration::from_secs(10), "replicated", || async {
            let out = meshkv(&["get", key, "--node", &n2], None).await;
            (out.status.code() == Some(0)).then_some(out)
        })
        .await;
        assert!(out.stdout == *value, "{key}: the CLI's bytes differ");
    }

    // An overwrite reports the binary previous value as base64.
    let out = meshkv(&["put", "cli/all", "text", "--node", &n2], None).await;
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let previous = base64::engine::general_purpose::STANDARD
        .decode(json["previous_base64"].as_str().expect("previous_base64"))
        .unwrap();
    assert_eq!(previous, all_bytes);

    // A missing file is a clear failure that writes nothing.
    let out = meshkv(
        &["put", "cli/none", "--file", "/nonexistent/x", "--node", &n1],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}
