//! Client tokens (API.md §3.6) against real `meshkv serve` processes: every route but
//! `/health` and the dashboard page needs a token of the right role, a refused request
//! changes nothing, and the same holds through the command line (`$MESHKV_TOKEN`,
//! `--token-file`) and the test suites. A bad tokens file stops a node at start-up
//! with the file and the line, never the token. The C library's checks are in
//! clients/libkv739/tests/kv739_auth.c, run by scripts/c-client-test.sh.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::TestCluster;
use reqwest::{Method, StatusCode};
use serde_json::Value;

const READ: &str = "read-7f3a9c0e51d24b68";
const WRITE: &str = "write-2c8e41d97a0f5b36";
const ADMIN: &str = "admin-9d1b6e3f08c47a25";

fn tokens_file() -> String {
    format!("# roles and their tokens\nread {READ}\n\nwrite {WRITE}\nadmin {ADMIN}\n")
}

/// One request: its status, headers and body.
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

async fn request(
    cluster: &TestCluster,
    node: usize,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Answer {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", cluster.url(node)))
        .timeout(Duration::from_secs(5))
        .body(body.to_owned());
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    // A watch never ends: its headers are the answer.
    let response = request.send().await.expect("the node answers");
    let status = response.status();
    let headers = response.headers().clone();
    let body = if path.starts_with("/v1/watch") && status == 200 {
        String::new()
    } else {
        response.text().await.expect("a body")
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// The value of `key` on `node`, read with the admin token (`None`: absent).
async fn value(cluster: &TestCluster, node: usize, key: &str) -> Option<String> {
    let answer = request(
        cluster,
        node,
        Method::GET,
        &format!("/v1/kv/{key}"),
        Some(ADMIN),
        "",
    )
    .await;
    match answer.status.as_u16() {
        200 => Some(answer.body),
        404 => None,
        other => panic!(
            "GET {key} with the admin token answered {other}: {}",
            answer.body
        ),
    }
}

/// Checks a 401: the JSON error, `WWW-Authenticate: Bearer …`, no token echoed.
fn assert_401(answer: &Answer, what: &str) {
    assert_eq!(answer.status, 401, "{what}: {}", answer.body);
    let challenge = answer.headers["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
    let error = answer.json()["error"].as_str().unwrap().to_owned();
    assert!(
        !error.contains("7f3a") && !error.contains("wrong-"),
        "{what}: {error}"
    );
}

fn assert_403(answer: &Answer, what: &str) {
    assert_eq!(answer.status, 403, "{what}: {}", answer.body);
    assert!(
        answer.json()["error"].as_str().unwrap().contains("role"),
        "{what}"
    );
}

/// The counter `series` of node `node`'s `/metrics`.
async fn counter(cluster: &TestCluster, node: usize, series: &str) -> u64 {
    let text = request(cluster, node, Method::GET, "/metrics", Some(ADMIN), "")
        .await
        .body;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_a_token_of_its_role_and_a_refusal_changes_nothing() {
    let cluster = TestCluster::start_with_tokens(
        2,
        "max_value_bytes = 1000\nmax_key_bytes = 100\n",
        &tokens_file(),
        ADMIN,
    );
    let (mut refused_401, mut refused_403) = (0, 0);

    // Open without a token: /health and the dashboard page.
    let health = request(&cluster, 1, Method::GET, "/health", None, "").await;
    assert_eq!((health.status.as_u16(), health.body.as_str()), (200, "ok"));
    assert_eq!(
        request(&cluster, 1, Method::GET, "/", None, "")
            .await
            .status,
        200
    );
    // The CORS preflight of a token-carrying cross-origin GET /v1/cluster is open.
    let preflight = request(&cluster, 1, Method::OPTIONS, "/v1/cluster", None, "").await;
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.headers["access-control-allow-headers"],
        "authorization"
    );
    assert_eq!(preflight.headers["access-control-allow-origin"], "*");

    // No token, a malformed header, an unknown token: 401, and the key stays absent.
    let put = |token: Option<&'static str>| {
        let cluster = &cluster;
        async move { request(cluster, 1, Method::PUT, "/v1/kv/guarded", token, "v1").await }
    };
    assert_401(&put(None).await, "PUT without a token");
    assert_401(
        &put(Some("wrong-token-0123456789")).await,
        "PUT with an unknown token",
    );
    let basic = reqwest::Client::new()
        .put(format!("{}/v1/kv/guarded", cluster.url(1)))
        .header("Authorization", format!("Basic {WRITE}"))
        .body("v1")
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
    refused_401 += 3;
    // Checked before anything else: a value over the limit, a bad key, a bad session
    // token are all 401 without a token, not 413, 400 or 400.
    let big = "x".repeat(1001);
    assert_401(
        &request(&cluster, 1, Method::PUT, "/v1/kv/big", None, &big).await,
        "big",
    );
    assert_401(
        &request(&cluster, 1, Method::PUT, "/v1/kv/a%01b", None, "v").await,
        "bad key",
    );
    let session = reqwest::Client::new()
        .get(format!("{}/v1/kv/guarded", cluster.url(1)))
        .header("Meshkv-Session", "garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(session.status(), 401);
    refused_401 += 3;
    // A read token may not write or delete.
    assert_403(&put(Some(READ)).await, "PUT with a read token");
    refused_403 += 1;
    assert_eq!(value(&cluster, 1, "guarded").await, None);
    assert_eq!(value(&cluster, 2, "guarded").await, None);

    // A write token writes; a read token reads it, on both nodes.
    let written = put(Some(WRITE)).await;
    assert_eq!(written.status, 200, "{}", written.body);
    assert_eq!(written.json()["previous"], Value::Null);
    let read = request(&cluster, 1, Method::GET, "/v1/kv/guarded", Some(READ), "").await;
    assert_eq!((read.status.as_u16(), read.body.as_str()), (200, "v1"));
    common::eventually(Duration::from_secs(10), "n2 holds the write", || async {
        let answer = request(&cluster, 2, Method::GET, "/v1/kv/guarded", Some(READ), "").await;
        (answer.body == "v1").then_some(())
    })
    .await;
    let delete = request(
        &cluster,
        1,
        Method::DELETE,
        "/v1/kv/guarded",
        Some(READ),
        "",
    )
    .await;
    assert_403(&delete, "DELETE with a read token");
    refused_403 += 1;
    assert_eq!(value(&cluster, 1, "guarded").await.as_deref(), Some("v1"));

    // The read routes take a read token; without one they answer 401.
    for path in [
        "/v1/kv?prefix=",
        "/v1/convergence",
        "/v1/watch?prefix=x",
        "/v1/nothing",
    ] {
        let answer = request(&cluster, 1, Method::GET, path, Some(READ), "").await;
        let expected = if path == "/v1/nothing" { 404 } else { 200 };
        assert_eq!(
            answer.status, expected,
            "GET {path} with a read token: {}",
            answer.body
        );
        assert_401(
            &request(&cluster, 1, Method::GET, path, None, "").await,
            path,
        );
        refused_401 += 1;
    }
    // The operator's routes need admin: a write token gets 403.
    for path in ["/v1/cluster", "/v1/conflicts", "/metrics"] {
        assert_403(
            &request(&cluster, 1, Method::GET, path, Some(WRITE), "").await,
            path,
        );
        refused_403 += 1;
        let answer = request(&cluster, 1, Method::GET, path, Some(ADMIN), "").await;
        assert_eq!(answer.status, 200, "GET {path} with the admin token");
    }

    assert_eq!(
        counter(
            &cluster,
            1,
            "meshkv_http_auth_refused_total{status=\"401\"}"
        )
        .await,
        refused_401
    );
    assert_eq!(
        counter(
            &cluster,
            1,
            "meshkv_http_auth_refused_total{status=\"403\"}"
        )
        .await,
        refused_403
    );
    let log = cluster.log(1);
    for token in [READ, WRITE, ADMIN, "wrong-token-0123456789"] {
        assert!(!log.contains(token), "n1's log shows a token:\n{log}");
    }
    assert!(
        log.contains("client_tokens=1 read, 1 write, 1 admin"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_open_leaves_only_metrics_readable_without_a_token() {
    let cluster = TestCluster::start_with_tokens(1, "metrics_open = true\n", &tokens_file(), ADMIN);
    let metrics = request(&cluster, 1, Method::GET, "/metrics", None, "").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.body.contains("meshkv_http_auth_refused_total"));
    assert_401(
        &request(&cluster, 1, Method::GET, "/v1/cluster", None, "").await,
        "cluster",
    );
    assert_401(
        &request(&cluster, 1, Method::GET, "/v1/kv/k", None, "").await,
        "get",
    );
}

fn meshkv() -> Command {
    let bin = std::env::var_os("MESHKV_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_meshkv").into());
    let mut command = Command::new(bin);
    command.env_remove("MESHKV_TOKEN").stdin(Stdio::null());
    command
}

/// Runs `meshkv args…` with `$MESHKV_TOKEN` = `token` (unset for `None`).
fn run(args: &[&str], token: Option<&str>) -> Output {
    let mut command = meshkv();
    command.args(args);
    if let Some(token) = token {
        command.env("MESHKV_TOKEN", token);
    }
    command.output().expect("run meshkv")
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_takes_the_token_from_the_environment_or_a_file() {
    let cluster = TestCluster::start_with_tokens(2, "", &tokens_file(), ADMIN);
    let url = cluster.url(1);
    let cluster_file = cluster.cluster_file().to_str().unwrap().to_owned();
    let write_file = cluster.dir().join("write.token");
    std::fs::write(&write_file, format!("{WRITE}\n")).unwrap();
    let write_file = write_file.to_str().unwrap();

    // No token: 401, exit 1, a hint; nothing written.
    let output = run(&["put", "cli", "v1", "--node", &url], None);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("401") && text(&output).contains("MESHKV_TOKEN"),
        "{}",
        text(&output)
    );
    // A read token: 403; nothing written.
    let output = run(&["put", "cli", "v1", "--node", &url], Some(READ));
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("403"), "{}", text(&output));
    assert_eq!(value(&cluster, 1, "cli").await, None);
    // A write token from a file writes (and beats a read token in the environment);
    // a read token from the environment reads it.
    let output = run(
        &[
            "put",
            "cli",
            "v1",
            "--cluster",
            &cluster_file,
            "--token-file",
            write_file,
        ],
        Some(READ),
    );
    assert!(output.status.success(), "{}", text(&output));
    let output = run(&["get", "cli", "--node", &url], Some(READ));
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(output.stdout, b"v1");
    let output = run(
        &["del", "cli", "--node", &url, "--token-file", write_file],
        None,
    );
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(value(&cluster, 1, "cli").await, None);

    // status needs admin (/v1/cluster); check needs read (/v1/convergence).
    let output = run(&["status", "--cluster", &cluster_file], Some(ADMIN));
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("alive"),
        "{}",
        text(&output)
    );
    let output = run(
        &["check", "--cluster", &cluster_file, "--wait", "10s"],
        Some(READ),
    );
    assert!(output.status.success(), "{}", text(&output));
    let output = run(
        &["check", "--node", &url, "--all", "--wait", "10s"],
        Some(READ),
    );
    assert!(output.status.success(), "{}", text(&output));
    let output = run(&["check", "--cluster", &cluster_file], None);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));

    // watch: refused without a token, streams with one.
    let output = run(&["watch", "w/", "--node", &url], None);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("401"), "{}", text(&output));
    let mut watch = meshkv()
        .args(["watch", "w/", "--node", &url])
        .env("MESHKV_TOKEN", READ)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    // Written until the watch (connecting in the background) sees one.
    let client = cluster.client(1);
    let event = common::eventually(Duration::from_secs(15), "the watch prints a change", || {
        let (client, received) = (&client, &received);
        async move {
            client.put("w/seen", "yes", None).await.unwrap();
            received.recv_timeout(Duration::from_millis(200)).ok()
        }
    })
    .await;
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(event.contains("\"key\":\"w/seen\""), "{event}");

    // A malformed token is refused before any request, and not shown.
    let output = run(
        &["get", "cli", "--node", &url],
        Some("two words-0123456789"),
    );
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("$MESHKV_TOKEN must be"),
        "{}",
        text(&output)
    );
    assert!(!text(&output).contains("words-0123"), "{}", text(&output));
    let output = run(
        &[
            "get",
            "cli",
            "--node",
            &url,
            "--token-file",
            "/nonexistent/token",
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_test_suites_pass_with_an_admin_token() {
    let cluster = TestCluster::start_with_tokens(3, "", &tokens_file(), ADMIN);
    let cluster_file = cluster.cluster_file().to_str().unwrap().to_owned();
    let admin_file = cluster.dir().join("admin.token");
    std::fs::write(&admin_file, ADMIN).unwrap();
    for (suite, size) in [
        ("consistency", ["--rounds", "60"]),
        ("throughput", ["--ops", "100"]),
    ] {
        let mut args = vec!["test", suite, "--cluster", &cluster_file, "--seed", "5"];
        args.extend(size);
        let output = run(&args, Some(ADMIN));
        assert!(
            output.status.success(),
            "meshkv test {suite}: {}",
            text(&output)
        );
    }
    // --token-file works for the suites too; without any token they cannot run.
    let admin_file = admin_file.to_str().unwrap();
    let suite = [
        "test",
        "consistency",
        "--cluster",
        &cluster_file,
        "--rounds",
        "20",
    ];
    let output = run(&[&suite[..], &["--token-file", admin_file]].concat(), None);
    assert!(output.status.success(), "{}", text(&output));
    let output = run(&suite, None);
    assert!(!output.status.success(), "{}", text(&output));
}

/// `meshkv serve` of a one-node cluster file in `dir` whose tokens file holds `tokens`
/// with permissions `mode`; its exit status and output. `http` is the node's address.
fn serve_with_tokens(dir: &Path, http: &str, tokens: &str, mode: u32) -> Output {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("tokens");
    std::fs::write(&path, tokens).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    let cluster = dir.join("cluster.toml");
    std::fs::write(
        &cluster,
        format!(
            "client_tokens_file = \"tokens\"\n[[nodes]]\nid = \"n1\"\nhttp = \"{http}\"\npeer = \"127.0.0.1:2\"\n"
        ),
    )
    .unwrap();
    let mut child = meshkv()
        .args(["serve", "--cluster", cluster.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Every case here exits at start-up; a node that serves is killed and reported.
    for _ in 0..100 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!(
        "meshkv serve kept running: {}",
        text(&child.wait_with_output().unwrap())
    );
}

#[test]
fn a_bad_tokens_file_stops_the_node_naming_the_line_never_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "s3cr3t-s3cr3t-s3cr3t";
    let cases = [
        (
            format!("read {READ}\nwrite {secret}\nadmin {secret}\n"),
            "line 3: the same token is already on line 2",
        ),
        (
            format!("# ok\nroot {secret}\n"),
            "line 2: the first word is not a role",
        ),
        (
            format!("{secret} admin\n"),
            "line 1: the first word is not a role",
        ),
        (
            format!("admin {secret}\u{e9}\n"),
            "line 1: the token must be 16 to 4096 visible ASCII",
        ),
        ("admin short\n".to_owned(), "line 1: the token must be"),
        ("# nothing\n".to_owned(), "it lists no token"),
    ];
    for (tokens, expected) in cases {
        let output = serve_with_tokens(dir.path(), "127.0.0.1:1", &tokens, 0o600);
        let shown = text(&output);
        assert_eq!(output.status.code(), Some(2), "{tokens:?}: {shown}");
        assert!(
            shown.contains("invalid client tokens file") && shown.contains("tokens: "),
            "{shown}"
        );
        assert!(
            shown.contains(expected),
            "{tokens:?}: expected {expected:?} in {shown}"
        );
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }
    // A group- or world-readable file is a warning. The node then fails to bind a port
    // that is taken, so that it stops on its own.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http = taken.local_addr().unwrap().to_string();
    let output = serve_with_tokens(dir.path(), &http, &format!("admin {secret}\n"), 0o644);
    let shown = text(&output);
    assert!(shown.contains("readable by its group or others"), "{shown}");
    assert!(shown.contains("cannot listen"), "{shown}");
    assert!(!shown.contains("s3cr3t"), "{shown}");
}
