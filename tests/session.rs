//! Session tokens (API.md §3.3) with real processes: a client that writes on n1 and
//! reads at `one` on n2 while n1's pushes to n2 are cut off sees its write with its
//! token (fetched from a peer that has it), or a 503 when no reachable node has it,
//! never the old value; without the token it sees the old value. Bad tokens get a 400
//! and change nothing.

mod common;

use std::time::Duration;

use common::{eventually, require_nft, TestCluster};
use serde_json::Value;

/// Bound of every wait.
const WAIT: Duration = Duration::from_secs(30);

const SESSION: &str = "meshkv-session";

/// `GET /v1/kv/{key}?consistency=one` on node `i` with `token` (if any): the status,
/// the body and the token of the answer.
async fn get(
    cluster: &TestCluster,
    i: usize,
    key: &str,
    token: Option<&str>,
) -> (u16, String, Option<String>) {
    let request =
        reqwest::Client::new().get(format!("{}/v1/kv/{key}?consistency=one", cluster.url(i)));
    send(request, token).await
}

/// `PUT /v1/kv/{key}?consistency=LEVEL` on node `i` with `token`: status, body, token.
async fn put(
    cluster: &TestCluster,
    i: usize,
    key: &str,
    value: &str,
    level: &str,
    token: Option<&str>,
) -> (u16, String, Option<String>) {
    let request = reqwest::Client::new()
        .put(format!(
            "{}/v1/kv/{key}?consistency={level}",
            cluster.url(i)
        ))
        .body(value.to_owned());
    send(request, token).await
}

/// Sends `request` with `token` (if any): the status, the body and the answer's token.
async fn send(
    request: reqwest::RequestBuilder,
    token: Option<&str>,
) -> (u16, String, Option<String>) {
    let mut request = request.timeout(Duration::from_secs(10));
    if let Some(token) = token {
        request = request.header(SESSION, token);
    }
    let response = request.send().await.expect("the node answers");
    let status = response.status().as_u16();
    let token = response
        .headers()
        .get(SESSION)
        .map(|token| token.to_str().unwrap().to_owned());
    (status, response.text().await.unwrap(), token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_its_token_a_client_reads_its_write_at_one_on_a_node_the_write_has_not_reached() {
    if !require_nft(
        "with_its_token_a_client_reads_its_write_at_one_on_a_node_the_write_has_not_reached",
    ) {
        return;
    }
    // No anti-entropy: once the link n1-n2 is cut, n2 gets n1's writes from nobody
    // (n3 does not relay pushes), so without a token n2 stays behind.
    let mut cluster = TestCluster::start(3, "anti_entropy_interval_ms = 0\n");
    cluster.wait_mesh(WAIT).await;
    let (status, _, _) = put(&cluster, 1, "k", "old", "all", None).await;
    assert_eq!(status, 200);

    // 1. Only the link n1-n2 is cut: n3 holds the write, and n2 fetches it from n3.
    cluster.partition(&[&[1], &[2]]);
    let (status, body, token) = put(&cluster, 1, "k", "new", "one", None).await;
    assert_eq!(status, 200, "{body}");
    let token = token.expect("a write answers a token");
    eventually(WAIT, "n3 holds the write", || async {
        let (_, body, _) = get(&cluster, 3, "k", None).await;
        (body == "new").then_some(())
    })
    .await;
    let (status, body, _) = get(&cluster, 2, "k", None).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "old"),
        "without a token n2 answers what it holds"
    );
    let (status, body, answered) = get(&cluster, 2, "k", Some(&token)).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "new"),
        "with the token n2 must answer the session's own write"
    );
    let token = answered.expect("a read answers a token");
    // n2 repaired itself: the plain read now sees the write too.
    let (_, body, _) = get(&cluster, 2, "k", None).await;
    assert_eq!(body, "new");

    // 2. n1 cut off from both: no node n2 can reach has the next write. With the
    // token n2 answers 503, never the older value; without it, the older value.
    cluster.partition(&[&[1], &[2, 3]]);
    let (status, body, token) = put(&cluster, 1, "k", "newest", "one", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    let token = token.expect("a write answers a token");
    let (status, body, _) = get(&cluster, 2, "k", None).await;
    assert_eq!((status, body.as_str()), (200, "new"));
    let (status, body, _) = get(&cluster, 2, "k", Some(&token)).await;
    assert_eq!(status, 503, "n2 answered {body} from an older state");
    let error: Value = serde_json::from_str(&body).expect("a JSON error");
    let sentence = error["error"].as_str().unwrap();
    assert!(
        sentence.contains("has not caught up with the session"),
        "{sentence}"
    );
    // 3. Healed: the same token is served the write.
    cluster.heal();
    eventually(
        WAIT,
        "n2 serves the session's write after the heal",
        || async {
            let (status, body, _) = get(&cluster, 2, "k", Some(&token)).await;
            assert_ne!(
                (status, body.as_str()),
                (200, "new"),
                "an older state was served"
            );
            (status == 200 && body == "newest").then_some(())
        },
    )
    .await;
}

