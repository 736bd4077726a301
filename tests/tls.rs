//! TLS between real `meshkv serve` processes (API.md §3.6): HTTPS with the cluster's CA
//! works through the Rust client and the CLI, plain HTTP to the HTTPS port fails for
//! that client alone, peers whose certificate is not from the CA, names no member or
//! names another node than its `Hello` are refused, logged and counted, replication
//! works between TLS nodes and across a kill and restart, `meshkv demo --secure`
//! prints curl and CLI lines that work (TLS, client tokens and the secret), and the
//! acceptance suites pass against a cluster with TLS and client tokens on.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, NodeCert, TestCluster};

const WAIT: Duration = Duration::from_secs(15);

/// Runs the built `meshkv` binary; returns its exit code, stdout and stderr.
fn meshkv(args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_meshkv"))
        .args(args)
        .output()
        .expect("meshkv runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Waits until node `i`'s log holds `needle`.
async fn log_mentions(cluster: &TestCluster, i: usize, needle: &str) {
    eventually(WAIT, &format!("n{i}'s log mentions {needle:?}"), || async {
        cluster.log(i).contains(needle).then_some(())
    })
    .await
}

/// Writes `key` on node `i` until a write is acknowledged. With a stranger in the
/// cluster file, whose clock the node has never sampled, the commit-wait covers up to
/// `max_clock_skew_ms` of unknown lag (API.md §3.2): a write is acknowledged after
/// about a second, or answered 503 (applied, not acknowledged) when the wait comes out
/// 1 ms over the bound. Either way it is not what these tests are about.
async fn put_acknowledged(cluster: &TestCluster, i: usize, key: &str, value: &str) {
    eventually(
        WAIT,
        &format!("n{i} acknowledges a write of {key}"),
        || async {
            cluster
                .client(i)
                .put(key, value, None)
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_ca_works_and_plain_http_fails_cleanly() {
    let cluster = TestCluster::start_tls(2, "", |_| NodeCert::Good);
    let ca = cluster.ca_file().unwrap().to_str().unwrap().to_owned();
    let cluster_file = cluster.cluster_file().to_str().unwrap().to_owned();
    for i in 1..=2 {
        let log = cluster.log(i);
        assert!(
            log.contains("client_traffic=\"HTTPS\"") && log.contains("peer_traffic=\"mutual TLS\""),
            "the startup line says the traffic is TLS:\n{log}"
        );
    }

    // The Rust client: a write on n1 is read on n2 (over mutual TLS between them).
    cluster.client(1).put("rust", "client", None).await.unwrap();
    eventually(WAIT, "n2 reads the write made on n1", || async {
        let read = cluster.client(2).get("rust", None).await.ok()??;
        (read.text() == "client").then_some(())
    })
    .await;

    // The CLI: --node https://… --ca FILE, and --cluster FILE (its tls_ca_file).
    let n1 = cluster.url(1);
    assert!(n1.starts_with("https://"), "{n1}");
    let (code, out, err) = meshkv(&["put", "cli", "line", "--node", &n1, "--ca", &ca]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = meshkv(&["get", "cli", "--node", &n1, "--ca", &ca]);
    assert_eq!((code, out.as_str()), (0, "line"), "{err}");
    eventually(
        WAIT,
        "the CLI reads its write through the cluster file",
        || {
            let (code, out, _) = meshkv(&["get", "cli", "--cluster", &cluster_file]);
            async move { (code == 0 && out == "line").then_some(()) }
        },
    )
    .await;
    let (code, out, err) = meshkv(&["status", "--cluster", &cluster_file]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("unreachable"), "status over HTTPS:\n{out}");
    let (code, _, err) = meshkv(&["check", "--cluster", &cluster_file, "--wait", "10s"]);
    assert_eq!(code, 0, "check over HTTPS: {err}");

    // `meshkv watch` over HTTPS: a write on n2 arrives as a JSON line.
    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshkv"))
        .args(["watch", "w/", "--node", &cluster.url(1), "--ca", &ca])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap());
    // The watch is open once the node counts it.
    eventually(WAIT, "n1 counts the open watch", || async {
        (cluster.metric(1, "meshkv_watchers").await >= 1.0).then_some(())
    })
    .await;
    cluster.client(2).put("w/1", "seen", None).await.unwrap();
    let mut line = String::new();
    let read = tokio::time::timeout(
        WAIT,
        tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut line),
    )
    .await;
    assert!(
        matches!(read, Ok(Ok(n)) if n > 0) && line.contains("\"key\":\"w/1\""),
        "{read:?} {line:?}"
    );
    watch.kill().await.unwrap();

    // Without the CA, or over plain HTTP, the CLI fails with a sentence.
    let (code, _, err) = meshkv(&["get", "cli", "--node", &n1]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("needs --ca"), "{err}");
    let plain = n1.replace("https://", "http://");
    let (code, _, err) = meshkv(&["get", "cli", "--node", &plain]);
    assert_eq!(code, 1, "plain HTTP to an HTTPS port fails: {err}");

    // A raw plain-HTTP request: the connection ends (a TLS alert at most), no HTTP
    // answer; the node goes on serving everyone else.
    for _ in 0..3 {
        let mut stream = TcpStream::connect(cluster.http_addr(1)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut reply = Vec::new();
        let ended = stream.read_to_end(&mut reply);
        assert!(
            ended.is_ok() || reply.is_empty(),
            "the node closes the connection rather than leaving it open: {ended:?}"
        );
        assert!(
            !String::from_utf8_lossy(&reply).contains("HTTP/1.1"),
            "no HTTP answer on the HTTPS port: {reply:?}"
        );
        assert!(
            reply.is_empty() || reply[0] == 0x15,
            "at most a TLS alert: {reply:?}"
        );
    }
    let read = cluster.client(1).get("rust", None).await.unwrap().unwrap();
    assert_eq!(read.text(), "client", "the node still serves HTTPS clients");
    assert!(
        cluster
            .metric(1, "meshkv_http_tls_failures_total{reason=\"plaintext\"}")
            .await
            >= 3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_a_certificate_of_another_ca_is_refused_logged_and_counted() {
    let cluster = TestCluster::start_tls(3, "", |i| {
        if i == 3 {
            NodeCert::ForeignCa
        } else {
            NodeCert::Good
        }
    });
    // n3 dials n1: n1 refuses n3's certificate. n1 dials n3: n1 refuses the
    // certificate n3 answers with. Either way the refusal is n1's, counted as
    // unknown_ca and logged.
    eventually(WAIT, "n1 counts n3's certificate as unknown_ca", || async {
        let count = cluster
            .metric(1, "meshkv_peer_tls_refused_total{reason=\"unknown_ca\"}")
            .await;
        (count >= 1.0).then_some(())
    })
    .await;
    eventually(WAIT, "n1 logs the refusal", || async {
        let log = cluster.log(1);
        (log.contains("peer connection refused (TLS)") && log.contains("UnknownIssuer")
            || log.contains("refused the peer's TLS certificate"))
        .then_some(())
    })
    .await;

    // n1 and n2 replicate; n3 gets nothing from them.
    put_acknowledged(&cluster, 1, "k", "v").await;
    eventually(WAIT, "n2 reads n1's write", || async {
        cluster.client(2).get("k", None).await.ok()?.map(|_| ())
    })
    .await;
    // Not a pause but an event: n3 has dialed n1 again since the write, and was refused.
    let unknown_ca = "meshkv_peer_tls_refused_total{reason=\"unknown_ca\"}";
    let refused_before = cluster.metric(1, unknown_ca).await;
    eventually(WAIT, "n3 dials n1 again and is refused", || async {
        (cluster.metric(1, unknown_ca).await > refused_before).then_some(())
    })
    .await;
    let stranger = cluster
        .client_with_ca(3, &cluster.dir().join("tls").join("foreign-ca.pem"))
        .get("k", None)
        .await;
    assert!(
        matches!(stranger, Ok(None)),
        "n3 must not have received the write: {stranger:?}"
    );
    assert_ne!(
        cluster.peer_state(1, 3).await.as_deref(),
        Some("alive"),
        "n1 holds no link to n3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_certificate_names_no_member_or_another_node_is_refused() {
    // n3's certificate names n9 (no member); n4's names n2 (a member, not n4).
    let cluster = TestCluster::start_tls(4, "", |i| match i {
        3 => NodeCert::Names("n9"),
        4 => NodeCert::Names("n2"),
        _ => NodeCert::Good,
    });
    for (reason, what) in [
        ("names_no_member", "n3's certificate names no member"),
        ("hello_mismatch", "n4's hello claims n4, its certificate n2"),
        ("wrong_name", "n3 and n4 answer n1's dials as other nodes"),
    ] {
        eventually(WAIT, &format!("n1 counts {reason}: {what}"), || async {
            let series = format!("meshkv_peer_tls_refused_total{{reason=\"{reason}\"}}");
            (cluster.metric(1, &series).await >= 1.0).then_some(())
        })
        .await;
    }
    log_mentions(&cluster, 1, "names no node of the cluster file").await;
    log_mentions(
        &cluster,
        1,
        "the hello claims n4, but the TLS certificate names n2",
    )
    .await;

    // The honest pair replicates.
    put_acknowledged(&cluster, 2, "k", "v").await;
    eventually(WAIT, "n1 reads n2's write", || async {
        cluster.client(1).get("k", None).await.ok()?.map(|_| ())
    })
    .await;
    for stranger in [3, 4] {
        assert_ne!(
            cluster.peer_state(1, stranger).await.as_deref(),
            Some("alive"),
            "n1 holds no link to n{stranger}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_between_tls_nodes_survives_a_kill_and_restart() {
    let mut cluster = TestCluster::start_tls_durable(3, "", "batch");
    cluster.wait_mesh(WAIT).await;
    cluster.client(1).put("before", "1", None).await.unwrap();
    eventually(WAIT, "n3 reads n1's write", || async {
        cluster
            .client(3)
            .get("before", None)
            .await
            .ok()?
            .map(|_| ())
    })
    .await;

    cluster.kill(2);
    cluster.client(1).put("during", "2", None).await.unwrap();

    // A certificate file that is not PEM stops the node at once, naming the file.
    let cert = cluster.dir().join("tls/n2.pem");
    let good = std::fs::read(&cert).unwrap();
    std::fs::write(&cert, "not a certificate\n").unwrap();
    let (status, output) = cluster.serve_and_expect_exit(2, &[]);
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(
        output.contains("n2.pem") && output.contains("holds no certificate"),
        "{output}"
    );
    std::fs::write(&cert, good).unwrap();

    // A key its group may read: one warning at start, and the node serves.
    {
        use std::os::unix::fs::PermissionsExt;
        let key = cluster.dir().join("tls/n2.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    }
    cluster.restart(2);
    let log = cluster.log(2);
    assert_eq!(
        log.matches("is readable by its group or by others (mode 640)")
            .count(),
        1,
        "{log}"
    );
    assert!(!log.contains("PRIVATE KEY"), "no key material in the log");
    eventually(WAIT, "the restarted n2 holds both writes", || async {
        let before = cluster.client(2).get("before", None).await.ok()??;
        let during = cluster.client(2).get("during", None).await.ok()??;
        (before.text() == "1" && during.text() == "2").then_some(())
    })
    .await;
    cluster.client(2).put("after", "3", None).await.unwrap();
    eventually(WAIT, "n3 reads the restarted n2's write", || async {
        cluster.client(3).get("after", None).await.ok()?.map(|_| ())
    })
    .await;
    cluster
        .wait_converged(WAIT)
        .await
        .expect("the TLS cluster converges");
}

/// The fault commands of `meshkv test` for a [`TestCluster`]: a small HTTP endpoint in
/// this process, which the commands reach with curl (as the stand-ins of
/// tests/suites_fairness.rs do).
async fn control(cluster: Arc<Mutex<TestCluster>>) -> (Vec<String>, tokio::task::JoinHandle<()>) {
    use axum::extract::{Path, State};
    use axum::routing::post;
    type Shared = State<Arc<Mutex<TestCluster>>>;
    fn index(id: &str) -> usize {
        id.trim_start_matches('n').parse().expect("a node id n<i>")
    }
    async fn blocking(job: impl FnOnce() + Send + 'static) -> &'static str {
        tokio::task::spawn_blocking(job)
            .await
            .expect("the fault ran");
        "ok"
    }
    let app = axum::Router::new()
        .route(
            "/kill/{node}",
            post(|State(c): Shared, Path(node): Path<String>| async move {
                blocking(move || c.lock().unwrap().kill(index(&node))).await
            }),
        )
        .route(
            "/restart/{node}",
            post(|State(c): Shared, Path(node): Path<String>| async move {
                blocking(move || c.lock().unwrap().restart(index(&node))).await
            }),
        )
        .route(
            "/partition",
            post(|State(c): Shared, body: String| async move {
                blocking(move || {
                    let groups: Vec<Vec<usize>> = body
                        .trim()
                        .split('|')
                        .map(|group| group.split(',').map(index).collect())
                        .collect();
                    let groups: Vec<&[usize]> = groups.iter().map(Vec::as_slice).collect();
                    c.lock().unwrap().partition(&groups);
                })
                .await
            }),
        )
        .route(
            "/heal",
            post(
                |State(c): Shared| async move { blocking(move || c.lock().unwrap().heal()).await },
            ),
        )
        .with_state(cluster);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    let args = vec![
        "--kill-cmd".into(),
        format!("curl -sSf -X POST {url}/kill/{{node}}"),
        "--restart-cmd".into(),
        format!("curl -sSf -X POST {url}/restart/{{node}}"),
        "--partition-cmd".into(),
        format!("curl -sSf -X POST --data-binary {{groups}} {url}/partition"),
        "--heal-cmd".into(),
        format!("curl -sSf -X POST {url}/heal"),
    ];
    (args, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acceptance_suites_pass_against_a_cluster_with_tls_and_client_tokens() {
    if !common::require_nft(
        "the_acceptance_suites_pass_against_a_cluster_with_tls_and_client_tokens",
    ) {
        return;
    }
    // The suites run with the admin token (they read /v1/cluster); the others exist so
    // that the lookup has more than one digest to compare.
    const ADMIN: &str = "admin-5e0c91d7a4b2f836";
    let tokens =
        format!("read read-1f2e3d4c5b6a7988\nwrite write-0a9b8c7d6e5f4031\nadmin {ADMIN}\n");
    let cluster = TestCluster::start_secure_durable(4, "batch", &tokens, ADMIN);
    let cluster_file = cluster.cluster_file().to_owned();
    let json = cluster.dir().join("all.json");
    let cluster = Arc::new(Mutex::new(cluster));
    let (fault_args, server) = control(cluster.clone()).await;
    let started = std::time::Instant::now();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshkv"))
        .arg("test")
        .arg("all")
        .arg("--cluster")
        .arg(&cluster_file)
        .arg("--json")
        .arg(&json)
        .args([
            "--rounds",
            "60",
            "--keys",
            "8",
            "--ops",
            "100",
            "--clients",
            "4",
        ])
        .args(&fault_args)
        .env("MESHKV_TOKEN", ADMIN)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(600), output)
        .await
        .expect("meshkv test all ends within 10 minutes")
        .expect("meshkv runs");
    server.abort();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!(
        "meshkv test all against a cluster with TLS and client tokens took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        output.status.success(),
        "meshkv test all failed against a cluster with TLS and client tokens:\n{stdout}\n{stderr}"
    );
}

#[test]
fn the_secure_demo_prints_a_curl_line_that_works() {
    let curl_works = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !curl_works {
        eprintln!(
            "\n***** SKIPPED the_secure_demo_prints_a_curl_line_that_works: needs curl *****\n"
        );
        return;
    }
    let tmp = std::env::temp_dir().join(format!("meshkv-tls-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    // A client port on 127.0.0.11 with its peer port (+100) free, as tests/demo.rs.
    let port = (0..100)
        .find_map(|_| {
            let listener = std::net::TcpListener::bind("127.0.0.11:0").ok()?;
            let port = listener.local_addr().ok()?.port();
            drop(listener);
            (port < 60_000 && std::net::TcpListener::bind(("127.0.0.11", port + 100)).is_ok())
                .then_some(port)
        })
        .expect("a free port pair on 127.0.0.11");
    let mut demo = std::process::Command::new(env!("CARGO_BIN_EXE_meshkv"))
        .args([
            "demo",
            "--nodes",
            "2",
            "--secure",
            "--port",
            &port.to_string(),
        ])
        .env("TMPDIR", &tmp)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Read the banner up to its last line.
    let mut stdout = std::io::BufReader::new(demo.stdout.take().unwrap());
    let mut banner = String::new();
    loop {
        let mut line = String::new();
        let read = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        banner.push_str(&line);
        if read == 0 || line.contains("Press Ctrl-C") {
            break;
        }
    }
    let result = std::panic::catch_unwind(|| {
        let keys = tmp.join("meshkv-demo/tls");
        for node in ["n1", "n2"] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(keys.join(format!("{node}.key")))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{node}'s key is private");
        }
        let demo_dir = tmp.join("meshkv-demo");
        for secret in [
            "auth/tokens",
            "auth/read.token",
            "auth/write.header",
            "secret.key",
        ] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(demo_dir.join(secret))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{secret} is private");
        }
        let curls: Vec<&str> = banner
            .lines()
            .map(str::trim)
            .filter(|line| line.starts_with("curl --cacert"))
            .collect();
        assert!(curls.len() >= 2, "curl lines in the banner:\n{banner}");
        // The printed lines, run by a shell as a person would paste them: the PUT on
        // the first node, then the GET on the last (retried while the write travels).
        let run = |line: &str| {
            std::process::Command::new("sh")
                .args(["-c", &format!("{line} -sS --fail")])
                .output()
                .unwrap()
        };
        let put = run(curls[0]);
        assert!(put.status.success(), "{}: {put:?}", curls[0]);
        let get = (0..50)
            .map(|_| {
                let out = run(curls[1]);
                if !out.status.success() {
                    std::thread::sleep(Duration::from_millis(100));
                }
                out
            })
            .find(|out| out.status.success())
            .unwrap_or_else(|| panic!("{} never succeeded", curls[1]));
        assert_eq!(String::from_utf8_lossy(&get.stdout), "hello");
        // The last curl line writes with the read token: refused (its comment turns
        // the appended flags off, so curl prints the JSON error).
        let refused = run(curls.last().unwrap());
        let body = String::from_utf8_lossy(&refused.stdout);
        assert!(body.contains("role write or above"), "{body}");
        // Without a token: 401, whatever the TLS.
        let bare = curls[1].split(" -H @").next().unwrap().to_owned()
            + " "
            + curls[1].rsplit(' ').next().unwrap();
        let out = run(&format!("{bare} -o /dev/null -w '%{{http_code}}'; true"));
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("401"),
            "{out:?}"
        );
        // The CLI lines (with the CA and a read token file) read the value.
        let cli = banner
            .lines()
            .map(str::trim)
            .find(|line| line.contains(" get greeting --node https://"))
            .expect("a CLI line with --node");
        let out = std::process::Command::new("sh")
            .args(["-c", cli])
            .output()
            .unwrap();
        assert!(out.status.success(), "{cli}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello");
    });
    let _ = std::process::Command::new("kill")
        .args(["-INT", &demo.id().to_string()])
        .status();
    let _ = demo.wait();
    let _ = std::fs::remove_dir_all(&tmp);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