/// The token's bound for node `id`: `(wall_ms, logical)`.
fn bound(token: &str, id: &str) -> (u64, u64) {
    let entries = token.splitn(3, '.').nth(2).expect("s1.<binding>.<entries>");
    let stamp = entries
        .split(',')
        .find_map(|entry| entry.strip_prefix(&format!("{id}=")))
        .unwrap_or_else(|| panic!("{token} has no entry for {id}"));
    let (wall, logical) = stamp.split_once('+').unwrap_or((stamp, "0"));
    (
        u64::from_str_radix(wall, 16).unwrap(),
        u64::from_str_radix(logical, 16).unwrap(),
    )
}

/// Node `i`'s session watermark for `peer`, from `/v1/cluster`.
async fn watermark(cluster: &TestCluster, i: usize, peer: &str) -> Option<(u64, u64)> {
    let view: Value = reqwest::Client::new()
        .get(format!("{}/v1/cluster", cluster.url(i)))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let mark =
        view["peers"].as_array()?.iter().find(|p| p["id"] == peer)?["session_watermark"].clone();
    Some((mark["wall_ms"].as_u64()?, mark["logical"].as_u64()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_clean_round_a_session_reads_older_keys_while_the_writer_is_down() {
    if !require_nft("after_a_clean_round_a_session_reads_older_keys_while_the_writer_is_down") {
        return;
    }
    let mut cluster = TestCluster::start(
        3,
        "anti_entropy_interval_ms = 200
",
    );
    cluster.wait_mesh(WAIT).await;
    let (status, _, _) = put(&cluster, 1, "k_old", "old", "all", None).await;
    assert_eq!(status, 200);
    let (status, body, token) = put(&cluster, 1, "k_new", "new", "all", None).await;
    assert_eq!(status, 200, "{body}");
    let token = token.expect("a write answers a token");
    let seen = bound(&token, "n1");
    // A clean round of n2 (and n3) with n1 that began after the write.
    for i in [2, 3] {
        eventually(WAIT, "a clean round with n1 covers the write", || async {
            watermark(&cluster, i, "n1")
                .await
                .filter(|mark| *mark >= seen)
        })
        .await;
    }
    // One more write of n1 that no other node gets: a session that saw it cannot be
    // served by n2 or n3 from their watermarks.
    cluster.partition(&[&[1], &[2, 3]]);
    let (status, body, later) = put(&cluster, 1, "k_later", "x", "one", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    let later = later.expect("a write answers a token");
    cluster.kill(1);

    // n1 is down: the watermarks settle n1 for the first session, on any key.
    for i in [2, 3] {
        let (status, body, _) = get(&cluster, i, "k_old", Some(&token)).await;
        assert_eq!(
            (status, body.as_str()),
            (200, "old"),
            "n{i} serves an older key to the session"
        );
        let (status, body, _) = get(&cluster, i, "k_new", Some(&token)).await;
        assert_eq!((status, body.as_str()), (200, "new"), "n{i}");
        let (status, body, _) = get(&cluster, i, "absent", Some(&token)).await;
        assert_eq!(status, 404, "n{i}: {body}");
    }
    // The session that saw the write only n1 has: 503, never the older state.
    for i in [2, 3] {
        let (status, body, _) = get(&cluster, i, "k_old", Some(&later)).await;
        assert_eq!(
            status, 503,
            "n{i} answered {body} to a session it cannot serve"
        );
        assert!(watermark(&cluster, i, "n1").await < Some(bound(&later, "n1")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_and_change_nothing() {
    let cluster = TestCluster::start(2, "");
    cluster.wait_mesh(WAIT).await;
    let (status, _, token) = put(&cluster, 1, "k", "v", "live", None).await;
    assert_eq!(status, 200);
    let token = token.expect("a token");
    // A token of the same shape for a node that is not in the cluster, and one bound
    // to another cluster's name.
    let unknown = token.replace("n1=", "n9=");
    let (tag, rest) = token.split_at(11);
    let flipped = if tag.ends_with('0') { '1' } else { '0' };
    let other = format!("{}{flipped}{rest}", &tag[..10]);
    let cases = [
        ("garbage", "malformed"),
        ("s1.", "malformed"),
        (unknown.as_str(), "not in this cluster"),
        (other.as_str(), "another cluster"),
    ];
    for (bad, why) in cases {
        for i in 1..=2 {
            let (status, body, _) = put(&cluster, i, "k", "changed", "live", Some(bad)).await;
            assert_eq!(status, 400, "PUT with {bad:?}: {body}");
            let error: Value = serde_json::from_str(&body).expect("a JSON error");
            assert!(error["error"].as_str().unwrap().contains(why), "{body}");
            let (status, body, _) = get(&cluster, i, "k", Some(bad)).await;
            assert_eq!(status, 400, "GET with {bad:?}: {body}");
        }
    }
    for i in 1..=2 {
        let (status, body, _) = get(&cluster, i, "k", None).await;
        assert_eq!(
            (status, body.as_str()),
            (200, "v"),
            "a refused write changed k"
        );
    }
    // The good token still works, on either node; the listing answers one too.
    let (status, body, _) = get(&cluster, 2, "k", Some(&token)).await;
    assert_eq!((status, body.as_str()), (200, "v"));
    let listing = reqwest::Client::new()
        .get(format!("{}/v1/kv", cluster.url(2)))
        .header(SESSION, &token)
        .send()
        .await
        .unwrap();
    assert_eq!(listing.status().as_u16(), 200);
    assert!(listing.headers().get(SESSION).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_carries_the_session_across_commands() {
    let cluster = TestCluster::start(2, "");
    cluster.wait_mesh(WAIT).await;
    let file = cluster.dir().join("session.token");
    let meshkv = env!("CARGO_BIN_EXE_meshkv");
    let run = |args: &[&str]| {
        let output = std::process::Command::new(meshkv)
            .args(args)
            .output()
            .expect("meshkv runs");
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let session = file.to_str().unwrap();
    let n1 = cluster.url(1);
    let n2 = cluster.url(2);
    run(&[
        "put",
        "--node",
        &n1,
        "--session",
        session,
        "greeting",
        "hello",
    ]);
    let first = std::fs::read_to_string(&file).expect("the token was written");
    assert!(first.starts_with("s1."), "{first}");
    let value = run(&[
        "get",
        "--node",
        &n2,
        "--consistency",
        "one",
        "--session",
        session,
        "greeting",
    ]);
    assert_eq!(value, "hello");
    run(&["put", "--node", &n2, "--session", session, "other", "x"]);
    let second = std::fs::read_to_string(&file).unwrap();
    assert!(second.contains("n1=") && second.contains("n2="), "{second}");
}
